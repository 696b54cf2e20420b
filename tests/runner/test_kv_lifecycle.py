"""The KV-cache branch of the startup lifecycle, on a tiny Llama: compile inside the profiling run,
cache sized from the budget, zero compiles after ready under mixed prefill/decode traffic, and the
seed reset after warm-up (the same guarantees as the encoder branch)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ember import LLM, SamplingParams
from ember.config import EngineConfig
from ember.errors import OutOfMemoryBudgetError
from ember.runner.decoder_runner import DecoderModelRunner
from ember.runner.worker import Worker
from tests.conftest import check_close
from tests.rng import assert_states_equal, current_states, fresh_states

MAX_SEQS, MAX_LEN, BLOCK = 4, 64, 16
BLOCK_BYTES = 2 * 2 * BLOCK * 2 * 8 * 4  # k/v x layers x block x kv_heads x head_dim x fp32
KWARGS = dict(dtype="float32", max_num_seqs=MAX_SEQS, max_model_len=MAX_LEN, max_num_batched_tokens=128,
              block_size=BLOCK)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("compile-cache"))


@pytest.fixture(scope="module")
def compiled(tiny_llama, cache_dir):
    """A compiled engine with a cache of 9 usable blocks (so traffic preempts), and the RNG state
    and first draw right after it became ready."""
    torch.manual_seed(999)  # whatever the caller did before must not matter
    random.seed(999)
    np.random.seed(999)
    llm = LLM(str(tiny_llama), seed=7, compile_cache_dir=cache_dir, kv_cache_memory=10 * BLOCK_BYTES, **KWARGS)
    at_ready = current_states()
    return llm, at_ready, torch.rand(4)


@pytest.fixture(scope="module")
def eager(tiny_llama):
    return LLM(str(tiny_llama), enforce_eager=True, **KWARGS)


def test_compile_happens_inside_the_profiling_run(tiny_llama, cache_dir):
    worker = Worker(EngineConfig.from_kwargs(str(tiny_llama), compile_cache_dir=cache_dir, **KWARGS))
    worker.init_device()
    runner = worker.load_model()
    assert isinstance(runner, DecoderModelRunner) and runner.info.has_kv_cache
    assert runner.counter.total == 0
    worker.profile_memory()
    after_profiling = runner.counter.total
    assert after_profiling >= 1, "the profiling run must compile the prefill graph"
    worker.init_kv_cache()
    assert runner.counter.total == after_profiling and runner.num_kv_blocks > 1
    times = worker.compile_or_warm_up()
    assert runner.counter.total > after_profiling, "compile_or_warm_up compiles the decode graph"
    assert times.language_model > 0 and times.encoder == 0


def test_kv_cache_size_follows_the_budget(tiny_llama):
    sizes = []
    for blocks in (7, 14):
        llm = LLM(str(tiny_llama), enforce_eager=True, kv_cache_memory=blocks * BLOCK_BYTES, **KWARGS)
        assert llm.engine.runner.kv_spec.block_bytes == BLOCK_BYTES
        sizes.append(llm.engine.runner.num_kv_blocks)
        assert tuple(llm.engine.runner.kv_cache.shape) == (2, 2, blocks, BLOCK, 2, 8)
    assert sizes == [7, 14]


def test_too_small_a_kv_budget_fails_at_startup_naming_the_flag(tiny_llama):
    with pytest.raises(OutOfMemoryBudgetError) as info:
        LLM(str(tiny_llama), enforce_eager=True, kv_cache_memory=2 * BLOCK_BYTES, **KWARGS)
    message = str(info.value)
    assert f"needs at least {5 * BLOCK_BYTES / 1024:.1f} KiB" in message  # 4 blocks per sequence + the null block
    assert f"only {2 * BLOCK_BYTES / 1024:.1f} KiB is available" in message
    assert "needs at least" in message and "available" in message and "--kv-cache-memory" in message
    assert "--max-model-len" in message


def _prompts(batch: int, length: int, offset: int) -> list[list[int]]:
    return [[4 + (offset + i * 7 + j) % 300 for j in range(max(1, length - i % 3))] for i in range(batch)]


def test_mixed_traffic_after_ready_never_compiles_and_matches_eager(compiled, eager):
    llm = compiled[0]
    assert llm.stats()["is_compiled"] and llm.stats()["compiles_after_ready"] == 0
    for batch in (1, 2, 3, 4, 7):
        for length in (1, 2, 5, 17, 33, 40):
            prompts = _prompts(batch, length, batch * length)
            params = [SamplingParams(temperature=0, max_tokens=1 + (i * 5 + length) % (MAX_LEN - length),
                                     ignore_eos=True) for i in range(batch)]
            ours = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
            assert ours == [o.outputs[0].token_ids for o in eager.generate(prompts, params)], (batch, length)
    assert llm.engine.generation.scheduler.num_preemptions > 0, "traffic should have preempted in a 9-block cache"
    for batch in (1, 3, 4, 9):
        prompts = _prompts(batch, 30, batch)
        check_close(ours=np.stack([o.outputs.data for o in llm.embed(prompts)]),
                    ref=np.stack([o.outputs.data for o in eager.embed(prompts)]),
                    name_ours="compiled", name_ref="eager", tol=1e-5)
    stats = llm.stats()
    assert stats["compiles_after_ready"] == 0, stats
    assert stats["eager_fallbacks"] == 0, stats


def test_rng_state_at_ready_equals_a_freshly_seeded_one_compiled(compiled):
    _, at_ready, first_draw = compiled
    expected = fresh_states(7)
    assert_states_equal(expected, at_ready)
    assert torch.equal(first_draw, torch.rand(4))


def test_rng_state_at_ready_equals_a_freshly_seeded_one_eager(tiny_llama):
    torch.manual_seed(999)
    random.seed(999)
    LLM(str(tiny_llama), seed=7, enforce_eager=True, **KWARGS)
    at_ready = current_states()
    first_draw = torch.rand(4)
    assert_states_equal(fresh_states(7), at_ready)
    assert torch.equal(first_draw, torch.rand(4))
