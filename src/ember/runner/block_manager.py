"""BlockManager: pure-Python bookkeeping of KV-cache blocks (no torch, unit-testable in microseconds).

Block 0 is the null block (see kv_cache.py) and is never handed out.
"""

from __future__ import annotations

import math
from collections import deque


class BlockManager:
    """Pure bookkeeping of free blocks; a sequence's blocks are its block table."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free: deque[int] = deque(range(1, num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return math.ceil(num_tokens / self.block_size)

    def can_allocate(self, num_tokens: int) -> bool:
        return self.blocks_needed(num_tokens) <= len(self.free)

    def allocate(self, num_tokens: int) -> list[int]:
        assert self.can_allocate(num_tokens), (num_tokens, len(self.free))
        return [self.free.popleft() for _ in range(self.blocks_needed(num_tokens))]

    def can_append(self, block_table: list[int], num_tokens: int) -> bool:
        """Whether a sequence of num_tokens tokens (the new one included) fits after growing."""
        return self.blocks_needed(num_tokens) <= len(block_table) + len(self.free)

    def append(self, block_table: list[int], num_tokens: int) -> None:
        """Grow block_table in place so that it holds num_tokens tokens."""
        while len(block_table) < self.blocks_needed(num_tokens):
            block_table.append(self.free.popleft())

    def release(self, block_table: list[int]) -> None:
        self.free.extend(block_table)
        block_table.clear()
