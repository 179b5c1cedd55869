"""The agent acting on a live call, end to end through the real gateway (real STT, TTS and VAD):
pressing keys into a phone menu, reading keys the caller types, calling an HTTP tool (answered, and
timed out), and transferring a caller who asks for a person through Twilio's REST API.

Fakes, named so, only at the wire of what cannot run here: Twilio's REST API (`FakeTwilio`) and,
where a test needs the model to call a tool on cue, Ollama's server (`FakeOllama`). The caller is
the virtual phone speaking Twilio's Media Streams protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backend.telephony.virtual_phone import CallerLine, KeyPresses, VirtualPhone
from shared import stream_tokens, twilio_auth, webhooks
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import TranscriptLine
from tests.conftest import make_settings
from tests.support.fake_ollama import FakeOllama
from tests.support.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, FakeTwilio
from tests.support.servers import serve
from tests.support.speech import caller_ulaw
from voice_gateway.main import create_app as create_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.models]
SECRET = "whsec_tools_e2e"
MENU = "Thank you for calling Bright Smile Dental. For billing, press 1. For appointments, press 2."


def _line(text: str, **kwargs: Any) -> CallerLine:
    return CallerLine(text, caller_ulaw(text), **kwargs)


async def _run_call(settings: Settings, gateway: str, agent: dict[str, Any], lines: list[Any], *,
                    sid: str | None = None) -> tuple[Any, list[TranscriptLine], Any]:
    """Create the agent and a call, stream it with the virtual phone; the report, transcript and call row."""
    storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    stored_agent = await storage.create_agent(agent)
    call = await storage.create_call(agent_id=stored_agent.id, to_number="+14155550100", from_number=None, metadata={})
    if sid is not None:
        call = await storage.update_call(call.id, {"twilio_call_sid": sid})
    media = stream_tokens.stream_url(gateway.replace("http", "ws") + "/media", twilio_auth.signing_token(settings),
                                     call.id)
    # A caller who waits 2.5 s of silence before taking the agent to be done: on a loaded machine a
    # reply's second sentence can come a second after its first, and this caller must not hang up then.
    phone = VirtualPhone(media, custom_parameters={"call_id": call.id}, lines=lines, reply_timeout_s=60,
                         call_sid=sid, quiet_ms=2500)
    report = await asyncio.wait_for(phone.run(), 180)
    deadline = time.monotonic() + 20
    while (await storage.get_call(call.id)).status != "completed" and time.monotonic() < deadline:
        await asyncio.sleep(0.1)  # the gateway writes its last lines as the stream closes: poll with a deadline
    transcript = await storage.list_transcripts(call.id)
    row = await storage.get_call(call.id)
    await storage.close()
    return report, transcript, row


def test_a_phone_menu_hears_the_key_for_the_agents_purpose(tmp_path: Path) -> None:
    """An outbound call answered by a menu: no greeting, the agent presses 2 (decoded from its audio)."""
    settings = make_settings(tmp_path)
    agent = {"name": "Ava", "greeting": "Hi, this is Ava from the Smith family.",
             "prompt": "You call the dentist's phone line to book an appointment for a patient.",
             "settings": {"tools": {"press_keys": {"kind": "send_dtmf"}}}}
    lines = [_line(MENU, speak_first=True, expect_dtmf="2", dtmf_timeout_s=30)]
    with serve(create_gateway(settings), timeout_s=300) as gateway:
        report, transcript, _ = asyncio.run(_run_call(settings, gateway, agent, lines))
    assert [heard.heard for heard in report.dtmf_heard] == ["2"], [(l.speaker, l.text) for l in transcript]
    tool = [line for line in transcript if line.speaker == "tool"]
    assert [line.metrics["arguments"] for line in tool] == [{"digits": "2"}], transcript
    assert not any(line.text.startswith("Hi, this is Ava") for line in transcript), "a menu is not greeted"


def test_keys_the_caller_types_are_one_turn_the_model_answers(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    agent = {"name": "Ava", "greeting": "Hi, this is Ava. Please type your booking number, then the pound key.",
             "prompt": "You find bookings by their number for Bright Smile Dental. Be brief.",
             "settings": {"voicemail": {"detect": False}}}
    with serve(create_gateway(settings), timeout_s=300) as gateway:
        _report, transcript, _ = asyncio.run(_run_call(settings, gateway, agent, [KeyPresses("4711#")]))
    said = [(line.speaker, line.text) for line in transcript]
    at = said.index(("caller", "[keypad: 4711]"))
    assert at >= 1 and said[at + 1][0] == "agent" and said[at + 1][1], said  # answered by the model


class ToolServer:
    """The business's own endpoint: checks RelayX's signature; Friday never answers (a timeout)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/slots")
        async def slots(request: Request) -> JSONResponse:
            body = await request.body()
            if not webhooks.verify(SECRET, body, request.headers.get(webhooks.SIGNATURE_HEADER)):
                return JSONResponse({"error": "bad signature"}, status_code=401)
            payload = await request.json()
            self.calls.append(payload)
            if payload["arguments"].get("day") == "Friday":
                await self.release.wait()  # the test's server hangs: RelayX must time out, not wait
            return JSONResponse({"day": payload["arguments"]["day"], "free": ["10am", "2pm"]})

        return app


@pytest.fixture
def tool_server() -> Iterator[tuple[ToolServer, str]]:
    server = ToolServer()
    with serve(server.app()) as base:
        yield server, base


def test_an_http_tool_is_called_signed_its_answer_spoken_and_a_timeout_leaves_the_call_going(
    tmp_path: Path, tool_server: tuple[ToolServer, str],
) -> None:
    server, base = tool_server
    ollama = FakeOllama(tool_call={"name": "check_availability", "arguments": {"day": "Tuesday"}},
                        answer_after_tool="Tuesday at ten is free.")
    settings = make_settings(tmp_path, WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true")
    agent = {"name": "Ava", "greeting": "Hi, this is Ava from Bright Smile Dental.",
             "prompt": "You book cleanings for Bright Smile Dental.",
             "settings": {"voicemail": {"detect": False}, "tools": {"check_availability": {
                 "kind": "http", "url": f"{base}/slots", "timeout_s": 2,
                 "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
                 "fallback_line": "Sorry, I can't see the diary right now."}}}}
    lines = [_line("Do you have anything free on Tuesday?"), _line("And what about Friday?"),
             _line("Okay, thank you.")]
    with serve(ollama.app()) as ollama_base:
        settings = settings.model_copy(update={"llm_engine": "ollama", "ollama_base_url": ollama_base})

        async def run() -> tuple[Any, list[TranscriptLine], Any]:
            def on_tool_request(said: str) -> None:
                # Chosen by the caller's words, not by counting requests: a speculative request at a
                # pause inside a line is sent or not depending on how fast STT ran on this machine
                # (counted, it shifted the Friday call onto the wrong line on a busy CPU).
                words = said.lower()
                if "friday" in words:  # the second question: the server will hang
                    ollama.tool_call = {"name": "check_availability", "arguments": {"day": "Friday"}}
                elif "thank" in words:  # "Okay, thank you.": just an answer
                    ollama.tool_call = None
                else:
                    ollama.tool_call = {"name": "check_availability", "arguments": {"day": "Tuesday"}}

            original = ollama._lines

            async def lines_hook(body: dict[str, Any]) -> Any:
                last = body.get("messages", [{}])[-1]
                if last.get("role") == "user" and body.get("tools") \
                        and body.get("options", {}).get("num_predict", 0) > 1:  # not the prompt prefill
                    on_tool_request(str(last.get("content", "")))
                async for line in original(body):
                    yield line

            ollama._lines = lines_hook  # type: ignore[method-assign]
            with serve(create_gateway(settings), timeout_s=300) as gateway:
                try:
                    return await _run_call(settings, gateway, agent, lines)
                finally:
                    server.release.set()

        _report, transcript, _ = asyncio.run(run())
    assert [call["arguments"] for call in server.calls][:1] == [{"day": "Tuesday"}]
    tool_rows = [line for line in transcript if line.speaker == "tool"]
    assert [row.metrics["ok"] for row in tool_rows] == [True, False], [r.text for r in tool_rows]
    assert "timed out" in tool_rows[1].metrics["result"]
    agent_lines = [line.text for line in transcript if line.speaker == "agent"]
    assert "Tuesday at ten is free." in agent_lines, agent_lines
    assert "Sorry, I can't see the diary right now." in agent_lines, agent_lines
    # The call went on after the timeout: the last caller line was heard and answered.
    assert transcript[-1].speaker == "agent" and len([l for l in transcript if l.speaker == "caller"]) == 3
    followups = [r for r in ollama.requests if r["messages"][-1]["role"] == "tool"]
    assert followups and "10am" in followups[0]["messages"][-1]["content"]


def test_a_caller_who_asks_for_a_person_is_transferred_after_the_agents_line(tmp_path: Path) -> None:
    fake = FakeTwilio()
    sid = "CA" + "7" * 32
    fake.calls[sid] = {"sid": sid, "status": "in-progress"}
    transfer_to = "+14155550199"
    with serve(fake.app()) as twilio_url:
        settings = make_settings(tmp_path, TELEPHONY_PROVIDER="twilio", TWILIO_ACCOUNT_SID=ACCOUNT_SID,
                                 TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_FROM_NUMBER=FROM_NUMBER,
                                 TWILIO_API_BASE_URL=twilio_url)
        agent = {"name": "Ava", "greeting": "Hi, this is Ava from Bright Smile Dental.",
                 "prompt": "You book cleanings for Bright Smile Dental.",
                 "settings": {"voicemail": {"detect": False},
                              "tools": {"transfer_call": {"kind": "transfer_call", "to": transfer_to}}}}
        lines = [_line("Can I speak to a real person please?"), _line("Yes, please.")]
        with serve(create_gateway(settings), timeout_s=300) as gateway:
            report, transcript, row = asyncio.run(_run_call(settings, gateway, agent, lines, sid=sid))
    updates = [r for r in fake.requests if r["path"].endswith(f"/Calls/{sid}.json")]
    assert len(updates) == 1, fake.requests
    twiml = updates[0]["form"]["Twiml"]
    assert f"<Dial><Number>{transfer_to}</Number></Dial>" in twiml
    said = [(line.speaker, line.text) for line in transcript if line.speaker != "tool"]
    assert ("agent", "Would you like me to put you through to a person now?") in said, said
    assert said[-1] == ("agent", "Of course, I'm putting you through now. Please hold."), said
    assert row.transferred_to == transfer_to and row.transferred_at is not None
    # Asked for only once the line had played out at the phone (its last utterance), not while it played.
    assert report.utterances and updates[0]["at"] >= report.utterances[-1].ends_at - 0.1, (
        updates[0]["at"], report.utterances[-1].ends_at)
