"""The session acting on the call, on the fake clock of test_session: who answered an outbound call,
an answering machine's message, keypad entries, a silent caller, the call's time limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from shared.agent_config import HttpTool, TransferTool
from shared.audio import ulaw_to_float32
from shared.llm.base import ChatMessage
from shared.llm.tools import InvalidToolCall, ToolCall
from shared.tones import decode_dtmf
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
from voice_gateway.actions import ToolRunner, dtmf_ulaw
from voice_gateway.http_tools import ToolResult
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


# --- tools ------------------------------------------------------------------------------------------


class ScriptedLLM:
    """Answers request n with `script[n]`: text pieces and tool calls, as an engine streams them."""

    def __init__(self, *script: list[Any]) -> None:
        self.script = list(script)
        self.requests: list[list[ChatMessage]] = []
        self.tools_offered: list[list[str]] = []

    async def stream(self, messages: list[ChatMessage], options: Any, *, avoid: Any = (),
                     tools: Any = ()) -> AsyncIterator[Any]:
        if options.max_tokens == 1:
            return
        self.requests.append(messages)
        self.tools_offered.append([spec.name for spec in tools])
        items = self.script[min(len(self.requests), len(self.script)) - 1]
        for item in items:
            await asyncio.sleep(0)
            yield item

    def warmup(self) -> None:
        return None


class FakeRunner(ToolRunner):
    """The gateway's tool runner without a network: HTTP answers and transfers are scripted."""

    def __init__(self, result: ToolResult | None = None, *, redirects: bool = False) -> None:
        super().__init__()
        self.result = result or ToolResult(True, '{"free": ["10am"]}', 200, 12)
        self.http_calls: list[tuple[str, dict[str, Any]]] = []
        self.transfers: list[str] = []
        self.redirects = redirects

    async def call_http(self, tool: HttpTool, call: ToolCall, *, call_id: str) -> ToolResult:
        self.http_calls.append((call.name, call.arguments))
        return self.result

    async def transfer(self, call: Any, tool: TransferTool) -> bool:
        self.transfers.append(tool.to)
        return self.redirects


TOOLS = {
    "end_call": {"kind": "end_call", "confirm": False, "line": "Thanks for calling, goodbye!"},
    "transfer_call": {"kind": "transfer_call", "to": "+14155550123"},
    "send_dtmf": {"kind": "send_dtmf"},
    "check_availability": {"kind": "http", "url": "https://tools.example.test/slots",
                           "parameters": {"type": "object", "properties": {"day": {"type": "string"}},
                                          "required": ["day"]},
                           "wait_line": "Let me check.", "fallback_line": "I can't see the diary right now."},
}


async def _tool_call(open_call: Any, llm: ScriptedLLM, *, runner: FakeRunner | None = None,
                     stt: FakeSTT | None = None, hangup: Hangup | None = None) -> Any:
    return await open_call(llm=llm, stt=stt, hangup=hangup, tool_runner=runner or FakeRunner(),
                           settings={"tools": TOOLS})


async def _speak(call: Any, ms: int = 600) -> None:
    await _feed(call.session, call.clock, _tone(ms) + _silence(1500))
    await _feed(call.session, call.clock, _silence(3000), stop=lambda: call.session.reply is not None
                and call.session.reply.ended)


async def test_the_model_is_offered_the_agents_tools_and_end_call_hangs_up_after_its_line(open_call: Any) -> None:
    hangup = Hangup()
    llm = ScriptedLLM([ToolCall("end_call", {}, "c1")])
    call = await _tool_call(open_call, llm, hangup=hangup, stt=FakeSTT("That's all, bye."))
    await _speak(call)
    await _feed(call.session, call.clock, _silence(500), stop=lambda: hangup.calls > 0)
    assert llm.tools_offered[0] == list(TOOLS)
    assert hangup.calls == 1
    rows = await call.transcript()
    assert [(r.speaker, r.text) for r in rows if r.speaker != "tool"] == [
        ("caller", "That's all, bye."), ("agent", "Thanks for calling, goodbye!")]
    tool = [r for r in rows if r.speaker == "tool"]
    assert len(tool) == 1 and tool[0].metrics["tool"] == "end_call" and tool[0].metrics["ok"] is True


async def test_a_transfer_is_confirmed_by_the_caller_first_then_made_after_its_line(open_call: Any) -> None:
    hangup, runner = Hangup(), FakeRunner()
    llm = ScriptedLLM([ToolCall("transfer_call", {}, "c1")], ["We open at nine."])
    call = await _tool_call(open_call, llm, runner=runner, hangup=hangup,
                            stt=FakeSTT("Could your colleague help me instead?", "Yes, please."))
    await _speak(call)
    assert runner.transfers == [] and hangup.calls == 0, "not before the caller said yes"
    await _speak(call)
    await _feed(call.session, call.clock, _silence(500), stop=lambda: hangup.calls > 0)
    assert runner.transfers == ["+14155550123"]
    assert hangup.calls == 1, "no provider call to redirect here: the agent leaves the call"
    assert len(llm.requests) == 1, "the yes is answered by the action, not by the model"
    rows = await call.transcript()
    said = [(r.speaker, r.text) for r in rows if r.speaker != "tool"]
    assert said == [("caller", "Could your colleague help me instead?"),
                    ("agent", "Would you like me to put you through to a person now?"),
                    ("caller", "Yes, please."),
                    ("agent", "Of course, I'm putting you through now. Please hold.")], said
    stored = await call.storage.get_call(call.session.call.id)
    assert stored.transferred_to == "+14155550123" and stored.transferred_at is not None


async def test_a_transfer_the_caller_declines_is_dropped_and_the_model_answers(open_call: Any) -> None:
    runner = FakeRunner()
    llm = ScriptedLLM([ToolCall("transfer_call", {}, "c1")], ["Sure, what else can I do?"])
    call = await _tool_call(open_call, llm, runner=runner, stt=FakeSTT("I want a person.", "No, never mind."))
    await _speak(call)
    await _speak(call)
    assert runner.transfers == [] and len(llm.requests) == 2
    rows = await call.transcript()
    assert rows[-1].text == "Sure, what else can I do?"


async def test_an_http_tool_is_called_with_its_arguments_and_its_answer_spoken(open_call: Any) -> None:
    runner = FakeRunner()
    llm = ScriptedLLM([ToolCall("check_availability", {"day": "Tuesday"}, "c1")], ["Tuesday at ten is free."])
    call = await _tool_call(open_call, llm, runner=runner, stt=FakeSTT("Anything free on Tuesday?"))
    await _speak(call)
    assert runner.http_calls == [("check_availability", {"day": "Tuesday"})]
    follow = llm.requests[1]
    assert follow[-1].role == "tool" and "10am" in follow[-1].content
    assert follow[-2].role == "assistant" and follow[-2].tool_calls[0].name == "check_availability"
    rows = await call.transcript()
    agent = [r.text for r in rows if r.speaker == "agent"]
    assert agent == ["Let me check. Tuesday at ten is free."], agent
    tool = [r for r in rows if r.speaker == "tool"]
    assert tool[0].metrics["arguments"] == {"day": "Tuesday"} and tool[0].metrics["ok"] is True


async def test_a_failing_http_tool_leaves_the_call_going_with_its_fallback_line(open_call: Any) -> None:
    runner = FakeRunner(ToolResult(False, "tool check_availability timed out after 5.0 s"))
    llm = ScriptedLLM([ToolCall("check_availability", {"day": "Monday"}, "c1")])
    call = await _tool_call(open_call, llm, runner=runner, stt=FakeSTT("Anything on Monday?"))
    await _speak(call)
    rows = await call.transcript()
    assert [r.text for r in rows if r.speaker == "agent"] == ["Let me check. I can't see the diary right now."]
    assert [r.metrics["ok"] for r in rows if r.speaker == "tool"] == [False]
    assert len(llm.requests) == 1


async def test_an_invalid_tool_call_is_a_spoken_fallback_never_a_crash(open_call: Any) -> None:
    llm = ScriptedLLM([InvalidToolCall("check_availability", '{"name": "check_availability"}', "day is required")])
    call = await _tool_call(open_call, llm, stt=FakeSTT("Anything free?"))
    await _speak(call)
    rows = await call.transcript()
    assert [r.text for r in rows if r.speaker == "agent"] == ["I can't see the diary right now."]
    assert [r.metrics["ok"] for r in rows if r.speaker == "tool"] == [False]


async def test_send_dtmf_plays_the_keys_into_the_call(open_call: Any) -> None:
    llm = ScriptedLLM([ToolCall("send_dtmf", {"digits": "2"}, "c1")])
    call = await _tool_call(open_call, llm, stt=FakeSTT("Press 2 for appointments."))
    frames_before = call.line.frames
    await _speak(call)
    assert call.line.frames - frames_before >= 5  # 100 ms of tone, in 20 ms frames
    assert decode_dtmf(ulaw_to_float32(dtmf_ulaw("2#"))) == "2#"  # what was played decodes as the keys
    rows = await call.transcript()
    assert [r.text for r in rows if r.speaker == "agent"] == ["[keys: 2]"]
    assert [r.metrics["arguments"] for r in rows if r.speaker == "tool"] == [{"digits": "2"}]


async def test_a_request_for_a_person_is_recognised_without_the_model(open_call: Any) -> None:
    hangup, runner = Hangup(), FakeRunner()
    llm = ScriptedLLM(["We open at nine."])
    call = await _tool_call(open_call, llm, runner=runner, hangup=hangup,
                            stt=FakeSTT("Can I speak to a real person please?", "Yes."))
    await _speak(call)
    await _speak(call)
    await _feed(call.session, call.clock, _silence(500), stop=lambda: hangup.calls > 0)
    assert runner.transfers == ["+14155550123"] and llm.requests == []


async def test_a_phone_menu_is_answered_with_the_key_matching_the_agents_purpose(open_call: Any) -> None:
    llm = ScriptedLLM(["Hello?"])
    call = await open_call(llm=llm, tool_runner=FakeRunner(),
                           stt=FakeSTT("For billing, press 1. For appointments, press 2."),
                           settings={"tools": {"press": {"kind": "send_dtmf"}}})
    call.session.agent = call.session.agent.model_copy(update={"prompt": "You book an appointment for a patient."})
    await _speak(call)
    rows = await call.transcript()
    assert [r.metrics["arguments"] for r in rows if r.speaker == "tool"] == [{"digits": "2"}]
    assert llm.requests == []
