"""HTTP throughput and latency of `ember serve` against the offline API, in the same run.

    flock /tmp/ember-bench.lock .venv/bin/python bench/bench_http.py [MODEL] [--texts 2048] [--quantization int8]

Starts `ember serve` in a subprocess on a free port and waits for /health 200. Then:
1. the first request after ready (1 text) vs the median of the next 50 (target <= 1.5), in
   --first-reps fresh server starts (the median ratio and every run are reported); then 10 more
   single requests, each after 0.1 s idle, as the first one comes after the idle time between
   the server's warm-up and the client's /health poll: first vs after-idle separates what is
   paid once (a first-time cost) from what every request after a pause pays;
2. for concurrency 1, 16, 64 and 1 or 32 texts per request: texts/s and p50/p99 request latency,
   with the client sending base64 (the `openai` client's default) and decoding every vector;
3. stops the server (SIGTERM, expects exit 0) and measures offline `LLM.embed` on the same texts.
The client (raw asyncio HTTP/1.1, keep-alive) runs on the same machine as the server, so it takes
CPU from it: a conservative setup.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np
import orjson

from ember.bench.corpus import fingerprint, short_texts

STALL_S = 120.0
"""A request slower than this is a stall: the server's stacks are dumped (py-spy) and the run fails."""

CONFIGS = [(1, 1), (16, 1), (64, 1), (1, 32), (16, 32), (64, 32)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, port: int, extra: list[str], log: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ember.entrypoints.cli", "serve", *([model] if model else []),
           "--port", str(port), "--log-level", "info" if log else "warning", *extra]
    proc = subprocess.Popen(cmd, stderr=open(log, "w") if log else None)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.1)


class Connection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams. httpx's async pool was the bottleneck
    at 64 connections on 2 cores (and raised sporadic ReadErrors), so it would have measured itself."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, texts: list[str]) -> float:
        """One request; returns its latency in seconds, after decoding every vector as a client would."""
        body = orjson.dumps({"input": texts, "encoding_format": "base64", "truncate_prompt_tokens": -1})
        start = time.perf_counter()
        self.writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        payload = await self.reader.readexactly(length)
        assert head.startswith(b"http/1.1 200"), payload[:300]
        data = orjson.loads(payload)["data"]
        vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
        assert len(vectors) == len(texts)
        return time.perf_counter() - start

    def close(self) -> None:
        self.writer.close()


IDLE_S = 0.1
"""Pause before each after-idle request: the /health poll interval, the most the first request
idles after ready."""


async def first_request(port: int, texts: list[str]) -> tuple[float, float, float]:
    """(first request after ready, median of the next 50, median of 10 after IDLE_S idle each),
    one text each, sequential, one connection."""
    conn = await Connection.open(port)
    first = await conn.post(texts[:1])
    rest = [await conn.post(texts[i + 1: i + 2]) for i in range(50)]
    after_idle = []
    for i in range(10):
        await asyncio.sleep(IDLE_S)
        after_idle.append(await conn.post(texts[51 + i: 52 + i]))
    conn.close()
    return first, statistics.median(rest), statistics.median(after_idle)


async def load(port: int, texts: list[str], concurrency: int, per_request: int, num_texts: int) -> dict:
    """`concurrency` connections send requests of `per_request` texts until num_texts are embedded."""
    num_requests = max(num_texts // per_request, 4 * concurrency)
    batches = [[texts[(i * per_request + j) % len(texts)] for j in range(per_request)] for i in range(num_requests)]
    conns = [await Connection.open(port) for _ in range(concurrency)]
    queue = list(reversed(batches))
    latencies: list[float] = []

    async def worker(conn: Connection) -> None:
        while queue:
            latencies.append(await asyncio.wait_for(conn.post(queue.pop()), STALL_S))

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.close()
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "per_request": per_request, "requests": num_requests,
            "texts_per_s": num_requests * per_request / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def offline_throughput(model: str | None, texts: list[str], kwargs: dict) -> float:
    from ember import LLM

    llm = LLM(model, **kwargs)
    llm.embed(texts[:64], truncate_prompt_tokens=-1)
    start = time.perf_counter()
    llm.embed(texts, truncate_prompt_tokens=-1)
    return len(texts) / (time.perf_counter() - start)


def report(rows: list[dict], offline: float, firsts: list[tuple[float, float, float]], texts: list[str]) -> str:
    ratios = [f / m for f, m, _ in firsts]
    idle_ratios = [f / a for f, _, a in firsts]
    first = [statistics.median(run[k] for run in firsts) for k in range(3)]
    lines = [
        f"corpus: short, {len(texts)} texts, fingerprint {fingerprint(texts)}; {os.cpu_count()} CPUs",
        f"offline LLM.embed: {offline:.0f} texts/s",
        (f"first request after ready: {first[0] * 1000:.1f} ms; median of the next 50: {first[1] * 1000:.1f} ms; "
         f"ratio {statistics.median(ratios):.2f} (target <= 1.5); medians of {len(firsts)} server starts, "
         f"ratios {', '.join(f'{r:.2f}' for r in ratios)}"),
        (f"single requests after {IDLE_S:.1f} s idle: median {first[2] * 1000:.1f} ms; first / after-idle "
         f"{statistics.median(idle_ratios):.2f}; per start {', '.join(f'{r:.2f}' for r in idle_ratios)}"),
        "",
        "| concurrency | texts/request | requests | texts/s | % of offline | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['per_request']} | {r['requests']} | {r['texts_per_s']:.0f} | "
                     f"{100 * r['texts_per_s'] / offline:.0f}% | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="model (default: the packaged default)")
    parser.add_argument("--texts", type=int, default=2048, help="texts embedded per configuration")
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--quantization", choices=["int8"], default=None, help="serve (and compare with) the int8 mode")
    parser.add_argument("--server-log", help="write the server's log (info level) to this file")
    parser.add_argument("--first-reps", type=int, default=5, help="server starts for the first-request ratio")
    args = parser.parse_args()
    texts = short_texts(args.texts)
    extra = (["--enforce-eager"] if args.enforce_eager else []) + (
        ["--quantization", args.quantization] if args.quantization else [])
    firsts = []
    for rep in range(args.first_reps - 1):
        port = free_port()
        server = start_server(args.model, port, extra, None)
        try:
            firsts.append(asyncio.run(first_request(port, texts[rep * 64:])))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(120)
    port = free_port()
    server = start_server(args.model, port, extra, args.server_log)
    try:
        firsts.append(asyncio.run(first_request(port, texts)))
        rows = []
        for c, b in CONFIGS:
            try:
                rows.append(asyncio.run(load(port, texts, c, b, args.texts)))
            except TimeoutError:
                print(f"STALL at concurrency {c} x {b} texts: a request took > {STALL_S:.0f} s; server stacks:")
                subprocess.run(["py-spy", "dump", "--native", "--pid", str(server.pid)], check=False)
                raise
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(120)
    assert code == 0, f"server exit code {code} after SIGTERM"
    offline = offline_throughput(args.model, texts, {"enforce_eager": args.enforce_eager,
                                                     "quantization": args.quantization})
    print(report(rows, offline, firsts, texts))


if __name__ == "__main__":
    main()
