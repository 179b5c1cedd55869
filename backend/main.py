"""The backend's app factory: `uvicorn backend.main:create_app --factory --port 8000`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from backend import errors
from backend.api import (
    agents,
    analysis,
    calls,
    campaigns,
    console,
    health,
    phone,
    phone_numbers,
    twilio_webhooks,
)
from backend.capacity import Admission, GatewayProbe
from backend.deps import require_api_key
from backend.dialing import build_dispatcher
from backend.metrics import BackendMetrics, MetricsMiddleware
from backend.telephony import build_telephony
from shared import jobs
from shared.errors import NotFound, StorageError
from shared.rate_limit import RateLimiter
from shared.settings import Settings
from shared.storage import build_storage


def create_app(settings: Settings | None = None, *, run_jobs: bool = True) -> FastAPI:
    """Build the backend for `settings`; storage opens (and migrates) in the lifespan, once.

    `run_jobs=False` leaves post-call jobs queued but unrun (on SQLite, where this process would run
    them): for tests of the HTTP surface alone, so that no webhook leaves the machine.
    """
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        storage = build_storage(settings)
        await storage.open()
        telephony = None
        background = None
        admission = Admission(GatewayProbe(settings.gateway_http_url), retry_after_s=settings.capacity_retry_after_s)
        try:
            await storage.migrate()
            telephony = build_telephony(settings)
            app.state.storage = storage
            app.state.telephony = telephony
            app.state.admission = admission  # asks the gateway's /health before each outbound call
            # Post-call jobs: run here on SQLite (a restart resumes them); `relayx worker` on PostgreSQL.
            # Campaigns are dispatched here on SQLite too; on PostgreSQL by `relayx worker`.
            if run_jobs:
                dispatcher = build_dispatcher(settings, storage, telephony, admission)
                background = await jobs.start_background(settings, storage, dispatcher=dispatcher)
            app.state.background = background
            yield
        finally:
            if background is not None:
                await background.aclose()
            if telephony is not None:
                await telephony.close()
            inbound = getattr(app.state, "inbound_simulator", None)  # made on first use (simulate-inbound)
            if inbound is not None:
                await inbound.aclose()
            await admission.aclose()
            await storage.close()

    app = FastAPI(
        title="RelayX backend",
        version="0.1.0",
        description="Agents, phone numbers, outbound and inbound calls, transcripts, and Twilio's webhooks.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = BackendMetrics()  # /metrics (backend.api.health); one registry per app
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # Swapped by tests for one on a fake clock; per API key, or per address while the key is wrong.
    app.state.rate_limiter = RateLimiter(settings.api_rate_limit_per_minute, settings.api_rate_limit_burst)
    app.add_exception_handler(NotFound, errors.not_found)
    app.add_exception_handler(StorageError, errors.storage_unavailable)
    app.add_exception_handler(RequestValidationError, errors.invalid_request)
    app.add_exception_handler(StarletteHTTPException, errors.http_error)
    protected = [Depends(require_api_key)]
    app.include_router(health.router)
    app.include_router(agents.router, dependencies=protected, responses=errors.API_KEY_ROUTES)
    app.include_router(calls.router, dependencies=protected, responses=errors.API_KEY_ROUTES)
    app.include_router(analysis.router, dependencies=protected, responses=errors.API_KEY_ROUTES)
    app.include_router(phone_numbers.router, dependencies=protected, responses=errors.API_KEY_ROUTES)
    app.include_router(campaigns.router, dependencies=protected, responses=errors.API_KEY_ROUTES)
    app.include_router(campaigns.dnc_router, dependencies=protected, responses=errors.API_KEY_ROUTES)
    app.include_router(twilio_webhooks.router)
    app.include_router(phone.router)
    app.include_router(console.router)
    return app
