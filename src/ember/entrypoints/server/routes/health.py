"""GET /health (200 only once warm) and GET /metrics (Prometheus). No API key on either."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from ember.engine.async_engine import NotReadyError
from ember.entrypoints.server.errors import ShuttingDownError, error_response
from ember.entrypoints.server.state import get_state

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 when the engine is compiled, warmed and serving; 503 (with Retry-After) before, while
    draining after SIGTERM, or if it died."""
    state = get_state(request)
    engine = state.engine
    if state.is_serving:
        return Response(status_code=200)
    if state.admission.is_draining:
        return error_response(ShuttingDownError("the server is shutting down"))
    if engine.startup_error is not None or engine.dead_error is not None:
        return error_response(NotReadyError(f"the engine is not running: {engine.startup_error or engine.dead_error}"))
    return error_response(NotReadyError("the engine is warming up"))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    registry = get_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
