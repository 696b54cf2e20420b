"""The limits in front of the work (ServerConfig): body size (413 before the body is read),
requests and body bytes in flight (503 + Retry-After, the probes still answer), inputs and tokens
per request (400 naming the flag). Requests "in flight" are held open by sending their body slowly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.entrypoints.server_harness import RunningServer, SlowRequest, check_error, read_response, wait_until

LIMITS = {"max_concurrent_requests": 2, "max_body_bytes_in_flight": 64 * 1024, "max_body_bytes": 48 * 1024,
          "max_items_per_request": 10, "max_tokens_per_request": 500}


@pytest.fixture(scope="module")
def server(tiny_bert: Path) -> Iterator[RunningServer]:
    with RunningServer(str(tiny_bert), enforce_eager=True, **LIMITS) as running:
        yield running.wait_ready()


def embed_body(n_bytes: int) -> bytes:
    """A valid /v1/embeddings body of about n_bytes (one input, truncated to fit the model)."""
    return orjson.dumps({"input": ["fox " * (n_bytes // 4)], "truncate_prompt_tokens": -1})


def in_flight(server: RunningServer) -> int:
    return server.app.state.ember.admission.num_in_flight


def test_too_many_inputs_and_tokens_are_400s_naming_the_flag(server: RunningServer) -> None:
    error = check_error(httpx.post(f"{server.url}/v1/embeddings", json={"input": ["a"] * 11}), 400, "input")
    assert "11 inputs" in error["message"] and "--max-items-per-request" in error["message"]
    texts = [" ".join(["fox"] * 60)] * 10  # 10 x 62 tokens > 500
    error = check_error(httpx.post(f"{server.url}/pooling", json={"input": texts}), 400, "input")
    assert "620 tokens" in error["message"] and "--max-tokens-per-request" in error["message"]
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": texts[:8]}).status_code == 200


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000\r\n\r\n")
        response = read_response(sock)
    assert response.startswith("HTTP/1.1 413") and "--max-body-bytes" in response, response


def test_requests_past_the_concurrency_limit_get_503_and_the_probes_still_answer(server: RunningServer) -> None:
    held = [SlowRequest(server.port, embed_body(100)) for _ in range(2)]
    wait_until(lambda: in_flight(server) == 2, "two requests in flight")
    refused = httpx.post(f"{server.url}/v1/embeddings", json={"input": "third"})
    error = check_error(refused, 503, None)
    assert error["type"] == "overloaded_error" and "max_concurrent_requests=2" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200
    assert all(h.finish().startswith("HTTP/1.1 200") for h in held)
    wait_until(lambda: in_flight(server) == 0, "the held requests to end")
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "now"}).status_code == 200


def test_body_bytes_in_flight_are_bounded(server: RunningServer) -> None:
    held = SlowRequest(server.port, embed_body(40 * 1024))
    wait_until(lambda: in_flight(server) == 1, "the large request in flight")
    error = check_error(httpx.post(f"{server.url}/v1/embeddings", content=embed_body(30 * 1024),
                                   headers={"content-type": "application/json"}), 503, None)
    assert "max_body_bytes_in_flight" in error["message"]
    assert httpx.post(f"{server.url}/v1/embeddings", json={"input": "small"}).status_code == 200
    assert held.finish().startswith("HTTP/1.1 200")
    wait_until(lambda: in_flight(server) == 0, "the held request to end")
    assert server.app.state.ember.admission.bytes_in_flight == 0
    assert httpx.post(f"{server.url}/v1/embeddings", content=embed_body(30 * 1024),
                      headers={"content-type": "application/json"}).status_code == 200


def test_a_streamed_body_is_counted_and_released(server: RunningServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length
        yield b'{"input": ["'
        yield b"fox " * 2000
        yield b'"], "truncate_prompt_tokens": -1}'

    response = httpx.post(f"{server.url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    wait_until(lambda: in_flight(server) == 0, "the request to end")
    assert server.app.state.ember.admission.bytes_in_flight == 0
