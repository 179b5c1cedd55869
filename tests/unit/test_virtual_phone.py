"""The virtual phone's script lines beyond a person talking: an answering machine (greeting at once,
beep, recording), an IVR that decodes the agent's keys, a caller typing keys (Media Streams `dtmf`
events) and a silent caller; and `parse_script`'s checks. The far end is a tiny WebSocket server on
loopback that parses what it receives with the gateway's own message models. No models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from backend.telephony.base import TelephonyError
from backend.telephony.simulator import caller_line, parse_script
from backend.telephony.virtual_phone import (
    Beep,
    CallerLine,
    DtmfHeard,
    KeyPresses,
    PhoneReport,
    ScriptLine,
    Silence,
    VirtualPhone,
)
from shared import audio, tones
from voice_gateway.media_stream import Dtmf, Media, Start, media_message, parse_message

FRAME = audio.FRAME_BYTES


def _ulaw(signal: np.ndarray) -> bytes:
    return audio.float32_to_ulaw(signal)


def _voice(seconds: float) -> bytes:
    """Stand-in speech: a 300 Hz hum with a 5 Hz wobble (no test here needs words)."""
    t = np.arange(round(seconds * audio.PHONE_RATE)) / audio.PHONE_RATE
    return _ulaw((0.2 * np.sin(2 * np.pi * 300 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 5 * t))).astype(np.float32))


# --- the far end ------------------------------------------------------------------------------------


@dataclass
class Heard:
    """One message the fake gateway received: its raw JSON, its parsed model and when it arrived."""

    raw: dict[str, Any]
    message: Any
    at: float


Agent = Callable[["FakeGateway", ServerConnection], Coroutine[Any, Any, None]]


@dataclass
class FakeGateway:
    """What the far end of the stream received; `agent` is its behaviour once `start` arrived."""

    agent: Agent
    heard: list[Heard] = field(default_factory=list)
    stream_sid: str = ""
    new_message: asyncio.Event = field(default_factory=asyncio.Event)
    agents: list[asyncio.Task[None]] = field(default_factory=list)

    def caller_audio(self) -> bytes:
        return b"".join(h.message.media.audio() for h in self.heard if isinstance(h.message, Media))

    def caller_spoke(self) -> bool:
        """The caller has said something and stopped (100 ms of silence since)."""
        caller = audio.ulaw_to_float32(self.caller_audio())
        voiced = np.flatnonzero(np.abs(caller) > 0.01)
        return voiced.size > 0 and caller.size - voiced[-1] >= 0.1 * audio.PHONE_RATE

    def of(self, kind: type) -> list[Heard]:
        return [h for h in self.heard if isinstance(h.message, kind)]

    async def until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until `condition` holds, re-checked on every message (a deadline, no sleeps)."""
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.new_message.clear()
                await self.new_message.wait()

    async def media(self, index: int) -> bytes:
        """The caller's `index`-th media payload, once it has arrived."""
        await self.until(lambda: len(self.of(Media)) > index)
        return bytes(self.of(Media)[index].message.media.audio())

    async def at(self, when: float) -> None:
        """Wait until the monotonic clock reaches `when` (checked on every 20 ms frame of the caller)."""
        await self.until(lambda: time.monotonic() >= when)

    async def send_audio(self, ws: ServerConnection, ulaw: bytes) -> None:
        """Agent audio as the gateway sends it: 20 ms media messages, faster than real time."""
        for i in range(0, len(ulaw), FRAME):
            await ws.send(media_message(self.stream_sid, ulaw[i : i + FRAME]))

    async def handle(self, ws: ServerConnection) -> None:
        try:
            async for raw in ws:
                message = parse_message(raw)  # what the gateway would make of it, or ProtocolError
                self.heard.append(Heard(json.loads(raw), message, time.monotonic()))
                self.new_message.set()
                if isinstance(message, Start):
                    self.stream_sid = message.stream_sid
                    self.agents.append(asyncio.create_task(self.agent(self, ws)))
        finally:
            for task in self.agents:
                task.cancel()
            await asyncio.wait(self.agents) if self.agents else None

    def raise_agent_errors(self) -> None:
        """An agent that failed (a wait that timed out, a bad assumption) fails the test."""
        for task in self.agents:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError("the fake agent failed") from task.exception()


@asynccontextmanager
async def fake_gateway(agent: Agent) -> AsyncIterator[tuple[FakeGateway, str]]:
    gateway = FakeGateway(agent)
    async with serve(gateway.handle, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield gateway, f"ws://127.0.0.1:{port}/media"
    gateway.raise_agent_errors()


async def _call(url: str, lines: list[ScriptLine], **options: Any) -> tuple[PhoneReport, float]:
    phone = VirtualPhone(url, custom_parameters={"call_id": "c1"}, lines=lines,
                         **{"quiet_ms": 200, "reply_timeout_s": 3.0, **options})
    started = time.monotonic()
    report = await asyncio.wait_for(phone.run(), 20)
    return report, time.monotonic() - started


# --- a person (what was there before) ---------------------------------------------------------------


async def test_a_person_waits_for_the_greeting_answers_and_hangs_up() -> None:
    async def agent(gateway: FakeGateway, ws: ServerConnection) -> None:
        await gateway.send_audio(ws, _voice(0.3))  # the greeting
        await gateway.until(gateway.caller_spoke)
        await gateway.send_audio(ws, _voice(0.3))  # the answer
        await asyncio.Event().wait()

    async with fake_gateway(agent) as (gateway, url):
        report, _ = await _call(url, [CallerLine("hello", _voice(0.4))])
    (turn,) = report.turns
    assert turn.voice_to_voice_ms is not None and turn.voice_to_voice_ms >= 0
    assert [u.offset for u in report.utterances] == [0, len(_voice(0.3))]
    assert report.hangup_at is None  # the phone hung up: `stop`
    assert gateway.heard[-1].raw["event"] == "stop"


# --- an answering machine ---------------------------------------------------------------------------


async def test_an_answering_machine_greets_at_once_beeps_and_records_until_the_agent_hangs_up() -> None:
    """The fake agent never greets: it waits for the beep (heard with shared.tones, off the wire),
    leaves its message and hangs up."""
    heard_beeps: list[tones.BeepHeard] = []

    async def agent(gateway: FakeGateway, ws: ServerConnection) -> None:
        detector = tones.BeepDetector()
        index = 0
        while not heard_beeps:  # one media message at a time, as the gateway's session feeds it
            heard_beeps.extend(detector.feed(audio.ulaw_to_float32(await gateway.media(index))))
            index += 1
        await gateway.send_audio(ws, _voice(0.5))  # the voicemail
        await ws.close(1000)

    greeting = CallerLine("Hi, you've reached Sam. Leave a message after the tone.", _voice(0.6), speak_first=True)
    async with fake_gateway(agent) as (gateway, url):
        report, took = await _call(url, [greeting, Beep(hz=1400, ms=300, record_s=10)])

    caller = audio.ulaw_to_float32(gateway.caller_audio())
    first_sound = int(np.flatnonzero(np.abs(caller) > 0.01)[0])
    assert first_sound < 0.2 * audio.PHONE_RATE  # spoken at once, not after a 3 s wait for a greeting
    (beep,) = report.beeps
    (machine_heard,) = heard_beeps
    assert machine_heard.hz == pytest.approx(1400, rel=0.01)
    assert beep.agent_offset == 0  # no agent audio before the beep ended…
    assert beep.first_agent_frame is not None and beep.first_agent_frame >= beep.ended_at
    assert report.utterances[0].started_at >= beep.ended_at  # …and the message after it
    assert len(report.agent_audio) == len(_voice(0.5))
    assert report.hangup_at is not None and report.hangup_at >= report.utterances[-1].started_at
    assert report.close_code == 1000
    assert took < 6  # the recording ended with the hang-up, not after record_s
    assert "stop" not in [h.raw["event"] for h in gateway.heard]  # it was hung up on


# --- an IVR -----------------------------------------------------------------------------------------


def _keys_agent(keys: str) -> Agent:
    """An agent at an IVR: after the menu it says a few words, then presses `keys` (tones in its audio)."""

    async def agent(gateway: FakeGateway, ws: ServerConnection) -> None:
        await gateway.until(gateway.caller_spoke)  # the menu
        await gateway.send_audio(ws, _voice(0.2))  # "sure, pressing two"
        if keys:
            await gateway.send_audio(ws, _ulaw(tones.dtmf_tones(keys)))
        await asyncio.Event().wait()

    return agent


@pytest.mark.parametrize("keys", ["2", "41#"])
async def test_an_ivr_decodes_the_keys_the_agent_presses_then_says_its_next_line(keys: str) -> None:
    menu = CallerLine("Press 2 for appointments.", _voice(0.3), speak_first=True, expect_dtmf="2",
                      dtmf_timeout_s=5)
    async with fake_gateway(_keys_agent(keys)) as (_, url):
        report, took = await _call(url, [menu, CallerLine("Connecting you.", _voice(0.3))], reply_timeout_s=0.5)
    (heard,) = report.dtmf_heard
    assert heard.expected == "2" and heard.prompt == "Press 2 for appointments."
    assert heard.heard and keys.startswith(heard.heard)  # one key was expected: it may stop listening there
    assert heard.matched == (keys == "2")
    assert [t.text for t in report.turns] == ["Press 2 for appointments.", "Connecting you."]
    assert took < 4


async def test_an_ivr_that_hears_no_keys_records_nothing_after_its_timeout() -> None:
    menu = CallerLine("Press 1 for sales.", _voice(0.3), speak_first=True, expect_dtmf="1", dtmf_timeout_s=0.8)
    async with fake_gateway(_keys_agent("")) as (_, url):
        report, took = await _call(url, [menu])
    assert report.dtmf_heard == [DtmfHeard(prompt="Press 1 for sales.", expected="1", heard="")]
    assert 0.8 <= took < 3


# --- a caller who types keys -------------------------------------------------------------------------


@pytest.mark.parametrize("with_tones", [False, True])
async def test_typed_keys_are_twilio_dtmf_events_about_150_ms_apart(with_tones: bool) -> None:
    async def agent(gateway: FakeGateway, ws: ServerConnection) -> None:
        await gateway.until(lambda: len(gateway.of(Dtmf)) == 3)
        await gateway.send_audio(ws, _voice(0.2))  # "thank you"
        await asyncio.Event().wait()

    async with fake_gateway(agent) as (gateway, url):
        report, _ = await _call(url, [KeyPresses("12#", tones=with_tones, speak_first=True)])

    events = gateway.of(Dtmf)
    assert [e.message.dtmf.digit for e in events] == ["1", "2", "#"] and report.keys_sent == "12#"
    for event in events:  # exactly Twilio's shape
        assert set(event.raw) == {"event", "streamSid", "sequenceNumber", "dtmf"}
        assert event.raw["streamSid"] == report.stream_sid
        assert event.raw["dtmf"] == {"track": "inbound_track", "digit": event.message.dtmf.digit}
    numbers = [int(h.raw["sequenceNumber"]) for h in gateway.heard if "sequenceNumber" in h.raw]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    gaps = np.diff([e.at for e in events])
    assert np.all((gaps > 0.1) & (gaps < 0.5)), gaps
    assert tones.decode_dtmf(audio.ulaw_to_float32(gateway.caller_audio())) == ("12#" if with_tones else "")
    assert report.turns[0].text == "(keys 12#)" and report.turns[0].first_agent_frame is not None


# --- a silent caller ---------------------------------------------------------------------------------


async def test_a_silent_caller_sends_silence_and_counts_each_agent_utterance() -> None:
    async def agent(gateway: FakeGateway, ws: ServerConnection) -> None:
        start = time.monotonic()
        for n in range(3):  # a greeting and two re-prompts, 0.4 s apart
            await gateway.at(start + 0.4 * n)
            await gateway.send_audio(ws, _voice(0.1))
        await gateway.at(start + 1.2)
        await ws.close(1000)

    async with fake_gateway(agent) as (gateway, url):
        report, took = await _call(url, [Silence(10)])
    assert len(report.utterances) == 3
    starts = [u.started_at for u in report.utterances]
    assert np.all(np.diff(starts) > 0.25)
    assert all(u.frames == 5 for u in report.utterances)
    assert set(gateway.caller_audio()) == {audio.MULAW_SILENCE}  # the line carried silence throughout
    assert len(gateway.caller_audio()) >= 1.0 * audio.PHONE_RATE
    assert report.hangup_at is not None and took < 5  # the agent hung up; the phone did not wait 10 s


# --- the script --------------------------------------------------------------------------------------


def test_parse_script_keeps_the_old_lines_and_takes_the_new_ones() -> None:
    assert parse_script(["Hello.", {"text": "Wait", "barge_in_after_ms": 800}]) == [
        {"text": "Hello."}, {"text": "Wait", "barge_in_after_ms": 800}]
    assert parse_script({"lines": ["Hi"]}) == [{"text": "Hi"}]
    assert parse_script(None)  # the demo
    script = [
        {"text": "You've reached Sam.", "speak_first": True}, {"beep": True}, {"beep_hz": 1400, "record_s": 20},
        {"text": "Press 2 for appointments.", "expect_dtmf": "2", "timeout_s": 20},
        {"dtmf": "1234#", "tones": True, "gap_ms": 200}, {"silence_s": 20},
    ]
    assert parse_script(script) == script


@pytest.mark.parametrize(("line", "says"), [
    ({"text": "hi", "dtmf": "1"}, "give text or wav"),
    ({"speak_first": True}, "give text or wav"),
    ({"dtmf": "12x"}, "dtmf"),
    ({"dtmf": ""}, "dtmf"),
    ({"silence_s": 0}, "silence_s"),
    ({"silence_s": "5"}, "silence_s"),
    ({"beep": False}, "beep must be true"),
    ({"beep_hz": 50}, "beep_hz"),
    ({"text": "hi", "speak_first": "yes"}, "speak_first"),
    ({"text": "hi", "exepct_dtmf": "2"}, "exepct_dtmf"),
    ({"text": "hi", "timeout_s": 5}, "expect_dtmf"),
    ({"text": "hi", "expect_dtmf": "two"}, "expect_dtmf"),
    ({"text": "hi", "speak_first": True, "barge_in_after_ms": 500}, "not both"),
    ({"wav": "/etc/passwd"}, "existing .wav"),
])
def test_parse_script_says_what_is_wrong_with_a_line(line: dict[str, Any], says: str) -> None:
    with pytest.raises(TelephonyError, match=says):
        parse_script(["Hello.", line])


async def test_caller_line_builds_each_kind_of_line(tmp_path: Path) -> None:
    spec = parse_script([{"beep_hz": 1400, "beep_ms": 250}, {"dtmf": "9#", "tones": True}, {"silence_s": 2.5},
                         {"beep": True}])
    assert [await caller_line(s) for s in spec] == [
        Beep(hz=1400, ms=250), KeyPresses("9#", tones=True), Silence(2.5), Beep()]
