"""CPU facts detected at run time: physical cores, bf16 support, thread setup."""

from __future__ import annotations

import logging
import os
from functools import cache

import torch

from ember.config import DType
from ember.kernels.library import cpu_flags

logger = logging.getLogger(__name__)


def core_representatives() -> list[int]:
    """One allowed logical CPU per physical core (hyper-thread siblings counted once)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    chosen: dict[str, int] = {}
    for cpu in allowed:
        path = f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"
        try:
            with open(path, encoding="utf-8") as f:
                chosen.setdefault(f.read().strip(), cpu)
        except OSError:
            chosen.setdefault(str(cpu), cpu)
    return sorted(chosen.values()) or [0]


def physical_cores() -> int:
    """Physical cores available to this process."""
    return len(core_representatives())


def init_threads(threads: int | None) -> int:
    """Set intra-op threads (default: physical cores); returns the count used.

    When the default is used and the process may run on hyper-thread siblings, it is bound to one
    logical CPU per core (where the OS allows), so that two compute threads never share a core.
    """
    n = threads or physical_cores()
    cores = core_representatives()
    if threads is None and hasattr(os, "sched_setaffinity") and set(cores) != os.sched_getaffinity(0):
        try:
            os.sched_setaffinity(0, cores)
            logger.info("bound to one logical cpu per core: %s", cores)
        except OSError as exc:
            logger.info("thread affinity not set (%s)", exc)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@cache
def bf16_is_faster() -> bool:
    """Whether bf16 GEMMs beat fp32 on this CPU. AMX always does; AVX512_BF16 alone may not
    (measured slower than fp32 on a Xeon without AMX), so that case is timed once."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return True
    if "avx512_bf16" not in flags:
        return False
    return _time_linear(torch.bfloat16) < 0.8 * _time_linear(torch.float32)


def _time_linear(dtype: torch.dtype) -> float:
    """Best of 5 timings of a MiniLM-sized linear: the minimum is robust to a busy neighbour,
    which would otherwise make fp32 look slow and pick the slower bf16."""
    import time

    x = torch.randn(512, 384, dtype=dtype)
    lin = torch.nn.Linear(384, 1536, dtype=dtype)
    best = float("inf")
    with torch.inference_mode():
        lin(x)
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(4):
                lin(x)
            best = min(best, time.perf_counter() - start)
    return best


def resolve_dtype(dtype: DType) -> torch.dtype:
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    chosen = torch.bfloat16 if bf16_is_faster() else torch.float32
    logger.info("dtype auto -> %s (cpu flags: amx_bf16=%s avx512_bf16=%s)", chosen,
                "amx_bf16" in cpu_flags(), "avx512_bf16" in cpu_flags())
    return chosen
