"""The backend's app factory: `uvicorn backend.main:create_app --factory --port 8000`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from backend.api import agents, analysis, calls, health, phone, twilio_webhooks
from backend.deps import require_api_key
from backend.telephony import build_telephony
from shared import jobs
from shared.errors import NotFound
from shared.settings import Settings
from shared.storage import build_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the backend for `settings`; storage opens (and migrates) in the lifespan, once."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = build_storage(settings)
        await storage.open()
        telephony = None
        background = None
        try:
            await storage.migrate()
            telephony = build_telephony(settings)
            app.state.storage = storage
            app.state.telephony = telephony
            # Post-call jobs: run here on SQLite (a restart resumes them); `relayx worker` on PostgreSQL.
            background = await jobs.start_background(settings, storage)
            yield
        finally:
            if background is not None:
                await background.aclose()
            if telephony is not None:
                await telephony.close()
            await storage.close()

    app = FastAPI(
        title="RelayX backend",
        version="0.1.0",
        description="Agents, outbound calls, transcripts, and Twilio's webhooks.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_exception_handler(NotFound, _not_found)
    protected = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(agents.router, dependencies=protected)
    app.include_router(calls.router, dependencies=protected)
    app.include_router(analysis.router, dependencies=protected)
    app.include_router(twilio_webhooks.router)
    app.include_router(phone.router)
    return app


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    """Any row a route asked storage for and did not find is a 404 naming it ("call 42 not found")."""
    return JSONResponse({"detail": str(exc)}, status_code=404)
