"""Answering-machine detection and live-call redirects, with the real twilio SDK against the local fake
Twilio cloud: what Calls.create carries, the signed AsyncAmdStatusCallback, and `update_twiml`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backend.main import create_app
from backend.telephony.base import TelephonyError
from backend.telephony.twilio import TwilioTelephony
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio, signed_post
from tests.support.servers import serve

PUBLIC = "https://relayx.example.test"
AUTH = {"Authorization": "Bearer test-key"}


@pytest.fixture(scope="module")
def fake_twilio() -> Iterator[tuple[FakeTwilio, str]]:
    fake = FakeTwilio()
    with serve(fake.app()) as url:
        yield fake, url


@pytest.fixture
async def app(
    database_url: str, tmp_path: Path, fake_twilio: tuple[FakeTwilio, str]
) -> AsyncIterator[FastAPI]:
    fake, url = fake_twilio
    fake.requests.clear()
    settings = make_settings(
        tmp_path, DATABASE_URL=database_url, TELEPHONY_PROVIDER="twilio", TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM_NUMBER, TWILIO_API_BASE_URL=url, PUBLIC_BASE_URL=PUBLIC,
    )
    application = create_app(settings, run_jobs=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://backend") as http:
        yield http


async def _call(client: httpx.AsyncClient, **settings: Any) -> dict[str, Any]:
    agent = await client.post("/agents", json={"name": "Ava", "prompt": "Call.", "settings": settings}, headers=AUTH)
    assert agent.status_code == 201, agent.text
    response = await client.post(
        "/calls/outbound", json={"agent_id": agent.json()["id"], "to_number": "+14155550100"}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _amd(client: httpx.AsyncClient, call_id: str, form: dict[str, str], token: str = AUTH_TOKEN) -> httpx.Response:
    path = f"/twilio/amd/{call_id}"
    return await signed_post(client, PUBLIC + path, path, form, token=token)


async def _stored(client: httpx.AsyncClient, call_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/calls/{call_id}", headers=AUTH)).json())


async def test_outbound_calls_ask_twilio_for_async_machine_detection(
    client: httpx.AsyncClient, fake_twilio: tuple[FakeTwilio, str]
) -> None:
    fake, _ = fake_twilio
    call = await _call(client)
    form = fake.requests[-1]["form"]
    assert form["MachineDetection"] == "DetectMessageEnd"
    assert form["AsyncAmd"] == "true"
    assert form["AsyncAmdStatusCallback"] == f"{PUBLIC}/twilio/amd/{call['id']}"
    assert form["AsyncAmdStatusCallbackMethod"] == "POST"


async def test_no_machine_detection_when_the_agent_turns_it_off(
    client: httpx.AsyncClient, fake_twilio: tuple[FakeTwilio, str]
) -> None:
    fake, _ = fake_twilio
    await _call(client, voicemail={"detect": False})
    form = fake.requests[-1]["form"]
    assert not {"MachineDetection", "AsyncAmd", "AsyncAmdStatusCallback"} & set(form)
    assert form["Url"].startswith(f"{PUBLIC}/twilio/voice/")


async def test_a_signed_amd_result_is_stored_on_the_call(client: httpx.AsyncClient) -> None:
    call = await _call(client)
    form = {"AnsweredBy": "machine_end_beep", "CallSid": call["twilio_call_sid"], "AccountSid": ACCOUNT_SID,
            "MachineDetectionDuration": "4120"}
    response = await _amd(client, call["id"], form)
    assert response.status_code == 204, response.text
    assert (await _stored(client, call["id"]))["answered_by"] == "machine_end_beep"
    listed = (await client.get("/calls", headers=AUTH)).json()["data"]
    assert [(c["direction"], c["answered_by"]) for c in listed] == [("outbound", "machine_end_beep")]


async def test_a_forged_amd_result_is_a_403_and_changes_nothing(client: httpx.AsyncClient) -> None:
    call = await _call(client)
    form = {"AnsweredBy": "human", "CallSid": call["twilio_call_sid"]}
    forged = await _amd(client, call["id"], form, token="not-the-token")
    unsigned = await client.post(f"/twilio/amd/{call['id']}", data=form)
    for response in (forged, unsigned):
        assert response.status_code == 403 and "X-Twilio-Signature" in response.text
    assert (await _stored(client, call["id"]))["answered_by"] is None


@pytest.mark.parametrize(
    ("form", "needle"),
    [({"AnsweredBy": "robot"}, "unknown AnsweredBy"), ({}, "AnsweredBy is missing"),
     ({"AnsweredBy": "human", "CallSid": "CA1"}, "CallSid must be")],
)
async def test_an_amd_form_twilio_would_not_send_is_a_400(
    client: httpx.AsyncClient, form: dict[str, str], needle: str
) -> None:
    call = await _call(client)
    response = await _amd(client, call["id"], form)
    assert response.status_code == 400 and needle in response.text
    assert (await _stored(client, call["id"]))["answered_by"] is None


async def test_amd_for_an_unknown_call_is_a_404_and_another_sid_a_409(client: httpx.AsyncClient) -> None:
    missing = await _amd(client, "00000000-0000-0000-0000-000000000000", {"AnsweredBy": "human"})
    assert missing.status_code == 404
    call = await _call(client)
    other = await _amd(client, call["id"], {"AnsweredBy": "human", "CallSid": "CA" + "ab" * 16})
    assert other.status_code == 409


async def test_a_transfer_redirects_the_live_call_and_is_listed(
    client: httpx.AsyncClient, app: FastAPI, fake_twilio: tuple[FakeTwilio, str]
) -> None:
    fake, _ = fake_twilio
    call = await _call(client)
    telephony = app.state.telephony
    assert isinstance(telephony, TwilioTelephony)
    stored = await app.state.storage.get_call(call["id"])
    twiml = '<?xml version="1.0" encoding="UTF-8"?><Response><Dial>+14155550123</Dial></Response>'
    await telephony.update_twiml(stored, twiml)
    update = fake.requests[-1]
    assert update["path"].endswith(f"/Calls/{call['twilio_call_sid']}.json") and update["form"] == {"Twiml": twiml}
    assert fake.calls[call["twilio_call_sid"]]["twiml"] == twiml

    # What the gateway records after redirecting (storage.update_call), as the API shows it.
    at = datetime(2026, 12, 15, 10, 0, tzinfo=UTC)
    await app.state.storage.update_call(call["id"], {"transferred_to": "+14155550123", "transferred_at": at})
    shown = await _stored(client, call["id"])
    assert shown["transferred_to"] == "+14155550123"
    assert datetime.fromisoformat(shown["transferred_at"]) == at

    unsent = stored.model_copy(update={"twilio_call_sid": None})
    with pytest.raises(TelephonyError, match="no Twilio call SID"):
        await telephony.update_twiml(unsent, twiml)
    unknown = stored.model_copy(update={"twilio_call_sid": "CA" + "cd" * 16})
    with pytest.raises(TelephonyError) as refused:
        await telephony.update_twiml(unknown, twiml)
    assert refused.value.code == 20404


async def test_a_transfer_whisper_tells_the_person_what_the_caller_said(client: httpx.AsyncClient, app: FastAPI) -> None:
    call = await _call(client)
    storage = app.state.storage
    await storage.add_transcript(call["id"], "caller", "Hello?", metrics={"screening": True})
    await storage.add_transcript(call["id"], "caller", "I need to talk to someone about my bill.")
    path = f"/twilio/whisper/{call['id']}"
    response = await signed_post(client, PUBLIC + path, path, {"CallSid": call["twilio_call_sid"]})
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
    assert "<Say>" in response.text and "talk to someone about my bill" in response.text
    assert "Hello?" not in response.text  # what was said before the agent greeted is no summary
    forged = await signed_post(client, PUBLIC + path, path, {}, token="not-the-token")
    assert forged.status_code == 403
