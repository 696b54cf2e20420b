"""Ready means warm: zero compiles after ready, compiled == eager, seed reset after warm-up."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from ember import LLM
from tests.conftest import check_close

MAX_SEQS, MAX_LEN = 8, 64


@pytest.fixture(scope="module")
def engines(tiny_bert, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("compile-cache"))
    kwargs = dict(dtype="float32", max_num_seqs=MAX_SEQS, max_num_batched_tokens=MAX_SEQS * MAX_LEN)
    compiled = LLM(str(tiny_bert), compile_cache_dir=cache, **kwargs)
    eager = LLM(str(tiny_bert), enforce_eager=True, **kwargs)
    return compiled, eager


def _prompts(batch: int, length: int, offset: int) -> list[list[int]]:
    # token ids 10.. are ordinary vocabulary entries of the tiny tokenizer
    return [[10 + (offset + i + j) % 40 for j in range(max(1, length - i % 3))] for i in range(batch)]


def test_every_batch_size_and_length_after_ready_never_compiles(engines):
    compiled, eager = engines
    assert compiled.stats()["compiles_total"] >= 1 and compiled.stats()["compiles_after_ready"] == 0
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
    assert stats["eager_fallbacks"] == 0, stats


def test_compilation_times_reported(engines):
    compiled, eager = engines
    assert compiled.compilation_times.encoder > 0
    assert compiled.compilation_times.language_model == 0
    assert eager.compilation_times.encoder == 0 and eager.compilation_times.total == 0
    assert compiled.stats()["num_warmed_shapes"] >= 4


def _fresh_states(seed: int) -> tuple:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _assert_states_equal(expected: tuple, actual: tuple) -> None:
    assert expected[0] == actual[0], "python random state differs"
    for a, b in zip(expected[1], actual[1]):
        assert np.array_equal(np.asarray(a), np.asarray(b)), "numpy state differs"
    assert torch.equal(expected[2], actual[2]), "torch state differs"


@pytest.mark.parametrize("enforce_eager", [True, False], ids=["eager", "compiled"])
def test_rng_state_at_ready_equals_a_freshly_seeded_one(tiny_bert, enforce_eager):
    torch.manual_seed(999)  # whatever the caller did before must not matter
    random.seed(999)
    LLM(str(tiny_bert), dtype="float32", seed=7, enforce_eager=enforce_eager, max_num_seqs=4)
    at_ready = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    first_draw = torch.rand(4)
    expected = _fresh_states(7)
    _assert_states_equal(expected, at_ready)
    assert torch.equal(first_draw, torch.rand(4))


def test_readiness_is_logged_after_warm_up(tiny_bert, caplog):
    with caplog.at_level(logging.INFO, logger="ember"):
        LLM(str(tiny_bert), dtype="float32", enforce_eager=True, max_num_seqs=4)
    messages = [r.getMessage() for r in caplog.records]
    warm = next(i for i, m in enumerate(messages) if m.startswith("warming up"))
    ready = next(i for i, m in enumerate(messages) if m.startswith("ready:"))
    assert warm < ready
    assert "compile: encoder" in messages[ready] and "shapes" in messages[ready]
