"""voice_gateway.session and voice_gateway.reply: the conductor on a fake clock with instant engines.

The caller is a 300 Hz tone the energy VAD cannot miss, fed in 20 ms chunks that each move the fake
clock 20 ms. The far end plays each frame in 20 ms of that clock and echoes marks at once, or only
when the test releases them (the agent is then still talking). Engines are scripted and instant; a
"slow" one moves the fake clock instead of taking time. Nothing sleeps: tests await events or poll.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared import urgency
from shared.audio import FRAME_BYTES, MULAW_SILENCE, PHONE_RATE, float32_to_ulaw
from shared.llm.base import ChatMessage, GenerationOptions, LLMError
from shared.settings import Settings
from shared.storage import build_storage
from shared.storage.base import Storage, TranscriptLine
from shared.stt.base import Transcription
from shared.vad.energy import EnergyVAD
from tests.conftest import make_settings
from voice_gateway.assurance import ProductionRate, StartPolicy
from voice_gateway.engines import Engines, prefill_pays
from voice_gateway.reply import DUE_WORDS_KNOWN_S, FALLBACK_LINE, RUNNING_DRY_PRECEDENCE_S, Reply, ReplyState
from voice_gateway.session import CONTINUE_S, CallSession
from voice_gateway.spool import Spool

FRAME_S = 0.02


class FakeClock:
    """`time.monotonic` for the session, moved only by the test, the far end and slow engines."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLine:
    """The far end of the stream (Twilio): plays each frame in 20 ms of the fake clock, echoes marks."""

    def __init__(self, clock: FakeClock, *, echo: bool = True) -> None:
        self.clock = clock
        self.echo = echo
        self.session: CallSession | None = None
        self.log: list[str] = []  # "m" per frame, then each mark's name, "clear"
        self._pending: list[str] = []
        self.stalled: asyncio.Event | None = None
        """When set by a test, audio waits for it: the agent's audio stays ahead of the far end."""

    @property
    def frames(self) -> int:
        return self.log.count("m")

    @property
    def clears(self) -> int:
        return self.log.count("clear")

    async def send(self, text: str) -> None:
        message = json.loads(text)
        if message["event"] == "media":
            if self.stalled is not None:
                await self.stalled.wait()
            self.log.append("m")
            self.clock.advance(FRAME_S)
        elif message["event"] == "mark":
            self.log.append(message["mark"]["name"])
            self._pending.append(message["mark"]["name"])
            if self.echo:
                self.release()
        elif message["event"] == "clear":
            self.log.append("clear")
            self.release()  # Twilio sends back the marks still in the buffer it drops

    def release(self, count: int | None = None) -> None:
        """The audio sent so far (up to the `count`-th mark) has played: echo those marks."""
        count = len(self._pending) if count is None else count
        released, self._pending = self._pending[:count], self._pending[count:]
        for name in released:
            assert self.session is not None
            self.session.on_mark(name)


class FakeSTT:
    """Hears `texts` in turn (the last one from then on)."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts) or ["What are your hours?"]
        self.calls = 0
        self.urgencies: list[urgency.Urgent] = []
        self.heard_s: list[float] = []  # the length of each utterance it was handed

    async def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        self.urgencies.append(urgency.current())
        self.heard_s.append(audio.shape[0] / 16000)
        self.calls += 1
        return Transcription(text=self.texts[min(self.calls, len(self.texts)) - 1])

    def warmup(self) -> None:
        return None


class FakeLLM:
    """Streams `answer` word by word, or raises `LLMError`; a one-token request is the prompt prefill."""

    def __init__(self, answer: str = "We open at nine.", *, error: str | None = None) -> None:
        self.answer = answer
        self.error = error
        self.requests: list[list[ChatMessage]] = []
        self.urgencies: list[urgency.Urgent] = []
        self.prefills: list[urgency.Urgent] = []
        self.prefilled: list[list[ChatMessage]] = []

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]:
        if options.max_tokens == 1:
            self.prefills.append(urgency.current())
            self.prefilled.append(messages)
            return
        self.requests.append(messages)
        self.urgencies.append(urgency.current())
        if self.error is not None:
            raise LLMError(self.error)
        for piece in re.findall(r"\S+\s*", self.answer):
            await asyncio.sleep(0)
            yield piece

    def warmup(self) -> None:
        return None


class FakeTTS:
    """Speaks each clause as `clause_s` of tone; `cost_s` of fake clock per clause makes it slow,
    `gate` (when set) holds every clause until the test opens it."""

    sample_rate = PHONE_RATE

    def __init__(self, clock: FakeClock, *, clause_s: float = 0.2, cost_s: float = 0.0) -> None:
        self.clock = clock
        self.clause_s = clause_s
        self.cost_s = cost_s
        self.gate: asyncio.Event | None = None
        self.on_clause: Callable[[str], None] | None = None
        self.urgencies: list[urgency.Urgent] = []

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        self.urgencies.append(urgency.current())
        if self.on_clause is not None:
            self.on_clause(text)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        self.clock.advance(self.cost_s)
        yield np.full(round(self.clause_s * PHONE_RATE), 800, dtype=np.int16)

    def warmup(self) -> None:
        return None


class FakeTurnModel:
    """An end-of-turn model that always gives `probability` (and counts what it heard)."""

    def __init__(self, probability: float) -> None:
        self.p = probability
        self.calls = 0

    def probability(self, audio_16k: np.ndarray) -> float:
        self.calls += 1
        return self.p

    def warmup(self) -> None:
        return None


def _tone(ms: int) -> bytes:
    t = np.arange(8 * ms) / 8000
    return float32_to_ulaw((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))


def _silence(ms: int) -> bytes:
    return bytes([MULAW_SILENCE]) * (8 * ms)


async def _feed(session: CallSession, clock: FakeClock, ulaw: bytes, *, stop: Callable[[], bool] | None = None) -> None:
    """Caller audio in 20 ms chunks arriving in (fake) real time; ends early once `stop()` holds."""
    for i in range(0, len(ulaw), FRAME_BYTES):
        clock.advance(FRAME_S)
        await session.on_media(ulaw[i : i + FRAME_BYTES])
        if stop is not None and stop():
            return


async def _turn(session: CallSession, clock: FakeClock, speech_ms: int = 600) -> Reply:
    """The caller speaks, then is silent until the turn is confirmed; returns the confirmed reply."""
    before = session.reply
    await _feed(session, clock, _tone(speech_ms))

    def confirmed() -> bool:
        return session.reply is not None and session.reply is not before and session.reply.confirmed

    await _feed(session, clock, _silence(1500), stop=confirmed)
    assert confirmed(), "the turn never ended"
    assert session.reply is not None
    return session.reply


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


class Call:
    """One session on fake engines, with its far end, storage and what it wrote."""

    def __init__(self, session: CallSession, line: FakeLine, clock: FakeClock, storage: Storage,
                 stt: FakeSTT, llm: FakeLLM, tts: FakeTTS) -> None:
        self.session, self.line, self.clock, self.storage = session, line, clock, storage
        self.stt, self.llm, self.tts = stt, llm, tts

    async def transcript(self) -> list[TranscriptLine]:
        """Close the call and read back every line it stored."""
        await self.session.close()
        return await self.storage.list_transcripts(self.session.call.id)


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Storage, Spool]]:
    settings = make_settings(tmp_path)
    storage = build_storage(settings)
    await storage.open()
    await storage.migrate()
    spool = Spool(settings.spool_path)
    await spool.open()
    try:
        yield storage, spool
    finally:
        await spool.close()
        await storage.close()


@pytest.fixture
def open_call(stores: tuple[Storage, Spool]) -> Callable[..., Any]:
    storage, spool = stores

    async def open_call(
        *, greeting: str | None = None, stt: FakeSTT | None = None, llm: FakeLLM | None = None,
        tts: FakeTTS | None = None, clock: FakeClock | None = None, echo: bool = True,
        start_policy: StartPolicy | None = None, hangup: Callable[[], Any] | None = None,
        turn: FakeTurnModel | None = None, settings: dict[str, Any] | None = None,
        beep_detector: Any = None, tool_runner: Any = None, prefill: bool = True,
    ) -> Call:
        clock = clock or FakeClock()
        stt, llm, tts = stt or FakeSTT(), llm or FakeLLM(), tts or FakeTTS(clock)
        # Greeting at once unless a test screens: the far end here waits for it.
        agent_settings = {"voicemail": {"detect": False}, **(settings or {})}
        agent = await storage.create_agent({"name": "Ava", "prompt": "Be brief.", "greeting": greeting,
                                              "settings": agent_settings})
        call = await storage.create_call(agent_id=agent.id, to_number="+15550001111", from_number=None, metadata={})
        line = FakeLine(clock, echo=echo)
        session = CallSession(
            call=call, agent=agent, stream_sid="MZ1", send=line.send, storage=storage, spool=spool,
            engines=Engines(stt=stt, llm=llm, tts=tts, vad_factory=EnergyVAD, turn=turn, prefill=prefill),
            clock=clock,
            hangup=hangup, start_policy=start_policy, beep_detector=beep_detector, tool_runner=tool_runner,
        )
        line.session = session
        await session.start()
        return Call(session, line, clock, storage, stt, llm, tts)

    return open_call


def _said(transcript: list[TranscriptLine]) -> list[tuple[str, str]]:
    return [(line.speaker, line.text) for line in transcript]


# --- turn-taking ------------------------------------------------------------------------------------
async def test_a_speculative_reply_is_cancelled_unheard_when_the_caller_goes_on(open_call: Any) -> None:
    call = await open_call(stt=FakeSTT("I would like", "I would like a cleaning."))
    session, clock = call.session, call.clock
    await _feed(session, clock, _tone(500) + _silence(250))  # a pause, shorter than the end of turn
    speculative = session.reply
    assert speculative is not None and speculative.state is ReplyState.SPECULATIVE
    assert speculative.deadline() == math.inf
    await _until(lambda: call.llm.requests != [], "the speculative LLM request")  # made ahead of the turn
    assert call.line.frames == 0, "nothing of a speculative reply is heard"

    reply = await _turn(session, clock, 500)  # the caller goes on, then ends the turn
    assert speculative.state is ReplyState.CANCELLED and speculative.deadline() == math.inf
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer to play")

    transcript = await call.transcript()
    assert _said(transcript) == [("caller", "I would like a cleaning."), ("agent", "We open at nine.")]
    assert {"stt_ms", "end_of_turn_ms"} <= set(transcript[0].metrics)
    assert {"stt_ms", "end_of_turn_ms", "llm_first_token_ms", "tts_first_audio_ms", "voice_to_voice_ms",
            "max_frame_late_ms", "held_ms"} <= set(transcript[1].metrics)
    assert [m for m in call.line.log if m != "m"] == [f"{reply.id}:0"]  # only the answer went out


async def test_a_call_alone_speculates_at_the_first_sign_of_a_pause_and_beside_others_later(
    open_call: Any,
) -> None:
    alone = await open_call()
    await _feed(alone.session, alone.clock, _tone(500) + _silence(110))  # past speculate_ms, before 150 ms
    assert alone.session.reply is not None and alone.session.reply.state is ReplyState.SPECULATIVE
    await alone.session.close()

    shared = await open_call(start_policy=StartPolicy(ProductionRate(), others=lambda: 3))
    await _feed(shared.session, shared.clock, _tone(500) + _silence(110))
    assert shared.session.reply is None  # three other calls: speculation waits for the longer pause
    await _feed(shared.session, shared.clock, _silence(110))
    assert shared.session.reply is not None and shared.session.reply.state is ReplyState.SPECULATIVE
    await shared.session.close()


async def test_a_long_turn_s_first_words_are_read_and_evaluated_while_the_caller_talks(open_call: Any) -> None:
    call = await open_call(stt=FakeSTT("I would like to book", "I would like to book a cleaning for",
                                       "I would like to book a cleaning for Friday."))
    session, clock, ahead = call.session, call.clock, call.session.read_ahead
    await _until(lambda: session._prefill is not None and session._prefill.done(), "the prompt prefill")
    await _feed(session, clock, _tone(1300))  # 1.2 s of speech without a pause: read what was said
    await ahead.wait()
    assert ahead.evaluated == ["I would like to"]  # the last word read may be cut short: left out
    await _feed(session, clock, _tone(1200))
    await ahead.wait()
    assert ahead.evaluated == ["I would like to", "I would like to book a cleaning"]
    assert session.reply is None, "reading ahead answers nothing"
    # Background work, with the prompt the turn will have up to those words (same system prompt and
    # history), so the engine keeps it as the turn's prefix.
    background = [u for u, m in zip(call.llm.prefills, call.llm.prefilled, strict=True)
                  if m[-1].content.startswith("I would like to")]
    assert len(background) == 2 and all(urgency.is_speculative(u) for u in background)
    read = call.llm.prefilled[-1]

    reply = await _turn(session, clock, 300)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer to play")
    asked = call.llm.requests[-1]
    assert asked[:-1] == read[:-1] and asked[-1].content == "I would like to book a cleaning for Friday."
    transcript = await call.transcript()
    assert _said(transcript) == [("caller", "I would like to book a cleaning for Friday."),
                                 ("agent", "We open at nine.")]


async def test_reading_ahead_waits_for_an_idle_machine_and_stops_when_the_turn_is_answered(
    open_call: Any,
) -> None:
    call = await open_call(stt=FakeSTT("Could you tell me when you open on Friday?"))
    session, clock, ahead = call.session, call.clock, call.session.read_ahead
    await _until(lambda: session._prefill is not None and session._prefill.done(), "the prompt prefill")
    idle = False
    ahead.quiet = lambda: idle  # another call's reply is being made: the cores are not idle
    await _feed(session, clock, _tone(2600))
    assert ahead.started == 0 and call.stt.calls == 0

    idle = True
    held = asyncio.Event()

    async def slow_transcribe(audio: np.ndarray, *, prompt: str | None = None) -> Transcription:
        await held.wait()  # still reading when the caller stops
        return Transcription(text="Could you tell me when")

    call.stt.transcribe = slow_transcribe  # type: ignore[method-assign]
    await _feed(session, clock, _tone(1300))
    assert ahead.started == 1 and ahead.running
    await _feed(session, clock, _silence(100))  # the first sign of a pause: a (speculative) reply begins
    assert session.reply is not None
    assert not ahead.running and ahead.evaluated == [], "the reply's own request takes over the slot"
    await session.close()


async def test_an_engine_that_bills_each_request_gets_no_prompt_ahead_of_need(open_call: Any) -> None:
    """`LLM_PREFILL` off (the default for an OpenAI-compatible URL): no prefill at the start or after a
    line, no reading ahead, only the turns' own requests."""
    call = await open_call(stt=FakeSTT("I would like to book a cleaning for Friday."), prefill=False)
    session, clock = call.session, call.clock
    await _feed(session, clock, _tone(2600))  # long enough to be read ahead
    assert session.read_ahead.started == 0
    reply = await _turn(session, clock, 300)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer to play")
    assert call.llm.prefills == [] and len(call.llm.requests) == 1
    await session.close()


def test_prompts_are_evaluated_ahead_by_default_except_on_an_openai_compatible_url() -> None:
    assert prefill_pays(Settings(LLM_ENGINE="llama-cpp")) and prefill_pays(Settings(LLM_ENGINE="ollama"))
    assert not prefill_pays(Settings(LLM_ENGINE="openai"))
    assert prefill_pays(Settings(LLM_ENGINE="openai", LLM_PREFILL=True))
    assert not prefill_pays(Settings(LLM_ENGINE="llama-cpp", LLM_PREFILL=False))


LONG_ANSWER = "Sure, please go ahead. We are open on Friday from nine to five and on the weekend until noon."


@pytest.mark.parametrize(("others", "clause_s", "expected"), [
    (0, 0.2, ["Sure, please go ahead.", "We are open on Friday from nine to five and on the weekend until noon."]),
    # Beside three calls, the first clause plays with 1.5 s of audio ahead while the next one is
    # written: that one is cut once it is long (six words before a phrase start).
    (3, 1.5, ["Sure, please go ahead.", "We are open on Friday from nine to five,", "and on the weekend until noon."]),
    # With 0.2 s the reply waits for the next clause (too little audio to start on while it is still
    # being written), so that clause is cut at the first phrase start after three words, again and
    # again until enough audio is made.
    (3, 0.2, ["Sure, please go ahead.", "We are open,", "on Friday from nine to five,", "and on the weekend,",
              "until noon."]),
])
async def test_beside_other_calls_a_long_clause_is_synthesised_in_parts(
    open_call: Any, others: int, clause_s: float, expected: list[str]
) -> None:
    """Its first part is heard sooner and its TTS job is shorter; the stored line is the same."""
    clock = FakeClock()
    call = await open_call(clock=clock, llm=FakeLLM(LONG_ANSWER), tts=FakeTTS(clock, clause_s=clause_s),
                           start_policy=StartPolicy(ProductionRate(), others=lambda: others))
    synthesised: list[str] = []
    call.tts.on_clause = synthesised.append
    call.line.stalled = asyncio.Event()  # what is made stays ahead of the far end until all is made
    reply = await _turn(call.session, call.clock)
    await _until(lambda: reply._text_done and len(synthesised) == len(expected), "the reply to be made")
    call.line.stalled.set()
    await _until(lambda: reply.state is ReplyState.PLAYED, "the reply to play")
    assert synthesised == expected
    assert _said(await call.transcript())[-1] == ("agent", LONG_ANSWER)


async def test_a_rambling_reply_ends_at_the_first_sentence_end_past_max_words(open_call: Any) -> None:
    kept = ("We open at nine on weekdays. The cleaning costs eighty dollars and takes forty five minutes, "
            "and the office is at twelve Main Street. You can park behind the building for free. "
            "Let me know if there is anything else I can help you with today.")
    call = await open_call(llm=FakeLLM(kept + " Have a wonderful day, and thanks again for calling us."))
    reply = await _turn(call.session, call.clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the reply to play")
    said = _said(await call.transcript())
    # 6 + 18 + 8 + 14 words: the cut comes at the end of the sentence that passed 40, never inside one
    assert said[-1] == ("agent", kept)
    assert reply.metrics["cut_at_words"] == 46


async def test_llm_error_speaks_the_fallback_line(open_call: Any) -> None:
    call = await open_call(llm=FakeLLM(error="model crashed"))
    reply = await _turn(call.session, call.clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the fallback line to play")
    transcript = await call.transcript()
    assert _said(transcript) == [("caller", "What are your hours?"), ("agent", FALLBACK_LINE)]
    assert transcript[1].metrics["llm_error"] == "model crashed"


async def test_the_agent_hangs_up_once_both_said_goodbye_and_its_goodbye_played(open_call: Any) -> None:
    hung_up = asyncio.Event()

    async def hangup() -> None:
        hung_up.set()

    call = await open_call(stt=FakeSTT("Thanks, goodbye."), llm=FakeLLM("Goodbye, have a nice day."),
                           echo=False, hangup=hangup)
    reply = await _turn(call.session, call.clock)
    await _until(lambda: f"{reply.id}:0" in call.line.log and reply.task is not None and reply.task.done(),
                 "the goodbye to be sent")
    assert reply.state is ReplyState.PLAYING and not hung_up.is_set(), "not before the goodbye has played"
    call.line.release()
    await asyncio.wait_for(hung_up.wait(), 3)
    assert reply.state is ReplyState.PLAYED
    assert _said(await call.transcript())[-1] == ("agent", "Goodbye, have a nice day.")


async def test_no_hang_up_when_only_the_agent_says_goodbye(open_call: Any) -> None:
    hung_up = asyncio.Event()

    async def hangup() -> None:
        hung_up.set()

    call = await open_call(stt=FakeSTT("What are your hours?"), llm=FakeLLM("Nine to five. Goodbye."), hangup=hangup)
    reply = await _turn(call.session, call.clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer to play")
    await call.transcript()
    assert not hung_up.is_set()


async def test_short_speech_over_the_agent_is_stored_as_a_backchannel_and_not_answered(open_call: Any) -> None:
    call = await open_call(greeting="One two three four five. Six seven eight nine ten.",
                           stt=FakeSTT("Mm-hm."), echo=False)
    session = call.session
    greeting = session.reply
    assert greeting is not None
    await _until(lambda: greeting.state is ReplyState.PLAYING, "the greeting to play")
    await _feed(session, call.clock, _tone(250) + _silence(800))  # shorter than barge_in_min_ms (400)
    await _until(lambda: call.stt.calls == 1 and not session._side_tasks, "the backchannel's STT")
    assert session.reply is greeting and greeting.state is ReplyState.PLAYING
    # Paused at the onset (one clear), then resumed: not an interruption.
    assert call.llm.requests == [] and call.line.clears == 1 and session.barge_ins == 0
    assert session.pauses == 1 and not session.player.paused
    # Read once, while the agent waits paused (its words decide: "wait" would have taken the turn).
    assert call.stt.calls == 1 and call.stt.urgencies[0] is not urgency.BACKGROUND
    call.line.release()
    await _until(lambda: greeting.state is ReplyState.PLAYED, "the greeting to finish")

    transcript = await call.transcript()
    assert _said(transcript) == [("caller", "Mm-hm."), ("agent", "One two three four five. Six seven eight nine ten.")]
    assert transcript[0].metrics == {"backchannel": True}
    assert "interrupted" not in transcript[1].metrics


async def test_a_short_wait_over_the_agent_takes_the_turn_and_joins_what_follows(open_call: Any) -> None:
    """"Wait, [pause] where is your office?" over the greeting: shorter than barge_in_min_ms, "Wait" is
    still not a backchannel; the agent stays stopped, and the question is one caller line, answered once."""
    call = await open_call(greeting="One two three four five. Six seven eight nine ten.",
                           stt=FakeSTT("Wait.", "Wait, where is your office?"), echo=False)
    session, clock = call.session, call.clock
    greeting = session.reply
    assert greeting is not None
    await _until(lambda: greeting.state is ReplyState.PLAYING, "the greeting to play")
    await _feed(session, clock, _tone(250) + _silence(300))  # "Wait," and the comma's pause
    assert greeting.state is ReplyState.INTERRUPTED and session.barge_ins == 1 and call.line.clears == 1
    call.line.echo = True
    await _feed(session, clock, _tone(900) + _silence(1500), stop=lambda: session.reply is not None
                and session.reply is not greeting and session.reply.confirmed)
    answer = session.reply
    assert answer is not None and answer is not greeting and answer.confirmed
    await _until(lambda: answer.state is ReplyState.PLAYED, "the answer")

    transcript = await call.transcript()
    assert [t for t in _said(transcript) if t[0] == "caller"] == [("caller", "Wait, where is your office?")]
    assert len(call.llm.requests) == 1 and call.llm.requests[0][-1].content == "Wait, where is your office?"
    assert greeting.state is ReplyState.INTERRUPTED  # nothing of it was heard (no mark came back): no line


async def test_long_speech_over_the_agent_interrupts_it_and_keeps_what_was_heard(open_call: Any) -> None:
    clock = FakeClock()
    tts = FakeTTS(clock)
    call = await open_call(clock=clock, tts=tts, stt=FakeSTT("What are your hours?", "Wait, stop."),
                           llm=FakeLLM("One two three four five. Six seven eight nine ten."), echo=False,
                           start_policy=StartPolicy(SpyRates(rate=100.0), margin_s=0.0, writing_margin_s=0.0))
    session = call.session

    def hold_second(text: str) -> None:
        if text.startswith("Six"):
            tts.gate = asyncio.Event()  # the second clause is still being made when the caller talks

    tts.on_clause = hold_second
    reply = await _turn(session, clock)
    await _until(lambda: reply.state is ReplyState.PLAYING and f"{reply.id}:0" in call.line.log,
                 "the first clause to be sent")
    await _feed(session, clock, _silence(round(CONTINUE_S * 1000)))  # later than a caller going on with their turn
    await _feed(session, clock, _tone(600) + _silence(400))  # longer than barge_in_min_ms, and not "okay"
    assert reply.state is ReplyState.INTERRUPTED and reply.deadline() == math.inf
    assert call.line.clears == 1 and session.barge_ins == 1 and session.pauses == 1  # one clear, at the onset
    tts.on_clause = None
    if tts.gate is not None:
        tts.gate.set()
        tts.gate = None
    call.line.echo = True
    await _feed(session, clock, _silence(500), stop=lambda: session.reply is not reply
                and session.reply is not None and session.reply.confirmed)
    answer = session.reply
    assert answer is not None and answer is not reply and answer.confirmed  # the interruption is a turn
    await _until(lambda: answer.state is ReplyState.PLAYED, "the answer to the interruption")

    transcript = await call.transcript()
    agent = [line for line in transcript if line.speaker == "agent"]
    assert agent[0].text == "One two three four five." and agent[0].metrics["interrupted"] is True
    assert _said(transcript)[2:] == [("caller", "Wait, stop."), ("agent", "One two three four five. Six seven eight nine ten.")]


async def test_a_backchannel_pauses_the_reply_which_then_finishes_with_all_its_words(open_call: Any) -> None:
    clock = FakeClock()
    tts = FakeTTS(clock)
    call = await open_call(clock=clock, tts=tts, stt=FakeSTT("What are your hours?", "Mm-hm.", "And Sunday?"),
                           llm=FakeLLM("One two three four five. Six seven eight nine ten."), echo=False,
                           start_policy=StartPolicy(SpyRates(rate=100.0), margin_s=0.0, writing_margin_s=0.0))
    session = call.session

    def hold_second(text: str) -> None:
        if text.startswith("Six"):
            tts.gate = asyncio.Event()

    tts.on_clause = hold_second
    reply = await _turn(session, clock)
    await _until(lambda: reply.state is ReplyState.PLAYING and f"{reply.id}:0" in call.line.log,
                 "the first clause to be sent")
    await _feed(session, clock, _silence(round(CONTINUE_S * 1000)))
    await _feed(session, clock, _tone(300) + _silence(800))  # "mm-hm", shorter than barge_in_min_ms
    await _until(lambda: call.stt.calls == 2 and not session._side_tasks, "the backchannel's STT")
    assert reply.state is ReplyState.PLAYING and not session.player.paused
    assert session.pauses == 1 and call.line.clears == 1 and session.barge_ins == 0
    tts.on_clause = None
    if tts.gate is not None:
        tts.gate.set()
    call.line.echo = True
    call.line.release()
    await _until(lambda: reply.state is ReplyState.PLAYED, "the reply to finish")

    transcript = await call.transcript()
    assert _said(transcript) == [
        ("caller", "What are your hours?"), ("caller", "Mm-hm."),
        ("agent", "One two three four five. Six seven eight nine ten."),
    ]
    assert transcript[1].metrics == {"backchannel": True} and "interrupted" not in transcript[2].metrics
    assert len(call.llm.requests) == 1
    # The model reads the backchannel after the reply it was said over: its KV cache holds the question
    # and then that reply, so the next turn evaluates only what follows them.
    await _until(lambda: len(call.llm.prefills) == 1, "the next turn's prompt, evaluated after the line")
    await _turn(session, clock)
    await _until(lambda: len(call.llm.requests) == 2, "the next turn's request")
    assert [(m.role, m.content) for m in call.llm.requests[1][-4:]] == [
        ("user", "What are your hours?"), ("assistant", "One two three four five. Six seven eight nine ten."),
        ("user", "Mm-hm."), ("user", "And Sunday?"),
    ]


async def test_listener_words_longer_than_barge_in_min_let_the_reply_play_on(open_call: Any) -> None:
    clock = FakeClock()
    tts = FakeTTS(clock)
    stt = FakeSTT("What are your hours?", "Okay, yeah.")
    call = await open_call(clock=clock, tts=tts, stt=stt, echo=False,
                           llm=FakeLLM("One two three four five. Six seven eight nine ten."),
                           start_policy=StartPolicy(SpyRates(rate=100.0), margin_s=0.0, writing_margin_s=0.0))
    session = call.session

    def hold_second(text: str) -> None:
        if text.startswith("Six"):
            tts.gate = asyncio.Event()

    tts.on_clause = hold_second
    reply = await _turn(session, clock)
    await _until(lambda: reply.state is ReplyState.PLAYING and f"{reply.id}:0" in call.line.log,
                 "the first clause to be sent")
    await _feed(session, clock, _silence(round(CONTINUE_S * 1000)))
    await _feed(session, clock, _tone(700) + _silence(800))  # longer than barge_in_min_ms: its words decide
    await _until(lambda: not session._side_tasks, "the backchannel to be stored")
    assert reply.state is ReplyState.PLAYING and session.barge_ins == 0 and not session.player.paused
    assert stt.calls == 2  # read once, when its words were needed, and stored from that reading
    tts.on_clause = None
    if tts.gate is not None:
        tts.gate.set()
    call.line.echo = True
    call.line.release()
    await _until(lambda: reply.state is ReplyState.PLAYED, "the reply to finish")
    transcript = await call.transcript()
    assert _said(transcript)[1:] == [
        ("caller", "Okay, yeah."), ("agent", "One two three four five. Six seven eight nine ten."),
    ]


async def test_a_caller_who_goes_on_before_hearing_the_reply_gets_one_reply_to_the_whole_turn(
    open_call: Any,
) -> None:
    clock = FakeClock()
    tts = FakeTTS(clock)
    tts.gate = asyncio.Event()  # the reply to the first part is made slowly: not heard yet
    stt = FakeSTT("My name is Ana. I'm calling about my order.")  # what a whole utterance gives
    call = await open_call(clock=clock, tts=tts, stt=stt)
    session = call.session
    first = await _turn(session, clock, 600)  # 600 ms of speech, then the end-of-turn silence
    assert first.state is ReplyState.CONFIRMED
    await _feed(session, clock, _silence(300) + _tone(700))  # the caller goes on
    assert first.state is ReplyState.CANCELLED and session.merged_turns == 1
    whole = await _turn(session, clock, 0)
    assert whole is not first and whole.confirmed
    tts.gate.set()
    await _until(lambda: whole.caller_text is not None, "the whole turn's STT")
    # The whole turn went to STT again as one utterance: both parts and the pause between them.
    pause_s = first.metrics["end_of_turn_ms"] / 1000 + 0.3  # the silence before the caller went on
    assert stt.heard_s[-1] >= 0.6 + pause_s + 0.7
    await _until(lambda: whole.state is ReplyState.PLAYED, "the reply to the whole turn")

    transcript = await call.transcript()
    assert _said(transcript) == [("caller", "My name is Ana. I'm calling about my order."), ("agent", "We open at nine.")]


async def _answer_begun(open_call: Any) -> tuple[Call, FakeTTS, FakeSTT, Reply]:
    """A 600 ms caller line whose two-sentence answer has begun to play; its second clause is held in
    TTS, so the answer is still playing when the caller goes on."""
    clock = FakeClock()
    tts = FakeTTS(clock)
    stt = FakeSTT("My name is Ana. I'm calling about my order.")
    call = await open_call(clock=clock, tts=tts, stt=stt, echo=False,
                           llm=FakeLLM("One two three four five. Six seven eight nine ten."),
                           start_policy=StartPolicy(SpyRates(rate=100.0), margin_s=0.0, writing_margin_s=0.0))

    def hold_second(text: str) -> None:
        if text.startswith("Six"):
            tts.gate = asyncio.Event()

    tts.on_clause = hold_second
    first = await _turn(call.session, clock, 600)
    await _until(lambda: first.state is ReplyState.PLAYING and f"{first.id}:0" in call.line.log,
                 "the answer to begin")
    return call, tts, stt, first


async def _answer_to_the_whole_turn(call: Call, tts: FakeTTS) -> Reply:
    """Release the held clause, let the far end echo again, and play the answer to the longer turn."""
    tts.on_clause = None
    if tts.gate is not None:
        tts.gate.set()
        tts.gate = None
    call.line.echo = True
    whole = await _turn(call.session, call.clock, 0)
    await _until(lambda: whole.state is ReplyState.PLAYED, "the answer to the whole turn")
    return whole


async def test_a_caller_who_goes_on_as_the_answer_begins_cuts_it_and_keeps_one_turn(open_call: Any) -> None:
    call, tts, stt, first = await _answer_begun(open_call)
    session, clock = call.session, call.clock
    await _feed(session, clock, _silence(200) + _tone(700))  # within CONTINUE_S of the pause: going on
    assert first.state is ReplyState.INTERRUPTED and session.merged_turns == 1 and session.barge_ins == 0
    await _answer_to_the_whole_turn(call, tts)
    pause_s = first.metrics["end_of_turn_ms"] / 1000 + 0.2  # the silence before the caller went on
    assert stt.heard_s[-1] >= 0.6 + pause_s + 0.7  # both parts, transcribed again as one

    transcript = await call.transcript()
    assert _said(transcript) == [
        ("agent", "One two three four five."),  # what was heard of the cut answer
        ("caller", "My name is Ana. I'm calling about my order."),  # one caller line, not two halves
        ("agent", "One two three four five. Six seven eight nine ten."),
    ]
    assert transcript[0].metrics.get("interrupted") is True


async def test_voice_begun_just_inside_the_grace_keeps_the_turn_open_until_it_proves_to_be_speech(
    open_call: Any,
) -> None:
    """The caller goes on 1.16 s after their pause: inside CONTINUE_S, but the detector is only sure it
    is speech (min_speech_ms) after the grace has run out. The line must not be written under it."""
    call, tts, _stt, first = await _answer_begun(open_call)
    session, clock = call.session, call.clock
    assert first.speech_end_wall is not None
    grace_left_ms = round((first.speech_end_wall + CONTINUE_S - clock()) * 1000)
    await _feed(session, clock, _silence(grace_left_ms - 40) + _tone(700))  # voice 40 ms before it ends
    assert first.state is ReplyState.INTERRUPTED and session.merged_turns == 1
    await _answer_to_the_whole_turn(call, tts)

    transcript = await call.transcript()
    assert [line for line in _said(transcript) if line[0] == "caller"] == [
        ("caller", "My name is Ana. I'm calling about my order."),  # once, not the first half then the whole
    ]


async def _ended_after(call: Call, model: FakeTurnModel, speech: bytes) -> Reply:
    """Feed `speech` then silence in 20 ms chunks, letting the model's thread answer in between."""
    session, clock = call.session, call.clock
    await _feed(session, clock, speech)
    for _ in range(200):  # up to 4 s of silence
        await _feed(session, clock, _silence(20))
        await asyncio.sleep(0.002)  # the model runs in a worker thread: give it real time
        if session.reply is not None and session.reply.confirmed:
            return session.reply
    raise AssertionError("the turn never ended")


async def test_a_confident_done_answers_after_a_short_silence(open_call: Any) -> None:
    model = FakeTurnModel(0.995)
    call = await open_call(turn=model)
    reply = await _ended_after(call, model, _tone(600))
    assert model.calls == 1
    assert 200 <= reply.metrics["end_of_turn_ms"] < 500  # the agent's own silence is 500 ms
    assert reply.metrics["turn_verdict"] == "done" and reply.metrics["turn_p"] == 0.995
    await call.session.close()


async def test_beside_other_calls_the_turn_ends_on_silence_without_the_model(open_call: Any) -> None:
    model = FakeTurnModel(0.995)
    call = await open_call(turn=model, start_policy=StartPolicy(ProductionRate(), others=lambda: 3))
    reply = await _turn(call.session, call.clock)
    assert model.calls == 0 and call.session.judges_skipped == 1
    assert reply.metrics["end_of_turn_ms"] >= 280 and "turn_verdict" not in reply.metrics
    await call.session.close()


async def test_a_confident_not_done_keeps_a_one_second_pause_inside_the_turn(open_call: Any) -> None:
    model = FakeTurnModel(0.02)
    stt = FakeSTT("I'd like to book, um, for next Tuesday.")
    call = await open_call(turn=model, stt=stt)
    reply = await _ended_after(call, model, _tone(600) + _silence(1000) + _tone(500))
    assert model.calls == 2  # judged at each pause; the first one did not end the turn
    assert reply.metrics["end_of_turn_ms"] >= 1500 and reply.metrics["turn_verdict"] == "not_done"
    await _until(lambda: reply.caller_text is not None, "STT")
    assert stt.heard_s[-1] >= 0.6 + 1.0 + 0.5
    transcript = await call.transcript()
    assert [speaker for speaker, _ in _said(transcript)].count("caller") == 1


class PiperRateTTS(FakeTTS):
    """Speaks at Piper's 22 050 Hz: the reply resamples every clause to the phone's 8 kHz."""

    sample_rate = 22050

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        await asyncio.sleep(0)
        yield np.full(round(self.clause_s * self.sample_rate), 800, dtype=np.int16)


async def test_every_clause_goes_out_whole_at_the_phone_rate(open_call: Any) -> None:
    """The resampler's delay is drained at each clause's end, before its mark: a stream kept across
    clauses carried ~28 ms of each clause into the next and dropped the last one's."""
    clock = FakeClock()
    call = await open_call(clock=clock, tts=PiperRateTTS(clock, clause_s=0.5),
                           llm=FakeLLM("One two three four five. Six seven eight nine ten."))
    reply = await _turn(call.session, clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer")
    assert reply.clause_frames == [25, 25]  # 0.5 s at 8 kHz: 4000 samples, 25 frames of 160 each


class LeadInTTS(PiperRateTTS):
    """Every clause opens with 0.1 s of silence, as a TTS's lead-in."""

    async def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]:
        await asyncio.sleep(0)
        lead = np.zeros(round(0.1 * self.sample_rate), dtype=np.int16)
        yield np.concatenate([lead, np.full(round(self.clause_s * self.sample_rate), 800, dtype=np.int16)])


async def test_the_silence_before_a_reply_s_first_word_is_cut_and_no_other(open_call: Any) -> None:
    clock = FakeClock()
    call = await open_call(clock=clock, tts=LeadInTTS(clock, clause_s=0.5),
                           llm=FakeLLM("One two three four five. Six seven eight nine ten."))
    reply = await _turn(call.session, clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer")
    # First clause: 0.5 s of sound and the 10 ms kept before it (26 frames, the last one padded);
    # the second keeps its 0.1 s pause: 0.6 s, 30 frames.
    assert reply.clause_frames == [26, 30]


def test_trim_lead_in_keeps_the_attack_and_all_of_a_silent_chunk() -> None:
    from shared.audio import trim_lead_in

    rate = 8000
    chunk = np.concatenate([np.zeros(400, np.int16), np.full(100, 1000, np.int16)])  # 50 ms, then sound
    assert trim_lead_in(chunk, rate).size == 100 + 80  # 10 ms kept before the first sound
    quiet = np.full(300, 100, np.int16)  # −50 dBFS throughout: nothing to find, nothing dropped
    assert trim_lead_in(quiet, rate).size == 300
    floats = np.concatenate([np.zeros(800, np.float32), np.full(10, 0.5, np.float32)])
    assert trim_lead_in(floats, rate).size == 90


# --- urgency ----------------------------------------------------------------------------------------
async def test_engine_calls_carry_the_urgency_of_the_work_they_do(open_call: Any) -> None:
    call = await open_call(greeting="Hello there.")
    greeting = call.session.reply
    assert greeting is not None
    await _until(lambda: greeting.state is ReplyState.PLAYED and call.llm.prefills != [], "the greeting")
    reply = await _turn(call.session, call.clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer")
    assert call.tts.urgencies == [greeting, reply]
    assert call.stt.urgencies == [reply] and call.llm.urgencies == [reply]  # the LLM runs in its own task
    # The prefill is due when the greeting has played (the first turn cannot end sooner); on a machine
    # to itself the next turn's prompt is evaluated again once the answer is stored.
    await _until(lambda: len(call.llm.prefills) == 2, "the prefill after the answer")
    assert all(prefill.deadline() < math.inf for prefill in call.llm.prefills)
    await call.session.close()


async def test_deadline_follows_the_reply_through_its_states(open_call: Any) -> None:
    clock = FakeClock()
    tts = FakeTTS(clock)
    tts.gate = asyncio.Event()
    call = await open_call(clock=clock, tts=tts, greeting="Hello.")
    greeting = call.session.reply
    assert greeting is not None and greeting.state is ReplyState.CONFIRMED
    assert greeting.deadline() == clock() == greeting.created_at  # a fixed line is due at once
    tts.gate.set()
    await _until(lambda: greeting.state is ReplyState.PLAYED, "the greeting to play")
    assert greeting.deadline() == math.inf

    tts.gate = asyncio.Event()
    call.line.echo = False
    await _feed(call.session, clock, _tone(600))
    speech_end = clock()
    await _feed(call.session, clock, _silence(200))  # a pause, shorter than the end of turn
    speculative = call.session.reply
    assert speculative is not None and speculative is not greeting
    assert speculative.state is ReplyState.SPECULATIVE and speculative.deadline() == math.inf
    await _feed(call.session, clock, _silence(1000), stop=lambda: speculative.confirmed)
    reply = speculative
    assert reply.state is ReplyState.CONFIRMED
    assert reply.speech_end_wall is not None and abs(reply.speech_end_wall - speech_end) < 0.05
    assert reply.deadline() == reply.speech_end_wall  # the caller has waited since they stopped
    tts.gate.set()
    await _until(lambda: reply.state is ReplyState.PLAYING, "the answer to play")
    ahead = call.session.player.ahead_s()
    before = DUE_WORDS_KNOWN_S  # the fake LLM has written the whole reply by now: only TTS remains
    due = clock() + ahead - before
    if ahead < before:  # about to run dry: ahead of every other kind of work
        assert reply.deadline() == pytest.approx(due - RUNNING_DRY_PRECEDENCE_S)
        assert reply.deadline() < reply.speech_end_wall
    else:
        assert reply.deadline() == pytest.approx(due)
    await _until(lambda: f"{reply.id}:0" in call.line.log, "the answer to be sent")
    call.line.release()
    await _until(lambda: reply.state is ReplyState.PLAYED, "the answer to end")
    assert reply.deadline() == math.inf
    await call.session.close()


# --- the hold until assured -------------------------------------------------------------------------
class SpyRates(ProductionRate):
    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.observed: list[tuple[float, float]] = []

    def observe(self, audio_s: float, elapsed_s: float) -> None:
        self.observed.append((audio_s, elapsed_s))
        super().observe(audio_s, elapsed_s)


async def _held_reply(open_call: Any, rates: SpyRates, *, cost_s: float) -> tuple[Call, Reply, list[Any]]:
    """Three clauses of 0.4 s, each costing `cost_s` of the fake clock to make."""
    clock = FakeClock()
    tts = FakeTTS(clock, clause_s=0.4, cost_s=cost_s)
    call = await open_call(clock=clock, tts=tts, llm=FakeLLM("One two three. Four five six. Seven eight nine."),
                           start_policy=StartPolicy(rates, writing_margin_s=0.3))  # the rate decides here
    seen: list[Any] = []
    tts.on_clause = lambda text: seen.append((call.session.reply.state, call.session.player.ahead_s() > 0))
    reply = await _turn(call.session, clock)
    await _until(lambda: reply.state is ReplyState.PLAYED, "the reply to play")
    return call, reply, seen


def _in_order(reply: Reply) -> list[str]:
    return ["m"] * 20 + [f"{reply.id}:0"] + ["m"] * 20 + [f"{reply.id}:1"] + ["m"] * 20 + [f"{reply.id}:2"]


async def test_slow_production_holds_the_start_until_the_rest_is_assured(open_call: Any) -> None:
    rates = SpyRates()  # the default estimates: 1.5 s of audio per second, replies of 4 s
    call, reply, seen = await _held_reply(open_call, rates, cost_s=1.0)
    # One clause made at 0.4 s/s is not enough to start (0.4 < 0.5 s needed); two are (0.8 s).
    assert seen == [(ReplyState.CONFIRMED, False), (ReplyState.CONFIRMED, False), (ReplyState.PLAYING, True)]
    assert reply.metrics["held_ms"] == 1000
    assert call.line.log == _in_order(reply)  # held frames and marks go out in order
    assert len(rates.observed) == 1 and rates.observed[0][0] == pytest.approx(1.2)
    assert rates.observed[0][1] >= 3.0 and rates.rate < 1.5
    await call.session.close()


async def test_a_reply_held_to_the_end_starts_as_soon_as_it_is_all_made(open_call: Any) -> None:
    rates = SpyRates(rate=0.1)  # recent replies were made far slower than they play
    call, reply, seen = await _held_reply(open_call, rates, cost_s=1.0)
    assert [state for state, _ in seen] == [ReplyState.CONFIRMED] * 3
    assert reply.metrics["held_ms"] == 2000  # first audio at +1 s, all made at +3 s
    assert call.line.log == _in_order(reply)
    await call.session.close()


async def test_a_reply_made_at_once_starts_at_once_whatever_the_estimates(open_call: Any) -> None:
    rates = SpyRates(rate=0.1)
    call, reply, seen = await _held_reply(open_call, rates, cost_s=0.0)
    assert [state for state, _ in seen] == [ReplyState.CONFIRMED] * 3  # held while it was being made
    assert reply.metrics["held_ms"] == 0  # ... which took no time: it started the moment it was done
    assert call.line.log == _in_order(reply)
    transcript = await call.transcript()
    assert transcript[-1].text == "One two three. Four five six. Seven eight nine."


async def test_a_greeting_is_synthesised_once_and_replayed_on_the_next_call(open_call: Any) -> None:
    clock = FakeClock()
    tts = FakeTTS(clock)
    spoken: list[str] = []
    tts.on_clause = spoken.append
    first = await open_call(greeting="Hello there.", tts=tts, clock=clock)
    await _until(lambda: first.session.reply is not None and first.session.reply.state is ReplyState.PLAYED,
                 "the first greeting")
    second = await open_call(greeting="Hello there.", tts=tts, clock=clock)
    await _until(lambda: second.session.reply is not None and second.session.reply.state is ReplyState.PLAYED,
                 "the second greeting")
    assert spoken == ["Hello there."]  # made once, heard twice
    assert second.line.log.count("m") == first.line.log.count("m") > 0  # the same audio went out
    await first.session.close()
    await second.session.close()
