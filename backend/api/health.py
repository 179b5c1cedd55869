"""Liveness and readiness: the service and its database; its Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from backend.deps import SettingsDep, StorageDep
from backend.metrics import BackendMetrics
from shared.errors import StorageError
from shared.metrics_http import metrics_response

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


class HealthOut(BaseModel):
    """The backend's state: `ok`, or `degraded` (503) while its database does not answer."""

    status: Literal["ok", "degraded"]
    service: Literal["backend"] = "backend"
    database: str
    telephony: str


@router.get(
    "/health", response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "The database does not answer"}},
)
async def health(storage: StorageDep, settings: SettingsDep) -> HealthOut | JSONResponse:
    try:
        await storage.ping()
    except (StorageError, OSError) as exc:
        # The reason goes to the log: this route needs no key, and a driver's message names hosts.
        log.error("health: database unreachable: %s", exc)
        body = HealthOut(status="degraded", database="unreachable", telephony=settings.telephony_provider)
        return JSONResponse(body.model_dump(), status_code=503)
    return HealthOut(status="ok", database="ok", telephony=settings.telephony_provider)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus text format (`backend.metrics`). No API key: scrapers on the private network read it;
    with METRICS_TOKEN set they must send it as a bearer token. Keep it off the public proxy."""
    registry: BackendMetrics = request.app.state.metrics
    return metrics_response(registry.render, settings.metrics_token, request.headers.get("authorization"))
