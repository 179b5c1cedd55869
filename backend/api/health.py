"""Liveness and readiness: the service and its database."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.deps import SettingsDep, StorageDep
from shared.errors import StorageError

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/health")
async def health(storage: StorageDep, settings: SettingsDep) -> JSONResponse:
    try:
        await storage.ping()
    except (StorageError, OSError) as exc:
        log.error("health: database unreachable: %s", exc)
        return JSONResponse({"status": "degraded", "database": f"error: {exc}"}, status_code=503)
    return JSONResponse(
        {"status": "ok", "service": "backend", "database": "ok", "telephony": settings.telephony_provider}
    )
