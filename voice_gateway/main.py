"""The gateway's app factory and its `/media` WebSocket.

Run: `uvicorn voice_gateway.main:create_app --factory --port 8001`.

The route only authenticates the stream, parses Twilio's messages and hands them to a
`CallSession`; a bad signature or token, an unknown call or a malformed message closes that one
socket with an exact close code and a logged reason, and the process goes on serving. A stream
above the gateway's capacity (`voice_gateway.capacity`) is refused at the handshake with a 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.websockets import WebSocketState

from shared import call_status, jobs, stream_tokens, twilio_auth, urgency
from shared.errors import NotFound, StorageError
from shared.metrics_http import metrics_response
from shared.rate_limit import RateLimiter
from shared.settings import Settings
from shared.storage import build_storage
from shared.tones import BeepDetector
from voice_gateway.actions import CallRedirect, ToolRunner
from voice_gateway.assurance import ProductionRate, StartPolicy
from voice_gateway.capacity import Capacity, max_calls_from
from voice_gateway.drain import Drain, attach
from voice_gateway.engines import Engines, build_engines, warm
from voice_gateway.media_stream import (
    CloseCode,
    Connected,
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    parse_message,
    policy_violation,
)
from voice_gateway.metrics import GatewayMetrics, live_from
from voice_gateway.playback import Send
from voice_gateway.prompts import personalized
from voice_gateway.session import CallSession
from voice_gateway.spool import Spool, SpoolReplayer

log = logging.getLogger(__name__)

# A Media Streams message is a few hundred bytes (a 20 ms media frame is ~300, `start` ~1 KB);
# anything far larger is not one, and reading it whole would let one peer spend memory.
MAX_MESSAGE_CHARS = 64 * 1024


def create_app(settings: Settings | None = None, engines: Engines | None = None) -> FastAPI:
    """Build the gateway; storage and the spool open and every model loads and warms once, in the lifespan."""
    settings = settings or Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if settings.compute_cores is not None:
        urgency.gate().resize(settings.compute_cores)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        restore_sigterm = attach(app.state.drain)  # SIGTERM drains (voice_gateway.drain)
        storage = build_storage(settings)
        await storage.open()
        spool = Spool(settings.spool_path)
        await spool.open()
        replayer = SpoolReplayer(spool, storage, retry_s=settings.spool_retry_s)
        replaying = asyncio.create_task(replayer.run(), name="spool-replayer")  # at once: writes of a past run
        try:
            app.state.storage = storage
            app.state.spool = spool
            app.state.replayer = replayer
            # Some engines load their model when built (Piper, Coqui): off the event loop, like warm-up.
            app.state.engines = engines or await asyncio.to_thread(build_engines, settings)
            app.state.warmup = await warm(app.state.engines)
            app.state.sessions = set()
            yield
        finally:
            restore_sigterm()
            await app.state.drain.aclose()
            await _stop_replayer(replaying)
            await spool.close()
            await jobs.enqueuer_for(storage).aclose()  # the job queue's pool, if a call opened one
            await storage.close()

    app = FastAPI(title="RelayX voice gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.stream_limiter = RateLimiter(settings.stream_rate_limit_per_minute, settings.stream_rate_limit_burst)
    # One production-rate estimate for the process: every call's replies share its cores.
    app.state.start_policy = StartPolicy(ProductionRate(), others=lambda: len(app.state.sessions) - 1)
    app.state.capacity = Capacity(max_calls_from(settings), queue_depth=lambda: urgency.gate().waiting)
    app.state.tool_runner = ToolRunner(settings, redirect=_call_redirect(settings))
    app.state.metrics = metrics = GatewayMetrics(live_from(app.state))
    app.state.drain = Drain(streams=lambda: app.state.capacity.streams, calls=lambda: list(app.state.sessions),
                            timeout_s=settings.gateway_drain_timeout_s, on_polite_end=metrics.drain_ended.inc)

    @app.get("/health")
    async def health() -> JSONResponse:
        """503 while the database is down (calls in progress go on; their writes wait in the spool).

        A full gateway is healthy (200) with `accepting: false`: the backend reads `capacity` here
        before it dials.
        """
        spool: Spool = app.state.spool
        headroom = app.state.capacity.headroom()
        body: dict[str, Any] = {"status": "ok", "service": "gateway", "database": "ok",
                                "active_calls": len(app.state.sessions), "warmup_s": app.state.warmup,
                                "spool": {"pending": spool.depth, "set_aside": spool.dead},
                                "accepting": headroom.accepting, "capacity": headroom.as_json(),
                                "draining": app.state.drain.draining}
        try:
            await app.state.storage.ping()
        except (StorageError, OSError) as exc:
            body.update(status="degraded", database=f"error: {exc}")
            return JSONResponse(body, status_code=503)
        return JSONResponse(body)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        """200 while a new call would be taken; 503 while the gateway drains, is full or its database does
        not answer (a new stream needs its call row). For load balancers and scalers: not a liveness check."""
        headroom = app.state.capacity.headroom()
        draining = app.state.drain.draining
        reasons = ["draining"] if draining else []
        reasons += [] if headroom.accepting else [app.state.capacity.refusal()]
        try:
            await app.state.storage.ping()
        except (StorageError, OSError) as exc:
            log.error("ready: database unreachable: %s", exc)
            reasons.append("database unreachable")
        capacity = headroom.as_json() | ({"accepting": False} if draining else {})
        body = {"ready": not reasons, "reasons": reasons, "capacity": capacity}
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        """Prometheus text format; no key unless METRICS_TOKEN is set (scraped on the private network)."""
        return metrics_response(lambda: metrics.render(app.state.sessions), settings.metrics_token,
                                request.headers.get("authorization"))

    @app.websocket("/media")
    async def media(websocket: WebSocket) -> None:
        await handle_media_stream(websocket, app)

    return app


async def handle_media_stream(websocket: WebSocket, app: FastAPI) -> None:
    """One Twilio Media Stream, from the upgrade to `stop` (or a dropped connection).

    Refused before it is accepted, in this order: over the per-address rate (429), without a valid
    signature or token (403), draining or above capacity (503, Retry-After). The calls already running
    see none of it.
    """
    settings: Settings = app.state.settings
    metrics: GatewayMetrics = app.state.metrics
    client = websocket.client.host if websocket.client else "unknown"
    allowance = app.state.stream_limiter.check(client)
    if not allowance.allowed:
        log.warning("media stream from %s refused: over STREAM_RATE_LIMIT_PER_MINUTE", client)
        metrics.refuse("rate_limited")
        await _deny(websocket, 429, "too many streams opened from this address",
                    {"Retry-After": str(allowance.retry_after_s)})
        return
    authorized, token_call_id = _authenticate(websocket, settings)
    if not authorized:
        metrics.refuse("unauthorized")
        await _deny(websocket, 403, "invalid X-Twilio-Signature or stream token")
        return
    capacity: Capacity = app.state.capacity
    drain: Drain = app.state.drain
    slot = None if drain.draining else capacity.reserve()  # no await between the check and the count
    if slot is None:
        reason = drain.refusal() if drain.draining else capacity.refusal()
        log.warning("media stream from %s refused: %s", client, reason)
        metrics.refuse("draining" if drain.draining else "capacity")
        await _deny(websocket, 503, reason, {"Retry-After": str(settings.capacity_retry_after_s)})
        return
    metrics.accepted.inc()
    try:
        await _serve_stream(websocket, app, token_call_id)
    finally:
        slot.release()  # after the session has closed (its last writes still count), whatever happened


async def _serve_stream(websocket: WebSocket, app: FastAPI, token_call_id: str | None) -> None:
    """An authenticated stream that holds a capacity slot: accept it, then run it to the end."""
    await websocket.accept()
    send_lock = asyncio.Lock()

    async def send(text: str) -> None:
        async with send_lock:
            if websocket.application_state is WebSocketState.CONNECTED:
                await websocket.send_text(text)

    session: CallSession | None = None
    try:
        while True:
            message = parse_message(await _receive_text(websocket))
            if isinstance(message, Media):
                if session is None:
                    raise policy_violation("media before start")
                await session.on_media(message.media.audio())
            elif isinstance(message, Mark):
                if session is not None:
                    session.on_mark(message.mark.name)
            elif isinstance(message, Start):
                if session is not None:
                    raise policy_violation("a second start on one stream")
                if token_call_id is not None and message.start.custom_parameters.get("call_id") != token_call_id:
                    raise policy_violation("the stream token was issued for another call")
                session = await _open_session(message, send, app, hangup=_hangup(websocket))
                app.state.sessions.add(session)
                await session.start()
            elif isinstance(message, Dtmf):
                if session is not None:
                    await session.on_dtmf(message.dtmf.digit)
            elif isinstance(message, Stop):
                break
            elif isinstance(message, Connected):
                continue
    except WebSocketDisconnect:
        log.info("media stream disconnected")
    except StorageError as exc:  # only before the call started: a started call spools its writes
        log.error("media stream refused: storage failed: %s", exc)
        await _close(websocket, CloseCode.INTERNAL_ERROR, "storage unavailable")
    except ProtocolError as exc:
        log.warning("media stream closed: %s", exc)
        await _close(websocket, exc.code, str(exc))
    except Exception:  # a bug, or a storage that failed in a way it should have named: this stream only
        log.exception("media stream closed: unexpected error")
        await _close(websocket, CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        if session is not None:
            app.state.sessions.discard(session)
            await session.close()
            app.state.metrics.call_ended(session)
    await _close(websocket, CloseCode.NORMAL, "stream ended")


def _authenticate(websocket: WebSocket, settings: Settings) -> tuple[bool, str | None]:
    """Whether the upgrade may open a stream, and the call a stream token binds it to.

    Real Twilio signs the upgrade (X-Twilio-Signature over the public URL, keyed with the auth token);
    everyone else (the simulated line, the browser phone, benchmarks) brings a short-lived token in
    the URL, issued by the backend for one call id. No credential, no stream, in every mode.
    """
    secret = twilio_auth.signing_token(settings)
    token_call_id = stream_tokens.verify(secret, websocket.query_params.get("token"))
    if token_call_id is not None:
        return True, token_call_id
    url = settings.public_gateway_url + websocket.url.path
    signature = websocket.headers.get("x-twilio-signature")
    if settings.twilio_auth_token and twilio_auth.is_valid(settings.twilio_auth_token, url, {}, signature):
        return True, None
    client = websocket.client.host if websocket.client else "?"
    log.warning("media stream from %s refused: no valid X-Twilio-Signature or stream token for %s", client, url)
    return False, None


async def _deny(websocket: WebSocket, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
    """Refuse the upgrade with an HTTP answer (a client sees why); a bare 403 where the server cannot."""
    try:
        await websocket.send_denial_response(PlainTextResponse(reason, status_code=status, headers=headers))
    except RuntimeError:  # no websocket.http.response extension in this server
        await websocket.close(code=CloseCode.POLICY_VIOLATION, reason=reason)


async def _receive_text(websocket: WebSocket) -> str:
    """The next text frame; a binary or oversized frame is a protocol error with its own close code."""
    message = await websocket.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", CloseCode.NORMAL), message.get("reason"))
    text = message.get("text")
    if text is None:
        raise ProtocolError("binary frames are not Media Streams messages", CloseCode.UNSUPPORTED_DATA)
    if len(text) > MAX_MESSAGE_CHARS:
        raise ProtocolError(f"message of {len(text)} characters (at most {MAX_MESSAGE_CHARS})",
                            CloseCode.MESSAGE_TOO_BIG)
    return str(text)


async def _stop_replayer(task: asyncio.Task[None]) -> None:
    """Shutdown: stop replaying (what is left stays in the spool file for the next start)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:
        log.exception("the spool replayer had failed")


def _hangup(websocket: WebSocket) -> Callable[[], Coroutine[Any, Any, None]]:
    """Closing a <Connect><Stream> socket makes Twilio move past <Connect>: with nothing after it,
    the call ends. This is how the agent hangs up."""

    async def close() -> None:
        await _close(websocket, CloseCode.NORMAL, "agent hung up")

    return close


async def _open_session(
    start: Start, send: Send, app: FastAPI, *, hangup: Callable[[], Coroutine[Any, Any, None]]
) -> CallSession:
    call_id = start.start.custom_parameters.get("call_id")
    if not call_id:
        raise policy_violation("start has no call_id custom parameter")
    storage = app.state.storage
    try:
        call = await storage.get_call(call_id)
        agent = await storage.get_agent(call.agent_id)
    except NotFound:
        raise policy_violation(f"unknown call {call_id}") from None
    variables = call.metadata.get("variables")
    agent = personalized(agent, variables if isinstance(variables, dict) else None)
    if call.status in call_status.TERMINAL:
        raise policy_violation(f"call {call_id} has already ended ({call.status})")
    await storage.apply_call_status(call.id, "in-progress", twilio_call_sid=start.start.call_sid)
    log.info("call %s: stream %s started (agent %s)", call.id, start.stream_sid, agent.name)
    return CallSession(
        call=call, agent=agent, stream_sid=start.stream_sid, send=send,
        storage=storage, spool=app.state.spool, engines=app.state.engines,
        recordings_dir=app.state.settings.recordings_path,
        hangup=hangup, start_policy=app.state.start_policy, beep_detector=BeepDetector(),
        tool_runner=app.state.tool_runner,
    )


def _call_redirect(settings: Settings) -> CallRedirect | None:
    """Transfers redirect the live call through Twilio's REST API (the SDK the backend dials with);
    on the simulated line there is no provider call: a transferred call just ends there."""
    if settings.telephony_provider != "twilio":
        return None
    from backend.telephony.twilio import TwilioTelephony
    from shared.errors import ConfigurationError

    try:
        return TwilioTelephony(settings)
    except ConfigurationError as exc:
        log.warning("transfers cannot redirect calls: %s", exc)
        return None


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state is WebSocketState.CONNECTED:
        try:
            await websocket.close(code=code, reason=reason[:120])
        except (RuntimeError, WebSocketDisconnect):
            pass  # the peer went away first
