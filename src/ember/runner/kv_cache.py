"""The paged KV cache: sizing from a memory budget, the tensor, and block bookkeeping.

The cache is one tensor [layers, 2 (k/v), num_blocks, block_size, kv_heads, head_dim]. Block 0
is never handed out: padding rows of a batch point at it, so their reads and writes are harmless.
"""

from __future__ import annotations

import logging
import math
import resource
from dataclasses import dataclass

import torch

from ember.errors import OutOfMemoryBudgetError

logger = logging.getLogger(__name__)

NULL_BLOCK = 0


@dataclass(frozen=True, slots=True)
class KVCacheSpec:
    """The shape of one cache block and how many a full-length sequence needs."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    dtype: torch.dtype
    max_model_len: int

    @property
    def block_bytes(self) -> int:
        item = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * item

    @property
    def blocks_per_seq(self) -> int:
        return math.ceil(self.max_model_len / self.block_size)

    def allocate(self, num_blocks: int) -> torch.Tensor:
        shape = (self.num_layers, 2, num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype)


def available_bytes() -> int:
    """Memory the OS can still give this process (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def kv_cache_budget(*, kv_cache_memory: int | None, fraction: float, memory_limit: int | None,
                    peak_rss: int) -> tuple[int, str]:
    """Bytes the cache may take, and the flag that set them (for the error message)."""
    if kv_cache_memory is not None:
        budget, flag = kv_cache_memory, "--kv-cache-memory"
    else:
        budget, flag = int(available_bytes() * fraction), "--kv-cache-memory (or --kv-cache-memory-fraction)"
    if memory_limit is not None and memory_limit - peak_rss < budget:
        budget, flag = max(memory_limit - peak_rss, 0), "--memory-limit"
    return budget, flag


def num_blocks_for(spec: KVCacheSpec, budget: int, flag: str, max_num_seqs: int) -> int:
    """Blocks that fit in `budget` (at most what max_num_seqs full-length sequences use), plus the
    null block. Fails when not even one full-length sequence fits."""
    needed = (spec.blocks_per_seq + 1) * spec.block_bytes
    if budget < needed:
        raise OutOfMemoryBudgetError(
            f"the KV cache needs at least {format_bytes(needed)} (one sequence of max_model_len="
            f"{spec.max_model_len} tokens) but only {format_bytes(budget)} is available under {flag}; "
            f"raise {flag.split()[0]} or lower --max-model-len"
        )
    return min(budget // spec.block_bytes, max_num_seqs * spec.blocks_per_seq + 1)


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
