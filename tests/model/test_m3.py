"""bge-m3's three outputs from one forward: a tiny XLM-R in bge-m3's layout (sentence-transformers
CLS pooling + Normalize, with `sparse_linear.pt` and `colbert_linear.pt` beside the weights, as
bge-m3 ships them). Dense, sparse and multi-vector equal a reference computed with torch from
transformers' hidden states and FlagEmbedding's published formulas:

    dense        normalize(h[CLS])
    sparse       per vocabulary token, the max over its occurrences of relu(sparse_linear(h));
                 cls, eos, pad and unk weigh 0
    multi_vector normalize(colbert_linear(h[1:])), one vector per token after [CLS]
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from ember import LLM, PoolingParams
from ember.errors import CorruptModelError, InvalidRequestError
from tests.entrypoints.server_harness import RunningServer, make_texts
from tests.tiny_models import build_tiny_xlm_roberta

TEXTS = [*make_texts(5, seed=33, max_words=30), "a", "the the the fox"]  # repeated tokens: max per token id
UNUSED = ("cls_token", "eos_token", "pad_token", "unk_token")


def write_m3_heads(folder: Path, hidden: int = 32, colbert_dim: int = 32) -> None:
    torch.manual_seed(7)
    sparse, colbert = torch.nn.Linear(hidden, 1), torch.nn.Linear(hidden, colbert_dim)
    with torch.no_grad():
        sparse.bias.fill_(0.05)  # most tokens get a positive weight, some do not
    torch.save(sparse.state_dict(), folder / "sparse_linear.pt")
    torch.save(colbert.state_dict(), folder / "colbert_linear.pt")


@pytest.fixture(scope="module")
def m3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = build_tiny_xlm_roberta(tmp_path_factory.mktemp("tiny-m3"), pooling="CLS", normalize=True)
    write_m3_heads(folder, colbert_dim=24)
    return folder


def reference(folder: Path, texts: list[str]) -> list[tuple[np.ndarray, dict[int, float], np.ndarray]]:
    """(dense, sparse {token id: weight}, multi-vector) per text, each text run alone."""
    from transformers import AutoTokenizer, XLMRobertaModel

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = XLMRobertaModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    sparse_linear, colbert_linear = torch.nn.Linear(32, 1), torch.nn.Linear(32, 24)
    sparse_linear.load_state_dict(torch.load(folder / "sparse_linear.pt", weights_only=True))
    colbert_linear.load_state_dict(torch.load(folder / "colbert_linear.pt", weights_only=True))
    unused = {getattr(tok, f"{role[:-6]}_token_id") for role in UNUSED}
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]
            dense = torch.nn.functional.normalize(hidden[0], dim=-1)
            weights = torch.relu(sparse_linear(hidden)).squeeze(-1)
            colbert = torch.nn.functional.normalize(colbert_linear(hidden[1:]), dim=-1)
        sparse: dict[int, float] = {}
        for token, weight in zip(enc["input_ids"][0].tolist(), weights.tolist()):
            if token not in unused and weight > 0:
                sparse[token] = max(sparse.get(token, 0.0), weight)
        out.append((dense.numpy(), sparse, colbert.numpy()))
    return out


@pytest.fixture(scope="module")
def eager(m3: Path) -> Iterator[LLM]:
    yield LLM(str(m3), enforce_eager=True, dtype="float32")


def count_forwards(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one per forward of the encoder (each batch)."""
    runner = llm.engine.runner
    calls: list[int] = []
    forward = runner._forward

    def counted(batch: Any) -> torch.Tensor:
        calls.append(batch.num_seqs)
        return forward(batch)

    monkeypatch.setattr(runner, "_forward", counted)
    return calls


def check_against_reference(outs: list, ref: list) -> None:
    for out, (dense, sparse, colbert) in zip(outs, ref, strict=True):
        got = out.outputs
        np.testing.assert_allclose(got.dense, dense, atol=1e-5)
        assert got.sparse.to_dict().keys() == sparse.keys()
        np.testing.assert_allclose([got.sparse.to_dict()[k] for k in sparse], list(sparse.values()), atol=1e-5)
        assert got.multi_vector.shape == colbert.shape
        np.testing.assert_allclose(got.multi_vector, colbert, atol=1e-5)


def test_three_outputs_from_one_forward_equal_the_published_formulas(
        eager: LLM, m3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"embed", "sparse", "multi_vector", "hybrid"} <= set(eager.model_info.tasks)
    ref = reference(m3, TEXTS)
    assert sum(len(sparse) for _, sparse, _ in ref) > 2 * len(TEXTS), "the check must compare weights, not empty maps"
    calls = count_forwards(eager, monkeypatch)
    outs = eager.encode(TEXTS, pooling_task="hybrid")
    assert calls == [len(TEXTS)]  # one batch, one forward, three outputs per text
    check_against_reference(outs, ref)
    # Each output alone is the same as in the hybrid response.
    for out, alone in zip(outs, eager.encode(TEXTS, pooling_task="multi_vector")):
        np.testing.assert_allclose(alone.outputs.data, out.outputs.multi_vector, atol=1e-6)
    for out, alone in zip(outs, eager.encode(TEXTS, pooling_task="sparse")):
        assert alone.outputs.to_dict() == out.outputs.sparse.to_dict()
    for out, alone in zip(outs, eager.embed(TEXTS)):
        np.testing.assert_allclose(alone.outputs.data, out.outputs.dense, atol=1e-6)


def test_sparse_top_k_threshold_and_dimensions_apply_to_hybrid(eager: LLM) -> None:
    [full] = eager.encode(TEXTS[:1], pooling_task="hybrid")
    params = PoolingParams(sparse_top_k=2, normalize=False)
    [top] = eager.encode(TEXTS[:1], pooling_task="hybrid", pooling_params=params)
    assert top.outputs.sparse.indices.tolist() == full.outputs.sparse.indices[:2].tolist()
    assert not np.allclose(np.linalg.norm(top.outputs.multi_vector, axis=1), 1.0)  # normalize=False: raw vectors
    with pytest.raises(InvalidRequestError) as raised:
        eager.encode(TEXTS[:1], pooling_task="multi_vector", pooling_params=PoolingParams(sparse_top_k=2))
    assert raised.value.param == "sparse_top_k"


def test_compiled_equals_eager_with_no_compile_after_ready(eager: LLM, m3: Path) -> None:
    compiled = LLM(str(m3), dtype="float32", quantization=None)
    outs = compiled.encode(TEXTS, pooling_task="hybrid")
    assert compiled.stats()["compiles_after_ready"] == 0
    check_against_reference(outs, reference(m3, TEXTS))


def test_damaged_heads_are_refused_with_the_file_named(tmp_path: Path) -> None:
    folder = build_tiny_xlm_roberta(tmp_path / "bad-shape", pooling="CLS", normalize=True)
    write_m3_heads(folder)
    torch.save(torch.nn.Linear(16, 24).state_dict(), folder / "colbert_linear.pt")
    with pytest.raises(CorruptModelError, match=r"colbert_linear\.pt"):
        LLM(str(folder), enforce_eager=True, dtype="float32")
    write_m3_heads(folder)
    torch.save({"weight": torch.zeros(1, 32), "bias": torch.zeros(1), "code": Path("x")}, folder / "sparse_linear.pt")
    with pytest.raises(CorruptModelError, match=r"sparse_linear\.pt"):
        LLM(str(folder), enforce_eager=True, dtype="float32")


@pytest.fixture(scope="module")
def server(m3: Path) -> Iterator[RunningServer]:
    with RunningServer(str(m3), served_model_name="tiny-m3", enforce_eager=True, dtype="float32") as running:
        yield running.wait_ready()


def test_embeddings_route_returns_sparse_and_multi_vector_with_the_openai_client(
        server: RunningServer, eager: LLM) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
    response = client.embeddings.create(model="tiny-m3", input=TEXTS[:3],
                                        extra_body={"return_sparse": True, "return_multi_vector": True,
                                                    "sparse_top_k": 4})
    for item, ref in zip(response.data, eager.encode(TEXTS[:3], pooling_task="hybrid")):
        np.testing.assert_allclose(item.embedding, ref.outputs.dense, atol=1e-5)
        extra = item.model_extra
        assert extra["sparse_embedding"]["indices"] == ref.outputs.sparse.indices[:4].tolist()
        np.testing.assert_allclose(extra["sparse_embedding"]["values"], ref.outputs.sparse.values[:4], atol=1e-5)
        np.testing.assert_allclose(extra["multi_vector"], ref.outputs.multi_vector, atol=1e-5)
    plain = client.embeddings.create(model="tiny-m3", input=TEXTS[:1])
    assert "sparse_embedding" not in (plain.data[0].model_extra or {})


def test_pooling_route_serves_hybrid_and_multi_vector(server: RunningServer, eager: LLM) -> None:
    body = {"input": TEXTS[:2], "task": "hybrid"}
    data = httpx.post(f"{server.url}/pooling", json=body).json()["data"]
    for item, ref in zip(data, eager.encode(TEXTS[:2], pooling_task="hybrid")):
        out = item["data"]
        np.testing.assert_allclose(out["dense"], ref.outputs.dense, atol=1e-5)
        assert out["sparse"]["indices"] == ref.outputs.sparse.indices.tolist()
        assert out["sparse"]["tokens"] == eager.engine.runner.tokenizer.token_strings(out["sparse"]["indices"])
        np.testing.assert_allclose(out["multi_vector"], ref.outputs.multi_vector, atol=1e-5)
    multi = httpx.post(f"{server.url}/pooling", json={"input": TEXTS[:1], "task": "multi_vector"}).json()["data"]
    np.testing.assert_allclose(multi[0]["data"], eager.encode(TEXTS[:1], pooling_task="multi_vector")[0].outputs.data,
                               atol=1e-5)


@pytest.mark.parametrize(("body", "param"), [
    ({"return_sparse": True, "sparse_top_k": 0}, "sparse_top_k"),
    ({"sparse_top_k": 3}, "sparse_top_k"),
    ({"return_multi_vector": {"on": 1}}, "return_multi_vector"),
    ({"return_sparse": True, "long_inputs": "chunk"}, "long_inputs"),
])
def test_bad_hybrid_requests_get_400_naming_the_field(server: RunningServer, body: dict, param: str) -> None:
    response = httpx.post(f"{server.url}/v1/embeddings", json={"input": TEXTS[:1], **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
