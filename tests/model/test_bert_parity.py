"""Ember's own BERT / XLM-R code vs transformers on the same tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ember import LLM
from tests.conftest import check_close, transformers_pooled
from tests.texts import varied_texts


@pytest.mark.parametrize(
    ("fixture", "pooling", "normalize"),
    [("tiny_bert", "MEAN", True), ("tiny_bert_cls", "CLS", False), ("tiny_xlmr", "CLS", False),
     ("tiny_xlmr_mean", "MEAN", True), ("tiny_distilbert", "MEAN", True),
     ("tiny_mpnet", "MEAN", True)],
)
def test_tiny_model_matches_transformers(request, fixture, pooling, normalize):
    folder = request.getfixturevalue(fixture)
    texts = [t for t in varied_texts(60) if t.strip()]
    llm = LLM(str(folder), dtype="float32", enforce_eager=True)
    assert llm.model_info.pooling_type == pooling and llm.model_info.normalize == normalize
    ours = np.stack([o.outputs.data for o in llm.embed(texts, truncate_prompt_tokens=-1)])
    ref = transformers_pooled(folder, texts, pooling, normalize)
    min_cos = check_close(ours=ours, ref=ref, name_ours="ember", name_ref="transformers", tol=1e-4, label=fixture)
    print(f"{fixture}: min cosine {min_cos:.7f}, max abs diff {np.abs(ours - ref).max():.2e}")


@pytest.mark.parametrize("pooling", ["CLS", "MEAN", "MAX", "LAST"])
def test_pooler_config_override(tiny_bert, pooling):
    llm = LLM(str(tiny_bert), dtype="float32", enforce_eager=True, pooler_config={"pooling_type": pooling,
                                                                                  "normalize": False})
    text = "quick brown fox"
    ours = llm.embed(text)[0].outputs.data
    from transformers import AutoModel

    ids = torch.tensor([llm.embed(text)[0].prompt_token_ids])
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(tiny_bert).eval()(input_ids=ids).last_hidden_state[0]
    ref = {"CLS": hidden[0], "MEAN": hidden.mean(0), "MAX": hidden.max(0).values, "LAST": hidden[-1]}[pooling]
    check_close(ours=ours, ref=ref.numpy(), name_ours="ember", name_ref="transformers", tol=1e-5, label=pooling)


def test_distilbert_cross_encoder_compiled_equals_eager(tmp_path):
    """DistilBERT compiles as a whole model (it reads no segment ids), even for pairs, whose
    tokenizer still gives them: they must not reach the graph."""
    from tests.tiny_models import build_tiny_classifier

    texts = ["quick brown fox", "search engine vector " * 10, "a"]
    plan = {"dtype": "float32", "max_num_seqs": 4}
    path = str(build_tiny_classifier(tmp_path, "distilbert", 1))
    ranker, ranker_eager = LLM(path, **plan), LLM(path, enforce_eager=True, **plan)
    scores = [o.outputs.score for o in ranker.score(texts[0], texts)]
    np.testing.assert_allclose(scores, [o.outputs.score for o in ranker_eager.score(texts[0], texts)], atol=1e-5)
    assert ranker.stats()["is_compiled"] and ranker.stats()["compiles_after_ready"] == 0


@pytest.mark.parametrize("scope", ["model", "layer"])
def test_mpnet_compiled_equals_eager(tiny_mpnet, scope):
    """The relative position bias folded into a [batch, heads, seq, seq] mask: one compiled layer
    takes it as BERT's takes its key mask; the whole model computes it in the graph."""
    texts = ["quick brown fox", "search engine vector " * 12, "a", "the lazy dog jumps"]
    plan = {"dtype": "float32", "max_num_seqs": 4, "compile_scope": scope}
    compiled = LLM(str(tiny_mpnet), **plan)
    eager = LLM(str(tiny_mpnet), enforce_eager=True, dtype="float32", max_num_seqs=4)
    for batch in (texts[:1], texts[1:3], texts):
        np.testing.assert_allclose(np.stack([o.outputs.data for o in compiled.embed(batch)]),
                                   np.stack([o.outputs.data for o in eager.embed(batch)]), atol=1e-5)
    assert compiled.stats()["is_compiled"] and compiled.stats()["compiles_after_ready"] == 0
