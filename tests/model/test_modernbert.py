"""ModernBERT against transformers on tiny random checkpoints saved by transformers' own classes:
three layers (global, local, global) with a local window shorter than the texts, so that the
sliding-window mask and both RoPE bases are exercised. Hidden states, sentence-transformers'
pooled vectors and the sequence-classification head (CLS and mean pooling), in mixed-length
batches, eager and compiled, with no compile after ready."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ember import LLM, PoolingParams
from tests.conftest import check_close
from tests.entrypoints.server_harness import make_texts
from tests.tiny_models import build_tiny_modernbert

TEXTS = [*make_texts(7, seed=5, max_words=40), "a"]
PAIRS = [("what is the capital of france", t) for t in TEXTS[:5]] + [("fox", "the quick brown fox jumps")]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_modernbert(tmp_path_factory.mktemp("tiny-modernbert"))


def reference_hidden(folder: Path, texts: list[str]) -> list[np.ndarray]:
    from transformers import AutoTokenizer, ModernBertModel

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = ModernBertModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return [model(**tok(text, return_tensors="pt")).last_hidden_state[0].numpy() for text in texts]


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_hidden_states_and_vectors_equal_transformers(embedder: Path, eager: bool) -> None:
    llm = LLM(str(embedder), dtype="float32", enforce_eager=eager, quantization=None)
    assert llm.model_info.architecture == "ModernBertModel"
    ref = reference_hidden(embedder, TEXTS)
    assert max(len(h) for h in ref) > 8 + 4, "texts must be longer than the local window"
    got = llm.encode(TEXTS, pooling_task="token_embed", pooling_params=PoolingParams(normalize=False))
    for ours, theirs in zip(got, ref, strict=True):
        assert ours.outputs.data.shape == theirs.shape
        np.testing.assert_allclose(ours.outputs.data, theirs, atol=1e-4)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(embedder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    ours = np.stack([o.outputs.data for o in llm.embed(TEXTS)])
    check_close(ours=ours, ref=st, name_ours="ember", name_ref="sentence-transformers", tol=1e-4, label="modernbert")
    np.testing.assert_allclose(ours, st, atol=1e-4)
    assert llm.stats()["compiles_after_ready"] == 0


def reference_logits(folder: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    from transformers import AutoTokenizer, ModernBertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(folder))
    model = ModernBertForSequenceClassification.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return np.stack([model(**tok(a, b, return_tensors="pt")).logits[0].numpy() for a, b in pairs])


@pytest.mark.parametrize(("num_labels", "pooling", "eager"), [(1, "mean", False), (3, "cls", True)])
def test_sequence_classification_head_equals_transformers(tmp_path: Path, num_labels: int, pooling: str,
                                                          eager: bool) -> None:
    folder = build_tiny_modernbert(tmp_path / "mb-cls", num_labels=num_labels, classifier_pooling=pooling)
    llm = LLM(str(folder), dtype="float32", enforce_eager=eager, quantization=None)
    ref = reference_logits(folder, PAIRS)
    assert ref.std() > 0.05, "random weights too flat to compare"
    got = np.array([o.outputs.probs for o in llm.classify(PAIRS, use_activation=False)])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    if num_labels == 1:
        scores = [o.outputs.score for o in llm.score(PAIRS[0][0], [b for _, b in PAIRS[:5]])]
        np.testing.assert_allclose(scores, torch.sigmoid(torch.tensor(ref[:5, 0])).numpy(), atol=1e-5)
    assert llm.stats()["compiles_after_ready"] == 0


def test_the_default_runs_int8_where_the_cpu_has_a_kernel(embedder: Path) -> None:
    """ModernBERT gets int8 by default like BERT (its layers differ, so the whole int8 model is one
    graph); the gate is relaxed here because random tiny weights say nothing about a real model's."""
    from ember.kernels import int8_mm, library
    from ember.runner.device import cpu_flags
    from ember.runner.int8 import choose_kernel, resolve_quantization

    llm = LLM(str(embedder), quantization_min_cosine=0.5, max_num_seqs=8)
    int8 = resolve_quantization("auto", "auto", False, choose_kernel("auto", cpu_flags(), int8_mm.planned_build() == library.AVX2)) == "int8"
    stats = llm.stats()
    assert stats["quantization"] == ("int8" if int8 else None) and stats["compiles_after_ready"] == 0
    reference = LLM(str(embedder), dtype="float32", enforce_eager=True, quantization=None)
    ours = np.stack([o.outputs.data for o in llm.embed(TEXTS)])
    ref = np.stack([o.outputs.data for o in reference.embed(TEXTS)])
    check_close(ours=ours, ref=ref, name_ours="default", name_ref="float32", tol=0.05, label="modernbert int8")
    assert stats["compiles_after_ready"] == llm.stats()["compiles_after_ready"] == 0
