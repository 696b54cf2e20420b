"""`ember embed` over a synthetic corpus of 1M lines: throughput, RSS over the run, and resume.

    flock /tmp/ember-bench.lock .venv/bin/python bench/batch_job.py --rows 1000000 --out-dir bench/results/<dir>

1. An uninterrupted run, its RSS sampled every second from /proc (the whole process tree).
2. The same command into another output, SIGKILLed once --kill-at of the rows are done, then
   run again: the resumed output must be byte-identical to the uninterrupted one.
The corpus is the benchmark's short texts (5-30 words), repeated in order, as JSONL with ids.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ember.bench import corpus


def write_corpus(path: Path, rows: int) -> None:
    texts = corpus.load("short", 8192)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"doc-{i}", "text": texts[i % len(texts)]}) + "\n")


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and its children."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pending += [int(c) for c in children]
        except (OSError, StopIteration):
            continue
    return total


def run(args: list[str], manifest: Path | None = None, kill_at_rows: int | None = None) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ember.entrypoints.cli", "embed", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int, int]] = []  # (seconds, rows done, rss)
    killed = False
    while proc.poll() is None:
        rows = 0
        if manifest is not None and manifest.exists():
            try:
                rows = json.loads(manifest.read_text())["rows"]
            except (ValueError, KeyError):
                pass
        samples.append((time.perf_counter() - start, rows, tree_rss(proc.pid)))
        if kill_at_rows is not None and rows >= kill_at_rows:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(1.0)
    proc.wait()
    stderr = proc.stderr.read() if proc.stderr else ""
    if not killed and proc.returncode != 0:
        raise SystemExit(f"ember embed failed: {stderr[-2000:]}")
    return {"seconds": time.perf_counter() - start, "samples": samples, "killed": killed,
            "summary": [line for line in stderr.splitlines() if line.startswith("ember embed:")]}


def rss_profile(samples: list[tuple[float, int, int]], rows: int) -> dict:
    """RSS once the engine is working (the first shard recorded) at 10/50/90% of the rows, and its peak."""
    working = [(s, r, m) for s, r, m in samples if r > 0]
    def at(fraction: float) -> int:
        return next((m for _, r, m in working if r >= fraction * rows), working[-1][2])
    return {"rss_mib_at_10pct": at(0.1) / 2**20, "rss_mib_at_50pct": at(0.5) / 2**20,
            "rss_mib_at_90pct": at(0.9) / 2**20, "rss_mib_peak_working": max(m for *_, m in working) / 2**20,
            "rss_mib_median_working": statistics.median(m for *_, m in working) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of rows done when the job is killed")
    parser.add_argument("--work-dir", default="/tmp/ember-batch-job")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("engine_args", nargs="*", help="extra ember embed flags (model, --dtype, ...)")
    args = parser.parse_args()
    work, out = Path(args.work_dir), Path(args.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    source = work / "corpus.jsonl"
    if not source.exists() or sum(1 for _ in open(source)) != args.rows:
        write_corpus(source, args.rows)
    for stale in work.glob("out-*"):
        stale.unlink()
    common = ["-i", str(source), *args.engine_args]
    whole = work / "out-whole.jsonl"
    first = run([*common, "-o", str(whole)], Path(str(whole) + ".ember-job.json"))
    killed_out = work / "out-killed.jsonl"
    manifest = Path(str(killed_out) + ".ember-job.json")
    killed = run([*common, "-o", str(killed_out)], manifest, kill_at_rows=int(args.kill_at * args.rows))
    rows_at_kill = json.loads(manifest.read_text())["rows"]
    resumed = run([*common, "-o", str(killed_out)], manifest)
    identical = subprocess.run(["cmp", "-s", str(whole), str(killed_out)]).returncode == 0
    result = {
        "rows": args.rows, "corpus_bytes": source.stat().st_size, "output_bytes": whole.stat().st_size,
        "uninterrupted_s": first["seconds"], "uninterrupted_summary": first["summary"],
        **rss_profile(first["samples"], args.rows),
        "killed_after_rows": rows_at_kill, "killed_run_s": killed["seconds"], "resumed_s": resumed["seconds"],
        "resumed_summary": resumed["summary"], "resumed_output_identical": identical,
        "commit": os.environ.get("EMBER_BENCH_COMMIT", ""), "engine_args": args.engine_args,
    }
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (out / f"batch-job-{stamp}.json").write_text(json.dumps({**result, "rss_samples": first["samples"]}, indent=1))
    lines = [f"# ember embed, {args.rows} rows ({stamp})", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result.items()]
    (out / f"batch-job-{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
