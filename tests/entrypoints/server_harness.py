"""Run the real app with uvicorn on a free localhost port, in a background thread (server tests)."""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import uvicorn

from ember.config import EngineConfig, ServerConfig
from ember.engine.async_engine import AsyncEngine
from ember.entrypoints.server.app import create_app
from tests.tiny_models import WORDS

DEADLINE_S = 300
"""A failsafe against hangs in waits, not a performance assertion."""


def make_texts(n: int, seed: int, max_words: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, max_words))) for _ in range(n)]


def check_error(response: httpx.Response, status: int, param: str | None) -> dict:
    """The response has `status` and the OpenAI error body naming `param`; returns the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["param"] == param, error
    return error


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """`with RunningServer(model, enforce_eager=True) as server:` -> server.url, server.engine.

    Keyword arguments that are ServerConfig fields (api_key, max_body_bytes, ...) go to the server,
    the others to the engine."""

    def __init__(self, model: str, *, served_model_name: str | None = None, **kwargs: Any) -> None:
        self.port = free_port()
        server_fields = {f.name for f in dataclasses.fields(ServerConfig)}
        server_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in server_fields}
        self.config = EngineConfig.from_kwargs(model, served_model_name=served_model_name, **kwargs)
        self.settings = ServerConfig(port=self.port, **server_kwargs)
        self.app = create_app(self.config, self.settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> AsyncEngine:
        return self.app.state.ember.engine

    def __enter__(self) -> RunningServer:
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            self.thread.join(0.05)
        return self

    def wait_ready(self, timeout_s: float = 600) -> RunningServer:
        assert self.engine.wait_ready(timeout_s), f"engine did not start: {self.engine.startup_error}"
        wait_until(lambda: self.app.state.ember.is_serving, "the HTTP warm-up after the engine's")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(120)


def read_response(sock: socket.socket) -> str:
    """Status line, headers and body of one HTTP/1.1 response (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


class SlowRequest:
    """A POST whose headers are sent now and whose body is sent by finish(): in flight until then."""

    def __init__(self, port: int, body: bytes) -> None:
        self.body = body
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:1])

    def finish(self) -> str:
        self.sock.sendall(self.body[1:])
        response = read_response(self.sock)
        self.sock.close()
        return response
