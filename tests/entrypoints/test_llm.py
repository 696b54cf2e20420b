"""Offline API behaviour on a tiny model: order, inputs, pooling options, outputs."""

from __future__ import annotations

import numpy as np
import pytest

from ember import LLM, PoolingParams


@pytest.fixture(scope="module")
def llm(tiny_bert):
    return LLM(str(tiny_bert), dtype="float32", enforce_eager=True, max_num_seqs=4)


def test_outputs_keep_input_order_across_batches(llm):
    texts = [("quick " * n).strip() for n in (9, 1, 5, 3, 12, 2, 7, 1, 30, 4)]
    outputs = llm.embed(texts)
    for text, out in zip(texts, outputs):
        assert out.prompt_token_ids == llm.embed(text)[0].prompt_token_ids
        np.testing.assert_allclose(out.outputs.data, llm.embed(text)[0].outputs.data, atol=1e-6)
    assert llm.stats()["num_batches"] > 1


def test_token_id_prompts_equal_text_prompts(llm):
    text_out = llm.embed("the quick brown fox")[0]
    ids = text_out.prompt_token_ids
    for prompt in (ids, [ids], {"prompt_token_ids": ids}):
        out = llm.embed(prompt)[0]
        assert out.prompt_token_ids == ids
        np.testing.assert_allclose(out.outputs.data, text_out.outputs.data, atol=1e-6)


def test_normalize_and_dimensions(llm):
    raw = llm.embed("hello world", pooling_params=PoolingParams(normalize=False))[0].outputs.data
    normed = llm.embed("hello world")[0].outputs.data
    assert abs(np.linalg.norm(normed) - 1) < 1e-5
    np.testing.assert_allclose(normed, raw / np.linalg.norm(raw), atol=1e-6)
    short = llm.embed("hello world", pooling_params=PoolingParams(dimensions=8))[0]
    assert short.outputs.hidden_size == 8 and len(short.outputs.embedding) == 8
    np.testing.assert_allclose(short.outputs.data, raw[:8] / np.linalg.norm(raw[:8]), atol=1e-6)


def test_token_embed_task_returns_one_vector_per_token(llm):
    out = llm.encode("quick brown fox", pooling_task="token_embed")[0]
    assert out.outputs.data.shape == (len(out.prompt_token_ids), llm.model_info.hidden_size)


def test_stats_and_compilation_times_without_compile(llm):
    stats = llm.stats()
    assert stats["compiles_after_ready"] == 0 and stats["is_compiled"] is False
    assert llm.compilation_times.encoder == 0 and llm.compilation_times.language_model == 0


def test_progress_bar_only_on_request(llm, capsys):
    quiet = llm.embed(["one", "two", "three"])
    assert "Embedding" not in capsys.readouterr().err
    shown = llm.embed(["one", "two", "three"], use_tqdm=True)
    err = capsys.readouterr().err
    assert "Embedding" in err and "3/3" in err
    np.testing.assert_array_equal(np.stack([o.outputs.data for o in quiet]),
                                  np.stack([o.outputs.data for o in shown]))
