"""Scheduler: pure bookkeeping of waiting requests into padded-token-budget batches. No torch."""

from __future__ import annotations

from collections import deque

from ember.config import SchedulerConfig
from ember.engine.request import PoolingRequest, RequestStatus


class Scheduler:
    """Forms batches around the oldest waiting request from requests of similar length.

    The oldest request always goes first (no starvation); the rest of the batch is filled with
    the requests in a look-ahead window whose lengths are nearest to it, while the padded cost
    (rows x longest row) stays within max_num_batched_tokens and rows within max_num_seqs.
    """

    def __init__(self, config: SchedulerConfig, max_num_batched_tokens: int) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        """The runner's resolved budget (the config's may be None: the model kind's default)."""
        self.window = max(4 * config.max_num_seqs, 256)
        self.waiting: deque[PoolingRequest] = deque()

    def add(self, request: PoolingRequest) -> None:
        self.waiting.append(request)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def schedule(self) -> list[PoolingRequest]:
        """Take the next batch off the queue (empty when nothing waits)."""
        window = [self.waiting.popleft() for _ in range(min(self.window, len(self.waiting)))]
        window = [r for r in window if not (r.is_cancelled and r.is_cancelled())]
        if not window:
            return []
        anchor_len = window[0].num_tokens
        order = sorted(range(len(window)), key=lambda i: (abs(window[i].num_tokens - anchor_len), i))
        chosen: set[int] = set()
        longest = 0
        for i in order:
            new_longest = max(longest, window[i].num_tokens)
            if chosen and (len(chosen) + 1) * new_longest > self.max_num_batched_tokens:
                continue
            chosen.add(i)
            longest = new_longest
            if len(chosen) == self.max_num_seqs:
                break
        self.waiting.extendleft(reversed([r for i, r in enumerate(window) if i not in chosen]))
        batch = [window[i] for i in sorted(chosen)]
        for r in batch:
            r.status = RequestStatus.RUNNING
        return batch
