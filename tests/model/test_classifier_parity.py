"""Cross-encoders and classifiers (BERT, RoBERTa, XLM-R; 1 and 3 labels) against transformers and
sentence-transformers' CrossEncoder on the same tiny random checkpoints, in float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ember import LLM, CrossEncoder
from ember.errors import InvalidRequestError, UnsupportedModelError
from tests.tiny_models import CLASSIFIER_KINDS, WORDS, build_tiny_classifier, write_json

TOL = 1e-4
QUERY = "quick brown fox search"
DOCUMENTS = [
    "the lazy dog",
    "search engine vector embedding text model query document",
    "hello",
    "the quick brown fox jumps over the lazy dog " * 3,
    " ".join(WORDS[:90] * 2),  # with the query, past the 128-token limit: cut longest first
    "paris france london night day",
]
PAIRS = [(QUERY, d) for d in DOCUMENTS] + [("python code function", "return value data"), ("a", "b")]


@pytest.fixture(scope="module", params=[(k, n) for k in CLASSIFIER_KINDS for n in (1, 3)],
                ids=lambda p: f"{p[0]}-{p[1]}label")
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    kind, num_labels = request.param
    return build_tiny_classifier(tmp_path_factory.mktemp(f"{kind}-{num_labels}"), kind, num_labels), num_labels


def reference_logits(path: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """transformers, one pair at a time (no padding), truncated as CrossEncoder does."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for a, b in pairs:
            enc = tok(a, b, truncation=True, max_length=128, return_tensors="pt")
            rows.append(model(**enc).logits[0].numpy())
    return np.stack(rows)


def test_logits_equal_transformers_single_pairs_and_mixed_batches(checkpoint: tuple[Path, int]) -> None:
    path, num_labels = checkpoint
    llm = LLM(str(path), dtype="float32", enforce_eager=True)
    assert llm.model_info.tasks == (("classify", "score") if num_labels == 1 else ("classify",))
    ref = reference_logits(path, PAIRS)
    assert ref.std() > 0.05, "random weights too flat to compare"
    batch = llm.classify(PAIRS, use_activation=False, truncate_prompt_tokens=-1)
    np.testing.assert_allclose(np.array([o.outputs.probs for o in batch]), ref, atol=TOL)
    assert [o.truncated for o in batch] == [i == 4 for i in range(len(PAIRS))]
    for pair, expected in zip(PAIRS[:3], ref[:3]):
        single = llm.classify([pair], use_activation=False, truncate_prompt_tokens=-1)[0]
        np.testing.assert_allclose(single.outputs.probs, expected, atol=TOL)
    probs = np.array([o.outputs.probs for o in llm.classify(PAIRS, truncate_prompt_tokens=-1)])
    expected = torch.sigmoid(torch.tensor(ref)) if num_labels == 1 else torch.softmax(torch.tensor(ref), -1)
    np.testing.assert_allclose(probs, expected.numpy(), atol=TOL)
    labels = llm.model_info.labels
    assert [o.label for o in llm.classify(PAIRS, truncate_prompt_tokens=-1)] == [labels[i] for i in ref.argmax(1)]


def test_cross_encoder_drop_in_equals_sentence_transformers(checkpoint: tuple[Path, int]) -> None:
    from sentence_transformers import CrossEncoder as ReferenceCrossEncoder

    path, num_labels = checkpoint
    reference = ReferenceCrossEncoder(str(path), device="cpu")
    ours = CrossEncoder(str(path), dtype="float32", enforce_eager=True)
    expected = reference.predict(PAIRS)
    got = ours.predict(PAIRS)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=TOL)
    np.testing.assert_allclose(ours.predict(PAIRS[0]), reference.predict(PAIRS[0]), atol=TOL)
    np.testing.assert_allclose(ours.predict(PAIRS, apply_softmax=True), reference.predict(PAIRS, apply_softmax=True),
                               atol=TOL)
    assert isinstance(ours.predict(PAIRS, convert_to_tensor=True), torch.Tensor)
    if num_labels == 1:
        theirs = reference.rank(QUERY, DOCUMENTS, top_k=4, return_documents=True)
        mine = ours.rank(QUERY, DOCUMENTS, top_k=4, return_documents=True)
        assert [r["corpus_id"] for r in mine] == [r["corpus_id"] for r in theirs]
        assert [r["text"] for r in mine] == [r["text"] for r in theirs]
        np.testing.assert_allclose([r["score"] for r in mine], [r["score"] for r in theirs], atol=TOL)


def test_score_and_rerank_offline(checkpoint: tuple[Path, int]) -> None:
    path, num_labels = checkpoint
    llm = LLM(str(path), dtype="float32", enforce_eager=True)
    if num_labels != 1:
        with pytest.raises(InvalidRequestError, match="serves: classify") as err:
            llm.score(QUERY, DOCUMENTS)
        assert err.value.param == "task"
        return
    expected = torch.sigmoid(torch.tensor(reference_logits(path, [(QUERY, d) for d in DOCUMENTS])[:, 0])).numpy()
    scores = [o.outputs.score for o in llm.score(QUERY, DOCUMENTS, truncate_prompt_tokens=-1)]  # 1:N
    np.testing.assert_allclose(scores, expected, atol=TOL)
    pairwise = llm.score(DOCUMENTS[:2], DOCUMENTS[2:4])  # N:N
    assert len(pairwise) == 2
    ranked = llm.rerank(QUERY, DOCUMENTS, top_n=3, truncate_prompt_tokens=-1)
    assert [r.index for r in ranked.results] == list(np.argsort(-expected, kind="stable")[:3])
    assert ranked.num_tokens > 0
    with pytest.raises(InvalidRequestError) as err:  # 1:N with a mismatched N:N
        llm.score(DOCUMENTS[:2], DOCUMENTS[:3])
    assert err.value.param == "text_2"
    with pytest.raises(InvalidRequestError) as err:
        llm.rerank(QUERY, DOCUMENTS, top_n=-1)
    assert err.value.param == "top_n"


def test_multi_label_uses_sigmoid(tmp_path: Path) -> None:
    path = build_tiny_classifier(tmp_path, "bert", 3, problem_type="multi_label_classification")
    llm = LLM(str(path), dtype="float32", enforce_eager=True)
    ref = reference_logits(path, PAIRS[:3])
    probs = np.array([o.outputs.probs for o in llm.classify(PAIRS[:3])])
    np.testing.assert_allclose(probs, torch.sigmoid(torch.tensor(ref)).numpy(), atol=TOL)


def test_single_texts_and_bad_inputs(tmp_path: Path, tiny_bert: Path) -> None:
    path = build_tiny_classifier(tmp_path, "bert", 3)
    llm = LLM(str(path), dtype="float32", enforce_eager=True)
    out = llm.classify("hello world")[0]
    assert out.outputs.num_classes == 3 and abs(sum(out.outputs.probs) - 1) < 1e-5
    with pytest.raises(InvalidRequestError, match="max_model_len") as err:  # too long, no truncation asked
        llm.classify([(QUERY, " ".join(WORDS * 2))])
    assert err.value.param == "input"
    with pytest.raises(InvalidRequestError, match="serves: classify") as err:
        llm.embed("hello")
    assert err.value.param == "task"
    embedder = LLM(str(tiny_bert), dtype="float32", enforce_eager=True)
    with pytest.raises(InvalidRequestError, match="serves: embed, token_embed, score"):
        embedder.classify("hello")
    with pytest.raises(InvalidRequestError, match="text pair"):
        embedder.embed([("a", "b")])
    with pytest.raises(InvalidRequestError, match="not a cross-encoder"):
        CrossEncoder(str(tiny_bert), enforce_eager=True)


def test_bi_encoder_scores_by_cosine(tiny_bert: Path) -> None:
    llm = LLM(str(tiny_bert), dtype="float32", enforce_eager=True)
    texts = ["quick brown fox", "lazy dog", "search engine"]
    vectors = np.stack([o.outputs.data for o in llm.embed(texts)])
    scores = [o.outputs.score for o in llm.score(texts[0], texts[1:])]
    expected = [float(vectors[0] @ v / np.linalg.norm(vectors[0]) / np.linalg.norm(v)) for v in vectors[1:]]
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    assert [r.index for r in llm.rerank(texts[0], texts[1:]).results] == list(np.argsort(expected)[::-1])


def test_a_head_ember_does_not_run_is_refused(tmp_path: Path) -> None:
    path = build_tiny_classifier(tmp_path, "bert", 2)
    config = (path / "config.json").read_text()
    write_json(path / "config.json", {**__import__("json").loads(config), "architectures": ["BertForTokenClassification"]})
    with pytest.raises(UnsupportedModelError, match="BertForTokenClassification") as err:
        LLM(str(path), enforce_eager=True)
    assert "BertForSequenceClassification" in str(err.value)  # lists what is supported


def test_the_int8_gate_measures_scores(tmp_path: Path) -> None:
    from ember.runner.int8 import QuantizationQualityError

    path = build_tiny_classifier(tmp_path, "bert", 1)
    kwargs = {"quantization": "int8", "enforce_eager": True, "compile_cache_dir": ""}
    llm = LLM(str(path), quantization_min_cosine=0.5, **kwargs)
    measured = llm.stats()["quantization_min_cosine_measured"]
    assert llm.stats()["quantization"] == "int8" and 0.5 <= measured < 1
    float_scores = np.array([o.outputs.score for o in LLM(str(path), dtype="float32", enforce_eager=True).score(
        QUERY, DOCUMENTS[:4])])
    int8_scores = np.array([o.outputs.score for o in llm.score(QUERY, DOCUMENTS[:4])])
    assert np.abs(int8_scores - float_scores).max() < 0.05  # the probe set's bar, loosely on other inputs
    with pytest.raises(QuantizationQualityError, match="1 - largest score difference against float32"):
        LLM(str(path), quantization_min_cosine=1.0, **kwargs)


def test_the_score_task_on_an_embedding_model_points_at_score(tiny_bert: Path) -> None:
    llm = LLM(str(tiny_bert), dtype="float32", enforce_eager=True)
    with pytest.raises(InvalidRequestError, match=r"LLM\.score") as err:
        llm.encode(["a"], pooling_task="score")
    assert err.value.param == "task"
