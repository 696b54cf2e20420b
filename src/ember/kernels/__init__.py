"""Ember's own C++ kernels, for what torch's CPU ops do slowly at an encoder's shapes; each is a
torch op (eager, export) with an AOTInductor C shim (compiled graphs). Below the model layer:
model code calls them, the runner prepares them before it builds or loads a graph.

- attention: an encoder layer's attention (kernels/attention.py);
- int8_ffn: the middle of an int8 feed-forward block, GELU and requantization (kernels/int8_ffn.py).
"""

from __future__ import annotations

import threading

from ember.kernels import attention, int8_ffn


def prepare(cache_dir: str, *, int8_ffn_kernel: bool) -> str:
    """Build or load the kernels a model needs on this CPU (once per process each; the builds run
    side by side, the compiler outside the GIL): attention always, the int8 feed-forward kernel
    for an int8 model on int_mm. Returns mode()."""
    beside = None
    if int8_ffn_kernel:
        beside = threading.Thread(target=int8_ffn.prepare, args=(cache_dir,), name="ember-kernel-int8-ffn", daemon=True)
        beside.start()
    attention.prepare(cache_dir)
    if beside is not None:
        beside.join()
    return mode(int8_ffn_kernel=int8_ffn_kernel)


def mode(*, int8_ffn_kernel: bool) -> str:
    """Which of the kernels a graph may call run in this process, e.g.
    "attention=ember-avx512,int8_ffn=ember-avx512" (int8_ffn only for an int8 graph on int_mm,
    so that a float graph's key does not depend on it): part of a compiled graph's cache key."""
    parts = [f"attention={attention.mode()}"] + ([f"int8_ffn={int8_ffn.mode()}"] if int8_ffn_kernel else [])
    return ",".join(parts)


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call any of the kernels."""
    return {**attention.c_shims(), **int8_ffn.c_shims()}
