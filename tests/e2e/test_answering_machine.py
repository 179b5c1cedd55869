"""An outbound call that reaches an answering machine, end to end on the real models.

The far end is the virtual phone playing a machine: its recorded greeting at once (it does not wait
for the agent), a beep, then silence while it records. The agent must stay silent through the
greeting, speak its message after the beep, and hang up; the stereo recording shows the message on
the agent's channel after the beep on the caller's, and the analysis says `voicemail` without a model.
"""

from __future__ import annotations

import asyncio
import io
import time
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend.main import create_app as create_backend
from backend.telephony.virtual_phone import Beep, CallerLine, Silence, VirtualPhone
from shared import stream_tokens, twilio_auth
from shared.storage import build_storage
from shared.tones import BeepDetector
from tests.conftest import make_settings
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio, signed_post
from tests.support.servers import serve
from tests.support.speech import caller_ulaw
from voice_gateway.main import create_app as create_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.models]
AUTH = {"Authorization": "Bearer test-key"}
GREETING = "Hi, you've reached Sam Taylor. I can't take your call right now. Please leave a message after the tone."
PUBLIC = "https://relayx.example.test"
MESSAGE = "Hi Sam, this is Ava from Bright Smile Dental. Please call us back to book your cleaning."


def _channels(wav_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(io.BytesIO(wav_bytes)) as reader:
        frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
    return frames[0::2].astype(np.float32) / 32768, frames[1::2].astype(np.float32) / 32768


def _loud_from(channel: np.ndarray, *, threshold: float = 0.02) -> float | None:
    """Seconds into the channel where sound (above the threshold, in 20 ms windows) first begins."""
    windows = channel[: len(channel) // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(np.sqrt((windows**2).mean(axis=1)) > threshold)
    return None if loud.size == 0 else float(loud[0]) * 0.02


async def test_the_agent_waits_for_the_beep_leaves_its_message_and_hangs_up(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, JOBS_POLL_S="0.2")
    machine = [CallerLine(GREETING, caller_ulaw(GREETING), speak_first=True), Beep(hz=1000, ms=500, record_s=40)]
    with serve(create_backend(settings)) as api_base, serve(create_gateway(settings), timeout_s=300) as gateway:
        client = httpx.AsyncClient(base_url=api_base, headers=AUTH, timeout=30)
        agent = (await client.post("/agents", json={
            "name": "Ava", "greeting": "Hi, this is Ava from Bright Smile Dental.",
            "prompt": "You call patients of Bright Smile Dental to book their teeth cleaning.",
            "settings": {"business": "Bright Smile Dental",
                         "voicemail": {"action": "leave_message", "message": MESSAGE}},
        })).json()
        storage = build_storage(settings)
        await storage.open()
        call = await storage.create_call(agent_id=agent["id"], to_number="+14155550100", from_number=None,
                                         metadata={})
        await storage.close()
        media = stream_tokens.stream_url(gateway.replace("http", "ws") + "/media",
                                         twilio_auth.signing_token(settings), call.id)
        phone = VirtualPhone(media, custom_parameters={"call_id": call.id}, lines=machine, reply_timeout_s=60)
        started = time.monotonic()
        report = await asyncio.wait_for(phone.run(), 120)
        elapsed = time.monotonic() - started

        deadline = time.monotonic() + 60
        analysis: dict[str, object] = {}
        while time.monotonic() < deadline:
            analysis = (await client.get(f"/calls/{call.id}/analysis")).json()
            if analysis.get("status") == "completed":
                break
            await asyncio.sleep(0.2)  # polling the API with a deadline
        state = (await client.get(f"/calls/{call.id}")).json()
        transcript = (await client.get(f"/calls/{call.id}/transcripts")).json()
        recording = await client.get(f"/calls/{call.id}/recording")
        await client.aclose()

    # The agent hung up (the machine would have recorded for 40 s), after speaking once: its message.
    assert report.hangup_at is not None and elapsed < 40, (report.hangup_at, elapsed)
    beep = report.beeps[0]
    assert beep.agent_offset == 0, "the agent said nothing before the beep (it holds its greeting)"
    assert beep.first_agent_frame is not None and beep.first_agent_frame >= beep.ended_at
    agent_lines = [line for line in transcript if line["speaker"] == "agent"]
    assert [line["text"] for line in agent_lines] == [MESSAGE], transcript
    assert agent_lines[0]["metrics"].get("voicemail") is True
    assert state["answered_by"] in ("machine_end_beep", "machine_end_silence"), state
    assert state["status"] == "completed"
    assert analysis.get("outcome") == "voicemail", analysis

    # The recording: the beep on the caller's (left) channel, the message after it on the agent's (right).
    assert recording.status_code == 200
    caller, agent_channel = _channels(recording.content)
    beeps = BeepDetector().feed(caller)
    assert beeps, "the beep is on the caller's channel"
    speaks_at = _loud_from(agent_channel)
    assert speaks_at is not None and speaks_at >= beeps[0].end_s - 0.05, (speaks_at, beeps[0].end_s)


async def test_twilios_answering_machine_result_triggers_the_voicemail_action(tmp_path: Path) -> None:
    """The Twilio path against a local fake of Twilio's REST API: the call is placed with async AMD, and a
    signed `AnsweredBy=machine_end_beep` callback (a forged one is refused) makes the agent leave its
    message at once and hang up; it never greets."""
    fake = FakeTwilio()
    with serve(fake.app()) as twilio_url:
        settings = make_settings(tmp_path, TELEPHONY_PROVIDER="twilio", TWILIO_ACCOUNT_SID=ACCOUNT_SID,
                                 TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM_NUMBER,
                                 TWILIO_API_BASE_URL=twilio_url, PUBLIC_BASE_URL=PUBLIC)
        with serve(create_backend(settings)) as api_base, serve(create_gateway(settings), timeout_s=300) as gateway:
            client = httpx.AsyncClient(base_url=api_base, headers=AUTH, timeout=30)
            agent = (await client.post("/agents", json={
                "name": "Ava", "greeting": "Hi, this is Ava from Bright Smile Dental.",
                "prompt": "You call patients of Bright Smile Dental to book their teeth cleaning.",
                "settings": {"voicemail": {"action": "leave_message", "message": MESSAGE}},
            })).json()
            placed = await client.post("/calls/outbound", json={"agent_id": agent["id"], "to_number": "+14155550100"})
            assert placed.status_code == 201, placed.text
            call = placed.json()
            assert fake.requests[-1]["form"]["MachineDetection"] == "DetectMessageEnd"
            media = stream_tokens.stream_url(gateway.replace("http", "ws") + "/media",
                                             twilio_auth.signing_token(settings), call["id"])
            phone = VirtualPhone(media, custom_parameters={"call_id": call["id"]}, lines=[Silence(20)],
                                 call_sid=call["twilio_call_sid"], reply_timeout_s=30)
            running = asyncio.create_task(phone.run())
            deadline = time.monotonic() + 10
            while (await client.get(f"/calls/{call['id']}")).json()["status"] != "in-progress":
                assert time.monotonic() < deadline, "the stream never started"
                await asyncio.sleep(0.05)  # polling the API with a deadline
            path = f"/twilio/amd/{call['id']}"
            form = {"AnsweredBy": "machine_end_beep", "CallSid": call["twilio_call_sid"], "AccountSid": ACCOUNT_SID}
            forged = await signed_post(client, PUBLIC + path, path, form, token="not-the-token")
            signed = await signed_post(client, PUBLIC + path, path, form)
            report = await asyncio.wait_for(running, 60)
            transcript = (await client.get(f"/calls/{call['id']}/transcripts")).json()
            state = (await client.get(f"/calls/{call['id']}")).json()
            await client.aclose()
    assert forged.status_code == 403 and signed.status_code == 204
    assert report.hangup_at is not None, "the agent hung up after its message"
    agent_lines = [line for line in transcript if line["speaker"] == "agent"]
    assert [line["text"] for line in agent_lines] == [MESSAGE], transcript
    assert agent_lines[0]["metrics"].get("voicemail") is True
    assert state["answered_by"] == "machine_end_beep"
