"""One call's conversation: turn-taking, speculative replies, barge-in, and transcript writes.

Data path: caller μ-law → 16 kHz → TurnDetector → (at the first pause, speculatively) a `Reply`
(STT → LLM clauses → TTS → 20 ms frames → Player). Nothing is played until the turn is confirmed
over; if the caller goes on instead, the speculative reply is cancelled unheard. The session keeps
the turn policy (which reply, when to confirm, cancel or interrupt it), the history, the transcript
writes and the call's lifecycle; each reply keeps its own production and state (`voice_gateway.reply`).

Turn policy, as a person listens:
- at the first pause an end-of-turn model (Smart Turn) says how long to wait: ~200 ms when the caller
  is clearly done, longer when they are mid-thought, the agent's own silence when unsure;
- until the caller hears the reply, the turn stays open: if they go on, the reply is dropped unheard
  and the whole turn (both parts, every sample) is transcribed again as one utterance;
- voice over the agent pauses it at once; a backchannel ("mm-hm", a cough) lets it play on from the
  frame where it stopped, speech that lasts `barge_in_min_ms` takes the turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared import urgency
from shared.agent_config import DtmfTool, EndCallTool, HttpTool, TransferTool
from shared.audio import STT_RATE, PhoneUpsampler, ulaw_to_float32
from shared.conversation import avoid_for, is_refusal, is_repeat, trim_history
from shared.llm.base import ChatMessage, LLMError
from shared.llm.tools import InvalidToolCall, ToolCall, tool_specs
from shared.storage.base import Agent, Call, Storage
from shared.turn.bands import TurnBands
from voice_gateway import actions
from voice_gateway.assurance import ProductionRate, StartPolicy
from voice_gateway.backchannel import is_backchannel, stops_speaker
from voice_gateway.call_writer import CallWriter
from voice_gateway.engines import Engines
from voice_gateway.keypad import Keypad, caller_line
from voice_gateway.playback import Player, Send
from voice_gateway.prompts import stt_prompt, system_prompt
from voice_gateway.read_ahead import ReadAhead, evaluate_prompt
from voice_gateway.recorder import CallRecorder
from voice_gateway.reply import Reply, ReplyDeps, ReplyState, Said, Sound, prepare_fixed, usable_text
from voice_gateway.screening import Action, Screening
from voice_gateway.spool import Spool
from voice_gateway.turns import (
    PauseBegan,
    PauseDetected,
    SpeechAbandoned,
    SpeechGoingOn,
    SpeechResumed,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    VoiceOnset,
)

log = logging.getLogger(__name__)

BACKCHANNEL_WORDS_MAX_MS = 1200
"""Speech over the agent longer than `barge_in_min_ms` but shorter than this keeps the agent paused
until its words are known: "okay, yeah" lets it play on, anything else takes the turn."""

HELLO_S = 1.0
"""When an outbound callee's hello has usually ended: the greeting is due by then (made ahead)."""
SCREEN_AUDIO_MAX_S = 25
"""The most of a callee's opening read at once (Whisper's window is 30 s)."""
ANSWERED_BY_POLL_S = 1.0
"""How often a screening call reads Twilio's answering-machine verdict back from its call row."""


class BeepFeed(Protocol):
    """A streaming beep detector (`shared.tones.BeepDetector`): fed 8 kHz audio, returns beeps ended."""

    def feed(self, audio: np.ndarray) -> Sequence[object]: ...


CONTINUE_S = 1.2
"""A caller who speaks again within this long of the end of their turn is going on with it, even if the
agent's answer has begun meanwhile (it is then cut where it was heard): a thought paused for a second is
one turn. Later speech over the agent is a barge-in, and a new turn."""


class CallSession:
    """Holds one call; the socket handler feeds it messages, it sends audio through `send`."""

    def __init__(
        self,
        *,
        call: Call,
        agent: Agent,
        stream_sid: str,
        send: Send,
        storage: Storage,
        spool: Spool,
        engines: Engines,
        clock: Callable[[], float] = time.monotonic,
        recordings_dir: Path | None = None,
        hangup: Callable[[], Coroutine[Any, Any, None]] | None = None,
        start_policy: StartPolicy | None = None,
        beep_detector: BeepFeed | None = None,
        tool_runner: actions.ToolRunner | None = None,
    ) -> None:
        self.call = call
        self._hangup = hangup
        self.agent = agent
        self.storage = storage
        self.engines = engines
        self.clock = clock
        self.recorder = self._open_recorder(recordings_dir) if recordings_dir is not None else None
        self.player = Player(send, stream_sid, clock=clock, tap=self.recorder)
        self.player.on_frame_sent = self._on_frame_sent
        self.writer = CallWriter(storage, call.id, spool)
        self.detector = TurnDetector(engines.vad_factory(), TurnConfig.for_agent(agent.settings))
        self.start_policy = start_policy if start_policy is not None else StartPolicy(ProductionRate())
        """When a reply may start playing; shared by every call of a process once the gateway passes one."""
        self._upsampler = PhoneUpsampler()
        self._fed = 0  # 16 kHz samples handed to the detector
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=512)
        self._history: list[ChatMessage] = []
        self._system = ChatMessage("system", system_prompt(agent))
        self._stt_prompt = stt_prompt(agent)
        self._deps = ReplyDeps(
            call_id=call.id, agent=agent, engines=engines, player=self.player, policy=self.start_policy,
            clock=clock, stt_prompt=self._stt_prompt, context=self._context,
            avoid=lambda caller_line: avoid_for(self._history, caller_line),
            on_caller_line=self._store_caller_line, on_ended=self._store_agent_line,
            tools=tool_specs(agent.settings.tools), act=self._act, intercept=self._intercept,
        )
        self._replies = 0
        self._current: Reply | None = None
        self._live: dict[int, Reply] = {}  # replies not yet ended and stored, by id
        self._pacer: asyncio.Task[None] | None = None
        self._prefill: asyncio.Task[None] | None = None
        self.read_ahead = ReadAhead(call.id, engines, stt_prompt=self._stt_prompt, context=self._context,
                                    tools=self._deps.tools)
        self._kept_from = 0  # the first history message the model saw last (trim_history drops blocks)
        self._backchannels: list[str] = []  # heard over the reply still playing: its line goes first
        self._closing = False
        self._started_wall = clock()
        self._barge_onset: int | None = None
        # Talking over the agent interrupts it only after this much speech: "mm-hm", "ok", a cough or
        # a line click is shorter, and is stored as a backchannel instead of cutting the agent off.
        self._barge_samples = agent.settings.barge_in_min_ms * STT_RATE // 1000
        self._words_samples = max(self._barge_samples, BACKCHANNEL_WORDS_MAX_MS * STT_RATE // 1000)
        self._overlap_text: str | None = None  # the words of speech over the agent, once read
        self._bands: TurnBands | None = None
        if agent.settings.turn_detection == "smart":
            if engines.turn is not None:
                self._bands = TurnBands(**agent.settings.smart_turn.model_dump())
            else:
                log.warning("call %s: no end-of-turn model loaded: turns end after silence only", call.id)
        self._judging: asyncio.Task[None] | None = None
        self._verdict: tuple[int, dict[str, Any]] | None = None  # (speech end sample, metrics) of the last
        self._turn_open = False  # the caller may still go on with their last turn (see CONTINUE_S)
        self._open_until = 0.0  # ... until this wall time, and until its reply is heard
        self._held_line: Reply | None = None  # its caller line, written once the turn is closed
        self._paused_at: float | None = None  # when the agent was paused for voice over it
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.turns: list[dict[str, Any]] = []
        """Per-turn metrics of every reply that played (for logs and benchmarks)."""
        self.barge_ins = 0
        self.pauses = 0
        """Times the agent was paused by voice over it (each ends in a resume or a barge-in)."""
        self.judges_skipped = 0
        """Pauses not judged by the end-of-turn model because the machine was busy with other calls."""
        self.merged_turns = 0
        """Turns the caller went on with before hearing their reply (answered once, as one turn)."""
        # Acting on the call: who answered (outbound), keypad entries, a silent caller, the time limit.
        self._limits = agent.settings.limits
        self._keypad = Keypad(self._limits.dtmf_timeout_ms / 1000)
        self.screening: Screening | None = None
        """Outbound: listening for who answered before greeting (None: the agent greets at once)."""
        if agent.settings.voicemail.detect and call.direction == "outbound" \
                and call.metadata.get("channel") != "browser":
            self.screening = Screening(agent.settings.voicemail, started=clock())
        self._beeps = beep_detector if self.screening is not None else None
        self._screen_audio: list[np.ndarray] = []  # the callee's utterances before the agent spoke
        self._screen_reads = 0
        self._screen_text = ""
        self._screen_written = False
        self._leaving_message = False  # a machine records: the agent speaks its message, hears nothing
        self._answered_by_poll = 0.0
        self._idle_since = clock()
        self.reprompts = 0
        """Re-prompts said to a silent caller since they last spoke."""
        self._ending = False  # a closing line is being said: hygiene and new turns wait for the hang-up
        self._tools = tool_runner or actions.ToolRunner()
        self._pending_action: ToolCall | None = None  # a risky tool call waiting for the caller's "yes"

    @property
    def reply(self) -> Reply | None:
        """The latest reply: speculative, playing, or the one that ended last."""
        return self._current

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the history (a reconnected stream continues the call) and greet at once."""
        for line in await self.storage.list_transcripts(self.call.id):
            if line.speaker != "tool":  # actions are in the lines around them ("Let me check…")
                self._history.append(ChatMessage("user" if line.speaker == "caller" else "assistant", line.text))
        self.writer.start()
        self._pacer = asyncio.create_task(self.player.run(), name=f"pacer-{self.call.id}")
        self.writer.job("call_started")
        greeting = None if self.screening is not None else self._greet()
        if self.screening is not None:
            self._track(self._prepare_lines())
        if self.engines.prefill:
            self._prefill = asyncio.create_task(self._prefill_prompt(after=greeting), name=f"prefill-{self.call.id}")

    async def _prepare_lines(self) -> None:
        """While the agent listens for who answered: make its greeting and voicemail message now, so
        either plays at once (the first call of a process paid seconds for it under load)."""
        voicemail = self.agent.settings.voicemail
        lines = [self.agent.greeting, voicemail.message if voicemail.action == "leave_message" else None]
        with urgency.working_for(urgency.Fixed(self.clock() + HELLO_S)):
            for text in filter(None, lines):
                await prepare_fixed(self.engines.tts, text, self.agent.voice)

    def _greet(self) -> asyncio.Task[None] | None:
        """Say the agent's greeting (at once, or once screening heard a person or nobody)."""
        if not self.agent.greeting:
            return None
        reply = self._new_reply(confirmed=True)
        reply.say(self.agent.greeting)
        return reply.task

    async def _prefill_prompt(self, *, after: asyncio.Task[None] | None) -> None:
        """Evaluate the system prompt while the greeting plays, so the first answer reuses its KV cache.

        It starts once the greeting is synthesised (`after`), not beside it: on two cores the two
        would share the CPU and the greeting's second clause could arrive after its first had played,
        a hole the caller hears. The greeting plays for seconds; the prefill takes a fraction of that.
        Its deadline is the greeting's end: the caller's first turn cannot end sooner, and calls that
        start together would otherwise all evaluate their prompts at that first turn, in a queue.
        """
        if after is not None:
            await asyncio.wait({after})  # finished, failed or cancelled (barge-in): prefill either way
        messages = [*self._context(), ChatMessage("user", "Hello?")]
        due = self.clock() + self.player.ahead_s()
        if self.screening is not None:
            # The agent listens first: the prompt is due when the callee's first turn could end, and the
            # greeting (synthesised when screening says so) goes ahead of it at the compute gate.
            due = self.clock() + self.agent.settings.voicemail.wait_for_callee_ms / 1000
        try:
            with urgency.working_for(urgency.Fixed(due)):
                # With the agent's tools, as its turns will have them: the tool section (~400 tokens on the
                # embedded model) is then in the KV cache before the first caller turn, not evaluated in it.
                await evaluate_prompt(self.engines.llm, messages, self._deps.tools)
        except LLMError as exc:
            log.warning("call %s: prompt prefill failed: %s", self.call.id, exc)

    def _prefill_after_line(self) -> None:
        """An agent line was stored: evaluate the prompt of the caller's next turn up to their words now,
        while they think and speak, rather than on that turn, where each token costs ~7 ms of its first.

        What the KV cache lacks then is the stored line's end (the heard text, not the tokens the model
        wrote, when it was cut short) and, after a trim (`trim_history`), everything that follows the
        system prompt (~0.5 s). On a machine to itself this is done after every line; beside other
        calls only after a trim, as the CPU it takes there is other calls' time.
        """
        kept_from = len(self._history) - (len(self._context()) - 1)
        trimmed, self._kept_from = kept_from != self._kept_from, kept_from
        if self._closing or not self.engines.prefill or (self.start_policy.busy() and not trimmed):
            return
        if self._prefill is None or self._prefill.done():
            self._prefill = asyncio.create_task(self._prefill_prompt(after=None), name=f"refill-{self.call.id}")

    async def close(self) -> None:
        """The stream ended. Whatever failed before (a pacer that died on a dropped socket, a reply
        that raised), every step still runs: keep what was played, close the recording, then write
        every line, the final status and the post-call job (to the database, else to the spool)."""
        self._closing = True
        held, self._held_line = self._held_line, None
        if held is not None:
            self._write_caller_line(held)
        await _step(self.call.id, "stopping the prompt prefill", _stop(self._prefill))
        self.read_ahead.stop()
        await _step(self.call.id, "stopping the end-of-turn model", _stop(self._judging))
        for reply in list(self._live.values()):
            await _step(self.call.id, f"stopping reply {reply.id}", _stop(reply.task))
        for side in list(self._side_tasks):  # a backchannel being transcribed: keep its line
            await _step(self.call.id, "waiting for side work", asyncio.wait_for(asyncio.shield(side), 5))
        self._write_screened_line()  # a machine's whole greeting, as last read
        for reply in list(self._live.values()):
            try:
                reply.end_with_call()
                self._store_agent_line(reply)
            except Exception:
                log.exception("call %s: could not keep reply %d", self.call.id, reply.id)
        await _step(self.call.id, "stopping the pacer", _stop(self._pacer))
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception:
                log.exception("call %s: could not close the recording", self.call.id)
        self.writer.status("completed", duration=max(0, round(self.clock() - self._started_wall)))
        self.writer.job("call_ended")  # after the last line: the analysis sees every line
        await _step(self.call.id, "writing the call's records", self.writer.close())

    def _open_recorder(self, recordings_dir: Path) -> CallRecorder | None:
        if not self.agent.settings.recording:
            return None
        try:
            return CallRecorder.open(recordings_dir, self.call.id)
        except (OSError, ValueError):
            log.exception("call %s: recording disabled (cannot write under %s)", self.call.id, recordings_dir)
            return None

    # --- inbound -------------------------------------------------------------------------------------
    async def on_media(self, ulaw: bytes) -> None:
        """Caller audio (any chunk size): upsample, run turn detection, act on its events."""
        if self.recorder is not None:
            self.recorder.caller(ulaw)
        narrow = ulaw_to_float32(ulaw)
        audio = self._upsampler.process(narrow)
        current = self._current
        if self._turn_open and current is not None and current.first_frame_wall is not None \
                and self.clock() >= self._open_until and not self._going_on():
            self._close_turn()  # the caller hears the answer and was silent long enough: a new turn next
        self._fed += audio.shape[0]
        self._arrivals.append((self._fed, self.clock()))
        for event in self.detector.feed(audio):
            await self._on_turn_event(event)
        await self._tick(narrow)
        onset = self._barge_onset
        if onset is not None and self.detector.speaking:
            spoken = self.detector.speech_end - onset
            # Long enough to be more than "mm-hm": yield the floor, unless the agent is paused already
            # and the speech is short enough to be "okay, yeah" (its words decide, at its first pause).
            waiting_on_words = self.player.paused or self._overlap_text is not None  # read: listener words
            if spoken >= self._words_samples or (spoken >= self._barge_samples and not waiting_on_words):
                self._barge_onset = None
                if self._current is not None and self._current.holds_floor:
                    await self._barge_in(self._current)

    def on_mark(self, wire_name: str) -> None:
        """Twilio played everything up to this mark: that clause was heard."""
        name = self.player.acknowledge(wire_name)
        if name is None:
            log.debug("call %s: unknown mark %r", self.call.id, wire_name)
            return
        for reply in list(self._live.values()):
            clause = reply.clause_of(name)
            if clause is not None:
                reply.on_played(clause)
                return

    async def on_dtmf(self, digit: str) -> None:
        """A key the caller pressed: collected into an entry (until # or a pause), then answered."""
        log.info("call %s: DTMF %s", self.call.id, digit)
        if self._leaving_message or self._closing:
            return
        self._idle_since = self.clock()
        self.reprompts = 0
        entry = self._keypad.press(digit, self.clock())
        if entry is not None:
            await self._typed(entry)

    # --- acting on the call ----------------------------------------------------------------------
    async def _tick(self, narrow: np.ndarray) -> None:
        """Every media chunk (20 ms): who answered, a finished keypad entry, a silent caller, the time."""
        now = self.clock()
        screening = self.screening
        if screening is not None and not screening.done:
            if self._beeps is not None:
                for _ in self._beeps.feed(narrow):
                    log.info("call %s: beep heard", self.call.id)
                    screening.beep(now)
            self._poll_answered_by(now)
            was_holding = screening.holding
            action = screening.tick(now)
            if screening.holding and not was_holding:
                await self._silence_agent()  # a machine showed itself after the greeting
            if action is Action.GREET:
                log.info("call %s: answered by %s (%s): greeting", self.call.id,
                         screening.answered.value, screening.reason)
                self._write_screened_line()  # the hello, before the greeting that answers it
                self._greet()
            elif action is Action.VOICEMAIL:
                await self._voicemail(screening)
            elif action is Action.MENU:
                log.info("call %s: an automated menu answered: answering it", self.call.id)
                self._write_screened_line()
                reply = self._new_reply(confirmed=True)
                reply.answer_text(self._screen_text, stored=True)
        entry = self._keypad.due(now)
        if entry is not None:
            await self._typed(entry)
        await self._hygiene(now)

    def _poll_answered_by(self, now: float) -> None:
        """Twilio's answering-machine detection reaches the backend (AsyncAmdStatusCallback), which
        stores `answered_by` on the call: read it about once a second while screening goes on."""
        if now - self._answered_by_poll < ANSWERED_BY_POLL_S or self._closing:
            return
        self._answered_by_poll = now

        async def poll() -> None:
            call = await self.storage.get_call(self.call.id)
            if call.answered_by and self.screening is not None:
                self.screening.provider_says(call.answered_by, self.clock())

        self._track(poll())

    async def _silence_agent(self) -> None:
        """Stop whatever the agent is saying or preparing (a machine answered)."""
        current = self._current
        if current is None or current.ended:
            return
        if current.state is ReplyState.PLAYING:
            await self._barge_in(current)
        else:
            current.cancel()
            self._live.pop(current.id, None)
            self._current = None

    async def _voicemail(self, screening: Screening) -> None:
        """A machine's greeting is over: leave the agent's message (or not), then hang up."""
        await self._silence_agent()
        self._leaving_message = True
        self._keypad = Keypad(self._limits.dtmf_timeout_ms / 1000)
        answered_by = screening.answered_by
        log.info("call %s: answering machine (%s, %s)", self.call.id, screening.reason, answered_by)
        self._track(self._record_call({"answered_by": answered_by}))
        voicemail = self.agent.settings.voicemail
        message = voicemail.message or self.agent.greeting
        if voicemail.action == "leave_message" and message:
            reply = self._new_reply(confirmed=True)
            reply.say(message)
            reply.metrics["voicemail"] = True
            reply.after, reply.after_even_if_cut = self._hang_up, True
        else:
            self._track(self._hang_up())

    # --- tools -------------------------------------------------------------------------------------
    def _intercept(self, reply: Reply, text: str) -> AsyncIterator[Said] | None:
        """Caller lines the session answers itself, before the model: a "yes" to "shall I …?" runs the
        action; a request for a person, with a transfer tool, asks (or transfers); a phone menu whose
        option matches the agent's purpose gets its key (`actions.menu_choice`). Small models pick
        these tools unreliably; the model still decides every other line, tools included."""
        tools = self.agent.settings.tools
        pending = self._pending_action
        if pending is not None:
            return self._after_turn(reply, self._confirmed(reply, pending)) if actions.is_yes(text) else None
        transfer = next((name for name, tool in tools.items() if isinstance(tool, TransferTool)), None)
        if transfer is not None and actions.asks_for_person(text):
            return self._act(reply, ToolCall(transfer, {}, f"person_{reply.id}"), [], "")
        keypad = next((name for name, tool in tools.items() if isinstance(tool, DtmfTool)), None)
        key = actions.menu_choice(text, self.agent.prompt) if keypad is not None else None
        if keypad is not None and key is not None:
            return self._act(reply, ToolCall(keypad, {"digits": key}, f"menu_{reply.id}"), [], "")
        return None

    async def _after_turn(self, reply: Reply, said: AsyncIterator[Said]) -> AsyncIterator[Said]:
        await reply.until_confirmed()  # the caller may still go on: act once their turn is over
        async for item in said:
            yield item

    async def _confirmed(self, reply: Reply, call: ToolCall) -> AsyncIterator[Said]:
        self._pending_action = None
        async for said in self._run_tool(reply, call):
            yield said

    async def _act(self, reply: Reply, call: ToolCall | InvalidToolCall, messages: list[ChatMessage],
                   spoken: str) -> AsyncIterator[Said]:
        """The model called a tool: check it, ask first if it is risky, else run it. Nothing is done
        while the reply is speculative (the caller may still go on): the call waits for the turn's end."""
        await reply.until_confirmed()
        if isinstance(call, InvalidToolCall):
            log.warning("call %s: invalid tool call (%s): %r", self.call.id, call.reason, call.raw[:200])
            self._tool_row(call, ok=False, result=call.reason)
            tool = self.agent.settings.tools.get(call.name or "")
            if not spoken:
                yield tool.fallback_line if isinstance(tool, HttpTool) else actions.CANNOT_DO_LINE
            return
        tool = self.agent.settings.tools[call.name]
        if tool.needs_confirmation:
            self._pending_action = call
            reply.metrics["tool_asked"] = call.name
            yield actions.confirmation_question(tool)
            return
        async for said in self._run_tool(reply, call, messages=messages, spoken=spoken):
            yield said

    async def _run_tool(self, reply: Reply, call: ToolCall, *, messages: list[ChatMessage] | None = None,
                        spoken: str = "") -> AsyncIterator[Said]:
        tool = self.agent.settings.tools[call.name]
        reply.metrics["tool"] = call.name
        log.info("call %s: tool %s %s", self.call.id, call.name, call.arguments)
        if isinstance(tool, EndCallTool):
            self._tool_row(call, ok=True, result="the agent hangs up")
            self._ending = True
            reply.after, reply.after_even_if_cut = self._hang_up, True
            reply.hold_start(False)  # it plays whatever is said now (see `_on_turn_event`)
            yield tool.line
        elif isinstance(tool, TransferTool):
            self._tool_row(call, ok=True, result=f"transfer to {tool.to}")
            self._ending = True
            reply.after, reply.after_even_if_cut = (lambda: self._transfer(tool)), True
            reply.hold_start(False)  # it plays whatever is said now (see `_on_turn_event`)
            yield tool.line
        elif isinstance(tool, DtmfTool):
            digits = str(call.arguments["digits"])
            self._tool_row(call, ok=True, result=f"pressed {digits}")
            yield Sound(actions.dtmf_ulaw(digits), f"[keys: {digits}]")
        elif isinstance(tool, HttpTool):
            if tool.wait_line:
                yield tool.wait_line  # said while the tool runs (the reply plays it meanwhile)
            result = await self._tools.call_http(tool, call, call_id=self.call.id)
            self._tool_row(call, ok=result.ok, result=result.content, ms=result.ms)
            if not result.ok:
                log.warning("call %s: %s", self.call.id, result.content)
                yield tool.fallback_line
                return
            follow = [*(messages or [*self._context()]), ChatMessage.calling([call], spoken),
                      ChatMessage.tool_result(call, result.content)]
            async for clause in actions.spoken_answer(self.engines.llm, follow, self.agent.llm, self._deps.tools,
                                                      cut_after=reply.cut_after):
                yield clause

    async def _transfer(self, tool: TransferTool) -> None:
        """After the agent's line has played: hand the call to the person, then leave it."""
        self._track(self._record_call({"transferred_to": tool.to, "transferred_at": actions.utcnow()}))
        try:
            redirected = await self._tools.transfer(self.call, tool)
        except Exception:
            log.exception("call %s: transfer to %s failed", self.call.id, tool.to)
            redirected = False
        if not redirected:  # no provider to redirect (the simulated line, the browser): the agent leaves
            await self._hang_up()

    def _tool_row(self, call: ToolCall | InvalidToolCall, *, ok: bool, result: str, ms: int | None = None) -> None:
        """A tool call and its result, stored in order with the lines around it."""
        arguments = call.arguments if isinstance(call, ToolCall) else {"raw": call.raw[:500]}
        metrics: dict[str, Any] = {"tool": call.name, "arguments": arguments, "ok": ok, "result": result[:2000]}
        if ms is not None:
            metrics["tool_ms"] = ms
        self.writer.add("tool", f"{call.name}({actions.short_json(arguments)}) → {result[:300]}", metrics=metrics)

    async def _record_call(self, fields: dict[str, Any]) -> None:
        try:
            await self.storage.update_call(self.call.id, fields)
        except Exception:
            log.exception("call %s: could not record %s", self.call.id, fields)

    async def _typed(self, entry: str) -> None:
        """A keypad entry is a caller turn: it takes the floor like speech and is answered."""
        if self._ending or self._leaving_message:
            return
        self._cancel_unconfirmed()
        current = self._current
        if current is not None and current.holds_floor:
            await self._barge_in(current)  # keys over the agent take the floor, as words would
        if self._turn_open:
            self._close_turn()
        reply = self._new_reply(confirmed=True)
        reply.answer_text(f"(The caller pressed these keys on their phone's keypad: {entry})",
                          shown=caller_line(entry))

    async def _hygiene(self, now: float) -> None:
        """A silent caller is asked if they are there, then left; no call outlives its time limit."""
        if self._ending or self._leaving_message or self._closing:
            return
        if self.screening is not None and self.screening.holding:
            self._idle_since = now
            return
        limits = self._limits
        if now - self._started_wall >= limits.max_duration_s:
            log.info("call %s: time limit (%d s) reached", self.call.id, limits.max_duration_s)
            await self._end_call(limits.max_duration_line, cut_short_ok=True)
            return
        current = self._current
        if self.detector.speaking or self._keypad.typing or self.player.busy \
                or (current is not None and not current.ended):
            self._idle_since = now
            return
        if now - self._idle_since < limits.idle_reprompt_s:
            return
        self._idle_since = now
        if self.reprompts >= limits.idle_hangups_after:
            log.info("call %s: no answer to %d re-prompts: hanging up", self.call.id, self.reprompts)
            await self._end_call(limits.idle_goodbye_line, cut_short_ok=False)
            return
        self.reprompts += 1
        reply = self._new_reply(confirmed=True)
        reply.say(limits.idle_reprompt_line)
        reply.metrics["reprompt"] = self.reprompts

    async def _end_call(self, line: str, *, cut_short_ok: bool) -> None:
        """Say a closing line, then hang up (even if the caller talks over it, with `cut_short_ok`)."""
        self._ending = True
        await self._silence_agent()
        reply = self._new_reply(confirmed=True)
        reply.say(line)
        reply.after, reply.after_even_if_cut = self._hang_up, cut_short_ok

    async def _hang_up(self) -> None:
        if self._hangup is not None and not self._closing:
            log.info("call %s: the agent hangs up", self.call.id)
            await self._hangup()

    async def _on_turn_event(self, event: TurnEvent) -> None:
        log.debug("call %s: %s at %.2f s", self.call.id, type(event).__name__, event.at_sample / STT_RATE)
        if self._leaving_message:
            return  # a machine is recording: nothing it plays is a turn
        if self.screening is not None and self.screening.holding:
            self._screen(event)
            return
        if isinstance(event, SpeechStarted):
            self.reprompts = 0
        if self._ending and self._current is not None and self._current.after_even_if_cut \
                and self._current.confirmed:
            self._current.hold_start(False)  # a hold from voice heard just before must not keep it back
            return  # the call is ending whatever is said: the closing line plays out
        current = self._current
        if isinstance(event, SpeechGoingOn):
            if self.engines.prefill and self._barge_onset is None and (current is None or not current.holds_floor) \
                    and (self._prefill is None or self._prefill.done()):
                self.read_ahead.heard(event.audio)  # the caller's first words, into the KV cache
            return
        if isinstance(event, VoiceOnset):
            if current is not None and current.state is ReplyState.PLAYING:
                await self._pause(current, onset_sample=event.onset_sample)  # perhaps only "mm-hm": decide later
            elif current is not None and current.state is ReplyState.CONFIRMED and self._turn_open \
                    and not current.fixed:
                current.hold_start(True)  # the caller may be going on: do not start answering the half
            return
        if isinstance(event, SpeechAbandoned):  # a click or a cough: carry on
            self._resume()
            if current is not None:
                current.hold_start(False)
            return
        agent_busy = current is not None and current.holds_floor
        if isinstance(event, SpeechStarted):
            if event.continues and current is not None and not current.fixed:
                if current.state is ReplyState.CONFIRMED:
                    self._merge(current)
                    return
                if current.state is ReplyState.PLAYING:
                    await self._merge_heard(current)
                    return
            if current is not None:
                current.hold_start(False)
            if agent_busy:
                self._barge_onset = event.onset_sample  # barge in only if it lasts (see on_media)
            return
        if self._barge_onset is not None:
            # Speech that began while the agent talked and has not lasted long enough to interrupt.
            if isinstance(event, PauseBegan):
                return  # nothing to speculate on yet: it may be a backchannel (decided at PauseDetected)
            if isinstance(event, PauseDetected):
                if await self._lets_agent_go_on(event, self._barge_onset):
                    self._resume()  # "mm-hm", "okay, yeah": a backchannel; the reply plays on meanwhile
                    return
                # Words that are not a backchannel: the caller takes the turn (answered as any turn).
                self._barge_onset = None
                if current is not None and current.holds_floor:
                    await self._barge_in(current)
                current, agent_busy = self._current, False
            if isinstance(event, SpeechResumed):
                self._overlap_text = None  # more words are coming: the ones read are not all of it
                if current is not None and current.state is ReplyState.PLAYING:
                    await self._pause(current)
                return
            if self._barge_onset is not None:
                self._barge_onset = None
                self._resume()
                if agent_busy:
                    self._track(self._backchannel(event.audio))  # "mm-hm", "ok": kept, not answered
                    return
                self._overlap_text = None
            # The agent finished meanwhile: this short turn ("yes") is an answer; handle it as one.
        if isinstance(event, PauseBegan):
            if not self.start_policy.busy():
                self._speculate(event.audio, event.speech_end_sample)
        elif isinstance(event, PauseDetected):
            self._judge(event)  # a call alone: the end-of-turn model says how long this pause must last
            if not self._speculating_on(event.speech_end_sample):
                # Beside other calls speculation starts here, at the longer pause: it is thrown away
                # less often, and a wasted job holds cores a confirmed reply of another call may need
                # (a job started is not stopped). Interleaved 4-call runs: p50 2023 and 1508 ms, against
                # 2128 and 2082 ms speculating at PauseBegan whenever the compute gate was idle.
                # Also where a barge-in became a turn.
                self._speculate(event.audio, event.speech_end_sample)
        elif isinstance(event, SpeechResumed):
            self._cancel_unconfirmed()
        elif isinstance(event, TurnEnded):
            if self._speculating_on(event.speech_end_sample):
                assert current is not None
                reply = current  # the speculative reply made at this utterance's pause: keep it
            else:
                self._cancel_unconfirmed()
                reply = self._new_reply(confirmed=False, speech_end_sample=event.speech_end_sample)
                reply.answer(event.audio)
            reply.metrics["end_of_turn_ms"] = round(event.end_of_turn_ms)
            if self._verdict is not None and self._verdict[0] == event.speech_end_sample:
                reply.metrics.update(self._verdict[1])
            reply.confirm()
            self._turn_open = True
            self._open_until = (reply.speech_end_wall or self.clock()) + CONTINUE_S
            self.detector.keep_open(True)  # until the caller hears the reply, they may go on

    def _speculate(self, audio: np.ndarray, speech_end_sample: int) -> None:
        """Answer the utterance so far before the caller is known to be done. Speculation is a luxury:
        its work has no deadline, so the compute gate runs it only when nothing with one waits, and the
        LLM pauses it while a confirmed reply is being made."""
        self._cancel_unconfirmed()
        self._new_reply(confirmed=False, speech_end_sample=speech_end_sample).answer(audio)

    def _speculating_on(self, speech_end_sample: int) -> bool:
        """Whether the current reply is the speculative one made at this utterance's pause."""
        current = self._current
        return current is not None and not current.confirmed and current.speech_end_sample == speech_end_sample

    def _screen(self, event: TurnEvent) -> None:
        """Before the agent greets (or while a machine talks): the callee's speech is evidence of who
        answered, never a turn to answer. Each utterance's words are read and stored as caller lines."""
        screening = self.screening
        assert screening is not None
        if isinstance(event, SpeechStarted | SpeechResumed):
            sample = event.onset_sample if isinstance(event, SpeechStarted) else event.at_sample
            screening.speech_started(self._wall_at(sample))
        elif isinstance(event, PauseDetected):
            screening.speech_ended(self._wall_at(event.speech_end_sample))
        elif isinstance(event, TurnEnded):
            screening.speech_ended(self._wall_at(event.speech_end_sample))
            self._screen_audio.append(event.audio)
            self._track(self._screened_words())

    async def _screened_words(self) -> None:
        """Read everything the callee said so far, as one utterance: a menu or a recorded greeting is
        cut into fragments at every breath ("MES 2", "appointment."), and its words only make sense
        together. Only the newest (longest) reading counts."""
        screening = self.screening
        assert screening is not None
        self._screen_reads += 1
        version = self._screen_reads
        audio = np.concatenate(self._screen_audio)[-SCREEN_AUDIO_MAX_S * STT_RATE:]
        screening.reading += 1
        try:
            with urgency.working_for(urgency.Fixed(self.clock())):  # the greeting may wait on these words
                heard = await self.engines.stt.transcribe(audio, prompt=None)
        finally:
            screening.reading -= 1
        text = usable_text(heard)
        if version != self._screen_reads or not text:
            return  # a longer reading is under way
        self._screen_text = text
        screening.words(text, self.clock())
        log.info("call %s: screening heard %r (%s)", self.call.id, text, screening.answered.value)
        if screening.greeted and not screening.machine:
            self._write_screened_line()  # read after the greeting began: the hello it answers

    def _write_screened_line(self) -> None:
        """What the callee said before the agent spoke (a hello, a machine's greeting), stored once."""
        if self._screen_text and not self._screen_written:
            self._screen_written = True
            self.writer.add("caller", self._screen_text, metrics={"screening": True})
            self._history.append(ChatMessage("user", self._screen_text))

    def _judge(self, event: PauseDetected) -> None:
        """Ask the end-of-turn model how long this pause must last to end the turn (off the loop)."""
        if self._bands is None or self.engines.turn is None:
            return
        if urgency.gate().urgent_waiting or self.start_policy.busy():
            # Beside other calls the model's ~0.1 s of a core is taken from their replies, and its
            # verdict often comes after the silence has decided. This pause ends on silence; a caller
            # who goes on still joins the same turn until its reply is heard. Interleaved 4-call runs:
            # p50 1867 and 1813 ms judging only a call alone, 2101 and 2341 ms judging whenever no
            # confirmed work waited.
            self.judges_skipped += 1
            return
        if self._judging is not None:
            self._judging.cancel()
        self._judging = asyncio.create_task(self._judge_pause(event), name=f"turn-{self.call.id}")

    async def _judge_pause(self, event: PauseDetected) -> None:
        assert self._bands is not None and self.engines.turn is not None
        started = self.clock()
        try:
            # A machine to itself (see `_judge`): the model (one thread) runs beside the speculative STT
            # instead of ahead of it, which took its ~0.1 s off every reply's critical path.
            probability = await asyncio.to_thread(self.engines.turn.probability, event.audio)
        except Exception:
            log.exception("call %s: end-of-turn model failed: this turn ends after silence", self.call.id)
            return
        normal = self.agent.settings.end_of_turn_silence_ms
        wait = self._bands.wait(probability, normal)
        silence = min(wait.silence_ms, self._bands.cap_ms(normal))
        self._verdict = (event.speech_end_sample, {
            "turn_p": round(probability, 3), "turn_verdict": wait.verdict.value,
            "turn_model_ms": round((self.clock() - started) * 1000),
        })
        if self._closing or self.detector.speech_end != event.speech_end_sample:
            return  # the caller went on meanwhile: a later pause is judged on its own
        for ended in self.detector.set_end_silence(silence):
            await self._on_turn_event(ended)

    def _merge(self, reply: Reply) -> None:
        """The caller went on before hearing `reply`: drop it unheard; the turn continues (the detector
        kept its audio), and the whole of it is answered once."""
        self.merged_turns += 1
        log.info("call %s: the caller went on before hearing reply %d: one longer turn", self.call.id, reply.id)
        reply.cancel()
        self._live.pop(reply.id, None)
        self._current = None
        self._held_line = None

    async def _merge_heard(self, reply: Reply) -> None:
        """The caller went on just after the agent began to answer (within CONTINUE_S of their pause):
        the answer is cut where it was heard (stored as such, if a word was) and the turn continues."""
        self.merged_turns += 1
        log.info("call %s: the caller went on as reply %d began: cut, one longer turn", self.call.id, reply.id)
        reply.interrupt(store_caller_line=False)
        self._current = None
        self._held_line = None  # the longer turn's reply stores the whole of it
        await self.player.clear()
        self._store_agent_line(reply)

    async def _pause(self, reply: Reply, *, onset_sample: int | None = None) -> None:
        if self.player.paused:
            return
        self.pauses += 1
        self._paused_at = self.clock()
        await self.player.pause()
        reply.metrics["paused"] = reply.metrics.get("paused", 0) + 1
        if onset_sample is not None:
            # From the caller's first voiced sample reaching the gateway to the clear on the wire.
            reply.metrics["pause_after_onset_ms"] = round((self.clock() - self._wall_at(onset_sample)) * 1000)

    def _resume(self) -> None:
        if self.player.paused:
            self.player.resume()
            self._paused_at = None

    async def _lets_agent_go_on(self, event: PauseDetected, onset: int) -> bool:
        """Speech over the paused agent, at its first pause: may the agent play on? Its words decide:
        listener words ("okay, yeah") let it; shorter than `barge_in_min_ms`, anything but words that ask
        a speaker to stop ("wait", "sorry?") does too: a cough, a click, "mm-hm" misheard."""
        listener = await self._listener_words(event.audio)
        if event.speech_end_sample - onset < self._barge_samples:
            return not stops_speaker(self._overlap_text or "")
        return listener

    async def _listener_words(self, audio: np.ndarray) -> bool:
        """Read the words of speech over the paused agent: only listener words ("okay, yeah")?"""
        with urgency.working_for(urgency.Fixed(self.clock())):  # the agent is silent until this is known
            try:
                heard = await asyncio.wait_for(self.engines.stt.transcribe(audio, prompt=self._stt_prompt), 3.0)
            except Exception:  # unread words (an STT failure, a timeout) take the turn, as speech would
                log.warning("call %s: could not read the words over the agent", self.call.id, exc_info=True)
                return False
        self._overlap_text = usable_text(heard)
        return is_backchannel(self._overlap_text)

    async def _backchannel(self, audio: np.ndarray) -> None:
        """Store a short utterance made over the agent (a backchannel) without answering it."""
        text, self._overlap_text = self._overlap_text, None
        if text is None:
            with urgency.working_for(urgency.BACKGROUND):  # nobody waits for it: replies go first
                heard = await self.engines.stt.transcribe(audio, prompt=self._stt_prompt)
            text = usable_text(heard)
        if text:
            self.writer.add("caller", text, metrics={"backchannel": True})
            self._backchannels.append(text)
            if self._current is None or not self._current.holds_floor:
                self._flush_backchannels()

    def _flush_backchannels(self) -> None:
        """Backchannels join the model's history after the reply they were said over, not inside it:
        the KV cache holds the caller's question and then that reply, and a line put between them made
        the next turn evaluate the whole reply again (30–43 tokens, ~0.25 s of its first token)."""
        self._history.extend(ChatMessage("user", text) for text in self._backchannels)
        self._backchannels.clear()

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run side work (a backchannel's STT, the hang-up) that `close` waits for; failures are logged."""
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_done)

    def _side_done(self, task: asyncio.Task[None]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call %s: %s failed", self.call.id, task.get_name(), exc_info=task.exception())

    # --- replies -------------------------------------------------------------------------------------
    def _new_reply(self, *, confirmed: bool, speech_end_sample: int | None = None) -> Reply:
        self.read_ahead.stop()  # the reply's own request takes the call's KV-cache slot from here
        self._replies += 1
        wall = self._wall_at(speech_end_sample) if speech_end_sample is not None else None
        reply = Reply(self._replies, self._deps, confirmed=confirmed, speech_end_sample=speech_end_sample,
                      speech_end_wall=wall)
        self._current = reply
        self._live[reply.id] = reply
        return reply

    def _cancel_unconfirmed(self) -> None:
        reply = self._current
        if reply is not None and not reply.confirmed:
            reply.cancel()
            self._live.pop(reply.id, None)
            self._current = None

    async def _barge_in(self, reply: Reply) -> None:
        """The caller talks over the agent: stop generating, drop buffered audio, keep what was heard
        (exact: the player paused at the caller's onset and knows which frames were played)."""
        self.barge_ins += 1
        self._paused_at = None
        self._overlap_text = None
        reply.interrupt()
        await self.player.clear()
        self._store_agent_line(reply)  # after the clear: no more of it can go out
        log.info("call %s: barge-in, reply %d cut after %d clause(s)", self.call.id, reply.id, reply.played)

    def _on_frame_sent(self, wall: float) -> None:
        if self._current is not None:
            self._current.frame_sent(wall)

    def _context(self) -> list[ChatMessage]:
        """The system prompt and the recent turns: a small model strays and parrots on a long history;
        trimmed in blocks, so the prompt stays a prefix of the next turn's (the KV cache holds)."""
        return trim_history([self._system, *self._history])

    # --- transcript ----------------------------------------------------------------------------------
    def _close_turn(self) -> None:
        """The caller can no longer go on with their last turn: write its line (the words are final)."""
        self._turn_open = False
        self.detector.keep_open(False)
        held, self._held_line = self._held_line, None
        if held is not None:
            self._write_caller_line(held)

    def _store_caller_line(self, reply: Reply) -> None:
        """Its reply starts to be heard (or was cut, or the call ends): the caller's words are final,
        unless the turn is still open (they may go on: the line waits for `_close_turn`)."""
        if self._turn_open and reply is self._current and not self._closing:
            self._held_line = reply
            return
        self._write_caller_line(reply)

    def _write_caller_line(self, reply: Reply) -> None:
        if reply.caller_text is None:
            return
        if self.screening is not None and not self.screening.done:
            self.screening.words(reply.caller_text, self.clock())  # a machine may show itself late
        pending = self._pending_action
        if pending is not None and reply.metrics.get("tool_asked") is None and not actions.is_yes(reply.caller_text):
            self._pending_action = None  # "no", or something else: the question is dropped
            self._tool_row(pending, ok=False, result="not confirmed by the caller")
        metrics: dict[str, Any] = {k: reply.metrics[k] for k in ("stt_ms", "end_of_turn_ms") if k in reply.metrics}
        self.writer.add("caller", reply.caller_text, metrics=metrics)
        self._history.append(ChatMessage("user", reply.caller_text))

    def _store_agent_line(self, reply: Reply) -> None:
        """Store what the caller actually heard of an ended reply (once: it leaves the live replies)."""
        if self._live.pop(reply.id, None) is None:
            return
        if reply is self._current and self._turn_open:  # it ended: the turn it answered is over
            self._close_turn()
        heard = reply.heard_text()
        if not heard:
            self._flush_backchannels()
            return
        interrupted = reply.state is ReplyState.INTERRUPTED
        metrics = dict(reply.metrics)
        metrics["max_frame_late_ms"] = round(self.player.lateness_by_reply.pop(reply.id, 0.0) * 1000)
        if interrupted:
            metrics["interrupted"] = True
        if is_repeat(heard, [m.content for m in self._history if m.role == "assistant"]):
            metrics["repeat"] = True  # measured: the engine masks repeats, a remote one only penalises them
        if is_refusal(heard):
            metrics["refusal"] = True
        self.writer.add("agent", heard, metrics=metrics)
        self._history.append(ChatMessage("assistant", heard))
        self._flush_backchannels()
        self._prefill_after_line()
        self.turns.append(metrics)
        log.info("call %s: turn %s", self.call.id, metrics)
        if reply.after is not None and not self._closing:
            if not interrupted or reply.after_even_if_cut:
                self._track(_call(reply.after))
            else:
                self._ending = False  # the caller spoke over the closing line: the call goes on
        elif not interrupted and not self._closing and self._hangup is not None \
                and is_farewell(reply.caller_text) and is_farewell(heard):
            # Both said goodbye and the agent's goodbye has played (its marks came back): end the call,
            # as a person would, instead of waiting in silence for the callee to hang up.
            log.info("call %s: goodbye played, hanging up", self.call.id)
            self._track(self._hangup())

    def _going_on(self) -> bool:
        """Voice that began within the grace (`_open_until`) is still being judged: speech or noise. The
        turn stays open until the detector says: closed under it, the turn's line was written, and
        then written again, whole, when that voice proved to be the caller going on."""
        onset = self.detector.voice_since
        return onset is not None and self._wall_at(onset) < self._open_until

    def _wall_at(self, sample: int) -> float:
        """Wall-clock time at which the detector's `sample` arrived (chunks arrive in real time)."""
        for fed, wall in self._arrivals:
            if fed >= sample:
                return wall - (fed - sample) / STT_RATE
        if self._arrivals:
            fed, wall = self._arrivals[-1]
            return wall + (sample - fed) / STT_RATE
        return self.clock()


_FAREWELL = re.compile(r"\b(good ?bye|bye|have a (nice|good|great) (day|one|evening))\b", re.IGNORECASE)


def is_farewell(text: str | None) -> bool:
    """A line that closes the conversation (checked on both sides before the agent hangs up)."""
    return bool(text) and _FAREWELL.search(text or "") is not None


async def _call(action: Callable[[], Any]) -> None:
    result = action()
    if asyncio.iscoroutine(result):
        await result


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a task and wait until it has finished; an error it had already died of is raised here."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _step(call_id: str, what: str, work: Awaitable[Any]) -> None:
    """One step of closing a call: its failure is logged and the next steps still run."""
    try:
        await work
    except Exception:
        log.exception("call %s: %s failed (closing goes on)", call_id, what)
