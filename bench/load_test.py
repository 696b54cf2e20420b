"""Bounded load test of `ember serve` (loopback only; stops by itself): twice the measured capacity
for 5 minutes, mixed request sizes; every request is checked for exactly one, correct response.

    flock /tmp/ember-bench.lock .venv/bin/python bench/load_test.py [MODEL] [--duration 300]
        [--overload 2] [--out-dir bench/results/DIR] [-- SERVER FLAGS...]

See src/ember/bench/load.py for the method. Writes load-<time>.json and .md to --out-dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

from ember.bench.load import MIX, ServerProcess, run_load
from ember.model.sources import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--duration", type=float, default=300, help="seconds of overload")
    parser.add_argument("--capacity-s", type=float, default=20, help="seconds of the closed-loop capacity run")
    parser.add_argument("--concurrency", type=int, default=32, help="clients of the capacity run")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of overload before RSS is first read")
    parser.add_argument("--overload", type=float, default=2.0, help="offered rate / capacity")
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="after --: flags for ember serve")
    args = parser.parse_args()
    extra = [a for a in args.server_args if a != "--"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"load-{time.strftime('%Y%m%dT%H%M%S')}"
    with ServerProcess(str(resolve_model_path(args.model)), extra, f"{stem}.server.log") as server:
        report = asyncio.run(run_load(server.url, server.proc.pid, duration_s=args.duration,
                                      capacity_s=args.capacity_s, warmup_s=args.warmup, overload=args.overload,
                                      concurrency=args.concurrency))
    summary = {**report.summary(), "server_exit_code": server.returncode, "model": args.model,
               "server_args": extra, "mix": MIX, "machine": platform.processor() or platform.machine()}
    table = report.table()
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1))
    Path(f"{stem}.md").write_text(table + "\n")
    print(table)
    print(json.dumps(summary, indent=1))
    if report.lost or report.wrong or server.returncode != 0:
        raise SystemExit("FAILED: lost, wrong or duplicated responses, or an unclean exit")


if __name__ == "__main__":
    main()
