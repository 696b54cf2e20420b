"""A bounded load test of `ember serve` (loopback only; it stops by itself).

1. Capacity: closed loop, `concurrency` clients sending the request mix for `capacity_s`: served
   requests/s.
2. Overload: open loop, Poisson arrivals at `overload` x capacity for `duration_s`, the same mix.
   Every request is checked: exactly one response; a 200 holds one vector per input, each equal
   (cosine >= 0.999) to the reference vector of that very text, so a response that went to the
   wrong request or a duplicated row is caught; a refusal (429/503) carries Retry-After and the
   OpenAI error body. A request without any response (timeout, connection error) is lost.
3. RSS of the server after warm-up (`warmup_s` of the same overload, not counted) and at the end,
   from /proc.

bench/load_test.py runs it for 5 minutes and writes the table; the suite runs 30 seconds of it.
"""

from __future__ import annotations

import asyncio
import base64
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from ember.bench.corpus import passages, short_texts

MIX: tuple[tuple[str, int, float], ...] = (("short", 1, 0.6), ("short", 8, 0.25), ("passage", 4, 0.15))
"""(text kind, inputs per request, share of requests): search-box queries, small batches, documents."""

REFUSED = (429, 503)


@dataclass
class Outcome:
    status: int | None
    """None: no response at all (lost)."""
    latency_s: float
    problem: str | None = None


@dataclass
class LoadReport:
    offered_rps: float
    """Requests/s actually sent (the target is overload x capacity_rps)."""
    duration_s: float
    capacity_rps: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss_after_warmup: int = 0
    rss_at_end: int = 0

    def count(self, pred: Any) -> int:
        return sum(1 for o in self.outcomes if pred(o))

    @property
    def served(self) -> int:
        return self.count(lambda o: o.status == 200)

    @property
    def refused(self) -> int:
        return self.count(lambda o: o.status in REFUSED)

    @property
    def lost(self) -> int:
        return self.count(lambda o: o.status is None)

    @property
    def wrong(self) -> int:
        """Responses that were not exactly their own request's answer (or other statuses)."""
        return self.count(lambda o: o.problem is not None and o.status is not None)

    def latency_ms(self, statuses: tuple[int, ...], q: float) -> float:
        values = sorted(o.latency_s * 1e3 for o in self.outcomes if o.status in statuses)
        return float(np.quantile(values, q)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        n = len(self.outcomes)
        return {
            "capacity_rps": round(self.capacity_rps, 1), "offered_rps": round(self.offered_rps, 1),
            "duration_s": self.duration_s, "requests": n, "served_rps": round(self.served / self.duration_s, 1),
            "refused_share": round(self.refused / n, 3) if n else 0.0,
            "served_p50_ms": round(self.latency_ms((200,), 0.5), 1),
            "served_p99_ms": round(self.latency_ms((200,), 0.99), 1),
            "refused_p50_ms": round(self.latency_ms(REFUSED, 0.5), 1),
            "rss_after_warmup_mb": round(self.rss_after_warmup / 2**20), "rss_at_end_mb": round(self.rss_at_end / 2**20),
            "rss_growth": round(self.rss_at_end / self.rss_after_warmup - 1, 3) if self.rss_after_warmup else None,
            "lost": self.lost, "wrong_or_duplicated": self.wrong,
            "problems": sorted({o.problem for o in self.outcomes if o.problem})[:10],
        }

    def table(self) -> str:
        s = self.summary()
        return ("| offered req/s | served req/s | refused | served p50 / p99 ms | refused p50 ms | RSS after warm-up "
                "-> end | lost | wrong or duplicated |\n|---|---|---|---|---|---|---|---|\n"
                f"| {s['offered_rps']} (capacity {s['capacity_rps']}) | {s['served_rps']} | {s['refused_share']:.1%} | "
                f"{s['served_p50_ms']} / {s['served_p99_ms']} | {s['refused_p50_ms']} | {s['rss_after_warmup_mb']} -> "
                f"{s['rss_at_end_mb']} MB ({s['rss_growth']:+.1%}) | {s['lost']} | {s['wrong_or_duplicated']} |")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """Keep-alive HTTP/1.1 on asyncio streams, a pool of idle connections reused in turn. httpx's
    async pool is quadratic in waiting requests (its CPU, on the server's cores, became the
    bottleneck of an overload test), so a load test through it would measure the client."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, payload: dict[str, Any]) -> Reply:
        body = orjson.dumps(payload)
        request = (b"POST %s HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (path.encode(), len(body), body))
        while self.idle:  # an idle connection the server closed meanwhile never saw the request: next one
            reader, writer = self.idle.pop()
            try:
                return await self._exchange(reader, writer, request)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
        return await self._exchange(*await asyncio.open_connection("127.0.0.1", self.port), request)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> Reply:
        try:
            writer.write(request)
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
            reply = Reply(int(head[0].split()[1]), headers, await reader.readexactly(int(headers["content-length"])))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection") == "close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return reply

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def embed_payload(texts: list[str]) -> dict[str, Any]:
    return {"input": texts, "encoding_format": "base64", "truncate_prompt_tokens": -1}


def vectors(reply: Reply) -> list[tuple[int, np.ndarray]]:
    return [(d["index"], np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").astype(np.float64))
            for d in orjson.loads(reply.body)["data"]]


class TextPool:
    """The texts requests are drawn from, with each text's reference vector (fetched from the
    server before the load, one request per text)."""

    def __init__(self, n_short: int = 200, n_passages: int = 40) -> None:
        self.texts = {"short": short_texts(n_short), "passage": passages(n_passages)}
        self.reference: dict[str, np.ndarray] = {}

    async def fetch_reference(self, client: Client) -> None:
        for texts in self.texts.values():
            for text in texts:
                reply = await client.post("/v1/embeddings", embed_payload([text]))
                assert reply.status == 200, reply.body[:300]
                self.reference[text] = vectors(reply)[0][1]

    def draw(self, rng: random.Random) -> list[str]:
        kind, n, _ = rng.choices(MIX, weights=[share for _, _, share in MIX])[0]
        return rng.sample(self.texts[kind], n)


async def one_request(client: Client, pool: TextPool, texts: list[str], timeout_s: float) -> Outcome:
    start = time.perf_counter()
    try:
        reply = await asyncio.wait_for(client.post("/v1/embeddings", embed_payload(texts)), timeout_s)
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
        return Outcome(None, time.perf_counter() - start, f"no response: {type(exc).__name__}")
    return Outcome(reply.status, time.perf_counter() - start, check_reply(reply, pool, texts))


def check_reply(reply: Reply, pool: TextPool, texts: list[str]) -> str | None:
    """None when the reply is exactly this request's answer, or a well-formed refusal."""
    if reply.status in REFUSED:
        error = orjson.loads(reply.body).get("error", {})
        if not reply.headers.get("retry-after") or not error.get("message"):
            return f"{reply.status} without Retry-After or an error body"
        return None
    if reply.status != 200:
        return f"status {reply.status}: {reply.body[:120]!r}"
    rows = vectors(reply)
    if [i for i, _ in rows] != list(range(len(texts))):
        return "rows missing, duplicated or out of order"
    for text, (_, got) in zip(texts, rows):
        ref = pool.reference[text]
        if got @ ref / (np.linalg.norm(got) * np.linalg.norm(ref)) < 0.999:
            return "a row is not the vector of its text"
    return None


async def measure_capacity(client: Client, pool: TextPool, seconds: float, concurrency: int, seed: int) -> float:
    """Served requests/s of the mix with `concurrency` clients in a closed loop."""
    rng = random.Random(seed)
    deadline = time.perf_counter() + seconds
    served = 0

    async def closed_loop() -> None:
        nonlocal served
        while time.perf_counter() < deadline:
            outcome = await one_request(client, pool, pool.draw(rng), timeout_s=120)
            served += outcome.status == 200

    start = time.perf_counter()
    await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
    return served / (time.perf_counter() - start)


async def offer_load(client: Client, pool: TextPool, rate: float, seconds: float, seed: int,
                     timeout_s: float, max_open: int = 1024) -> tuple[list[Outcome], float]:
    """Open loop: Poisson arrivals at `rate` for `seconds`; waits for every response (or timeout).
    Returns the outcomes and the rate actually offered (the client shares the CPU with the server
    and may fall behind; at most `max_open` requests are open on the client side at once)."""
    rng = random.Random(seed)
    slots = asyncio.Semaphore(max_open)
    tasks: list[asyncio.Task[Outcome]] = []

    async def send(texts: list[str]) -> Outcome:
        try:
            return await one_request(client, pool, texts, timeout_s)
        finally:
            slots.release()

    start = time.perf_counter()
    next_at = 0.0
    while next_at < seconds:
        await asyncio.sleep(max(start + next_at - time.perf_counter(), 0))
        await slots.acquire()
        tasks.append(asyncio.create_task(send(pool.draw(rng))))
        next_at += rng.expovariate(rate)
    offered = len(tasks) / (time.perf_counter() - start)
    return list(await asyncio.gather(*tasks)), offered


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def run_load(url: str, server_pid: int, *, duration_s: float, capacity_s: float = 20.0,
                   warmup_s: float = 30.0, overload: float = 2.0, concurrency: int = 8, seed: int = 0,
                   timeout_s: float = 60.0, settle_s: float = 2.0, pool: TextPool | None = None) -> LoadReport:
    """The whole test against a warm server at `url` (its process is `server_pid`). RSS "after
    warm-up" is taken after `warmup_s` of the same overload (not counted): the first overload fills
    the server up to its in-flight limits, whose memory the steady state then keeps; growth past
    that point is what a leak would show."""
    pool = pool or TextPool()
    client = Client(int(url.rsplit(":", 1)[1]))
    try:
        await pool.fetch_reference(client)
        capacity = await measure_capacity(client, pool, capacity_s, concurrency, seed)
        await offer_load(client, pool, overload * capacity, warmup_s, seed + 2, timeout_s)
        await asyncio.sleep(settle_s)
        report = LoadReport(overload * capacity, duration_s, capacity, rss_after_warmup=rss_bytes(server_pid))
        report.outcomes, report.offered_rps = await offer_load(client, pool, overload * capacity, duration_s,
                                                               seed + 1, timeout_s)
        await asyncio.sleep(settle_s)
        report.rss_at_end = rss_bytes(server_pid)
    finally:
        client.close()
    return report


class ServerProcess:
    """`ember serve MODEL ARGS` on a free loopback port, ready (/health 200) inside the `with`;
    stopped with SIGTERM at the end, its exit code kept in `returncode`."""

    def __init__(self, model: str, args: list[str], log_path: str | None = None, ready_timeout_s: float = 900) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "ember.entrypoints.cli", "serve", model, "--host", "127.0.0.1",
                    "--port", str(self.port), *args]
        self.log_path, self.ready_timeout_s = log_path, ready_timeout_s
        self.returncode: int | None = None

    def __enter__(self) -> ServerProcess:
        self._log = open(self.log_path, "w") if self.log_path else None
        self.proc = subprocess.Popen(self.cmd, stderr=self._log or subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"server did not become ready: {' '.join(self.cmd)} (see {self.log_path})")
            time.sleep(0.2)
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait()
        if self._log is not None:
            self._log.close()
