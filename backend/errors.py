"""The API's error answers: their documented shapes, which routes list which, and the handlers.

Every status a route can answer is in the OpenAPI (`responses=` on routers and routes, built from the
maps below), so a client knows in advance what it must handle; a 500 means a bug, never bad input
or a database that is down.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from shared.errors import NotFound

log = logging.getLogger(__name__)

ResponseDocs = dict[int | str, dict[str, Any]]


class ErrorOut(BaseModel):
    """An error answer: `detail` says what went wrong, in words."""

    detail: str


class ProviderRefusal(BaseModel):
    """What the phone provider said when it refused: its words and, when it gave one, its error code."""

    message: str
    provider_code: int | None = None


class ProviderErrorOut(BaseModel):
    """A 502: the phone provider refused the request (Twilio's reason and code)."""

    detail: ProviderRefusal


def unprocessable(loc: tuple[str | int, ...], message: str, value: Any = None) -> RequestValidationError:
    """A 422 raised by a route, in the same shape as the ones pydantic writes (one shape to parse)."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": value}])


_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer", "minimum": 1}}
}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}

UNAUTHORIZED: ResponseDocs = {
    401: {"model": ErrorOut, "description": "Missing or wrong API key", "headers": _WWW_AUTHENTICATE}
}
RATE_LIMITED: ResponseDocs = {
    429: {"model": ErrorOut, "description": "Too many requests from this API key or address", "headers": _RETRY_AFTER}
}
STORAGE_DOWN: ResponseDocs = {503: {"model": ErrorOut, "description": "The database is unavailable; retry later"}}
AT_CAPACITY: ResponseDocs = {
    503: {
        "model": ErrorOut,
        "description": "The database is unavailable, or the voice gateway is at capacity (then with "
        "`Retry-After`, and no call row is written); retry later",
        "headers": {"Retry-After": {"description": "Seconds to wait (sent when the gateway is at capacity)",
                                    "schema": {"type": "integer", "minimum": 1}}},
    }
}
NOT_FOUND: ResponseDocs = {404: {"model": ErrorOut, "description": "No such row (or a malformed id)"}}
CONFLICT: ResponseDocs = {409: {"model": ErrorOut, "description": "Not possible in the row's current state"}}
NUMBER_TAKEN: ResponseDocs = {409: {"model": ErrorOut, "description": "The number is already configured"}}
SIMULATION_REFUSED: ResponseDocs = {
    409: {
        "model": ErrorOut,
        "description": "Not on the simulated line (TELEPHONY_PROVIDER is not `simulator`), or the number "
        "rejected the call (inbound calls off, its agent deleted, the voice gateway at capacity)",
    }
}
MALFORMED_BODY: ResponseDocs = {400: {"model": ErrorOut, "description": "The body is not readable (not UTF-8)"}}
PROVIDER_REFUSED: ResponseDocs = {
    502: {"model": ProviderErrorOut, "description": "The phone provider refused the request"}
}
API_KEY_ROUTES: ResponseDocs = {**UNAUTHORIZED, **RATE_LIMITED, **STORAGE_DOWN}
"""What every route behind the API key can answer besides its own statuses (and 422)."""


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    """Any row a route asked storage for and did not find is a 404 naming it ("call 42 not found")."""
    assert isinstance(exc, NotFound)
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database refused or did not answer: 503, so clients retry; the details go to the log only
    (they can name hosts and tables)."""
    log.error("%s %s: storage failed: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": "the database is unavailable: try again shortly"}, status_code=503)


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTPException, but a 405 lists in `Allow` every method the path has
    (Starlette names only those of the first route that matched the path)."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        methods: set[str] = set()
        for route in request.app.router.routes:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= getattr(route, "methods", None) or set()
        exc = StarletteHTTPException(405, exc.detail, headers={**(exc.headers or {}), "Allow": ", ".join(sorted(methods))})
    return await http_exception_handler(request, exc)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, rendered so that any input can be echoed back (see `_SafeJSONResponse`)."""
    assert isinstance(exc, RequestValidationError)
    return _SafeJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


class _SafeJSONResponse(JSONResponse):
    """JSON that survives echoing what a client sent: a lone surrogate ("\\ud800") is escaped instead of
    failing UTF-8, and NaN or Infinity (which Python's JSON parser accepts) become strings."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value

