"""Latency of one short text right after the previous call vs after an idle pause, and the CPU an
idle engine burns; run it under different OpenMP settings to compare them.

    flock /tmp/ember-bench.lock env [GOMP_SPINCOUNT=N | OMP_WAIT_POLICY=ACTIVE] \\
        .venv/bin/python bench/idle_latency.py [--pause 0.1]

Medians over 50 back-to-back calls and 30 calls each after `--pause` seconds of sleep; then the
process CPU time spent while sleeping 0.5 s and 2 s after a call (the spinning threads).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

from ember import LLM, omp_defaults
from ember.bench import corpus


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pause", type=float, default=0.1)
    args = parser.parse_args()
    llm = LLM()
    texts = corpus.load("short", 100)
    for text in texts[:20]:
        llm.embed([text])
    back_to_back, after_pause = [], []
    for text in texts[20:70]:
        start = time.perf_counter()
        llm.embed([text])
        back_to_back.append(time.perf_counter() - start)
    for text in texts[70:100]:
        time.sleep(args.pause)
        start = time.perf_counter()
        llm.embed([text])
        after_pause.append(time.perf_counter() - start)
    idle_cpu = {}
    for idle in (0.5, 2.0):
        llm.embed([texts[0]])
        before = cpu_seconds()
        time.sleep(idle)
        idle_cpu[idle] = cpu_seconds() - before
    policy = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    if omp_defaults.applied:
        policy = {"GOMP_SPINCOUNT": f"{omp_defaults.applied} (Ember's default)"}
    print(f"{policy or 'libgomp defaults'}: back-to-back {statistics.median(back_to_back) * 1e3:.2f} ms; "
          f"after {args.pause} s idle {statistics.median(after_pause) * 1e3:.2f} ms; CPU burnt while idle: "
          + ", ".join(f"{v:.2f} s in {k} s" for k, v in idle_cpu.items()))


if __name__ == "__main__":
    main()
