"""What the routes share: server settings, the engine handle, and the request guards
(API key, model name) used as FastAPI dependencies."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from ember.config import ServerConfig
from ember.engine.async_engine import AsyncEngine
from ember.entrypoints.server.admission import Admission
from ember.entrypoints.server.errors import AuthenticationError
from ember.entrypoints.server.metrics import ServerMetrics
from ember.errors import ModelNotFoundError


@dataclass(slots=True)
class ServerState:
    engine: AsyncEngine
    settings: ServerConfig
    metrics: ServerMetrics
    model_name: str
    """The served model name."""
    accepted_names: frozenset[str]
    created: int
    """Unix time the server started (the model card's `created`)."""
    admission: Admission
    http_warm: bool = False
    """The HTTP path has been warmed after the engine (see warmup.py); /health waits for it."""

    @property
    def is_serving(self) -> bool:
        return self.http_warm and self.engine.is_ready and not self.admission.is_draining


def get_state(request: Request) -> ServerState:
    return request.app.state.ember


def check_model(state: ServerState, name: str | None) -> str:
    """The served name; a request naming another model is a 404."""
    if name is not None and name not in state.accepted_names:
        raise ModelNotFoundError(f"The model '{name}' does not exist; this server serves '{state.model_name}'")
    return state.model_name


async def require_api_key(request: Request) -> None:
    """Dependency: constant-time check of the bearer token when an API key is configured."""
    expected = get_state(request).settings.api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise AuthenticationError("missing or invalid API key; send 'Authorization: Bearer <key>'")
