"""`ember serve` as a process: graceful SIGTERM/SIGINT (in-flight finishes, exit 0), startup failure
exits 1; and a server under pressure: a full queue answers 503 + Retry-After, clients that go away
do not leak queue slots."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.entrypoints.server_harness import (
    DEADLINE_S,
    RunningServer,
    SlowRequest,
    check_error,
    free_port,
    make_texts,
    wait_until,
)


def gauge(url: str, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name == name:
            return family.samples[0].value
    raise KeyError(name)


def num_served(url: str, route: str) -> float:
    """Requests to `route` that have ended, whatever their status."""
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    samples = next(f.samples for f in families if f.name == "ember_requests")
    return sum(s.value for s in samples if s.name == "ember_requests_total" and s.labels["route"] == route)


def is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health").status_code == 200
    except httpx.TransportError:
        return False


def serve(model: Path) -> tuple[subprocess.Popen, int, str]:
    """`ember serve MODEL --enforce-eager` on a free port, ready: (process, port, url)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "ember.entrypoints.cli", "serve", str(model),
                             "--enforce-eager", "--port", str(port)], stderr=subprocess.PIPE, text=True)
    wait_until(lambda: is_healthy(url), "ready")
    return proc, port, url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_in_flight_and_exits_0(tiny_bert: Path, sig: signal.Signals) -> None:
    proc, _, url = serve(tiny_bert)
    try:
        result: dict = {}
        texts = make_texts(2048, seed=9)
        thread = threading.Thread(target=lambda: result.update(
            r=httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=DEADLINE_S)))
        thread.start()
        wait_until(lambda: "r" in result or gauge(url, "ember_queue_depth") > 0, "the request to be queued")
        proc.send_signal(sig)
        thread.join(DEADLINE_S)
        assert result["r"].status_code == 200
        assert len(result["r"].json()["data"]) == 2048
        assert proc.wait(DEADLINE_S) == 0
    finally:
        proc.kill()
        log = proc.stderr.read() if proc.stderr else ""
    ready = [line for line in log.splitlines() if "ready: serving" in line]
    assert len(ready) == 1 and url in ready[0], log[-3000:]
    assert "starting engine: EngineConfig(" in log and "warm-up" in ready[0]


def test_sigterm_drains_new_requests_get_503_in_flight_ones_finish(tiny_bert: Path) -> None:
    """A request in flight (its body still arriving, so it stays in flight as long as the test wants)
    holds the drain open: meanwhile new requests and /health get 503 + Retry-After, /metrics still
    answers; once its body is sent it gets its 200, and the process exits 0."""
    proc, port, url = serve(tiny_bert)
    try:
        slow = SlowRequest(port, orjson.dumps({"input": make_texts(64, seed=12)}))
        wait_until(lambda: gauge(url, "ember_requests_in_progress") >= 2, "the slow request to be in flight")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 503, "draining")
        refused = httpx.post(f"{url}/v1/embeddings", json={"input": "new"})
        error = check_error(refused, 503, None)
        assert error["code"] == "shutting_down" and int(refused.headers["Retry-After"]) >= 1
        assert httpx.get(f"{url}/metrics").status_code == 200
        answer = slow.finish()
        assert answer.startswith("HTTP/1.1 200"), answer[:300]
        assert proc.wait(DEADLINE_S) == 0
    finally:
        proc.kill()
        log = proc.stderr.read() if proc.stderr else ""
    assert "SIGTERM: draining 1 requests in flight" in log, log[-3000:]


def test_startup_failure_exits_1(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ember.entrypoints.cli", "serve", str(tmp_path / "missing"),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "failed to start" in proc.stderr


def test_bad_flag_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "ember.entrypoints.cli", "serve", "--port", "abc"],
                          capture_output=True, text=True, timeout=DEADLINE_S)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


@pytest.fixture(scope="module")
def small_queue(tiny_bert: Path) -> Iterator[RunningServer]:
    with RunningServer(str(tiny_bert), enforce_eager=True, max_waiting_requests=8) as running:
        yield running.wait_ready()


def test_full_queue_is_503_with_retry_after(small_queue: RunningServer) -> None:
    texts = make_texts(8, seed=10, max_words=50)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue.url, timeout=DEADLINE_S) as http:
            return await asyncio.gather(*(http.post("/v1/embeddings", json={"input": texts}) for _ in range(30)))

    statuses: set[int] = set()
    for _ in range(10):  # each burst almost surely overflows; retry a few times to be sure
        for response in asyncio.run(burst()):
            statuses.add(response.status_code)
            if response.status_code == 503:
                error = check_error(response, 503, None)
                assert error["type"] == "overloaded_error" and int(response.headers["Retry-After"]) >= 1
            else:
                assert response.status_code == 200 and len(response.json()["data"]) == 8
        if statuses == {200, 503}:
            break
    assert statuses == {200, 503}
    wait_until(lambda: small_queue.engine.num_pending == 0, "the queue to drain")


def test_disconnected_clients_free_their_slots(small_queue: RunningServer) -> None:
    body = orjson.dumps({"input": make_texts(500, seed=11)})
    head = (f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    before = num_served(small_queue.url, "/v1/embeddings")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", small_queue.port)) as sock:
            sock.sendall(head + body)
    wait_until(lambda: num_served(small_queue.url, "/v1/embeddings") == before + 5, "the 5 handlers to end")
    wait_until(lambda: small_queue.engine.num_pending == 0, "dropped requests to free the queue")
    assert gauge(small_queue.url, "ember_queue_depth") == 0
    ok = httpx.post(f"{small_queue.url}/v1/embeddings", json={"input": ["a", "b"]})
    assert ok.status_code == 200 and len(ok.json()["data"]) == 2
