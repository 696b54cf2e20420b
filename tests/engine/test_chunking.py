"""long_inputs="chunk": an over-long text is embedded as overlapping windows of max_model_len
tokens, batched with everything else, and its vector is their token-weighted mean. The windows
are the ones transformers' own tokenizer makes with return_overflowing_tokens and a stride, each
chunk's vector equals that window embedded alone, and the spans index the original text."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ember import LLM, PoolingParams
from ember.errors import InvalidRequestError
from tests.conftest import check_close
from tests.entrypoints.server_harness import RunningServer, check_error, make_texts
from tests.tiny_models import WORDS

MAX_LEN = 64  # the tiny BERT's max_seq_length
OVERLAP = 8


@pytest.fixture(scope="module")
def llm(tiny_bert: Path) -> Iterator[LLM]:
    yield LLM(str(tiny_bert), enforce_eager=True)


def long_text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


def reference_windows(tiny_bert: Path, text: str, overlap: int) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """transformers' windows of `text`: token ids (special tokens included) and character spans."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    enc = tok(text, max_length=MAX_LEN, truncation=True, stride=overlap, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    spans = []
    for offsets in enc["offset_mapping"]:
        inner = [o for o in offsets if o != (0, 0)]
        spans.append((inner[0][0], inner[-1][1]))
    return enc["input_ids"], spans


def weighted_mean(llm: LLM, windows: list[list[int]]) -> np.ndarray:
    vectors = np.stack([o.outputs.embedding for o in llm.embed(windows)])
    mean = (vectors * np.array([len(w) for w in windows])[:, None]).sum(0)
    return mean / np.linalg.norm(mean)


def test_a_long_text_is_the_weighted_mean_of_its_windows(llm: LLM, tiny_bert: Path) -> None:
    text = long_text(5000)
    windows, spans = reference_windows(tiny_bert, text, OVERLAP)
    assert len(windows) >= 80
    params = PoolingParams(long_inputs="chunk", chunk_overlap=OVERLAP, return_chunks=True)
    [out] = llm.embed([text], pooling_params=params)
    assert out.is_chunked and not out.truncated
    assert [(c.start, c.end) for c in out.chunks] == spans
    assert [c.num_tokens for c in out.chunks] == [len(w) for w in windows]
    assert out.num_prompt_tokens == sum(len(w) for w in windows)  # usage counts every chunk's tokens
    check_close(ours=out.outputs.embedding, ref=weighted_mean(llm, windows), name_ours="chunked",
                name_ref="windows", tol=1e-6)
    alone = llm.embed([text[c.start:c.end] for c in out.chunks])  # each chunk's text as an input of its own
    for chunk, window, own in zip(out.chunks, windows, alone):
        check_close(ours=chunk.embedding, ref=llm.embed([window])[0].outputs.embedding, name_ours="chunk",
                    name_ref="window alone", tol=1e-6)
        check_close(ours=chunk.embedding, ref=own.outputs.embedding, name_ours="chunk", name_ref="its text alone",
                    tol=1e-5)
    assert out.chunks[0].start == 0 and out.chunks[-1].end == len(text)
    covered = sorted((c.start, c.end) for c in out.chunks)  # the spans cover the text: no gap between them
    assert all(start <= previous_end for (_, previous_end), (start, _) in itertools.pairwise(covered))


def test_chunked_texts_share_batches_without_changing_the_others(llm: LLM, tiny_bert: Path) -> None:
    short = make_texts(6, seed=1, max_words=20)
    texts = [short[0], long_text(200, seed=2), *short[1:3], long_text(500, seed=3), *short[3:]]
    outs = llm.embed(texts, pooling_params=PoolingParams(long_inputs="chunk"))
    alone = llm.embed(short)
    got_short = [o for o in outs if not o.is_chunked]
    assert [o.is_chunked for o in outs] == [False, True, False, False, True, False, False, False]
    for got, ref in zip(got_short, alone):  # other batch shapes may move a float32 sum by an ulp
        np.testing.assert_allclose(got.outputs.embedding, ref.outputs.embedding, atol=1e-6, rtol=0)
    for i in (1, 4):
        windows, _ = reference_windows(tiny_bert, texts[i], MAX_LEN // 8)
        check_close(ours=outs[i].outputs.embedding, ref=weighted_mean(llm, windows), name_ours="chunked",
                    name_ref="windows", tol=1e-6)


def test_an_engine_default_of_chunk_applies_to_embed_and_truncates_other_tasks(tiny_bert: Path) -> None:
    llm = LLM(str(tiny_bert), enforce_eager=True, long_inputs="chunk")
    text = long_text(300, seed=4)
    [out] = llm.embed([text])
    assert out.is_chunked and out.chunks[-1].end == len(text)
    [tokens] = llm.encode([text], pooling_task="token_embed")
    assert tokens.truncated and tokens.outputs.data.shape[0] == MAX_LEN


@pytest.mark.parametrize(("params", "task", "field"), [
    (PoolingParams(long_inputs="chunk"), "token_embed", "long_inputs"),
    (PoolingParams(long_inputs="chunk", chunk_overlap=MAX_LEN // 2), "embed", "chunk_overlap"),
    (PoolingParams(long_inputs="chunk", chunk_overlap=-1), "embed", "chunk_overlap"),
    (PoolingParams(long_inputs="split"), "embed", "long_inputs"),
])
def test_bad_chunk_parameters_name_the_field(llm: LLM, params: PoolingParams, task: str, field: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        llm.encode([long_text(300)], pooling_task=task, pooling_params=params)
    assert raised.value.param == field


@pytest.fixture(scope="module")
def chunking_server(tiny_bert: Path) -> Iterator[RunningServer]:
    with RunningServer(str(tiny_bert), enforce_eager=True, long_inputs="chunk") as running:
        yield running.wait_ready()


def test_http_chunks_with_spans_and_usage(chunking_server: RunningServer, llm: LLM, tiny_bert: Path) -> None:
    text = long_text(300, seed=5)
    windows, spans = reference_windows(tiny_bert, text, MAX_LEN // 8)
    body = {"input": [text, "short one"], "return_chunks": True}
    response = httpx.post(f"{chunking_server.url}/v1/embeddings", json=body).json()
    long_item, short_item = response["data"]
    assert [(c["start"], c["end"]) for c in long_item["chunks"]] == spans
    assert "chunks" not in short_item and short_item["truncated"] is False and long_item["truncated"] is False
    assert response["usage"]["prompt_tokens"] == sum(map(len, windows)) + llm.embed(["short one"])[0].num_prompt_tokens
    check_close(ours=np.array(long_item["embedding"]), ref=weighted_mean(llm, windows), name_ours="http",
                name_ref="windows", tol=1e-5)
    check_close(ours=np.array(long_item["chunks"][1]["embedding"]), ref=llm.embed([windows[1]])[0].outputs.embedding,
                name_ours="http chunk", name_ref="window", tol=1e-5)


def test_a_client_that_knows_nothing_of_chunks_gets_a_vector(chunking_server: RunningServer) -> None:
    """The OpenAI client (as LangChain's and LlamaIndex's embeddings use it) sends a long document
    as is: the server's --long-inputs chunk answers with one vector instead of a 400."""
    client = openai.OpenAI(base_url=f"{chunking_server.url}/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model=str(chunking_server.config.model_config.model),
                                        input=[long_text(400, seed=6), "short"])
    assert [len(d.embedding) for d in response.data] == [32, 32]
    per_request = httpx.post(f"{chunking_server.url}/v1/embeddings",
                             json={"input": long_text(400, seed=6), "long_inputs": "error"})
    check_error(per_request, 400, "input")  # a request can still ask for the strict behaviour
