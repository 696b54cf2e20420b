"""Request metrics, as pure ASGI middleware (a BaseHTTPMiddleware would hide client disconnects
from the routes). The limits in front of the work are in admission.py."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ember.entrypoints.server.metrics import ServerMetrics
from ember.entrypoints.server.warmup import WARMUP_SCOPE_KEY


class MetricsMiddleware:
    """Counts every HTTP request by matched route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(WARMUP_SCOPE_KEY):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_progress.dec()
            route = scope.get("route")
            # Unmatched paths share one label, so that scanners cannot blow up the label set.
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(label, status, time.perf_counter() - start)
