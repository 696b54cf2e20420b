"""The load test, short (the README's bench/load_test.py runs it for 5 minutes): `ember serve`
with the default model and settings under four times the load it was measured to serve, with a small concurrency limit so that
refusals must happen. Every request gets exactly one response, its own; refusals are 503 with
Retry-After; nothing is lost; RSS ends within 10% of RSS after warm-up; SIGTERM then exits 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ember.bench.load import ServerProcess, TextPool, run_load


def test_four_times_the_measured_capacity_for_8_seconds_loses_nothing(minilm_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    # 8 in flight: over its capacity the backlog passes it within 8 s down to ~1 req/s of capacity
    # (16 needed 2 req/s, which a run beside a heavy test on the other worker missed: 1.9). Four
    # times the measured capacity, not twice: the capacity is measured while the other pytest
    # worker may be busy, and a run that measured 6.5 req/s then served all of 13.8 offered once
    # that worker went idle (no refusal).
    with ServerProcess(str(minilm_path), ["--max-concurrent-requests", "8"], str(log)) as server:
        report = asyncio.run(run_load(server.url, server.proc.pid, duration_s=8, capacity_s=3, warmup_s=3, concurrency=8,
                                      overload=4.0, pool=TextPool(n_short=60, n_passages=12)))
        print(f"\n{report.table()}")
        summary = report.summary()
        assert summary["problems"] == [] and report.lost == 0 and report.wrong == 0, summary
        assert report.served > 0 and report.refused > 0, summary
        assert report.served + report.refused == len(report.outcomes)
        assert summary["rss_growth"] < 0.10, summary
        assert httpx.get(f"{server.url}/health").status_code == 200
    assert server.returncode == 0, log.read_text()[-2000:]
