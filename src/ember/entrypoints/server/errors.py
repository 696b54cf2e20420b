"""Every failure -> HTTP status + OpenAI error body, in ONE table (TEI's `From<&ErrorType>`).

Routes only raise; the handlers registered by `install` turn exceptions into
`{"error": {"message", "type", "param", "code"}}` with the status from `ERROR_TABLE`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from ember.engine.async_engine import ClientGoneError, NotReadyError
from ember.entrypoints.server.protocol import JSONBody
from ember.errors import (
    BatchFailedError,
    EmberError,
    EngineDeadError,
    InvalidRequestError,
    ModelNotFoundError,
    OutOfMemoryBudgetError,
    OverloadedError,
    UnsupportedModelError,
)

logger = logging.getLogger(__name__)


class AuthenticationError(EmberError):
    """Missing or wrong API key."""


class BodyTooLargeError(EmberError, HTTPException):
    """The request body is larger than the server accepts. Also an HTTPException, because FastAPI
    turns any other exception raised while it reads the body into a 400."""

    def __init__(self, message: str) -> None:
        HTTPException.__init__(self, 413, message)

    def __str__(self) -> str:
        return str(self.detail)


class ShuttingDownError(EmberError):
    """The server is draining after SIGTERM: requests in flight finish, new ones are refused."""


@dataclass(frozen=True, slots=True)
class ErrorKind:
    status: int
    type: str
    code: str
    param: str | None = None
    """Default `param` when the exception does not name one."""
    retry_after_s: int | None = None


ERROR_TABLE: dict[type[BaseException], ErrorKind] = {
    AuthenticationError: ErrorKind(401, "authentication_error", "invalid_api_key"),
    ModelNotFoundError: ErrorKind(404, "invalid_request_error", "model_not_found", param="model"),
    BodyTooLargeError: ErrorKind(413, "invalid_request_error", "request_too_large"),
    InvalidRequestError: ErrorKind(400, "invalid_request_error", "invalid_value"),
    RequestValidationError: ErrorKind(400, "invalid_request_error", "invalid_value"),
    ClientGoneError: ErrorKind(499, "invalid_request_error", "client_closed_request"),  # nginx's code; nobody reads it
    OverloadedError: ErrorKind(503, "overloaded_error", "overloaded", retry_after_s=1),
    NotReadyError: ErrorKind(503, "service_unavailable_error", "not_ready", retry_after_s=5),
    ShuttingDownError: ErrorKind(503, "service_unavailable_error", "shutting_down", retry_after_s=5),
    UnsupportedModelError: ErrorKind(500, "server_error", "unsupported_model"),
    OutOfMemoryBudgetError: ErrorKind(500, "server_error", "out_of_memory"),
    EngineDeadError: ErrorKind(500, "server_error", "engine_dead"),
    BatchFailedError: ErrorKind(500, "server_error", "batch_failed"),
    EmberError: ErrorKind(500, "server_error", "internal_error"),
    Exception: ErrorKind(500, "server_error", "internal_error"),
}
_HTTP_TYPES = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}


def kind_of(exc: BaseException) -> ErrorKind:
    """The most specific table row for the exception's class."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return ERROR_TABLE[Exception]


def error_response(exc: BaseException) -> Response:
    kind = kind_of(exc)
    message, param = _describe(exc)
    if kind.status == 500:  # 503s are expected under load or while warming: no traceback
        logger.error("request failed: %s: %s", type(exc).__name__, message, exc_info=exc)
        if kind is ERROR_TABLE[Exception]:
            message = "internal server error"  # do not leak internals of an unexpected bug
    headers = {"Retry-After": str(kind.retry_after_s)} if kind.retry_after_s else None
    body = {"message": message, "type": kind.type, "param": param or kind.param, "code": kind.code}
    return JSONBody({"error": body}, status_code=kind.status, headers=headers)


def _describe(exc: BaseException) -> tuple[str, str | None]:
    """(message, param) of an exception; FastAPI's validation errors get OpenAI's wording."""
    if not isinstance(exc, RequestValidationError):
        return str(exc), getattr(exc, "param", None)
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    if not loc and first.get("type") in ("model_attributes_type", "dict_type", "missing"):
        return "the request body must be a JSON object (send 'Content-Type: application/json')", None
    field = loc[0] if loc else None
    where = ".".join(loc) or "body"
    if first.get("type") == "missing":
        return f"'{where}' is required", field
    if field == "input":  # a union: pydantic's per-branch messages confuse more than they help
        return "'input' must be a string, a list of strings, a list of integer token ids, or a list of such lists", field
    return f"invalid value for '{where}': {first.get('msg', 'invalid request')}", field


_FASTAPI_BODY_ERROR = "There was an error parsing the body"
"""What FastAPI says when the body is not UTF-8 (json.loads raised something else than a JSON error)."""


def http_error_response(exc: HTTPException) -> Response:
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    message = str(exc.detail)
    if exc.status_code == 400 and message == _FASTAPI_BODY_ERROR:
        message = "malformed JSON body: it is not valid UTF-8 text"
    body = {"message": message, "type": _HTTP_TYPES.get(exc.status_code, kind), "param": None,
            "code": str(exc.status_code)}
    return JSONBody({"error": body}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def install(app: FastAPI) -> None:
    """Register the handlers; every error, including FastAPI's own 422, leaves in the OpenAI shape."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return http_error_response(exc)

    app.add_exception_handler(HTTPException, on_http_error)
    for cls in ERROR_TABLE:
        app.add_exception_handler(cls, on_error)
