"""Ready means warm: zero compiles after ready, compiled == eager, seed reset after warm-up."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from ember import LLM
from tests.conftest import check_close
from tests.rng import assert_states_equal, current_states, fresh_states
from tests.tiny_models import WORDS, build_tiny_classifier

MAX_SEQS, MAX_LEN = 8, 64


PLAN = dict(dtype="float32", max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_SEQS * MAX_LEN)


@pytest.fixture(scope="module")
def engines(tiny_bert):
    return LLM(str(tiny_bert), **PLAN), LLM(str(tiny_bert), enforce_eager=True, **PLAN)


def _prompts(batch: int, length: int, offset: int) -> list[list[int]]:
    # token ids 10.. are ordinary vocabulary entries of the tiny tokenizer
    return [[10 + (offset + i + j) % 40 for j in range(max(1, length - i % 3))] for i in range(batch)]


def test_every_batch_size_and_length_after_ready_never_compiles(engines):
    compiled, eager = engines
    assert compiled.stats()["is_compiled"] and compiled.stats()["compiles_after_ready"] == 0
    for batch in range(1, MAX_SEQS + 1):
        for length in (1, 2, 3, 5, 8, 13, 17, 31, 32, 33, 47, 63, MAX_LEN):
            prompts = _prompts(batch, length, batch * length)
            ours = np.stack([o.outputs.data for o in compiled.embed(prompts)])
            ref = np.stack([o.outputs.data for o in eager.embed(prompts)])
            check_close(ours=ours, ref=ref, name_ours="compiled", name_ref="eager", tol=1e-4,
                        label=f"batch {batch} len {length}")
    texts = ["hello", "quick brown fox " * 30, "a b c d e f g", "lazy dog"] * 5
    compiled.embed(texts, truncate_prompt_tokens=-1)
    compiled.encode(texts[:3], pooling_task="token_embed", truncate_prompt_tokens=-1)
    stats = compiled.stats()
    assert stats["compiles_after_ready"] == 0, stats


@pytest.fixture(scope="module")
def cross_encoders(tmp_path_factory):
    path = str(build_tiny_classifier(tmp_path_factory.mktemp("cross-encoder"), "bert", 1))
    return LLM(path, **PLAN), LLM(path, enforce_eager=True, **PLAN)


def test_cross_encoder_pairs_of_every_size_never_compile(cross_encoders):
    """Pairs (segment ids through the eager embeddings, then the compiled layers, then the head)
    at every batch size and length: compiled equals eager, and nothing compiles after ready."""
    compiled, eager = cross_encoders
    for batch in (1, 2, 3, 5, MAX_SEQS):
        for words in (1, 4, 11, 25, 40):
            pairs = [(" ".join(WORDS[i:i + 3]), " ".join(WORDS[i:i + words + i % 3])) for i in range(batch)]
            ours = [o.outputs.probs for o in compiled.classify(pairs, use_activation=False)]
            ref = [o.outputs.probs for o in eager.classify(pairs, use_activation=False)]
            np.testing.assert_allclose(ours, ref, atol=1e-4, err_msg=f"batch {batch}, {words} words")
    compiled.rerank("quick fox", [" ".join(WORDS[:n]) for n in (3, 30, 90)], truncate_prompt_tokens=-1)
    compiled.score(["a", "b"], ["c d", "e f g"])
    stats = compiled.stats()
    assert stats["is_compiled"] and stats["compiles_after_ready"] == 0 and stats["eager_fallbacks"] == 0, stats


def test_compilation_times_reported(engines):
    compiled, eager = engines
    assert compiled.compilation_times.encoder > 0
    assert compiled.compilation_times.language_model == 0
    assert eager.compilation_times.encoder == 0 and eager.compilation_times.total == 0
    assert compiled.stats()["num_warmed_shapes"] >= 4


@pytest.mark.parametrize("options", [{"enforce_eager": True}, {}, {"quantization": "int8"}, {"cross_encoder": True}],
                         ids=["eager", "compiled", "int8-calibrated-while-compiling", "cross-encoder-int8-eager"])
def test_rng_state_at_ready_equals_a_freshly_seeded_one(tiny_bert, options, tmp_path):
    torch.manual_seed(999)  # whatever the caller did before must not matter
    random.seed(999)
    path = str(tiny_bert)
    if options.pop("cross_encoder", False):  # calibrates on scores; eager keeps it short
        path = str(build_tiny_classifier(tmp_path, "bert", 1))
        options = {"enforce_eager": True, "quantization": "int8"}
    plan = {**PLAN, "dtype": "auto", "quantization_min_cosine": 0.5} if options.get("quantization") else PLAN
    LLM(path, seed=7, **options, **plan)
    at_ready = current_states()
    first_draw = torch.rand(4)
    expected = fresh_states(7)
    assert_states_equal(expected, at_ready)
    assert torch.equal(first_draw, torch.rand(4))


def test_readiness_is_logged_after_warm_up(tiny_bert, caplog):
    with caplog.at_level(logging.INFO, logger="ember"):
        LLM(str(tiny_bert), enforce_eager=True, **PLAN)
    messages = [r.getMessage() for r in caplog.records]
    warm = next(i for i, m in enumerate(messages) if m.startswith("warming up"))
    ready = next(i for i, m in enumerate(messages) if m.startswith("ready:"))
    assert warm < ready
    assert "compile: encoder" in messages[ready] and "shapes" in messages[ready]


def test_startup_objects_are_frozen_out_of_the_garbage_collector(tiny_bert):
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    LLM(str(tiny_bert), enforce_eager=True, **PLAN)
    assert gc.get_freeze_count() > 0


def test_compile_cache_warm_restart_and_corrupt_entries(tiny_bert, tmp_path, caplog):
    cache = tmp_path / "cache"
    first = LLM(str(tiny_bert), compile_cache_dir=str(cache), **PLAN)
    packages = list(cache.glob("*.pt2"))
    assert len(packages) == 1
    with caplog.at_level(logging.INFO, logger="ember"):
        second = LLM(str(tiny_bert), compile_cache_dir=str(cache), **PLAN)
    assert any("loaded from cache" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(first.embed("quick brown fox")[0].outputs.data,
                                  second.embed("quick brown fox")[0].outputs.data)
    packages[0].write_bytes(packages[0].read_bytes()[: packages[0].stat().st_size // 2])  # a partial write
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ember"):
        third = LLM(str(tiny_bert), compile_cache_dir=str(cache), **PLAN)
    assert any("ignoring unreadable compile cache entry" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(third.embed("quick brown fox")[0].outputs.data,
                               first.embed("quick brown fox")[0].outputs.data, atol=1e-6)
    assert third.stats()["compiles_after_ready"] == 0


def test_disk_cache_can_be_turned_off(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    llm = LLM(str(tiny_bert), compile_cache_dir="", **PLAN)
    assert llm.compilation_times.encoder > 0
    assert not list(tmp_path.rglob("*.pt2"))


def test_too_small_memory_budget_fails_at_startup_naming_the_flag(tiny_bert):
    from ember.errors import OutOfMemoryBudgetError

    with pytest.raises(OutOfMemoryBudgetError, match=r"needs \d+ MiB.*--memory-limit is 0 MiB.*raise --memory-limit"):
        LLM(str(tiny_bert), enforce_eager=True, memory_limit=1024)
