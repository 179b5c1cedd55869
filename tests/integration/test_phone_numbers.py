"""Phone numbers and inbound calls on both databases: the /phone-numbers API, Twilio's signed incoming-call
webhook and the number's status callback, the browser phone dialing a number, and a simulated caller
on the virtual line (its stream opened against a stub gateway at the WebSocket wire)."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from websockets.asyncio.server import ServerConnection, serve

from backend.capacity import Admission, GatewayProbe
from backend.main import create_app
from backend.telephony.simulated_inbound import InboundSimulator
from shared import stream_tokens
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, signed_post
from tests.support.servers import free_port

PUBLIC = "https://relayx.example.test"
GATEWAY = "wss://gateway.example.test"
AUTH = {"Authorization": "Bearer test-key"}
NUMBER = "+14155550100"
CALLER = "+15551230000"


def _sid(n: int) -> str:
    return f"CA{n:032x}"


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    """Twilio as the provider (nothing is dialed here; the webhooks are signed with its auth token)."""
    settings = make_settings(
        tmp_path, DATABASE_URL=database_url, TELEPHONY_PROVIDER="twilio", TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM_NUMBER, PUBLIC_BASE_URL=PUBLIC,
        PUBLIC_GATEWAY_URL=GATEWAY, TWILIO_API_BASE_URL=f"http://127.0.0.1:{free_port()}",
    )
    application = create_app(settings, run_jobs=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend") as http:
        yield http


async def _agent(client: httpx.AsyncClient, name: str = "Ava") -> str:
    response = await client.post("/agents", json={"name": name, "prompt": "Answer the phone."}, headers=AUTH)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _number(client: httpx.AsyncClient, agent_id: str, number: str = NUMBER, **fields: Any) -> dict[str, Any]:
    response = await client.post(
        "/phone-numbers", json={"number": number, "agent_id": agent_id, **fields}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _calls(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    return list((await client.get("/calls", headers=AUTH)).json()["data"])


async def _incoming(
    client: httpx.AsyncClient, to: str = NUMBER, sid: str = _sid(1), token: str = AUTH_TOKEN, **extra: str
) -> httpx.Response:
    form = {"To": to, "From": CALLER, "CallSid": sid, "AccountSid": ACCOUNT_SID, "CallStatus": "ringing",
            "Direction": "inbound", "ApiVersion": "2010-04-01", **extra}
    return await signed_post(client, PUBLIC + "/twilio/inbound", "/twilio/inbound", form, token=token)


def _twiml(response: httpx.Response) -> ElementTree.Element:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ElementTree.fromstring(response.text)


def _rejected(response: httpx.Response) -> bool:
    root = _twiml(response)
    return root.tag == "Response" and [child.tag for child in root] == ["Reject"]


# --- the /phone-numbers API -------------------------------------------------------------------------


async def test_phone_number_crud(client: httpx.AsyncClient) -> None:
    ava, bob = await _agent(client), await _agent(client, "Bob")
    created = await _number(client, ava, "+1 (415) 555-0100")
    assert created["number"] == NUMBER and created["agent_id"] == ava and created["inbound_enabled"] is True
    other = await _number(client, bob, "+442071838750", inbound_enabled=False)
    assert (await client.get(f"/phone-numbers/{created['id']}", headers=AUTH)).json() == created
    listed = (await client.get("/phone-numbers", headers=AUTH)).json()
    assert [n["id"] for n in listed] == [created["id"], other["id"]]
    mine = (await client.get("/phone-numbers", params={"agent_id": ava}, headers=AUTH)).json()
    assert [n["id"] for n in mine] == [created["id"]]
    assert (await client.get("/phone-numbers", params={"agent_id": "nope"}, headers=AUTH)).json() == []

    patched = await client.patch(f"/phone-numbers/{created['id']}", json={"inbound_enabled": False}, headers=AUTH)
    assert patched.status_code == 200 and patched.json()["inbound_enabled"] is False
    moved = await client.patch(f"/phone-numbers/{created['id']}", json={"agent_id": bob}, headers=AUTH)
    assert moved.json()["agent_id"] == bob and moved.json()["number"] == NUMBER
    assert (await client.delete(f"/phone-numbers/{created['id']}", headers=AUTH)).status_code == 204
    for method in ("GET", "DELETE"):
        gone = await client.request(method, f"/phone-numbers/{created['id']}", headers=AUTH)
        assert gone.status_code == 404 and "not found" in gone.json()["detail"]


async def test_a_number_is_configured_once(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    first = await _number(client, agent)
    again = await client.post("/phone-numbers", json={"number": "+1 415 555 0100", "agent_id": agent}, headers=AUTH)
    assert again.status_code == 409 and "already configured" in again.json()["detail"]
    second = await _number(client, agent, "+14155550111")
    taken = await client.patch(f"/phone-numbers/{second['id']}", json={"number": NUMBER}, headers=AUTH)
    assert taken.status_code == 409
    same = await client.patch(f"/phone-numbers/{first['id']}", json={"number": NUMBER}, headers=AUTH)
    assert same.status_code == 200  # its own number is not a conflict
    assert [n["number"] for n in (await client.get("/phone-numbers", headers=AUTH)).json()] == [NUMBER, "+14155550111"]


async def test_an_unknown_agent_is_a_404_and_writes_nothing(client: httpx.AsyncClient) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    response = await client.post("/phone-numbers", json={"number": NUMBER, "agent_id": missing}, headers=AUTH)
    assert response.status_code == 404 and "agent" in response.json()["detail"]
    deleted = await _agent(client)
    await client.delete(f"/agents/{deleted}", headers=AUTH)
    response = await client.post("/phone-numbers", json={"number": NUMBER, "agent_id": deleted}, headers=AUTH)
    assert response.status_code == 404
    assert (await client.get("/phone-numbers", headers=AUTH)).json() == []
    number = await _number(client, await _agent(client))
    moved = await client.patch(f"/phone-numbers/{number['id']}", json={"agent_id": missing}, headers=AUTH)
    assert moved.status_code == 404


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"number": "555-0100"}, "E.164"),
        ({"number": "+0123456789"}, "E.164"),
        ({"number": "+1415555\u0661\u0662\u0663\u0664"}, "E.164"),  # other scripts' digits
        ({"inbound_enabled": "true"}, "inbound_enabled"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_bodies_are_422(client: httpx.AsyncClient, body: dict[str, Any], needle: str) -> None:
    agent = await _agent(client)
    response = await client.post("/phone-numbers", json={"number": NUMBER, "agent_id": agent, **body}, headers=AUTH)
    assert response.status_code == 422 and needle in response.text
    assert (await client.get("/phone-numbers", headers=AUTH)).json() == []


async def test_patch_refuses_null(client: httpx.AsyncClient) -> None:
    number = await _number(client, await _agent(client))
    for field in ("number", "agent_id", "inbound_enabled"):
        response = await client.patch(f"/phone-numbers/{number['id']}", json={field: None}, headers=AUTH)
        assert response.status_code == 422 and "cannot be null" in response.text, field


async def test_phone_numbers_need_the_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/phone-numbers")).status_code == 401
    assert (await client.post("/phone-numbers", json={"number": NUMBER, "agent_id": "x"})).status_code == 401


# --- Twilio's incoming-call webhook -----------------------------------------------------------------


async def test_a_call_to_a_configured_number_is_answered_by_its_agent(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    number = await _number(client, agent)
    root = _twiml(await _incoming(client))
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"{GATEWAY}/media"
    parameter = stream.find("./Parameter")
    assert parameter is not None and parameter.get("name") == "call_id"
    [call] = await _calls(client)
    assert parameter.get("value") == call["id"]
    assert (call["direction"], call["status"], call["agent_id"]) == ("inbound", "ringing", agent)
    assert (call["to_number"], call["from_number"], call["twilio_call_sid"]) == (NUMBER, CALLER, _sid(1))
    assert call["metadata"] == {"phone_number_id": number["id"]}
    assert call["answered_by"] is None and call["transferred_to"] is None

    # Twilio asking again for the same call gets the same call, not a second row.
    repeated = _twiml(await _incoming(client)).find("./Connect/Stream/Parameter")
    assert repeated is not None and repeated.get("value") == call["id"]
    assert len(await _calls(client)) == 1


async def test_unknown_disabled_or_orphaned_numbers_are_rejected(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    await _number(client, agent, "+14155550111", inbound_enabled=False)
    orphan = await _agent(client, "Gone")
    await _number(client, orphan, "+14155550122")
    await client.delete(f"/agents/{orphan}", headers=AUTH)
    for to in ("+14155550199", "+14155550111", "+14155550122", "client:alice", ""):
        assert _rejected(await _incoming(client, to=to)), to
    assert await _calls(client) == []


async def test_a_gateway_at_capacity_rejects_the_call_as_busy(client: httpx.AsyncClient, app: FastAPI) -> None:
    await _number(client, await _agent(client))
    full = {"status": "ok", "capacity": {"max_calls": 1, "streams": 1, "accepting": False}}
    probe = GatewayProbe("http://gateway", transport=httpx.MockTransport(lambda _: httpx.Response(200, json=full)))
    app.state.admission = Admission(probe, retry_after_s=5)
    try:
        root = _twiml(await _incoming(client))
    finally:
        await probe.aclose()
    reject = root.find("./Reject")
    assert reject is not None and reject.get("reason") == "busy"
    assert await _calls(client) == []


async def test_incoming_call_webhook_refuses_bad_signatures(client: httpx.AsyncClient) -> None:
    await _number(client, await _agent(client))
    forged = await _incoming(client, token="not-the-token")
    form = {"To": NUMBER, "From": CALLER, "CallSid": _sid(1)}
    unsigned = await client.post("/twilio/inbound", data=form)
    wrong_url = await signed_post(client, "https://evil.example/twilio/inbound", "/twilio/inbound", form, AUTH_TOKEN)
    for response in (forged, unsigned, wrong_url):
        assert response.status_code == 403 and "X-Twilio-Signature" in response.text
    assert await _calls(client) == []


@pytest.mark.parametrize(
    ("form", "needle"),
    [({"CallSid": _sid(1)}, "To is missing"), ({"To": NUMBER}, "CallSid is missing"),
     ({"To": NUMBER, "CallSid": "CA123"}, "CallSid must be"), ({"To": NUMBER, "CallSid": _sid(1), "From": "a\x00b"}, "From")],
)
async def test_incoming_call_webhook_refuses_forms_twilio_would_not_send(
    client: httpx.AsyncClient, form: dict[str, str], needle: str
) -> None:
    await _number(client, await _agent(client))
    response = await signed_post(client, PUBLIC + "/twilio/inbound", "/twilio/inbound", form)
    assert response.status_code == 400 and needle in response.text
    assert await _calls(client) == []


async def test_a_sid_of_another_call_is_a_409(client: httpx.AsyncClient, app: FastAPI) -> None:
    agent = await _agent(client)
    await _number(client, agent)
    await app.state.storage.create_call(agent_id=agent, to_number="+15550001111", from_number=None, metadata={},
                                        twilio_call_sid=_sid(7))
    response = await _incoming(client, sid=_sid(7))
    assert response.status_code == 409 and "another call" in response.text
    assert len(await _calls(client)) == 1


async def test_the_numbers_status_callback_finds_the_call_by_sid(client: httpx.AsyncClient) -> None:
    await _number(client, await _agent(client))
    await _incoming(client)
    path = "/twilio/inbound/status"
    form = {"CallSid": _sid(1), "CallStatus": "completed", "CallDuration": "42", "To": NUMBER}
    assert (await signed_post(client, PUBLIC + path, path, form)).status_code == 204
    [call] = await _calls(client)
    assert (call["status"], call["duration"]) == ("completed", 42) and call["ended_at"]
    unknown = await signed_post(client, PUBLIC + path, path, {**form, "CallSid": _sid(2)})
    assert unknown.status_code == 404
    forged = await signed_post(client, PUBLIC + path, path, form, token="nope")
    assert forged.status_code == 403


async def test_a_simulated_call_needs_the_simulator(client: httpx.AsyncClient) -> None:
    number = await _number(client, await _agent(client))
    response = await client.post(f"/phone-numbers/{number['id']}/simulate-inbound", json={}, headers=AUTH)
    assert response.status_code == 409 and "TELEPHONY_PROVIDER=simulator" in response.text
    assert await _calls(client) == []


# --- the browser phone dials a number -------------------------------------------------------------


async def test_the_browser_phone_dials_a_number(client: httpx.AsyncClient) -> None:
    agent = await _agent(client)
    number = await _number(client, agent)
    await _number(client, agent, "+14155550111", inbound_enabled=False)
    response = await client.post("/phone/calls", json={"to_number": "+1 415 555 0100"}, headers=AUTH)
    assert response.status_code == 201, response.text
    placed = response.json()
    assert stream_tokens.verify(AUTH_TOKEN, placed["stream_url"].partition("?token=")[2]) == placed["call_id"]
    [call] = await _calls(client)
    assert (call["id"], call["direction"], call["agent_id"], call["to_number"]) == (
        placed["call_id"], "inbound", agent, NUMBER)
    assert call["metadata"] == {"channel": "browser", "phone_number_id": number["id"]}
    ended = await client.post(f"/phone/calls/{call['id']}/end", headers=AUTH)
    assert ended.status_code == 200 and ended.json()["status"] == "canceled"

    disabled = await client.post("/phone/calls", json={"to_number": "+14155550111"}, headers=AUTH)
    assert disabled.status_code == 409 and "disabled" in disabled.text
    unknown = await client.post("/phone/calls", json={"to_number": "+14155550199"}, headers=AUTH)
    assert unknown.status_code == 404
    both = await client.post("/phone/calls", json={"to_number": NUMBER, "agent_id": agent}, headers=AUTH)
    assert both.status_code == 422
    assert len(await _calls(client)) == 1


# --- a simulated caller dials a number -------------------------------------------------------------


class StubGateway:
    """A WebSocket server where the gateway would be: it keeps each stream's URL and `start`, then hangs up."""

    def __init__(self) -> None:
        self.streams: list[tuple[str, dict[str, Any]]] = []

    async def handle(self, socket: ServerConnection) -> None:
        assert socket.request is not None
        async for raw in socket:
            message = json.loads(raw)
            if message["event"] == "start":
                self.streams.append((socket.request.path, message["start"]))
                await socket.close(1000, "agent hung up")


@pytest.fixture
async def simulated(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, StubGateway, InboundSimulator]]:
    """The simulator as the provider; the line reaches this app in process and streams to a stub gateway."""
    gateway = StubGateway()
    async with serve(gateway.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        settings = make_settings(tmp_path, PUBLIC_BASE_URL=PUBLIC, PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{port}",
                                 BACKEND_INTERNAL_URL=f"http://127.0.0.1:{free_port()}")
        application = create_app(settings, run_jobs=False)
        simulator = InboundSimulator(settings, transport=httpx.ASGITransport(app=application))
        application.state.inbound_simulator = simulator
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://backend") as http:
                try:
                    yield http, gateway, simulator
                finally:
                    await simulator.aclose()


def _wav(path: Path) -> str:
    """A short tone as a WAV file: a script line that needs no speech synthesis."""
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        tone = (np.sin(np.arange(1600) * 2 * np.pi * 440 / 8000) * 8000).astype(np.int16)
        writer.writeframes(tone.tobytes())
    return str(path)


async def test_a_simulated_caller_dials_a_number_and_streams_to_its_agent(
    simulated: tuple[httpx.AsyncClient, StubGateway, InboundSimulator], tmp_path: Path
) -> None:
    client, gateway, simulator = simulated
    agent = await _agent(client)
    number = await _number(client, agent)
    script = [{"wav": _wav(tmp_path / "hello.wav"), "text": "Hello?"}]
    response = await client.post(
        f"/phone-numbers/{number['id']}/simulate-inbound", json={"from_number": CALLER, "simulate": script},
        headers=AUTH,
    )
    assert response.status_code == 202, response.text
    answered = response.json()
    [call] = await _calls(client)
    assert call["id"] == answered["call_id"] and call["direction"] == "inbound" and call["agent_id"] == agent
    assert (call["to_number"], call["from_number"]) == (NUMBER, CALLER)
    assert call["twilio_call_sid"] == answered["twilio_call_sid"]

    await asyncio.wait_for(simulator.join(), 30)  # the stub hangs up at `start`: the line posts the end
    [(path, start)] = gateway.streams
    assert start["customParameters"] == {"call_id": call["id"]} and start["callSid"] == call["twilio_call_sid"]
    token = parse_qs(urlsplit(path).query)["token"][0]
    assert stream_tokens.verify("test-key", token) == call["id"]  # the simulator signs with the API key
    ended = (await client.get(f"/calls/{call['id']}", headers=AUTH)).json()
    assert ended["status"] == "completed" and ended["duration"] is not None


async def test_a_simulated_call_to_a_disabled_number_is_rejected(
    simulated: tuple[httpx.AsyncClient, StubGateway, InboundSimulator], tmp_path: Path
) -> None:
    client, gateway, _ = simulated
    number = await _number(client, await _agent(client), inbound_enabled=False)
    response = await client.post(f"/phone-numbers/{number['id']}/simulate-inbound", json={}, headers=AUTH)
    assert response.status_code == 409 and "rejected" in response.text
    missing = await client.post(
        "/phone-numbers/00000000-0000-0000-0000-000000000000/simulate-inbound", json={}, headers=AUTH
    )
    assert missing.status_code == 404
    bad_wav = await client.post(
        f"/phone-numbers/{number['id']}/simulate-inbound", json={"simulate": [{"wav": "/etc/passwd"}]}, headers=AUTH
    )
    assert bad_wav.status_code == 422 and "existing .wav" in bad_wav.text
    assert await _calls(client) == [] and gateway.streams == []
