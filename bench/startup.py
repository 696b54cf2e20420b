"""Issue 4 (b): process launch to LLM() returning, each start in a fresh process.

    flock /tmp/ember-bench.lock .venv/bin/python bench/startup.py [--reps 3]

Per repetition, a fresh temporary folder D is compile_cache_dir, TORCHINDUCTOR_CACHE_DIR and
TMPDIR (so nothing inductor keeps under /tmp, such as precompiled headers, survives: a fresh machine):
  empty cache   first start with D
  warm cache    second start, same D
  eager         LLM(enforce_eager=True), its own fresh D
Targets (issue 4): <= 20 s with an empty compile cache, <= 5 s with a warm one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, sys, time
from ember import LLM
llm = LLM(compile_cache_dir=sys.argv[1], enforce_eager=sys.argv[2] == "1")
ready = time.time()
stats = llm.stats()
print(json.dumps({"ready": ready, "engine_startup_s": stats.get("startup_s"),
                  "compile_s": stats.get("compilation_time_s"), "warmup_s": stats.get("warmup_s"),
                  "shapes": stats.get("num_warmed_shapes"), "rss_mb": (stats.get("rss_bytes") or 0) / 2**20}))
"""


def start(cache_dir: str, *, eager: bool) -> dict[str, float]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TMPDIR": cache_dir}
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, cache_dir, "1" if eager else "0"],
                          capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"start failed: {proc.stderr.strip().splitlines()[-3:]}")
    result = json.loads(lines[-1])
    result["launch_to_ready_s"] = result.pop("ready") - launched
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cases: dict[str, list[dict[str, float]]] = {"empty cache": [], "warm cache": [], "enforce_eager": []}
    for _ in range(args.reps):
        with tempfile.TemporaryDirectory(prefix="ember-startup-") as d:
            cases["empty cache"].append(start(d, eager=False))
            cases["warm cache"].append(start(d, eager=False))
        with tempfile.TemporaryDirectory(prefix="ember-startup-") as d:
            cases["enforce_eager"].append(start(d, eager=True))
    print("| case | launch to LLM() returned, s (median) | all runs s | compile s | warm-up s | shapes | RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in cases.items():
        def med(key: str) -> float:
            return statistics.median(float(r.get(key) or 0) for r in runs)
        all_runs = ", ".join(f"{r['launch_to_ready_s']:.1f}" for r in runs)
        print(f"| {name} | {med('launch_to_ready_s'):.1f} | {all_runs} | {med('compile_s'):.1f} "
              f"| {med('warmup_s'):.1f} | {med('shapes'):.0f} | {med('rss_mb'):.0f} |")


if __name__ == "__main__":
    main()
