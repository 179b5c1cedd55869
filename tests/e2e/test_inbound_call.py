"""An inbound call end to end on the embedded default: a number is given to an agent over the API, the
simulated line rings it exactly as Twilio would (signed incoming-call webhook, `<Connect><Stream>`),
and the real gateway answers with that agent on the real models; an unconfigured number is rejected."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from backend.main import create_app as create_backend
from shared import twilio_auth
from tests.conftest import make_settings
from tests.support.fake_twilio import signed_post
from tests.support.servers import free_port, serve
from voice_gateway.main import create_app as create_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.models]
AUTH = {"Authorization": "Bearer test-key"}


def test_an_inbound_call_is_answered_by_the_numbers_agent_and_an_unknown_number_rejected(tmp_path: Path) -> None:
    backend_port, gateway_port = free_port(), free_port()
    public = f"http://127.0.0.1:{backend_port}"
    settings = make_settings(tmp_path, TELEPHONY_PROVIDER="simulator", PUBLIC_BASE_URL=public,
                             PUBLIC_GATEWAY_URL=f"ws://127.0.0.1:{gateway_port}")
    with serve(create_backend(settings), backend_port), serve(create_gateway(settings), gateway_port, timeout_s=300):
        client = httpx.Client(base_url=public, headers=AUTH, timeout=30)
        agent = client.post("/agents", json={
            "name": "Ava", "greeting": "Bright Smile Dental, this is Ava. How can I help?",
            "prompt": "You answer calls for Bright Smile Dental. Open Monday to Friday, 9am to 5pm.",
        }).json()
        number = client.post("/phone-numbers", json={"number": "+14155550142", "agent_id": agent["id"]}).json()
        rung = client.post(f"/phone-numbers/{number['id']}/simulate-inbound",
                           json={"from_number": "+15551230000", "simulate": ["What time do you open on Monday?"]})
        assert rung.status_code == 202, rung.text
        call_id = rung.json()["call_id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = client.get(f"/calls/{call_id}").json()
            if state["status"] in ("completed", "failed"):
                break
            time.sleep(0.25)  # polling the API with a deadline
        transcript = client.get(f"/calls/{call_id}/transcripts").json()
        unknown = signed_post(client, public + "/twilio/inbound", "/twilio/inbound", {
            "To": "+14155550999", "From": "+15551230000", "CallSid": "CA" + "9" * 32, "Direction": "inbound",
        }, token=twilio_auth.signing_token(settings))
        calls = client.get("/calls").json()["data"]
    assert state["status"] == "completed" and state["direction"] == "inbound", state
    assert state["to_number"] == "+14155550142" and state["from_number"] == "+15551230000"
    said = [(line["speaker"], line["text"]) for line in transcript]
    assert said[0] == ("agent", "Bright Smile Dental, this is Ava. How can I help?"), said  # greets at once
    assert any(speaker == "caller" and text.strip() for speaker, text in said), said
    assert said[-1][0] == "agent", said  # the caller's question was answered
    assert unknown.status_code == 200 and "<Reject" in unknown.text
    assert [c["id"] for c in calls] == [call_id], "a rejected call leaves no call row"

