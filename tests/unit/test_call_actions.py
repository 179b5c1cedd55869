"""The session acting on the call, on the fake clock of test_session: who answered an outbound call,
an answering machine's message, keypad entries, a silent caller, the call's time limit."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from tests.unit import test_session as harness
from tests.unit.test_session import (
    FRAME_BYTES,
    FRAME_S,
    FakeClock,
    FakeLLM,
    FakeSTT,
    _said,
    _silence,
    _tone,
    _until,
)
from voice_gateway.session import CallSession

stores = harness.stores  # the fake-clock session harness's fixtures, used by name
open_call = harness.open_call


async def _feed(session: CallSession, clock: FakeClock, ulaw: bytes, *, stop: Callable[[], bool] | None = None) -> None:
    """Caller audio in 20 ms chunks, as a socket delivers it: the other tasks (replies, the pacer) run
    between chunks, as they do between two reads of a real socket."""
    for i in range(0, len(ulaw), FRAME_BYTES):
        clock.advance(FRAME_S)
        await session.on_media(ulaw[i : i + FRAME_BYTES])
        for _ in range(3):
            await asyncio.sleep(0)
        if stop is not None and stop():
            return


class Hangup:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> None:
        self.calls += 1


class Beeps:
    """A beep detector that hears a beep when the test says so."""

    def __init__(self) -> None:
        self.armed = False

    def feed(self, audio: np.ndarray) -> list[object]:
        if self.armed:
            self.armed = False
            return [object()]
        return []


async def test_outbound_the_agent_listens_first_and_greets_a_person_after_their_hello(open_call: Any) -> None:
    call = await open_call(greeting="Hi, this is Ava.", stt=FakeSTT("Hello?"), settings={"voicemail": {}})
    session, clock, line = call.session, call.clock, call.line
    await _feed(session, clock, _silence(1000))
    assert line.frames == 0, "the agent holds its greeting until the callee speaks"
    await _feed(session, clock, _tone(600) + _silence(300))
    assert line.frames == 0, "not while the callee may go on"
    await _feed(session, clock, _silence(1200), stop=lambda: line.frames > 0)
    assert line.frames > 0 and session.screening is not None and session.screening.reason == "short_hello"
    await _feed(session, clock, _silence(1500))
    said = _said(await call.transcript())
    assert said == [("caller", "Hello?"), ("agent", "Hi, this is Ava.")], said
    assert call.llm.requests == [], "the hello is not answered by the model: the greeting answers it"


async def test_outbound_nobody_speaks_the_agent_greets_after_its_wait(open_call: Any) -> None:
    call = await open_call(greeting="Hi, this is Ava.", settings={"voicemail": {"wait_for_callee_ms": 2000}})
    await _feed(call.session, call.clock, _silence(1900))
    assert call.line.frames == 0
    await _feed(call.session, call.clock, _silence(1000), stop=lambda: call.line.frames > 0)
    assert call.line.frames > 0
    assert _said(await call.transcript()) == [("agent", "Hi, this is Ava.")]


async def test_an_answering_machine_gets_the_message_after_its_beep_then_the_agent_hangs_up(open_call: Any) -> None:
    hangup, beeps = Hangup(), Beeps()
    call = await open_call(
        greeting="Hi, this is Ava.", stt=FakeSTT("Hi, you've reached Sam, leave a message after the tone."),
        hangup=hangup, beep_detector=beeps,
        settings={"voicemail": {"action": "leave_message", "message": "Please call Bright Smile back."}},
    )
    session, clock, line = call.session, call.clock, call.line
    await _feed(session, clock, _tone(4500))  # a recorded greeting: longer than any hello
    assert session.screening is not None and session.screening.machine
    await _feed(session, clock, _silence(600))
    assert line.frames == 0, "silent through the machine's greeting"
    beeps.armed = True
    await _feed(session, clock, _silence(100))
    await _feed(session, clock, _silence(3000), stop=lambda: hangup.calls > 0)
    assert hangup.calls == 1, "hung up once the message played"
    transcript = await call.transcript()
    agent = [l for l in transcript if l.speaker == "agent"]
    assert [l.text for l in agent] == ["Please call Bright Smile back."]
    assert agent[0].metrics.get("voicemail") is True
    assert call.llm.requests == [], "a machine is never answered"
    stored = await call.storage.get_call(session.call.id)
    assert getattr(stored, "answered_by", "machine_end_beep") == "machine_end_beep"


async def test_a_machine_with_action_hangup_is_left_without_a_word(open_call: Any) -> None:
    hangup = Hangup()
    call = await open_call(greeting="Hi, this is Ava.", hangup=hangup, settings={"voicemail": {"action": "hangup"}})
    await _feed(call.session, call.clock, _tone(4000) + _silence(2500), stop=lambda: hangup.calls > 0)
    assert hangup.calls == 1 and call.line.frames == 0


async def test_keypad_digits_are_one_caller_turn_answered_by_the_model(open_call: Any) -> None:
    llm = FakeLLM("Thanks, I found your booking.")
    call = await open_call(llm=llm)
    session, clock = call.session, call.clock
    for digit in "4711":
        await session.on_dtmf(digit)
        await _feed(session, clock, _silence(100))
    assert llm.requests == [], "not answered key by key"
    await session.on_dtmf("#")
    await _until(lambda: bool(llm.requests), "the model's request")
    assert "4711" in llm.requests[0][-1].content
    await _feed(session, clock, _silence(1500))
    said = _said(await call.transcript())
    assert ("caller", "[keypad: 4711]") in said and ("agent", "Thanks, I found your booking.") in said


async def test_keypad_entry_without_hash_ends_after_a_pause(open_call: Any) -> None:
    llm = FakeLLM("Got it.")
    call = await open_call(llm=llm, settings={"limits": {"dtmf_timeout_ms": 1000}})
    await call.session.on_dtmf("2")
    await _feed(call.session, call.clock, _silence(900))
    assert llm.requests == []
    await _feed(call.session, call.clock, _silence(200))
    await _until(lambda: bool(llm.requests), "the model's request")
    assert "2" in llm.requests[0][-1].content


async def test_a_silent_caller_is_asked_then_left(open_call: Any) -> None:
    hangup = Hangup()
    call = await open_call(hangup=hangup, settings={"limits": {
        "idle_reprompt_s": 3, "idle_hangups_after": 2, "idle_reprompt_line": "Are you still there?",
        "idle_goodbye_line": "Goodbye for now!"}})
    session, clock = call.session, call.clock
    await _feed(session, clock, _silence(2900))
    assert call.line.frames == 0
    await _feed(session, clock, _silence(20_000), stop=lambda: hangup.calls > 0)
    assert hangup.calls == 1
    said = _said(await call.transcript())
    assert said == [("agent", "Are you still there?")] * 2 + [("agent", "Goodbye for now!")], said


async def test_a_caller_who_answers_a_reprompt_resets_the_count(open_call: Any) -> None:
    hangup = Hangup()
    call = await open_call(hangup=hangup, stt=FakeSTT("Yes, sorry."), settings={"limits": {
        "idle_reprompt_s": 3, "idle_hangups_after": 1}})
    session, clock = call.session, call.clock
    await _feed(session, clock, _silence(3500))
    assert session.reprompts == 1
    await _feed(session, clock, _tone(600) + _silence(2000))
    assert session.reprompts == 0 and hangup.calls == 0


async def test_the_call_ends_at_its_time_limit_even_mid_reply(open_call: Any) -> None:
    hangup = Hangup()
    call = await open_call(hangup=hangup, settings={"limits": {
        "max_duration_s": 30, "idle_reprompt_s": 120, "max_duration_line": "We have to stop here. Goodbye!"}})
    session, clock = call.session, call.clock
    await _feed(session, clock, _silence(29_000))
    assert hangup.calls == 0
    await _feed(session, clock, _silence(3000), stop=lambda: hangup.calls > 0)
    assert hangup.calls == 1
    said = _said(await call.transcript())
    assert said[-1] == ("agent", "We have to stop here. Goodbye!")
