"""Issue 4 (b): process launch to LLM() returning, and to `ember serve`'s /health 200; each start
in a fresh process.

    flock /tmp/ember-bench.lock .venv/bin/python bench/startup.py [--reps 3] [--no-server] [--quantization auto|int8|none]

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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CHILD = """
import json, sys, time
from ember import LLM
llm = LLM(compile_cache_dir=sys.argv[1], enforce_eager=sys.argv[2] == "1", quantization=None if sys.argv[3] == "none" else sys.argv[3])
ready = time.time()
stats = llm.stats()
print(json.dumps({"ready": ready, "engine_startup_s": stats.get("startup_s"),
                  "compile_s": stats.get("compilation_time_s"), "warmup_s": stats.get("warmup_s"),
                  "shapes": stats.get("num_warmed_shapes"), "rss_mb": (stats.get("rss_bytes") or 0) / 2**20}))
"""


def start(cache_dir: str, *, eager: bool, quantization: str) -> dict[str, float]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TMPDIR": cache_dir}
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, cache_dir, "1" if eager else "0", quantization],
                          capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"start failed: {proc.stderr.strip().splitlines()[-3:]}")
    result = json.loads(lines[-1])
    result["launch_to_ready_s"] = result.pop("ready") - launched
    return result


def serve(cache_dir: str, *, eager: bool, quantization: str) -> dict[str, float]:
    """Launch `ember serve` and poll /health every 50 ms until it answers 200."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TMPDIR": cache_dir}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "ember.entrypoints.cli", "serve", "--port", str(port), "--log-level", "warning",
           "--compile-cache-dir", cache_dir, *(["--enforce-eager"] if eager else []),
           "--quantization", quantization]
    launched = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        return {"launch_to_ready_s": time.time() - launched}
            except OSError:  # not listening yet, or 503 while warming up
                pass
            time.sleep(0.05)
        raise RuntimeError(f"ember serve exited with {proc.returncode}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-server", action="store_true", help="skip the `ember serve` cases")
    parser.add_argument("--quantization", choices=["auto", "int8", "none"], default="auto",
                        help="auto (the default: int8 where the CPU has VNNI), int8, or none (float)")
    args = parser.parse_args()
    launchers = [("LLM()", start)] + ([] if args.no_server else [("serve /health", serve)])
    cases: dict[str, list[dict[str, float]]] = {}
    for _ in range(args.reps):
        for what, launch in launchers:
            with tempfile.TemporaryDirectory(prefix="ember-startup-") as d:
                cases.setdefault(f"{what}: empty cache", []).append(launch(d, eager=False, quantization=args.quantization))
                cases.setdefault(f"{what}: warm cache", []).append(launch(d, eager=False, quantization=args.quantization))
            with tempfile.TemporaryDirectory(prefix="ember-startup-") as d:
                cases.setdefault(f"{what}: enforce_eager", []).append(launch(d, eager=True, quantization=args.quantization))
    print("| case | launch to ready, s (median) | all runs s | compile s | warm-up s | shapes | RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in cases.items():
        def med(key: str, fmt: str, runs: list[dict[str, float]] = runs) -> str:
            values = [float(r[key]) for r in runs if r.get(key) is not None]
            return format(statistics.median(values), fmt) if values else "-"  # the server reports none
        all_runs = ", ".join(f"{r['launch_to_ready_s']:.1f}" for r in runs)
        print(f"| {name} | {med('launch_to_ready_s', '.1f')} | {all_runs} | {med('compile_s', '.1f')} "
              f"| {med('warmup_s', '.1f')} | {med('shapes', '.0f')} | {med('rss_mb', '.0f')} |")

if __name__ == "__main__":
    main()
