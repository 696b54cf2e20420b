"""Ember's own C++ kernels, for what torch's CPU ops do slowly at an encoder's shapes; each is a
torch op (eager, export) with an AOTInductor C shim (compiled graphs). Below the model layer:
model code calls them, the runner prepares them before it builds or loads a graph.

- attention: an encoder layer's attention (kernels/attention.py);
- int8_ffn: the middle of an int8 feed-forward block, GELU and requantization (kernels/int8_ffn.py);
- int8_mm: an int8 linear's GEMM, for the few rows of a single request on AVX512-VNNI and for every
  row count on AVX2 without int8 dot products (kernels/int8_mm.py).
"""

from __future__ import annotations

import threading

from ember.kernels import attention, int8_ffn, int8_mm


def prepare(cache_dir: str, *, int8_kernels: bool) -> str:
    """Build or load the kernels a model needs on this CPU (once per process each; the builds run
    side by side, the compiler outside the GIL): attention always, the int8 ones (int8_ffn,
    int8_mm) for an int8 model on int_mm. Returns mode()."""
    beside = []
    if int8_kernels:
        for kernel in (int8_ffn, int8_mm):
            name = f"ember-kernel-{kernel.__name__.rsplit('.', 1)[-1]}"
            beside.append(threading.Thread(target=kernel.prepare, args=(cache_dir,), name=name, daemon=True))
            beside[-1].start()
    attention.prepare(cache_dir)
    for thread in beside:
        thread.join()
    return mode(int8_kernels=int8_kernels)


def mode(*, int8_kernels: bool) -> str:
    """Which of the kernels a graph may call run in this process, e.g.
    "attention=ember-avx512,int8_ffn=ember-avx512,int8_mm=ember-avx512-vnni" (the int8 ones only
    for an int8 graph on int_mm, so that a float graph's key does not depend on them): part of a
    compiled graph's cache key."""
    parts = [f"attention={attention.mode()}"]
    if int8_kernels:
        parts += [f"int8_ffn={int8_ffn.mode()}", f"int8_mm={int8_mm.mode()}"]
    return ",".join(parts)


def c_shims() -> dict[object, list[str]]:
    """aot_inductor.custom_ops_to_c_shims for a build whose graph may call any of the kernels."""
    return {**attention.c_shims(), **int8_ffn.c_shims(), **int8_mm.c_shims()}
