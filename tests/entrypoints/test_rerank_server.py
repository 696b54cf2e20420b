"""/rerank, /v1/rerank, /v2/rerank (Cohere's SDK), /score, /classify and /pooling against a real
server: a compiled cross-encoder, a classifier, and the default MiniLM as a bi-encoder."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from ember import LLM
from ember.bench.corpus import passages
from tests.entrypoints.server_harness import RunningServer, check_error
from tests.model.test_classifier_parity import DOCUMENTS, QUERY, reference_logits
from tests.tiny_models import WORDS, build_tiny_classifier


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_classifier(tmp_path_factory.mktemp("reranker"), "bert", 1)


@pytest.fixture(scope="module")
def reranker(reranker_path: Path) -> Iterator[RunningServer]:
    """Compiled (float32: the exact scores), as served by default but for the dtype."""
    with RunningServer(str(reranker_path), dtype="float32", served_model_name="rr", max_num_seqs=8) as server:
        yield server.wait_ready()


@pytest.fixture(scope="module")
def expected(reranker_path: Path) -> np.ndarray:
    """transformers' sigmoid(logit) of each (QUERY, document) pair, over-long ones cut."""
    return 1 / (1 + np.exp(-reference_logits(reranker_path, [(QUERY, d) for d in DOCUMENTS])[:, 0]))


def test_jina_rerank_sorts_and_honours_top_n(reranker: RunningServer, expected: np.ndarray) -> None:
    for route in ("/rerank", "/v1/rerank"):
        body = {"model": "rr", "query": QUERY, "documents": DOCUMENTS, "top_n": 3, "truncate_prompt_tokens": -1}
        response = httpx.post(reranker.url + route, json=body)
        assert response.status_code == 200, response.text
        out = response.json()
        order = list(np.argsort(-expected, kind="stable")[:3])
        assert [r["index"] for r in out["results"]] == order
        np.testing.assert_allclose([r["relevance_score"] for r in out["results"]], expected[order], atol=1e-4)
        assert [r["document"]["text"] for r in out["results"]] == [DOCUMENTS[i] for i in order]
        assert out["usage"]["total_tokens"] > 0 and out["model"] == "rr"
    bare = httpx.post(reranker.url + "/rerank", json={"query": QUERY, "documents": [{"text": "the lazy dog"}],
                                                       "return_documents": False}).json()
    assert set(bare["results"][0]) == {"index", "relevance_score"}


def test_cohere_sdk_rerank(reranker: RunningServer, expected: np.ndarray) -> None:
    import cohere

    client = cohere.ClientV2(base_url=reranker.url, api_key="unused")
    response = client.rerank(model="rr", query=QUERY, documents=DOCUMENTS, top_n=4)
    order = list(np.argsort(-expected, kind="stable")[:4])
    assert [r.index for r in response.results] == order  # over-long documents are cut, as Cohere does
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, expected[order], atol=1e-4)
    cut = client.rerank(model="rr", query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=3)
    assert len(cut.results) == len(DOCUMENTS)


def test_score_classify_and_pooling(reranker: RunningServer, expected: np.ndarray) -> None:
    url = reranker.url
    one_to_n = httpx.post(url + "/score", json={"text_1": QUERY, "text_2": DOCUMENTS, "truncate_prompt_tokens": -1})
    assert one_to_n.status_code == 200, one_to_n.text
    np.testing.assert_allclose([d["score"] for d in one_to_n.json()["data"]], expected, atol=1e-4)
    pairs = httpx.post(url + "/v1/score", json={"queries": [QUERY, QUERY], "documents": DOCUMENTS[:2]}).json()
    np.testing.assert_allclose([d["score"] for d in pairs["data"]], expected[:2], atol=1e-4)
    raw = httpx.post(url + "/score", json={"text_1": QUERY, "text_2": DOCUMENTS[0], "use_activation": False}).json()
    assert raw["data"][0]["score"] == pytest.approx(np.log(expected[0] / (1 - expected[0])), abs=1e-4)
    pooled = httpx.post(url + "/pooling", json={"task": "score", "input": [[QUERY, DOCUMENTS[0]]]}).json()
    assert pooled["data"][0]["data"] == pytest.approx(expected[0], abs=1e-4)
    classified = httpx.post(url + "/classify", json={"input": ["hello world", "the lazy dog"]}).json()
    assert [d["num_classes"] for d in classified["data"]] == [1, 1] and classified["data"][0]["label"] == "relevance"
    card = httpx.get(url + "/v1/models").json()["data"][0]
    assert card["tasks"] == ["classify", "score"] and card["labels"] == ["relevance"]


BAD = [
    ("/rerank", {"query": "", "documents": ["a"]}, 400, "query"),
    ("/rerank", {"query": "q", "documents": []}, 400, "documents"),
    ("/rerank", {"query": "q", "documents": ["a"], "top_n": -1}, 400, "top_n"),
    ("/rerank", {"query": "q", "documents": ["a", " ".join(WORDS * 2)]}, 400, "documents"),
    ("/v1/rerank", {"query": "q"}, 400, "documents"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, 400, "max_tokens_per_doc"),
    ("/v2/rerank", {"query": "q", "documents": ["a"], "model": "other"}, 404, "model"),
    ("/score", {"text_1": "a"}, 400, "text_2"),
    ("/score", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]}, 400, "text_2"),
    ("/score", {"text_1": "", "text_2": "b"}, 400, "text_1"),
    ("/classify", {"input": []}, 400, "input"),
    ("/pooling", {"task": "embed", "input": "hello"}, 400, "task"),
    ("/pooling", {"task": "score", "input": [["a", ""]]}, 400, "input"),
    ("/v1/embeddings", {"input": "hello"}, 400, "task"),
]


@pytest.mark.parametrize(("route", "body", "status", "param"), BAD, ids=[f"{b[0]}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_bad_requests(reranker: RunningServer, route: str, body: dict, status: int, param: str) -> None:
    error = check_error(httpx.post(reranker.url + route, json=body), status, param)
    if param == "task":
        assert "serves: classify, score" in error["message"]


def test_no_compile_after_ready_under_rerank_traffic(reranker: RunningServer) -> None:
    rng = np.random.default_rng(0)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=reranker.url, timeout=120) as client:
            calls = []
            for i in range(24):
                docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 60)))) for _ in range(int(rng.integers(1, 12)))]
                route, body = [("/rerank", {"query": "fox", "documents": docs, "truncate_prompt_tokens": -1}),
                               ("/score", {"text_1": "fox", "text_2": docs, "truncate_prompt_tokens": -1}),
                               ("/classify", {"input": docs, "truncate_prompt_tokens": -1})][i % 3]
                calls.append(client.post(route, json=body))
            return await asyncio.gather(*calls)

    assert all(r.status_code == 200 for r in asyncio.run(run()))
    stats = reranker.engine.stats()
    assert stats["is_compiled"] and stats["compiles_after_ready"] == 0 and stats["eager_fallbacks"] == 0


def test_classifier_server(tmp_path: Path) -> None:
    path = build_tiny_classifier(tmp_path, "xlm-roberta", 3)
    with RunningServer(str(path), enforce_eager=True, dtype="float32") as server:
        server.wait_ready()
        out = httpx.post(server.url + "/classify", json={"input": ["hello world", "the lazy dog"]}).json()
        offline = LLM(str(path), enforce_eager=True, dtype="float32").classify(["hello world", "the lazy dog"])
        for got, want in zip(out["data"], offline):
            assert got["label"] == want.label and got["num_classes"] == 3
            np.testing.assert_allclose(got["probs"], want.outputs.probs, atol=1e-6)
        check_error(httpx.post(server.url + "/rerank", json={"query": "q", "documents": ["a"]}), 400, "task")


@pytest.fixture(scope="module")
def minilm(minilm_path: Path) -> Iterator[RunningServer]:
    with RunningServer(str(minilm_path), enforce_eager=True, dtype="float32") as server:
        yield server.wait_ready()


def test_minilm_rerank_finds_the_passage_a_query_starts(minilm: RunningServer) -> None:
    docs = passages(20)
    for target in (3, 11, 17):
        query = " ".join(docs[target].split()[:8])
        body = {"query": query, "documents": docs, "top_n": 5, "truncate_prompt_tokens": -1}
        out = httpx.post(minilm.url + "/v1/rerank", json=body).json()
        assert out["results"][0]["index"] == target, (query, out["results"][:2])
        assert len(out["results"]) == 5


def test_minilm_score_is_the_cosine_of_its_embeddings(minilm: RunningServer) -> None:
    client = openai.OpenAI(base_url=minilm.url + "/v1", api_key="unused")
    texts = ["Where is the Eiffel tower?", "The Eiffel tower stands in Paris.", "Bananas are yellow."]
    vectors = np.array([d.embedding for d in client.embeddings.create(model=minilm.config.model_config.model,
                                                                      input=texts).data])
    scores = httpx.post(minilm.url + "/score", json={"text_1": texts[0], "text_2": texts[1:]}).json()["data"]
    cosines = [float(vectors[0] @ v / np.linalg.norm(vectors[0]) / np.linalg.norm(v)) for v in vectors[1:]]
    np.testing.assert_allclose([s["score"] for s in scores], cosines, atol=1e-5)
    assert cosines[0] > cosines[1]
    card = httpx.get(minilm.url + "/v1/models").json()["data"][0]
    assert card["tasks"] == ["embed", "token_embed", "score"]
    check_error(httpx.post(minilm.url + "/classify", json={"input": "a"}), 400, "task")
