"""How both services answer /metrics: Prometheus' text format, behind METRICS_TOKEN when it is set."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi.responses import PlainTextResponse, Response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_response(body: Callable[[], bytes], token: str | None, authorization: str | None) -> Response:
    """The /metrics answer: the text format, or 401 when METRICS_TOKEN is set and not presented."""
    if token and not bearer_matches(token, authorization):
        return PlainTextResponse("metrics need METRICS_TOKEN as a bearer token", status_code=401,
                                 headers={"WWW-Authenticate": "Bearer"})
    return Response(body(), media_type=CONTENT_TYPE)


def bearer_matches(token: str, authorization: str | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
