"""The gateway's /media socket under bad input, with STT/LLM/TTS replaced by instant engines
(`relayx_cli.instant_engines`: this checks the socket's rules, not the models): every refusal closes
that one socket with a reason, and the process goes on serving real streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets

from relayx_cli.instant_engines import instant_engines
from shared import stream_tokens, twilio_auth
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Call
from tests.conftest import make_settings
from tests.support.calls import migrate, new_call
from tests.support.servers import free_port, serve
from voice_gateway.main import create_app

TOKEN = "gateway-test-auth-token"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, str]]:
    port = free_port()
    public = "wss://gateway.example.test"
    settings = make_settings(tmp_path, TWILIO_AUTH_TOKEN=TOKEN, PUBLIC_GATEWAY_URL=public)
    asyncio.run(migrate(settings))  # the backend migrates in production; here there is no backend
    with serve(create_app(settings, engines=instant_engines(settings)), port):
        yield f"ws://127.0.0.1:{port}/media", str(tmp_path)




@pytest.fixture
async def call(gateway: tuple[str, str]) -> AsyncIterator[Call]:
    settings = make_settings(Path(gateway[1]))
    storage = build_storage(settings)
    await storage.open()
    agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "greeting": "Hello there.",
                                          "settings": {"voicemail": {"detect": False}}})
    yield await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
    await storage.close()


def _signed() -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_auth.sign(TOKEN, "wss://gateway.example.test/media", {})}


def _start(call_id: str | None) -> str:
    params = {"call_id": call_id} if call_id else {}
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "accountSid": "AC1", "callSid": "CA1", "streamSid": "MZ1", "customParameters": params}})


async def _closed_with(url: str, messages: list[str], headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with websockets.connect(url, additional_headers=headers or _signed()) as ws:
        for message in messages:
            await ws.send(message)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        return ws.close_code or 0, ws.close_reason or ""


async def test_unsigned_upgrade_is_refused(gateway: tuple[str, str]) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(gateway[0]):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(gateway[0], additional_headers={"X-Twilio-Signature": "forged"}):
            pass


@pytest.mark.parametrize(
    ("messages", "code", "reason"),
    [
        (["this is not json"], 1007, "not JSON"),
        (['{"event": "media", "media": {"payload": "/w=="}}'], 1008, "media before start"),
        ([_start(None)], 1008, "no call_id"),
        ([_start("00000000-0000-0000-0000-000000000000")], 1008, "unknown call"),
    ],
)
async def test_bad_streams_are_closed_with_a_reason(
    gateway: tuple[str, str], messages: list[str], code: int, reason: str
) -> None:
    closed_code, closed_reason = await _closed_with(gateway[0], messages)
    assert closed_code == code and reason in closed_reason


async def test_token_for_another_call_is_refused(gateway: tuple[str, str], call: Call) -> None:
    token = stream_tokens.issue(TOKEN, "some-other-call")
    code, reason = await _closed_with(f"{gateway[0]}?token={token}", [_start(call.id)], headers={})
    assert code == 1008 and "another call" in reason


@pytest.mark.parametrize("auth", ["signature", "browser-token"])
async def test_valid_stream_is_greeted_after_bad_ones(gateway: tuple[str, str], call: Call, auth: str) -> None:
    await _closed_with(gateway[0], ["garbage"])
    url, headers = gateway[0], _signed()
    if auth == "browser-token":
        url, headers = f"{url}?token={stream_tokens.issue(TOKEN, call.id)}", {}
    async with websockets.connect(url, additional_headers=headers) as ws:
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(_start(call.id))
        events = []
        while len([e for e in events if e == "media"]) < 5:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["event"])
        assert set(events) == {"media"}
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))


@pytest.fixture
def default_gateway(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """The embedded default: simulated line, no TWILIO_AUTH_TOKEN; streams still need a token."""
    port = free_port()
    settings = make_settings(tmp_path)
    asyncio.run(migrate(settings))
    with serve(create_app(settings, engines=instant_engines(settings)), port):
        yield f"ws://127.0.0.1:{port}/media", settings




async def _greeted(url: str, call_id: str) -> None:
    """A stream for `call_id` is accepted and the agent's greeting comes back as media."""
    async with websockets.connect(url) as ws:
        await ws.send(_start(call_id))
        event = json.loads(await asyncio.wait_for(ws.recv(), 10))["event"]
        assert event == "media"
        await ws.send(json.dumps({"event": "stop", "streamSid": "MZ1", "stop": {}}))


async def test_default_mode_refuses_streams_without_a_token_for_the_call(
    default_gateway: tuple[str, Settings],
) -> None:
    url, settings = default_gateway
    call = await new_call(settings)
    secret = twilio_auth.signing_token(settings)
    refused = [
        url,  # no credential at all: anyone who learns a call id could speak into the call
        f"{url}?token=garbage",
        f"{url}?token={stream_tokens.issue('another-secret', call.id)}",  # forged
        f"{url}?token={stream_tokens.issue(secret, call.id, now=time.time() - 3600)}",  # expired
    ]
    for attempt in refused:
        with pytest.raises(websockets.InvalidStatus) as caught:
            async with websockets.connect(attempt):
                pass
        assert caught.value.response.status_code == 403, attempt
    # A Twilio-style signature means nothing without TWILIO_AUTH_TOKEN (there is no auth token to check it).
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(url, additional_headers={
                "X-Twilio-Signature": twilio_auth.sign(secret, settings.public_gateway_url + "/media", {})}):
            pass
    other = stream_tokens.stream_url(url, secret, "some-other-call")
    code, reason = await _closed_with(other, [_start(call.id)], headers={})
    assert code == 1008 and "another call" in reason
    await _greeted(stream_tokens.stream_url(url, secret, call.id), call.id)


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"\x00\x01binary", 1003, "binary"),
        ("[" * 100_000 + "]" * 100_000, 1009, "at most"),  # oversize before anything is parsed
        ("[" * 20_000 + "]" * 20_000, 1007, "nested too deeply"),
        ('{"event": "start", "start": ' + '{"a": ' * 5000 + "1" + "}" * 5001, 1007, "nested too deeply"),
        ('{"event": "media", "media": {"payload": "' + "A" * 70_000 + '"}}', 1009, "at most"),
    ],
)
async def test_malformed_frames_get_exact_close_codes_and_the_gateway_keeps_serving(
    default_gateway: tuple[str, Settings], frame: str | bytes, code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    url, settings = default_gateway
    call = await new_call(settings)
    stream = stream_tokens.stream_url(url, twilio_auth.signing_token(settings), call.id)
    async with websockets.connect(stream, max_size=None) as ws:
        await ws.send(frame)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == code and reason in (ws.close_reason or ""), (ws.close_code, ws.close_reason)
    assert "Traceback" not in caplog.text
    fresh = await new_call(settings)
    await _greeted(stream_tokens.stream_url(url, twilio_auth.signing_token(settings), fresh.id), fresh.id)


async def test_one_address_opening_streams_too_fast_gets_429_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, STREAM_RATE_LIMIT_PER_MINUTE="60", STREAM_RATE_LIMIT_BURST="2")
    await migrate(settings)
    call = await new_call(settings)
    app = create_app(settings, engines=instant_engines(settings))
    now = [1000.0]
    app.state.stream_limiter.clock = lambda: now[0]  # a fake clock: the refill is stepped, not waited for
    port = free_port()
    with serve(app, port):
        url = stream_tokens.stream_url(f"ws://127.0.0.1:{port}/media", twilio_auth.signing_token(settings), call.id)
        for _ in range(2):  # the burst
            async with websockets.connect(url):
                pass
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"] == "1"
        now[0] += 1.0  # one stream a second comes back
        await _greeted(url, call.id)


async def test_an_unexpected_error_closes_that_stream_with_1011_and_the_next_is_served(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    await migrate(settings)
    call = await new_call(settings)
    app = create_app(settings, engines=instant_engines(settings))
    port = free_port()
    with serve(app, port):
        storage = app.state.storage
        real_get_call = storage.get_call
        failures = [RuntimeError("a storage failing in a way it did not name")]

        async def get_call(call_id: str) -> Call:
            if failures:
                raise failures.pop()
            return await real_get_call(call_id)

        storage.get_call = get_call
        url = stream_tokens.stream_url(f"ws://127.0.0.1:{port}/media", twilio_auth.signing_token(settings), call.id)
        code, reason = await _closed_with(url, [_start(call.id)], headers={})
        assert code == 1011 and reason == "internal error"
        await _greeted(url, call.id)
