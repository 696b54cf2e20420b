"""EmbeddingGemma's layout against transformers and sentence-transformers: a tiny bidirectional
Gemma3TextModel (GQA, q/k norms, sliding and full layers, two RoPE bases; a window shorter than
the texts) saved by transformers, MEAN pooling, two Dense modules and Normalize, with query and
document prompts. Hidden states equal transformers'; vectors equal sentence-transformers'
encode(prompt_name=...), in mixed-length batches, eager and compiled, with no compile after ready."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ember import LLM, PoolingParams
from tests.entrypoints.server_harness import make_texts
from tests.tiny_models import EMBEDDING_GEMMA_PROMPTS, build_tiny_embedding_gemma

TEXTS = [*make_texts(7, seed=9, max_words=40), "a"]


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_embedding_gemma(tmp_path_factory.mktemp("tiny-embeddinggemma"))


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "compiled"])
def test_embedding_gemma_equals_transformers_and_sentence_transformers(gemma: Path, eager: bool) -> None:
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, Gemma3TextModel

    llm = LLM(str(gemma), dtype="float32", enforce_eager=eager, quantization=None)
    info = llm.model_info
    assert (info.architecture, info.pooling_type, info.embedding_dimension) == ("Gemma3TextModel", "MEAN", 32)
    assert info.prompts == EMBEDDING_GEMMA_PROMPTS
    tok = AutoTokenizer.from_pretrained(str(gemma))
    model = Gemma3TextModel.from_pretrained(str(gemma)).eval()
    hidden = llm.encode(TEXTS, pooling_task="token_embed", pooling_params=PoolingParams(normalize=False))
    for ours, text in zip(hidden, TEXTS, strict=True):
        with torch.no_grad():
            ref = model(**tok(text, return_tensors="pt")).last_hidden_state[0].numpy()
        assert ours.outputs.data.shape == ref.shape
        np.testing.assert_allclose(ours.outputs.data, ref, atol=1e-4)
    assert max(len(h.outputs.data) for h in hidden) > 8, "texts must be longer than the sliding window"
    st = SentenceTransformer(str(gemma), device="cpu")
    for name in ("query", "document"):
        ref = st.encode(TEXTS, prompt_name=name, convert_to_numpy=True)
        ours = np.stack([o.outputs.data for o in llm.embed(TEXTS, prompt_name=name)])
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    plain = np.stack([o.outputs.data for o in llm.embed(TEXTS)])
    np.testing.assert_allclose(plain, st.encode(TEXTS, convert_to_numpy=True), atol=1e-4)
    assert llm.stats()["compiles_after_ready"] == 0
