"""Shared timing loop of the peer runners. Standard library and numpy only: every peer venv has them.

A runner is started as `<venv python> bench/peers/<engine>.py <job.json>`; it loads its engine,
runs the job and prints exactly one JSON line on stdout (everything else goes to stderr).
Job fields: task ("throughput" | "latency"), model (folder), options (engine-specific dict),
texts ({"short": [...], "passages": [...]}), runs, max_len, out_dir (embeddings as .npy),
latency_calls.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

Embed = Callable[[list[str]], np.ndarray]
FIRST_CALL_BATCH = 32


def peak_rss_mb() -> float:
    """Peak resident memory of this process, plus the current RSS of live children (vLLM runs
    its engine core in a child process)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
        return own + sum(c.memory_info().rss for c in children) / 2**20
    except Exception:
        return own


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run_throughput(job: dict[str, Any], embed: Embed) -> dict[str, Any]:
    """First call on a batch of 32 short texts, then per corpus one untimed pass and `runs` timed ones."""
    first_call_s, _ = timed(lambda: embed(job["texts"]["short"][:FIRST_CALL_BATCH]))
    corpora: dict[str, Any] = {}
    for name, texts in job["texts"].items():
        vectors = embed(texts)  # warm-up pass: lazily compiled peers compile here, untimed
        times = []
        for _ in range(job["runs"]):
            seconds, vectors = timed(lambda texts=texts: embed(texts))
            times.append(seconds)
        path = os.path.join(job["out_dir"], f"{name}.npy")
        np.save(path, np.asarray(vectors, dtype=np.float32))
        corpora[name] = {"times_s": times, "median_s": statistics.median(times), "n": len(texts),
                         "embeddings": path}
    return {"first_call_s": first_call_s, "corpora": corpora}


def run_latency(job: dict[str, Any], embed: Embed) -> dict[str, Any]:
    """One short text per call: 10 warm-up calls, then `latency_calls` timed calls."""
    texts = job["texts"]["short"]
    for i in range(10):
        embed([texts[i % len(texts)]])
    times_ms = []
    for i in range(job["latency_calls"]):
        seconds, _ = timed(lambda i=i: embed([texts[i % len(texts)]]))
        times_ms.append(seconds * 1000.0)
    times_ms.sort()
    return {"p50_ms": _quantile(times_ms, 0.50), "p99_ms": _quantile(times_ms, 0.99),
            "mean_ms": statistics.fmean(times_ms), "calls": len(times_ms)}


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 200 calls is the 198th value)."""
    index = max(0, min(len(sorted_values) - 1, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def main(load: Callable[[dict[str, Any]], tuple[Embed, dict[str, Any]]]) -> None:
    """Read the job, load the engine (timed), run the task, print one JSON line."""
    job = json.loads(open(sys.argv[1], encoding="utf-8").read())
    result: dict[str, Any] = {"options": job["options"]}
    try:
        load_s, (embed, info) = timed(lambda: load(job))
        result.update(info, load_s=load_s)
        task = run_latency if job["task"] == "latency" else run_throughput
        result.update(task(job, embed))
    except Exception as exc:  # reported to the harness as this engine's error, not a crash
        traceback.print_exc(file=sys.stderr)
        result["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    result["peak_rss_mb"] = peak_rss_mb()
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
