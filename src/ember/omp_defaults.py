"""How long idle OpenMP threads spin before they sleep: set before torch loads libgomp.

libgomp's worker threads spin ~5 ms after a parallel region, then sleep on a futex. Waking them
costs ~10 ms on the 2-vCPU machines this was measured on, so a single short text that arrives
0.1 s after the previous one took 16 ms instead of 4 ms back to back. Spinning for ~0.15 s
(GOMP_SPINCOUNT=10**7) brings it to 6.6 ms, for at most 0.15 s of one core after the last call
(bench/results/2026-11-27-1a9a8b8-xeon-vnni/history.md, "Latency after an idle pause"). ONNX Runtime's thread pool spins by default too.

Only a default: nothing is changed when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, and it
cannot apply when torch was imported before ember (libgomp reads its environment once, at load).
The variable is set only while torch loads, then removed: processes the user's program starts
later inherit the user's environment, not Ember's default (a spinning default inherited by other
engines' processes halved their speed in a benchmark).
"""

from __future__ import annotations

import os
import sys

SPIN_COUNT = "10000000"
"""~0.15 s of spinning (measured: 10**7 -> 0.15 s, 3 * 10**7 -> 0.45 s of CPU after a call)."""


applied: str | None = None
"""The spin count this process's libgomp was loaded with because of apply(); None if untouched."""


def apply() -> str | None:
    """Load torch with GOMP_SPINCOUNT set, unless the user chose a policy or torch is already
    loaded; returns what was applied, or None."""
    global applied
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return None
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    try:
        import torch  # noqa: F401 - loads libgomp, which reads its environment now and never again
    finally:
        del os.environ["GOMP_SPINCOUNT"]
    applied = SPIN_COUNT
    return applied
