"""The backend's REST API on real storage, with the real twilio SDK against a local fake Twilio cloud."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest

from backend.main import create_app
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio, signed_post
from tests.support.servers import serve

PUBLIC = "https://relayx.example.ngrok.app"
GATEWAY = "wss://gateway.example.ngrok.app"
AUTH = {"Authorization": "Bearer test-key"}
AGENT = {"name": "Ava", "prompt": "You are Ava from Bright Smile Dental. Confirm appointments.",
         "greeting": "Hi, this is Ava from Bright Smile Dental.", "voice": None, "language": "en",
         "llm": {"model": None, "temperature": 0.4, "max_tokens": 100}, "settings": {}}


@pytest.fixture(scope="module")
def fake_twilio() -> Iterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    with serve(fake.app()) as url:
        yield fake, url


@pytest.fixture
async def api(
    database_url: str, tmp_path: Path, fake_twilio: tuple[FakeTwilio, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeTwilio]]:
    fake, twilio_url = fake_twilio
    fake.requests.clear()
    settings = make_settings(
        tmp_path,
        DATABASE_URL=database_url,
        TELEPHONY_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_FROM_NUMBER=FROM_NUMBER,
        TWILIO_API_BASE_URL=twilio_url,
        PUBLIC_BASE_URL=PUBLIC,
        PUBLIC_GATEWAY_URL=GATEWAY,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            yield client, fake


async def _agent(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/agents", json=AGENT, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


async def _call(client: httpx.AsyncClient, agent_id: str) -> dict[str, Any]:
    response = await client.post(
        "/calls/outbound", json={"agent_id": agent_id, "to_number": "+14155550100", "metadata": {"crm": 7}},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    return response.json()


async def test_health_needs_no_key(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}])
async def test_api_refuses_missing_or_wrong_key(api: tuple[httpx.AsyncClient, FakeTwilio], headers: dict) -> None:
    client, _ = api
    response = await client.get("/agents", headers=headers)
    assert response.status_code == 401
    assert "API key" in response.json()["detail"]


async def test_agent_crud(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    agent = await _agent(client)
    assert agent["llm"]["temperature"] == 0.4
    assert agent["settings"]["end_of_turn_silence_ms"] == 280
    patched = await client.patch(f"/agents/{agent['id']}", json={"greeting": "Hello!"}, headers=AUTH)
    assert patched.json()["greeting"] == "Hello!" and patched.json()["prompt"] == AGENT["prompt"]
    assert [a["id"] for a in (await client.get("/agents", headers=AUTH)).json()] == [agent["id"]]
    assert (await client.delete(f"/agents/{agent['id']}", headers=AUTH)).status_code == 204
    missing = await client.get(f"/agents/{agent['id']}", headers=AUTH)
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]


async def test_agent_validation_names_the_field(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    response = await client.post("/agents", json={**AGENT, "llm": {"temperature": 9}}, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][-1] == "temperature"
    assert (await client.get("/agents", headers=AUTH)).json() == []


async def test_outbound_call_goes_through_twilio_sdk(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, fake = api
    agent = await _agent(client)
    call = await _call(client, agent["id"])
    assert call["status"] == "queued" and call["twilio_call_sid"].startswith("CA")
    sent = fake.requests[-1]
    assert sent["path"] == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    form = sent["form"]
    assert form["To"] == "+14155550100" and form["From"] == FROM_NUMBER
    assert form["Url"] == f"{PUBLIC}/twilio/voice/{call['id']}"
    assert form["StatusCallback"] == f"{PUBLIC}/twilio/status/{call['id']}"
    assert form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert sent["auth"].startswith("Basic ")
    stored = (await client.get(f"/calls/{call['id']}", headers=AUTH)).json()
    assert stored["metadata"] == {"crm": 7} and stored["twilio_call_sid"] == call["twilio_call_sid"]


async def test_twilio_error_marks_call_failed_and_answers_502(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, fake = api
    agent = await _agent(client)
    fake.fail_next(21215, "Account not authorized to call +14155550100.")
    response = await client.post(
        "/calls/outbound", json={"agent_id": agent["id"], "to_number": "+14155550100"}, headers=AUTH
    )
    assert response.status_code == 502
    assert "Account not authorized" in response.json()["detail"]["message"]
    assert response.json()["detail"]["provider_code"] == 21215
    calls = (await client.get("/calls", headers=AUTH)).json()["data"]
    assert len(calls) == 1 and calls[0]["status"] == "failed" and "not authorized" in calls[0]["error"]


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        ({"agent_id": "00000000-0000-0000-0000-000000000000", "to_number": "+14155550100"}, 404, "not found"),
        ({"agent_id": "AGENT", "to_number": "555-1234"}, 422, "E.164"),
        ({"agent_id": "AGENT", "to_number": "+0123"}, 422, "E.164"),
        ({"agent_id": "AGENT"}, 422, "to_number"),
    ],
)
async def test_bad_outbound_requests_leave_no_rows(
    api: tuple[httpx.AsyncClient, FakeTwilio], body: dict, code: int, needle: str
) -> None:
    client, fake = api
    agent = await _agent(client)
    body = {k: (agent["id"] if v == "AGENT" else v) for k, v in body.items()}
    response = await client.post("/calls/outbound", json=body, headers=AUTH)
    assert response.status_code == code
    assert needle in response.text
    assert (await client.get("/calls", headers=AUTH)).json()["data"] == []
    assert fake.requests == []


async def test_list_calls_filters_and_paginates(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    agent = await _agent(client)
    other = await _agent(client)
    ids = [(await _call(client, agent["id"]))["id"] for _ in range(3)]
    await _call(client, other["id"])
    page = (await client.get("/calls", params={"agent_id": agent["id"], "limit": 2}, headers=AUTH)).json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    rest = (await client.get("/calls", params={"agent_id": agent["id"], "limit": 2, "offset": 2},
                             headers=AUTH)).json()
    assert rest["has_more"] is False
    assert {c["id"] for c in page["data"] + rest["data"]} == set(ids)
    assert (await client.get("/calls", params={"status": "queued"}, headers=AUTH)).json()["data"]
    bad = await client.get("/calls", params={"status": "exploded"}, headers=AUTH)
    assert bad.status_code == 422 and "'in-progress'" in bad.text  # names the statuses it takes


async def test_twiml_connects_stream_with_call_id_parameter(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    call = await _call(client, (await _agent(client))["id"])
    path = f"/twilio/voice/{call['id']}"
    params = {"CallSid": call["twilio_call_sid"], "AccountSid": ACCOUNT_SID, "CallStatus": "in-progress"}
    response = await signed_post(client, PUBLIC + path, path, params)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    root = ElementTree.fromstring(response.text)
    stream = root.find("./Connect/Stream")
    assert stream is not None and stream.get("url") == f"{GATEWAY}/media"
    parameter = stream.find("./Parameter")
    assert parameter is not None and parameter.get("name") == "call_id" and parameter.get("value") == call["id"]


async def test_webhooks_refuse_bad_signature(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    call = await _call(client, (await _agent(client))["id"])
    path = f"/twilio/status/{call['id']}"
    params = {"CallSid": call["twilio_call_sid"], "CallStatus": "completed", "CallDuration": "30"}
    forged = await signed_post(client, PUBLIC + path, path, params, token="not-the-token")
    unsigned = await client.post(path, data=params)
    wrong_url = await signed_post(client, "https://evil.example" + path, path, params)
    for response in (forged, unsigned, wrong_url):
        assert response.status_code == 403 and "X-Twilio-Signature" in response.text
    assert (await client.get(f"/calls/{call['id']}", headers=AUTH)).json()["status"] == "queued"


async def test_status_callbacks_in_any_order_end_completed(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    call = await _call(client, (await _agent(client))["id"])
    path = f"/twilio/status/{call['id']}"
    events = [("initiated", "0"), ("in-progress", "2"), ("completed", "3"), ("ringing", "1"), ("completed", "3")]
    for status, seq in events:
        params = {"CallSid": call["twilio_call_sid"], "CallStatus": status, "SequenceNumber": seq}
        if status == "completed":
            params["CallDuration"] = "37"
        response = await signed_post(client, PUBLIC + path, path, params)
        assert response.status_code == 204, response.text
    stored = (await client.get(f"/calls/{call['id']}", headers=AUTH)).json()
    assert stored["status"] == "completed" and stored["duration"] == 37
    assert stored["started_at"] and stored["ended_at"]


@pytest.mark.parametrize("status", ["busy", "no-answer", "canceled", "failed"])
async def test_every_terminal_status_is_stored(api: tuple[httpx.AsyncClient, FakeTwilio], status: str) -> None:
    client, _ = api
    call = await _call(client, (await _agent(client))["id"])
    path = f"/twilio/status/{call['id']}"
    await signed_post(client, PUBLIC + path, path, {"CallSid": call["twilio_call_sid"], "CallStatus": status})
    assert (await client.get(f"/calls/{call['id']}", headers=AUTH)).json()["status"] == status


async def test_unknown_status_is_a_400(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    call = await _call(client, (await _agent(client))["id"])
    path = f"/twilio/status/{call['id']}"
    response = await signed_post(client, PUBLIC + path, path, {"CallStatus": "exploded"})
    assert response.status_code == 400 and "unknown call status" in response.text


async def test_hangup_updates_twilio_call(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, fake = api
    call = await _call(client, (await _agent(client))["id"])
    response = await client.post(f"/calls/{call['id']}/hangup", headers=AUTH)
    assert response.status_code == 202
    assert fake.requests[-1]["path"].endswith(f"/Calls/{call['twilio_call_sid']}.json")
    assert fake.requests[-1]["form"] == {"Status": "completed"}


async def test_transcripts_of_unknown_call_is_404(api: tuple[httpx.AsyncClient, FakeTwilio]) -> None:
    client, _ = api
    response = await client.get("/calls/00000000-0000-0000-0000-000000000000/transcripts", headers=AUTH)
    assert response.status_code == 404
