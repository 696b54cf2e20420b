"""A compiled engine behind the server: /health is 503 until warm, the API key guards every route
but /health and /metrics, and /metrics parses and reports no compile after ready under varied traffic."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.entrypoints.server_harness import (
    RunningServer,
    check_error,
    make_texts,
    wait_until,
)

KEY = "sk-test-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def warming(tiny_bert: Path) -> Iterator[RunningServer]:
    """The server as soon as uvicorn listens: the engine is still compiling."""
    with RunningServer(str(tiny_bert), api_key=KEY, max_num_seqs=32) as running:
        yield running


@pytest.fixture(scope="module")
def server(warming: RunningServer) -> RunningServer:
    return warming.wait_ready()


def metrics(server: RunningServer) -> dict[str, list]:
    text = httpx.get(f"{server.url}/metrics").text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_health_is_503_until_warm(warming: RunningServer) -> None:
    first = httpx.get(f"{warming.url}/health")
    if first.status_code == 503:  # the expected case: the compile takes seconds
        assert first.headers["Retry-After"]
        check_error(first, 503, None)
        early = httpx.post(f"{warming.url}/v1/embeddings", json={"input": "a"}, headers=AUTH)
        check_error(early, 503, None)
        assert early.headers["Retry-After"]
        assert metrics(warming)["ember_ready"][0].value == 0
    warming.wait_ready()
    assert httpx.get(f"{warming.url}/health").status_code == 200
    stats = warming.engine.stats()
    assert stats["is_compiled"] and stats["num_warmed_shapes"] > 0
    found = metrics(warming)
    assert found["ember_ready"][0].value == 1
    # Before it said ready, the server sent its own requests through the HTTP path (float and
    # base64 embeddings, tokenize): the engine served them, the request metrics do not count them.
    assert stats["num_requests"] >= 4
    routes = {s.labels["route"] for s in found["ember_requests"] if s.name == "ember_requests_total"}
    assert routes <= {"/health", "/metrics", "/v1/embeddings"}
    assert not any(s.labels["route"] == "/v1/embeddings" and s.labels["status"] == "200"
                   for s in found["ember_requests"] if s.name == "ember_requests_total")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/embeddings", {"input": "a"}), ("POST", "/pooling", {"input": "a"}),
    ("POST", "/tokenize", {"prompt": "a"}), ("POST", "/detokenize", {"tokens": [5]}),
    ("GET", "/v1/models", None), ("GET", "/version", None),
])
def test_api_key_required(server: RunningServer, method: str, path: str, body: dict | None) -> None:
    url = f"{server.url}{path}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
        error = check_error(httpx.request(method, url, json=body, headers=headers), 401, None)
        assert error["type"] == "authentication_error"
    assert httpx.request(method, url, json=body, headers=AUTH).status_code == 200


def test_health_and_metrics_need_no_key(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_openai_client_with_key(server: RunningServer) -> None:
    good = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    assert len(good.embeddings.create(model=str(server.config.model_config.model), input=["a", "b"]).data) == 2
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="x", input="a")


def test_metrics_after_varied_traffic(server: RunningServer) -> None:
    rng = random.Random(7)
    bodies: list[tuple[str, dict]] = []
    for i in range(60):
        n = rng.choice([1, 2, 3, 7, 16, 31, 32, 50])
        body: dict = {"input": make_texts(n, seed=i, max_words=rng.choice([2, 10, 60]))}
        if i % 5 == 0:
            body["truncate_prompt_tokens"] = -1
            body["input"] = [" ".join(["fox"] * rng.randint(50, 300))] * n
        if i % 7 == 0:
            body["dimensions"] = 8
        bodies.append(("/pooling" if i % 11 == 0 else "/v1/embeddings", body))
    bodies.append(("/pooling", {"input": "hello world fox", "task": "token_embed"}))

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=300) as http:
            return await asyncio.gather(*(http.post(path, json=body) for path, body in bodies))

    assert all(r.status_code == 200 for r in asyncio.run(run()))
    check_error(httpx.post(f"{server.url}/v1/embeddings", json={"input": ""}, headers=AUTH), 400, "input")
    wait_until(lambda: server.engine.num_pending == 0, "the queue to drain")  # released just after the answer
    found = metrics(server)
    assert found["ember_compiles_after_ready"][0].name == "ember_compiles_after_ready_total"
    assert found["ember_compiles_after_ready"][0].value == 0
    assert server.engine.stats()["compiles_after_ready"] == 0
    assert found["ember_compilation_seconds"][0].value > 0
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in found["ember_requests"]
                if s.name == "ember_requests_total"}
    assert requests[("/v1/embeddings", "200")] >= 50 and requests[("/v1/embeddings", "400")] >= 1
    batch_sizes = {s.name: s.value for s in found["ember_batch_size"]}
    assert batch_sizes["ember_batch_size_count"] >= 1 and batch_sizes["ember_batch_size_sum"] >= 900
    for name in ("ember_request_duration_seconds", "ember_queue_time_seconds", "ember_batch_tokens"):
        assert any(s.name == f"{name}_count" and s.value > 0 for s in found[name]), name
    assert found["ember_queue_depth"][0].value == 0
    info = found["ember_model_info"][0].labels
    assert info["architecture"] == "BertModel" and info["compiled"] == "true"
