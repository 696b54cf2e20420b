"""Ember's own C++ kernels, for what torch's CPU ops do slowly at an encoder's shapes; each is a
torch op (eager, export) with an AOTInductor C shim (compiled graphs). Below the model layer:
model code calls them, the runner prepares them before it builds or loads a graph.

- attention: an encoder layer's attention (kernels/attention.py);
- int8_ffn: the middle of an int8 feed-forward block, GELU and requantization (kernels/int8_ffn.py).
"""

from __future__ import annotations

import threading

from ember.kernels import attention, int8_ffn


def prepare(cache_dir: str) -> str:
    """Build or load every kernel for this CPU (once per process; the builds run side by side,
    the compiler outside the GIL); returns mode()."""
    beside = threading.Thread(target=int8_ffn.prepare, args=(cache_dir,), name="ember-kernel-int8-ffn", daemon=True)
    beside.start()
    attention.prepare(cache_dir)
    beside.join()
    return mode()


def mode() -> str:
    """Which kernels run in this process, e.g. "attention=ember-avx512,int8_ffn=ember-avx512": what
    a compiled graph calls, so part of its cache key."""
    return f"attention={attention.mode()},int8_ffn={int8_ffn.mode()}"


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call any of the kernels."""
    return {**attention.c_shims(), **int8_ffn.c_shims()}
