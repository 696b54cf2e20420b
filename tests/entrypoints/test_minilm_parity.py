"""The packaged all-MiniLM-L6-v2: Ember vs sentence-transformers on the same folder."""

from __future__ import annotations

import numpy as np
import pytest

from ember import LLM, SentenceTransformer
from tests.conftest import check_close
from tests.texts import varied_texts

TEXTS = varied_texts(320)


@pytest.fixture(scope="module")
def reference(minilm_path):
    from sentence_transformers import SentenceTransformer as RefST

    ref = RefST(str(minilm_path), device="cpu")
    return ref, ref.encode(TEXTS, batch_size=32, convert_to_numpy=True)


@pytest.fixture(scope="module")
def llm(minilm_path):
    return LLM(str(minilm_path), dtype="float32", enforce_eager=True)


def test_text_set_is_varied():
    assert len(TEXTS) >= 300
    assert any(not t.strip() for t in TEXTS) and any(len(t.split()) > 256 for t in TEXTS)
    assert any(ord(c) > 127 for t in TEXTS for c in t)


def test_embed_matches_sentence_transformers(llm, reference):
    _, ref = reference
    outputs = llm.embed(TEXTS, truncate_prompt_tokens=-1)
    ours = np.stack([o.outputs.data for o in outputs])
    min_cos = check_close(ours=ours, ref=ref, name_ours="ember", name_ref="sentence-transformers", tol=1e-4)
    print(f"min cosine {min_cos:.7f}, max abs diff {np.abs(ours - ref).max():.2e}")
    assert any(o.truncated for o in outputs) and not all(o.truncated for o in outputs)


def test_token_ids_match_the_reference_tokenizer(llm, reference):
    model, _ = reference
    outputs = llm.embed(TEXTS, truncate_prompt_tokens=-1)
    for text, out in zip(TEXTS, outputs):
        expected = model.tokenizer(text, truncation=True, max_length=256)["input_ids"]
        assert out.prompt_token_ids == expected, text[:60]


def test_drop_in_sentence_transformer_matches(minilm_path, reference):
    _, ref = reference
    model = SentenceTransformer(str(minilm_path), dtype="float32", enforce_eager=True)
    ours = model.encode(TEXTS, batch_size=32)
    assert isinstance(ours, np.ndarray) and ours.shape == ref.shape and ours.dtype == np.float32
    check_close(ours=ours, ref=ref, name_ours="ember-st", name_ref="sentence-transformers", tol=1e-4)
    single = model.encode(TEXTS[10])
    assert single.shape == (384,)
    np.testing.assert_allclose(single, ours[10], atol=1e-5)


def test_batch_invariance(llm):
    mixed = [t for t in TEXTS[:64]]
    together = llm.embed(mixed, truncate_prompt_tokens=-1)
    for i in (0, 7, 20, 41, 63):
        alone = llm.embed(mixed[i], truncate_prompt_tokens=-1)[0].outputs.data
        assert np.abs(alone - together[i].outputs.data).max() <= 1e-5, i
