"""A model that fails at run time (its embedding matrix is shorter than its tokenizer's vocabulary,
a real mismatch): the failing batch's requests get a 500 in the OpenAI shape, no request hangs,
and the server keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
import torch

from tests.entrypoints.server_harness import RunningServer, check_error, wait_until
from tests.tiny_models import build_tiny_bert

GOOD = [2, 5, 6, 7, 3]  # ids below the model's 100 rows


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from transformers import BertConfig, BertModel

    folder = build_tiny_bert(tmp_path_factory.mktemp("short-vocab-bert"))
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    with RunningServer(str(folder), enforce_eager=True) as running:
        yield running.wait_ready()


def test_failing_batches_fail_only_with_errors(server: RunningServer) -> None:
    reference = httpx.post(f"{server.url}/v1/embeddings", json={"input": [GOOD]}).json()["data"][0]["embedding"]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
            calls = [http.post("/v1/embeddings", json={"input": "hello world" if i % 3 == 0 else [GOOD]})
                     for i in range(60)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(run())
    for i, response in enumerate(responses):
        if response.status_code == 200:
            assert i % 3 != 0
            got = response.json()["data"][0]["embedding"]
            assert max(abs(a - b) for a, b in zip(got, reference)) < 1e-5
        else:
            error = check_error(response, 500, None)
            assert error["type"] == "server_error" and error["code"] == "batch_failed"
    assert sum(r.status_code == 500 for r in responses) >= 20  # every bad one failed
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": [GOOD]}).status_code == 200
    # A slot is released just after the step that answered it: wait, do not race.
    wait_until(lambda: server.engine.num_pending == 0, "the queue to drain")
