"""Know your capacity: a gateway of one call (GATEWAY_MAX_CALLS=1) on instant engines and the energy
VAD. Above capacity a new stream gets the documented refusal (HTTP 503, Retry-After, the reason) while
the call already running goes on, answered turn after turn; the backend, reading the gateway's /health,
answers POST /calls/outbound with 503 and Retry-After and dials nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from fastapi import FastAPI

from backend.capacity import Admission, GatewayProbe
from backend.main import create_app as create_backend
from backend.telephony.virtual_phone import CallerLine, VirtualPhone
from relayx_cli.instant_engines import instant_engines
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Call
from tests.conftest import make_settings, media_url
from tests.support.calls import migrate, new_call
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio
from tests.support.servers import free_port, serve
from tests.support.speech import tone_ulaw
from voice_gateway.main import create_app as create_gateway

AUTH = {"Authorization": "Bearer test-key"}
RETRY_AFTER_S = 7


async def _until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `check()` until it is true; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)






async def _read_call(settings: Settings, call_id: str) -> Call:
    storage = build_storage(settings)
    await storage.open()
    try:
        return await storage.get_call(call_id)
    finally:
        await storage.close()


def _start(call_id: str) -> str:
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "callSid": "CA1", "streamSid": "MZ1", "customParameters": {"call_id": call_id}}})


async def _greeted(url: str, call_id: str) -> None:
    """A stream for `call_id` is accepted and the agent's greeting comes back as media."""
    async with websockets.connect(url) as ws:
        await ws.send(_start(call_id))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["event"] == "media"
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """A gateway that carries one call; yields its base HTTP URL and its settings."""
    settings = make_settings(tmp_path, GATEWAY_MAX_CALLS="1", VAD_ENGINE="energy",
                             CAPACITY_RETRY_AFTER_S=str(RETRY_AFTER_S))
    asyncio.run(migrate(settings))
    with serve(create_gateway(settings, engines=instant_engines(settings))) as url:
        yield url, settings


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url)


async def _capacity(base: str) -> dict[str, Any]:
    return dict((await _get(f"{base}/health")).json()["capacity"])


async def _free(base: str) -> bool:
    capacity = await _capacity(base)
    return capacity["streams"] == 0 and capacity["accepting"] is True


# --- the gateway --------------------------------------------------------------------------------------


async def test_above_capacity_a_new_stream_gets_503_and_the_running_call_goes_on(
    gateway: tuple[str, Settings],
) -> None:
    base, settings = gateway
    port = _port(base)
    running, refused_call = await new_call(settings), await new_call(settings)
    health = await _get(f"{base}/health")
    assert health.status_code == 200 and health.json()["accepting"] is True
    assert health.json()["capacity"] | {"cpu": None} == {
        "max_calls": 1, "streams": 0, "free": 1, "accepting": True, "queue_depth": 0, "cpu": None}
    assert (await _get(f"{base}/ready")).status_code == 200

    first_turn = asyncio.Event()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "turn":
            first_turn.set()

    lines = [CallerLine(f"line {i}", tone_ulaw(700)) for i in range(3)]
    phone = VirtualPhone(media_url(settings, port, running.id), custom_parameters={"call_id": running.id},
                         lines=lines, reply_timeout_s=20, on_event=on_event)
    call = asyncio.create_task(phone.run())
    await asyncio.wait_for(first_turn.wait(), 30)  # the running call has been answered once

    health = await _get(f"{base}/health")
    ready = await _get(f"{base}/ready")
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(media_url(settings, port, refused_call.id)):
            pass
    report = await asyncio.wait_for(call, 60)

    body = health.json()
    assert health.status_code == 200 and body["status"] == "ok"  # full is healthy, not degraded
    assert body["accepting"] is False and body["active_calls"] == 1
    assert body["capacity"]["streams"] == 1 and body["capacity"]["max_calls"] == 1
    assert body["capacity"]["free"] == 0
    assert ready.status_code == 503 and ready.json()["reasons"] == ["gateway at capacity: 1 of 1 calls"]
    response = refused.value.response
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert response.body is not None and response.body.decode() == "gateway at capacity: 1 of 1 calls"
    # The running call went on: every line after the refusal answered, nothing cut or cleared, and as
    # fast as before it (measured ~560-600 ms a turn on instant engines; the bound allows a busy CPU).
    assert len(report.turns) == 3 and all(turn.first_agent_frame is not None for turn in report.turns)
    assert report.clears == 0 and report.close_code == 1000
    before, *after = [turn.voice_to_voice_ms or 0.0 for turn in report.turns]
    assert max(after) < before + 400, [turn.voice_to_voice_ms for turn in report.turns]
    assert report.max_frame_gap_ms < 250  # no reply stalled while the refusal was answered
    assert (await _read_call(settings, refused_call.id)).status == "queued"  # refused before any write

    await _until(lambda: _free(base), 20, "the finished call's slot to be released")
    assert (await _read_call(settings, running.id)).status == "completed"
    await _greeted(media_url(settings, port, refused_call.id), refused_call.id)


async def test_a_slot_is_released_when_a_stream_fails_or_drops(gateway: tuple[str, Settings]) -> None:
    base, settings = gateway
    port = _port(base)
    call = await new_call(settings)
    url = media_url(settings, port, call.id)
    async with websockets.connect(url) as ws:  # closed by the gateway: a protocol error
        await ws.send("this is not json")
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    await _until(lambda: _free(base), 20, "the failed stream's slot")
    async with websockets.connect(url):  # dropped by the caller before `start`
        await _until(lambda: _is_full(base), 20, "the slot to be taken")
    await _until(lambda: _free(base), 20, "the dropped stream's slot")
    await _greeted(url, call.id)


async def _is_full(base: str) -> bool:
    return (await _capacity(base))["accepting"] is False


# --- the backend ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_twilio() -> Iterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    with serve(fake.app()) as url:
        yield fake, url


def _backend_settings(tmp_path: Path, twilio_url: str, gateway_url: str) -> Settings:
    return make_settings(
        tmp_path, TELEPHONY_PROVIDER="twilio", TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_FROM_NUMBER=FROM_NUMBER, TWILIO_API_BASE_URL=twilio_url, PUBLIC_BASE_URL="https://relayx.example.test",
        PUBLIC_GATEWAY_URL="wss://gateway.example.test", GATEWAY_INTERNAL_URL=gateway_url,
        CAPACITY_RETRY_AFTER_S=str(RETRY_AFTER_S),
    )


@asynccontextmanager
async def _backend(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_backend(settings, run_jobs=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend", headers=AUTH) as client:
            yield client, app


async def _post_call(client: httpx.AsyncClient, agent_id: str) -> httpx.Response:
    return await client.post("/calls/outbound", json={"agent_id": agent_id, "to_number": "+14155550100"})


async def test_backend_answers_503_with_retry_after_instead_of_dialing_a_call_the_gateway_cannot_carry(
    gateway: tuple[str, Settings], fake_twilio: tuple[FakeTwilio, str], tmp_path: Path,
) -> None:
    base, gateway_settings = gateway
    fake, twilio_url = fake_twilio
    settings = _backend_settings(tmp_path / "backend", twilio_url, base)
    settings = settings.model_copy(update={"database_url": gateway_settings.database_url})
    async with _backend(settings) as (client, app):
        agent = (await client.post("/agents", json={"name": "Ava", "prompt": "Be brief.", "greeting": "Hello there.",
                                                     "settings": {"voicemail": {"detect": False}}})).json()
        # Two requests race for the one free stream: one is dialed, the other waits for it to connect.
        first, second = await asyncio.gather(_post_call(client, agent["id"]), _post_call(client, agent["id"]))
        placed, refused = (first, second) if first.status_code == 201 else (second, first)
        assert placed.status_code == 201, placed.text
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == str(RETRY_AFTER_S)
        assert refused.json() == {"detail": "the voice gateway is at capacity: 0 calls connected and 1 being "
                                            f"dialed, of 1: retry in {RETRY_AFTER_S} s"}
        assert len(fake.requests) == 1  # only the placed call was dialed
        assert [c["id"] for c in (await client.get("/calls")).json()["data"]] == [placed.json()["id"]]

        # The placed call connects: its stream holds the gateway's one slot. Read /health afresh for
        # each request from here on (the probe's one-second cache would hide the step).
        await app.state.admission.aclose()
        app.state.admission = Admission(GatewayProbe(base, ttl_s=0), retry_after_s=RETRY_AFTER_S)
        url = media_url(gateway_settings, _port(base), placed.json()["id"])
        async with websockets.connect(url) as ws:
            await ws.send(_start(placed.json()["id"]))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["event"] == "media"
            full = await _post_call(client, agent["id"])
            assert full.status_code == 503 and full.headers["Retry-After"] == str(RETRY_AFTER_S)
            assert full.json()["detail"] == f"the voice gateway is at capacity: 1 of 1 calls: retry in {RETRY_AFTER_S} s"
            assert len(fake.requests) == 1
            assert len((await client.get("/calls")).json()["data"]) == 1  # no row for a refused call
            await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))
        await _until(lambda: _free(base), 20, "the call's stream to close")
        again = await _post_call(client, agent["id"])
        assert again.status_code == 201, again.text
        assert len(fake.requests) == 2


async def test_backend_dials_when_the_gateway_does_not_answer(
    fake_twilio: tuple[FakeTwilio, str], tmp_path: Path,
) -> None:
    fake, twilio_url = fake_twilio
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = _backend_settings(tmp_path, twilio_url, nobody)
    async with _backend(settings) as (client, _):
        agent = (await client.post("/agents", json={"name": "Ava", "prompt": "Be brief."})).json()
        for _ in range(3):
            response = await _post_call(client, agent["id"])
            assert response.status_code == 201, response.text
        assert len(fake.requests) == 3
