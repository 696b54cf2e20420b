"""`ember bench` and bench/embed_throughput.py: arguments -> run -> tables, JSON and a PNG chart."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ember.bench.engines import ENGINES


def add_bench_args(parser: argparse.ArgumentParser) -> None:
    """Flags of `ember bench` (module imports only the standard library: the CLI stays fast)."""
    names = [e.name for e in ENGINES]
    parser.add_argument("model", nargs="?", default="sentence-transformers/all-MiniLM-L6-v2",
                        help="model folder or installed name; every engine loads the same folder")
    parser.add_argument("--task", choices=["throughput", "latency"], default="throughput",
                        help="throughput on short texts and passages, or single-text latency")
    parser.add_argument("--engines", default="all",
                        help=f"comma-separated engines (default all): {', '.join(names)}")
    parser.add_argument("--n-short", type=int, default=1024, help="short texts (5-30 words)")
    parser.add_argument("--n-passages", type=int, default=256, help="passages (100-300 words)")
    parser.add_argument("--runs", type=int, default=3, help="timed passes per corpus (median reported)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="processes per engine, round-robin (spreads load from other processes evenly)")
    parser.add_argument("--latency-calls", type=int, default=200, help="timed single-text calls (latency)")
    parser.add_argument("--out-dir", default="bench/results", help="results JSON, embeddings and the PNG chart")


def run_bench(args: argparse.Namespace) -> str:
    """Run the benchmark; returns the markdown tables (also written next to the JSON)."""
    from ember.bench import report as report_mod
    from ember.bench.throughput import BenchConfig, run
    from ember.model.sources import resolve_model_path

    engines = [e.name for e in ENGINES] if args.engines == "all" else args.engines.split(",")
    unknown = sorted(set(engines) - {e.name for e in ENGINES})
    if unknown:
        raise SystemExit(f"ember bench: unknown engine(s) {', '.join(unknown)}")
    cfg = BenchConfig(model=str(resolve_model_path(args.model)), engines=engines, n_short=args.n_short,
                      n_passages=args.n_passages, runs=args.runs, rounds=args.rounds, out_dir=args.out_dir, task=args.task,
                      latency_calls=args.latency_calls)
    report = run(cfg)
    stem = Path(args.out_dir) / f"{args.task}-{time.strftime('%Y%m%dT%H%M%S')}"
    if args.task == "latency":
        text = report_mod.latency_table(report)
    else:
        text = report_mod.throughput_tables(report)
        if report_mod.write_chart(report, f"{stem}.png"):
            text += f"\nChart: {stem}.png\n"
    Path(f"{stem}.json").write_text(json.dumps(report, indent=1, default=str))
    Path(f"{stem}.md").write_text(text)
    return text
