"""GenerationScheduler and BlockManager: pure bookkeeping, no model."""

from __future__ import annotations

from ember.config import SchedulerConfig
from ember.engine.gen_scheduler import GenerationScheduler
from ember.engine.request import RequestStatus
from ember.engine.sequence import Sequence
from ember.params import SamplingParams
from ember.runner.block_manager import BlockManager


def _seq(i: int, n: int) -> Sequence:
    return Sequence(str(i), list(range(n)), "generate", params=SamplingParams(), max_tokens=100)


def test_block_manager_never_hands_out_the_null_block():
    blocks = BlockManager(5, 4)
    table = blocks.allocate(9)  # 3 blocks
    assert table == [1, 2, 3] and blocks.num_free_blocks == 1
    assert blocks.can_append(table, 16) and not blocks.can_append(table, 17)
    blocks.append(table, 13)
    assert table == [1, 2, 3, 4] and blocks.num_free_blocks == 0
    blocks.release(table)
    assert table == [] and blocks.num_free_blocks == 4


def test_prefill_admits_within_the_token_budget_and_sequence_cap():
    sched = GenerationScheduler(SchedulerConfig(max_num_seqs=3), BlockManager(100, 4), max_batched_tokens=30)
    for i, n in enumerate([10, 10, 10, 5]):
        sched.add(_seq(i, n))
    kind, batch = sched.schedule()
    assert kind == "prefill" and [s.request_id for s in batch] == ["0", "1", "2"]  # 3 x 10 <= 30
    kind, batch = sched.schedule()
    assert kind == "decode" and len(batch) == 3  # cap reached: the 4th waits
    assert all(s.status is RequestStatus.RUNNING for s in batch)


def test_decode_preempts_the_newest_when_blocks_run_out():
    sched = GenerationScheduler(SchedulerConfig(max_num_seqs=4), BlockManager(5, 4), max_batched_tokens=64)
    old, new = _seq(0, 8), _seq(1, 8)  # 2 blocks each: all 4 usable blocks
    sched.add(old)
    sched.add(new)
    assert sched.schedule() == ("prefill", [old, new])
    old.output_token_ids.append(1)  # 9 tokens: old needs a 3rd block
    new.output_token_ids.append(1)
    kind, batch = sched.schedule()
    assert kind == "decode" and batch == [old]
    assert new.status is RequestStatus.WAITING and sched.num_preemptions == 1 and list(sched.waiting) == [new]
    assert len(old.block_table) == 3 and new.block_table == []


def test_finish_and_cancel_free_blocks():
    blocks = BlockManager(9, 4)
    sched = GenerationScheduler(SchedulerConfig(), blocks, max_batched_tokens=64)
    a, b = _seq(0, 8), _seq(1, 8)
    cancelled = False
    b.is_cancelled = lambda: cancelled
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.finish(a)
    assert blocks.num_free_blocks == 6
    cancelled = True
    assert sched.schedule() == ("decode", [])
    assert blocks.num_free_blocks == 8 and not sched.has_unfinished_requests()
    assert b.finish_reason == "abort"
