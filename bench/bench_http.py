"""HTTP throughput and latency of `ember serve` against the offline API, in the same run.

    flock /tmp/ember-bench.lock .venv/bin/python bench/bench_http.py [MODEL] [--texts 2048]

Starts `ember serve` in a subprocess on a free port and waits for /health 200. Then:
1. the first request after ready (1 text) vs the median of the next 50 (target <= 1.5);
2. for concurrency 1, 16, 64 and 1 or 32 texts per request: texts/s and p50/p99 request latency,
   with the client sending base64 (the `openai` client's default) and decoding every vector;
3. stops the server (SIGTERM, expects exit 0) and measures offline `LLM.embed` on the same texts.
The client runs on the same machine as the server, so it takes CPU from it: a conservative setup.
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

CONFIGS = [(1, 1), (16, 1), (64, 1), (1, 32), (16, 32), (64, 32)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str | None, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ember.entrypoints.cli", "serve", *([model] if model else []),
           "--port", str(port), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd)
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


async def post(http: httpx.AsyncClient, texts: list[str]) -> float:
    """One request; returns its latency in seconds, after decoding every vector as a client would."""
    start = time.perf_counter()
    response = await http.post("/v1/embeddings", content=orjson.dumps({"input": texts, "encoding_format": "base64",
                                                                        "truncate_prompt_tokens": -1}),
                               headers={"content-type": "application/json"})
    response.raise_for_status()
    data = orjson.loads(response.content)["data"]
    vectors = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data]
    assert len(vectors) == len(texts)
    return time.perf_counter() - start


async def first_request(url: str, texts: list[str]) -> tuple[float, float]:
    """(first request after ready, median of the next 50), one text each, sequential."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await http.get("/health")  # open the connection: time the server's first embedding, not a TCP setup
        first = await post(http, texts[:1])
        rest = [await post(http, texts[i + 1: i + 2]) for i in range(50)]
    return first, statistics.median(rest)


async def load(url: str, texts: list[str], concurrency: int, per_request: int, num_texts: int) -> dict:
    """`concurrency` workers send requests of `per_request` texts until num_texts are embedded."""
    num_requests = max(num_texts // per_request, 4 * concurrency)
    batches = [[texts[(i * per_request + j) % len(texts)] for j in range(per_request)] for i in range(num_requests)]
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(post(http, batches[i]) for i in range(concurrency)))  # open the connections
        queue = list(reversed(batches))

        async def worker() -> None:
            while queue:
                latencies.append(await post(http, queue.pop()))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
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


def report(rows: list[dict], offline: float, first: tuple[float, float], texts: list[str]) -> str:
    lines = [
        f"corpus: short, {len(texts)} texts, fingerprint {fingerprint(texts)}; {os.cpu_count()} CPUs",
        f"offline LLM.embed: {offline:.0f} texts/s",
        f"first request after ready: {first[0] * 1000:.1f} ms; median of the next 50: {first[1] * 1000:.1f} ms; "
        f"ratio {first[0] / first[1]:.2f} (target <= 1.5)",
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
    args = parser.parse_args()
    texts = short_texts(args.texts)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port, ["--enforce-eager"] if args.enforce_eager else [])
    try:
        first = asyncio.run(first_request(url, texts))
        rows = [asyncio.run(load(url, texts, c, b, args.texts)) for c, b in CONFIGS]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(120)
    assert code == 0, f"server exit code {code} after SIGTERM"
    offline = offline_throughput(args.model, texts, {"enforce_eager": args.enforce_eager})
    print(report(rows, offline, first, texts))


if __name__ == "__main__":
    main()
