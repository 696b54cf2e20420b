"""Admission: the limits in front of the work, checked before a byte of a body is parsed.

A request is refused (in the OpenAI error shape) when
- its body is larger than `max_body_bytes` (413; by Content-Length, or while it streams in),
- `max_concurrent_requests` requests are already being served, or their bodies already hold
  `max_body_bytes_in_flight` bytes (503 + Retry-After: memory stays bounded whatever clients send),
- the server is draining after SIGTERM (503 + Retry-After; in-flight requests finish).
The probes (/health, /metrics) are never refused, so that an overloaded server can still be watched;
/health itself says 503 while draining. Items and tokens per request are checked by the AsyncEngine,
after tokenization (see ServerConfig).
"""

from __future__ import annotations

import threading
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.config import ServerConfig
from ember.entrypoints.server.errors import BodyTooLargeError, ShuttingDownError, error_response
from ember.errors import EmberError, OverloadedError

PROBE_PATHS = frozenset({"/health", "/metrics"})


class Admission:
    """The counters of requests being served and their body bytes, and the draining flag (any thread)."""

    def __init__(self, settings: ServerConfig) -> None:
        self.settings = settings
        self.num_in_flight = 0
        self.bytes_in_flight = 0
        self.is_draining = False
        self._lock = threading.Lock()

    def start_draining(self) -> None:
        """From now on new requests get 503; the ones in flight finish."""
        self.is_draining = True

    def admit(self, declared_bytes: int) -> EmberError | None:
        """Count the request in, or return why it is refused."""
        s = self.settings
        if self.is_draining:
            return ShuttingDownError("the server is shutting down; retry on another replica or after it restarts")
        if declared_bytes > s.max_body_bytes:
            return BodyTooLargeError(body_too_large(declared_bytes, s.max_body_bytes))
        with self._lock:
            if self.num_in_flight >= s.max_concurrent_requests:
                return OverloadedError(f"{self.num_in_flight} requests are being served (max_concurrent_requests="
                                       f"{s.max_concurrent_requests}); retry later")
            if self.num_in_flight and self.bytes_in_flight + declared_bytes > s.max_body_bytes_in_flight:
                return OverloadedError(f"the requests being served hold {self.bytes_in_flight} body bytes "
                                       f"(max_body_bytes_in_flight={s.max_body_bytes_in_flight}); retry later")
            self.num_in_flight += 1
            self.bytes_in_flight += declared_bytes
        return None

    def add_bytes(self, n: int) -> None:
        """Bytes of a body that came without Content-Length, counted as they arrive."""
        with self._lock:
            self.bytes_in_flight += n

    def release(self, body_bytes: int) -> None:
        with self._lock:
            self.num_in_flight -= 1
            self.bytes_in_flight -= body_bytes


def body_too_large(size: int, limit: int) -> str:
    return (f"request body of {size} bytes is larger than the limit of {limit} bytes (ember serve "
            "--max-body-bytes)")


class AdmissionMiddleware:
    """Pure ASGI (a BaseHTTPMiddleware would hide client disconnects from the routes)."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        refusal = self.admission.admit(declared or 0)
        if refusal is not None:
            response = error_response(refusal)
            if isinstance(refusal, BodyTooLargeError):
                response.headers["Connection"] = "close"  # the unread body must not be parsed as a request
            await response(scope, receive, send)
            return
        limit, received, streamed = self.admission.settings.max_body_bytes, 0, 0

        async def counting_receive() -> Message:
            nonlocal received, streamed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if declared is None:
                    self.admission.add_bytes(received - streamed)
                    streamed = received
                if received > limit:
                    raise BodyTooLargeError(body_too_large(received, limit))
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.admission.release((declared or 0) + streamed)


def _content_length(scope: Scope) -> int | None:
    headers: Any = scope.get("headers", ())
    for name, value in headers:
        if name == b"content-length":
            try:
                return max(int(value), 0)
            except ValueError:
                return None
    return None
