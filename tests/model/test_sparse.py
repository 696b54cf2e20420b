"""The sparse task (SPLADE): a BertForMaskedLM checkpoint's lexical weights, max over the tokens
of log(1 + relu(masked-LM logit)), equal those computed from transformers' BertForMaskedLM
logits; compiled equals eager; top-k and threshold; /pooling returns ids, weights and tokens;
the model still embeds as the encoder it is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from ember import LLM, PoolingParams
from ember.errors import InvalidRequestError
from tests.entrypoints.server_harness import RunningServer, check_error, make_texts
from tests.tiny_models import build_tiny_bert

TEXTS = [*make_texts(5, seed=21, max_words=30), "a"]


@pytest.fixture(scope="module")
def splade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's folder and tokenizer, with a BertForMaskedLM (head included) as its weights."""
    from transformers import BertConfig, BertForMaskedLM

    folder = build_tiny_bert(tmp_path_factory.mktemp("tiny-splade"))
    config = BertConfig(**{k: v for k, v in json.loads((folder / "config.json").read_text()).items()
                           if k not in ("architectures", "transformers_version")})
    torch.manual_seed(3)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():  # a trained SPLADE head has positive logits for a text's own tokens: make some
        model.cls.predictions.bias.normal_(0.0, 2.0)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def reference_weights(folder: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = BertForMaskedLM.from_pretrained(str(folder)).eval()
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        out.append(torch.log1p(torch.relu(logits)).amax(0).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def eager(splade: Path) -> Iterator[LLM]:
    yield LLM(str(splade), enforce_eager=True, dtype="float32")


def dense(sparse, vocab: int) -> np.ndarray:
    row = np.zeros(vocab, dtype=np.float32)
    row[sparse.indices] = sparse.values
    return row


def test_sparse_weights_equal_transformers(eager: LLM, splade: Path) -> None:
    assert "sparse" in eager.model_info.tasks
    ref = reference_weights(splade, TEXTS)
    outs = eager.encode(TEXTS, pooling_task="sparse")
    got = np.stack([dense(o.outputs, ref.shape[1]) for o in outs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert all((o.outputs.values > 0).all() and (np.diff(o.outputs.values) <= 0).all() for o in outs)
    assert (ref > 0).sum(1).min() > 0  # the check compares weights, not empty vectors


def test_top_k_and_threshold(eager: LLM) -> None:
    [full] = eager.encode(TEXTS[:1], pooling_task="sparse")
    [top] = eager.encode(TEXTS[:1], pooling_task="sparse", pooling_params=PoolingParams(sparse_top_k=3))
    assert top.outputs.indices.tolist() == full.outputs.indices[:3].tolist()
    cut = float(full.outputs.values[len(full.outputs.values) // 2])
    [above] = eager.encode(TEXTS[:1], pooling_task="sparse", pooling_params=PoolingParams(sparse_threshold=cut))
    assert (above.outputs.values > cut).all() and len(above.outputs.values) < len(full.outputs.values)
    with pytest.raises(InvalidRequestError) as raised:
        eager.encode(TEXTS[:1], pooling_task="embed", pooling_params=PoolingParams(sparse_top_k=3))
    assert raised.value.param == "sparse_top_k"


def test_compiled_equals_eager_and_the_encoder_still_embeds(eager: LLM, splade: Path) -> None:
    compiled = LLM(str(splade), dtype="float32", quantization=None)
    assert compiled.stats()["compiles_after_ready"] == 0
    for a, b in zip(compiled.encode(TEXTS, pooling_task="sparse"), eager.encode(TEXTS, pooling_task="sparse")):
        vocab = int(max(a.outputs.indices.max(), b.outputs.indices.max())) + 1
        np.testing.assert_allclose(dense(a.outputs, vocab), dense(b.outputs, vocab), atol=1e-4)
    assert compiled.stats()["compiles_after_ready"] == 0
    from transformers import BertModel

    encoder = BertModel.from_pretrained(str(splade), add_pooling_layer=False).eval()
    from transformers import AutoTokenizer

    enc = AutoTokenizer.from_pretrained(str(splade))(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        ref = encoder(**enc).last_hidden_state[0].mean(0)
    got = eager.embed(TEXTS[:1], pooling_params=PoolingParams(normalize=False))[0].outputs.embedding
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def server(splade: Path) -> Iterator[RunningServer]:
    with RunningServer(str(splade), enforce_eager=True, dtype="float32") as running:
        yield running.wait_ready()


def test_pooling_route_returns_ids_weights_and_tokens(server: RunningServer, eager: LLM) -> None:
    body = {"input": TEXTS[:2], "task": "sparse", "sparse_top_k": 5}
    response = httpx.post(f"{server.url}/pooling", json=body).json()
    for item, ref in zip(response["data"], eager.encode(TEXTS[:2], pooling_task="sparse")):
        data = item["data"]
        assert data["indices"] == ref.outputs.indices[:5].tolist()
        np.testing.assert_allclose(data["values"], ref.outputs.values[:5], atol=1e-5)
        assert data["tokens"] == eager.engine.runner.tokenizer.token_strings(data["indices"])
    check_error(httpx.post(f"{server.url}/pooling", json={**body, "sparse_top_k": 0}), 400, "sparse_top_k")
    check_error(httpx.post(f"{server.url}/pooling", json={"input": "a", "task": "embed", "sparse_threshold": 1}),
                400, "sparse_threshold")
    assert "sparse" in httpx.get(f"{server.url}/v1/models").json()["data"][0]["tasks"]


def test_embeddings_route_adds_sparse_weights_from_the_same_forward(server: RunningServer, eager: LLM) -> None:
    """A SPLADE model on /v1/embeddings with return_sparse: its mean-pooled vector and its lexical
    weights; it has no multi-vector head, so return_multi_vector is a 400 naming the field."""
    body = {"input": TEXTS[:3], "return_sparse": True, "sparse_threshold": 0.1}
    data = httpx.post(f"{server.url}/v1/embeddings", json=body).json()["data"]
    sparse = eager.encode(TEXTS[:3], pooling_task="sparse", pooling_params=PoolingParams(sparse_threshold=0.1))
    for item, ref, vector in zip(data, sparse, eager.embed(TEXTS[:3]), strict=True):
        np.testing.assert_allclose(item["embedding"], vector.outputs.data, atol=1e-5)
        assert item["sparse_embedding"]["indices"] == ref.outputs.indices.tolist()
        np.testing.assert_allclose(item["sparse_embedding"]["values"], ref.outputs.values, atol=1e-5)
        assert "multi_vector" not in item
    check_error(httpx.post(f"{server.url}/v1/embeddings", json={"input": "a", "return_multi_vector": True}), 400,
                "return_multi_vector")
