"""GenerationScheduler: continuous batching of prefill and decode. Pure bookkeeping, no torch.

Each step is either a prefill of waiting sequences (admitted while the padded-token budget, the
sequence cap and the free cache blocks allow) or one decode token for every running sequence.
When a running sequence needs a block and none is free, the newest running sequence is
preempted: its blocks are freed and it waits to be prefilled again (recomputation, as vLLM).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from ember.config import SchedulerConfig
from ember.engine.request import RequestStatus
from ember.engine.sequence import Sequence
from ember.runner.block_manager import BlockManager

StepKind = Literal["prefill", "decode"]


class GenerationScheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager, max_batched_tokens: int) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.blocks = blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[StepKind, list[Sequence]]:
        """The next step: prefill when waiting sequences fit, else decode of the running ones."""
        self._drop_cancelled()
        batch = self._admit()
        if batch:
            return "prefill", batch
        return "decode", self._grow_running()

    def _admit(self) -> list[Sequence]:
        batch: list[Sequence] = []
        longest = 0
        while self.waiting and len(self.running) + len(batch) < self.max_num_seqs:
            seq = self.waiting[0]
            new_longest = max(longest, seq.num_tokens)
            if batch and (len(batch) + 1) * new_longest > self.max_batched_tokens:
                break
            if not self.blocks.can_allocate(seq.num_tokens):
                break
            seq.block_table = self.blocks.allocate(seq.num_tokens)
            seq.status = RequestStatus.RUNNING
            batch.append(self.waiting.popleft())
            longest = new_longest
        self.running.extend(batch)
        return batch

    def _grow_running(self) -> list[Sequence]:
        """Make room for one more token in every running sequence, preempting the newest if needed."""
        batch: list[Sequence] = []
        for seq in list(self.running):
            if seq.status is not RequestStatus.RUNNING:
                continue  # preempted by an older sequence in this loop
            while not self.blocks.can_append(seq.block_table, seq.num_tokens):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            if seq.status is RequestStatus.RUNNING:
                self.blocks.append(seq.block_table, seq.num_tokens)
                batch.append(seq)
        return batch

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.release(seq.block_table)
        seq.status = RequestStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Free a sequence's blocks once it is finished or aborted."""
        if seq in self.running:
            self.running.remove(seq)
        self.blocks.release(seq.block_table)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in (*self.waiting, *self.running) if s.is_cancelled and s.is_cancelled()]:
            seq.status = RequestStatus.ABORTED  # nobody waits for it: no finish() call
            seq.finish_reason = "abort"
            if seq in self.waiting:
                self.waiting.remove(seq)
            self.finish(seq)
