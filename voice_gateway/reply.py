"""One agent reply as an object: its production, its state, and the verbs the session drives it with.

A reply is born speculative at the caller's first pause (or confirmed at once: a fixed line such as
the greeting), is confirmed when the turn is over, starts playing once the rest of it is assured to
arrive in time (`assurance.StartPolicy`), and ends played, interrupted or cancelled unheard. The
session decides *when* (turn policy, barge-in, history, transcript); the reply knows *what* it is
doing and how much of it the caller heard (mark echoes), like LiveKit Agents' `SpeechHandle`.

Production: caller audio → STT → LLM tokens → clauses → TTS → 8 kHz μ-law → 20 ms frames → Player.
It runs under `urgency.working_for(reply)`, so every engine call it makes is scheduled by the reply's
`deadline()`: speculative work waits, the reply about to run dry goes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from shared import urgency
from shared.audio import FRAME_MS, PHONE_RATE, Framer, StreamResampler, float32_to_ulaw, trim_lead_in
from shared.llm.base import ChatMessage, LLMError
from shared.llm.tools import InvalidToolCall, ToolCall, ToolSpec
from shared.storage.base import Agent
from shared.stt.base import Transcription
from shared.text import HURRY_CUT_MIN_WORDS, LONG_CUT_MIN_WORDS, ends_sentence, split_clauses, tts_text
from shared.tts.base import TTS
from voice_gateway.assurance import Progress, StartPolicy
from voice_gateway.engines import Engines
from voice_gateway.playback import Player

log = logging.getLogger(__name__)

FALLBACK_LINE = "Sorry, I didn't catch that. Could you say it again?"
# Whisper's classic inventions on noise: dropped when Whisper itself doubts there was speech.
_HALLUCINATIONS = frozenset({"thank you.", "thanks for watching!", "you", "thank you very much.", "."})
CLAUSE_QUEUE = 8  # bounded: the LLM may run at most a few clauses ahead of speech
FRAME_S = FRAME_MS / 1000
# A playing reply's next audio is due this long before what is buffered runs out. Gated work is not
# preempted, so in that time the gate may first have to finish another call's job (an STT pass or an
# LLM step with a prompt chunk: ≈ 0.25 s each on 2 cores), then make this reply's next clause: its
# tokens one decode step each beside other replies (≈ 60 ms), then its TTS.
DUE_BEFORE_DRY_S = 1.2
DUE_WORDS_KNOWN_S = 0.7
"""The same, once the next clause's words are known (one job ahead of it, then its TTS)."""
RUNNING_DRY_PRECEDENCE_S = 3600.0
"""Subtracted from the deadline of a reply about to run dry, so it precedes every other kind of work."""


class ReplyState(Enum):
    """Where one reply is; the last four are final."""

    SPECULATIVE = "speculative"
    """Made ahead of a turn end that may never come: nothing of it reaches the player."""
    CONFIRMED = "confirmed"
    """The caller's turn is over (or it is a fixed line): being produced, nothing sent yet (or held)."""
    PLAYING = "playing"
    """Its audio has gone to the player."""
    PLAYED = "played"
    """Production is over and every clause it made was heard (its marks came back)."""
    INTERRUPTED = "interrupted"
    """Cut while it was being heard: a barge-in, or the call ended."""
    CANCELLED = "cancelled"
    """Dropped unheard: the caller went on, or the call ended before the turn did."""
    EMPTY = "empty"
    """STT heard nothing usable: there is nothing to answer."""


_LIVE = frozenset({ReplyState.SPECULATIVE, ReplyState.CONFIRMED, ReplyState.PLAYING})


@dataclass(frozen=True)
class Sound:
    """Fixed audio inside a reply (keypad tones into an IVR): played as one clause named `label`."""

    ulaw: bytes
    label: str


Said = str | Sound
"""What a reply plays, clause by clause: words to synthesise, or a sound."""
Act = Callable[["Reply", ToolCall | InvalidToolCall, list[ChatMessage], str], AsyncIterator[Said]]
"""The session's handler of a tool the model called: given the reply, the call, the messages the model
saw and what it said before calling, it yields what the reply says next (and may set `reply.after`)."""
Intercept = Callable[["Reply", str], AsyncIterator[Said] | None]
"""The session may answer a caller line itself (a "yes" to "shall I transfer you?"): clauses, or None."""


@dataclass(frozen=True)
class ReplyDeps:
    """What every reply of one call shares, and the session's hooks (each handed the reply itself)."""

    call_id: str
    agent: Agent
    engines: Engines
    player: Player
    policy: StartPolicy
    clock: Callable[[], float]
    stt_prompt: str | None
    context: Callable[[], list[ChatMessage]]
    """The messages before the caller's new line (system prompt, recent history), read when STT is done."""
    avoid: Callable[[str], list[str]]
    """The agent's earlier replies this one must not reopen, given the caller's line (none when they ask
    for a repeat): the engine masks those openings, and refusals, while it generates."""
    on_caller_line: Callable[[Reply], None]
    """Once, when the caller's words are final: the reply to them starts to be heard (or is cut, or the
    call ends). Not before: until then the caller may go on, and the turn becomes a longer one."""
    on_ended: Callable[[Reply], None]
    """The reply ended by itself (PLAYED or EMPTY); interrupting and cancelling are the session's own acts."""
    tools: Sequence[ToolSpec] = ()
    """The agent's tools, offered to the model on every turn (none: text only, as before tools)."""
    act: Act | None = None
    intercept: Intercept | None = None


class Reply:
    """One agent reply, from the caller's utterance (or a fixed line) to the last mark echoed."""

    def __init__(
        self, reply_id: int, deps: ReplyDeps, *, confirmed: bool,
        speech_end_sample: int | None = None, speech_end_wall: float | None = None,
    ) -> None:
        self.id = reply_id
        self._deps = deps
        self.speech_end_sample = speech_end_sample
        """Where the caller's speech ended (detector samples); None for a fixed line."""
        self.speech_end_wall = speech_end_wall
        self.state = ReplyState.CONFIRMED if confirmed else ReplyState.SPECULATIVE
        self.created_at = deps.clock()
        self.confirmed_at: float | None = self.created_at if confirmed else None
        self._confirmed = asyncio.Event()
        if confirmed:
            self._confirmed.set()
        self.caller_text: str | None = None
        self.clauses: list[str] = []
        self.clause_frames: list[int] = []
        self.played = 0
        """Clauses whose marks came back: heard in full."""
        self.first_frame_wall: float | None = None
        self.metrics: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._fixed = False
        self._produced = False  # production is over: finished, failed or stopped
        self._marks: dict[str, int] = {}
        # The hold: frames and marks kept back until the start policy lets the reply start.
        self._held: list[tuple[int, list[bytes]] | str] = []
        self._made_frames = 0
        self._production_started: float | None = None
        self._text_done = False
        self._pending_text: Callable[[], int] = lambda: 0  # clauses made by the LLM, not yet spoken
        self._paused_s = 0.0  # waiting for the turn to be confirmed is not production time
        self._ready_at: float | None = None
        self._started_at: float | None = None
        self._start_held = False
        self._caller_line_stored = False
        self.after: Callable[[], Any] | None = None
        """What the session does once this reply has been heard in full (hang up, transfer)."""
        self.after_even_if_cut = False
        """Do `after` even if the caller cut the reply short (the call's time is up)."""

    def __repr__(self) -> str:
        return f"Reply({self.id}, {self.state.value})"

    # --- what the session reads ---------------------------------------------------------------------
    @property
    def confirmed(self) -> bool:
        """The turn this reply answers is over (a fixed line is confirmed from the start)."""
        return self.confirmed_at is not None

    @property
    def holds_floor(self) -> bool:
        """The agent has the floor with this reply: speech over it may be a barge-in or a backchannel."""
        return self.state in (ReplyState.CONFIRMED, ReplyState.PLAYING)

    @property
    def ended(self) -> bool:
        return self.state not in _LIVE

    @property
    def fixed(self) -> bool:
        """A fixed line (the greeting): it answers no caller turn."""
        return self._fixed

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The production task (the session stops it when the call closes)."""
        return self._task

    def deadline(self) -> float:
        """When the caller would hear a hole without this reply's next work (`urgency.Urgent`).

        Read from the compute gate's worker threads, so it never raises.
        """
        if self.state is ReplyState.PLAYING:
            ahead = self._deps.player.ahead_s()
            # Once the next clause's words are known only its TTS remains: it is due later.
            before = DUE_WORDS_KNOWN_S if self._next_text_known() else DUE_BEFORE_DRY_S
            due = self._deps.clock() + ahead - before
            # About to run dry: ahead of everything else, a new turn's first clause included. A hole
            # inside a reply is heard as a stutter; a new turn's wait, as a pause before the answer.
            return due - RUNNING_DRY_PRECEDENCE_S if ahead < before else due
        if self.state is ReplyState.CONFIRMED:
            if self.speech_end_wall is not None:
                return self.speech_end_wall  # the caller is waiting since they stopped speaking
            return self.confirmed_at if self.confirmed_at is not None else self.created_at
        return math.inf

    def clause_of(self, mark: str) -> int | None:
        """The clause a mark this reply sent closes, or None for another reply's mark."""
        return self._marks.get(mark)

    def heard_text(self) -> str:
        """What the caller heard: the clauses whose marks came back and, if it was interrupted, the
        words of the clause in progress that fit in the audio already played."""
        heard = self.clauses[: self.played]
        if self.state is ReplyState.INTERRUPTED and self.played < len(self.clauses):
            heard.append(self._heard_part(self.played))
        return " ".join(c for c in heard if c).strip()

    # --- verbs ---------------------------------------------------------------------------------------
    def answer(self, audio: np.ndarray) -> None:
        """Start producing the answer to the caller's utterance (STT, then LLM and TTS)."""
        self._task = asyncio.create_task(self._produce(audio=audio), name=f"reply-{self._deps.call_id}-{self.id}")

    def answer_text(self, text: str, *, shown: str | None = None, stored: bool = False) -> None:
        """Answer words known without STT (keypad digits, a menu heard while screening): `text` goes to
        the model, `shown` (default `text`) is the caller line stored, unless it is `stored` already."""
        self._caller_line_stored = stored
        self._task = asyncio.create_task(self._produce(typed=(text, shown or text)),
                                         name=f"reply-{self._deps.call_id}-{self.id}")

    def say(self, text: str) -> None:
        """Start producing a fixed line (the greeting). Its text is all known, so it is synthesised
        whole before it plays: a short first clause ("Hi,") would otherwise play alone while the next
        is still being made, and on a busy machine the caller hears the hole. It costs the greeting a
        fraction of a second before it starts."""
        self._fixed = True
        self._task = asyncio.create_task(self._produce(text=text), name=f"greeting-{self._deps.call_id}-{self.id}")

    async def until_confirmed(self) -> None:
        """Wait for the turn's end (an action must not run on a turn the caller may still go on with)."""
        await self._confirmed.wait()

    def confirm(self) -> None:
        """The caller's turn is over: this reply may be heard."""
        if self.state is not ReplyState.SPECULATIVE:
            return
        self.state = ReplyState.CONFIRMED
        self.confirmed_at = self._deps.clock()
        self._confirmed.set()
        if self._produced:  # it was all made (or failed) before the turn ended
            self._maybe_start(done=True)
            self._maybe_end()

    def hold_start(self, held: bool) -> None:
        """Keep a confirmed reply from starting while the caller may be going on (voice was heard and
        it is not yet known to be speech); releasing it starts it if it was ready."""
        self._start_held = held
        if not held:
            self._maybe_start(done=self._produced)

    def cancel(self) -> None:
        """Drop this reply unheard (the caller went on): stop producing it. Its caller line is not
        stored: the turn goes on, and the longer turn's reply stores all of it."""
        if self.ended:
            return
        self.state = ReplyState.CANCELLED
        self._stop_production()

    def interrupt(self, *, store_caller_line: bool = True) -> None:
        """The caller talked over this reply: stop producing it. What was heard (`heard_text`) is read
        once the player's buffer is cleared, when no more of it can go out. Without `store_caller_line`
        the caller's turn goes on (they were continuing it): the longer turn's reply stores it."""
        if self.ended:
            return
        if store_caller_line:
            self._store_caller_line()
        self.state = ReplyState.INTERRUPTED
        self.metrics["interrupted"] = True
        self._stop_production()

    def end_with_call(self) -> None:
        """The call ended (production already stopped): a confirmed reply counts as played if every
        clause it made was heard, else as interrupted; one never confirmed is cancelled."""
        if self.ended:
            return
        self._store_caller_line()
        if not self.confirmed:
            self.state = ReplyState.CANCELLED
        elif self.played >= len(self.clauses):
            self.state = ReplyState.PLAYED
        else:
            self.state = ReplyState.INTERRUPTED
        self._stop_production()

    def on_played(self, clause: int) -> None:
        """Twilio echoed the mark after `clause`: it was heard in full."""
        self.played = max(self.played, clause + 1)
        self._maybe_end()

    def frame_sent(self, wall: float) -> None:
        """The player sent a frame while this reply was current: the first one sets voice-to-voice."""
        if self.first_frame_wall is None and self._started_at is not None:
            self.first_frame_wall = wall
            if self.speech_end_wall is not None:
                self.metrics["voice_to_voice_ms"] = round((wall - self.speech_end_wall) * 1000)

    # --- production ----------------------------------------------------------------------------------
    async def _produce(self, *, audio: np.ndarray | None = None, text: str | None = None,
                       typed: tuple[str, str] | None = None) -> None:
        with urgency.working_for(self):  # inherited by the tasks created inside (the LLM producer)
            try:
                if text is not None:
                    await self._synthesize(split_clauses(_one_text(text), first_cut_min_words=None))
                elif typed is not None:
                    self.caller_text = typed[1]
                    await self._reply_to(typed[0])
                else:
                    assert audio is not None
                    await self._answer(audio)
            except asyncio.CancelledError:
                self._produced = True
                raise
            except Exception:
                log.exception("call %s: reply %d failed", self._deps.call_id, self.id)
                self._production_over(failed=True)
            else:
                self._production_over(failed=False)

    async def _answer(self, audio: np.ndarray) -> None:
        clock = self._deps.clock
        started = clock()
        heard = await self._deps.engines.stt.transcribe(audio, prompt=self._deps.stt_prompt)
        self.metrics["stt_ms"] = round((clock() - started) * 1000)
        text = usable_text(heard)
        if not text:
            log.info("call %s: nothing usable heard (%r, no_speech %.2f)", self._deps.call_id, text,
                     heard.no_speech_prob)
            self.state = ReplyState.EMPTY
            self._deps.on_ended(self)
            return
        self.caller_text = text
        await self._reply_to(text)

    async def _reply_to(self, text: str) -> None:
        """The session's own answer (a confirmed action, a menu key), else the model's."""
        intercepted = self._deps.intercept(self, text) if self._deps.intercept is not None else None
        if intercepted is not None:
            await self._synthesize(intercepted)
            return
        messages = [*self._deps.context(), ChatMessage("user", text)]
        await self._synthesize(self._clauses(messages, avoid=self._deps.avoid(text)))

    async def _clauses(self, messages: list[ChatMessage], *, avoid: list[str]) -> AsyncIterator[Said]:
        """LLM tokens → speakable clauses, produced ahead of TTS through a bounded queue. A tool the
        model calls is handed to the session (`act`) once its words before the call are queued; what
        the session says about it follows in the same reply."""
        queue: asyncio.Queue[Said | None] = asyncio.Queue(CLAUSE_QUEUE)
        clock = self._deps.clock
        tools = self._deps.tools if self._deps.act is not None else ()
        called: list[ToolCall | InvalidToolCall] = []
        spoken: list[str] = []

        async def tokens() -> AsyncGenerator[str, None]:
            started = self._production_started = clock()
            llm, options = self._deps.engines.llm, self._deps.agent.llm
            stream = llm.stream(messages, options, avoid=avoid, tools=tools) if tools else \
                llm.stream(messages, options, avoid=avoid)
            try:
                async for piece in stream:
                    if "llm_first_token_ms" not in self.metrics:
                        self.metrics["llm_first_token_ms"] = round((clock() - started) * 1000)
                    if isinstance(piece, str):
                        spoken.append(piece)
                        yield piece
                    elif not called:  # one action per turn: a second call in the same answer is ignored
                        called.append(piece)
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()  # a reply ended early frees its LLM slot now, not when collected

        async def produce() -> None:
            produced = False
            words = 0
            most = None if tools else self._deps.agent.llm.max_words
            pieces = tokens()
            clauses = split_clauses(pieces, cut_after=self.cut_after)
            try:
                # The opening is cut short at any load. Beside other calls it was not while a lone
                # "Sure," could be the first clause (three gaps in one 4-call run). With a first clause
                # of three words or more (`FIRST_MIN_WORDS`), cutting there too measured better: 2 calls
                # staggered p50 1744 → 1334 ms; 4 calls together 2000–2492 → 1682–2526 ms over three
                # runs each way, one of the three with a gap either way.
                async for clause in clauses:
                    if not produced and self._production_started is not None:
                        # From the LLM request to the first speakable clause: what TTS waits for.
                        self.metrics["llm_first_clause_ms"] = round((clock() - self._production_started) * 1000)
                    produced = True
                    await queue.put(clause)
                    words += len(clause.split())
                    if most is not None and words >= most and ends_sentence(clause):
                        # The prompt asks for two short sentences; a small model sometimes rambles on
                        # for 60 words, which the caller sits through and other calls' replies wait
                        # behind. An agent with tools is not cut: a call may follow its words.
                        self.metrics["cut_at_words"] = words
                        break
                if called and self._deps.act is not None:
                    async for said in self._deps.act(self, called[0], messages, "".join(spoken).strip()):
                        produced = True
                        await queue.put(said)
            except LLMError as exc:
                log.warning("call %s: LLM failed (%s): speaking the fallback line", self._deps.call_id, exc)
                self.metrics["llm_error"] = str(exc)
                if not produced:
                    await queue.put(FALLBACK_LINE)
            finally:
                await clauses.aclose()
                await pieces.aclose()
                self._text_done = True
                await queue.put(None)

        self._pending_text = queue.qsize
        producer = asyncio.create_task(produce())
        try:
            while (clause := await queue.get()) is not None:
                yield clause
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _synthesize(self, clauses: AsyncIterator[Said]) -> None:
        """Speak clauses as they come; each clause ends with a mark, echoed once it has played."""
        tts = self._deps.engines.tts
        framer = Framer()
        async for clause in clauses:
            index = len(self.clauses)
            self.clauses.append(clause.label if isinstance(clause, Sound) else clause)
            self.clause_frames.append(0)
            started = self._deps.clock()
            if self._production_started is None:
                self._production_started = started  # a fixed line: no LLM request
            if isinstance(clause, Sound):
                await self._emit(index, [*framer.push(clause.ulaw), *framer.flush()])
                self._mark(index)
                continue
            # One resampler per clause, drained at its end: a stream kept across clauses held each
            # clause's last ~28 ms (22 050 → 8 000 Hz, soxr HQ) back into the next one, behind the
            # mark, and dropped the reply's. Each clause is synthesised alone, so it starts afresh.
            resampler = StreamResampler(tts.sample_rate, PHONE_RATE)
            lead_in = index == 0  # the caller waits through the reply's first silence: cut it
            async for chunk in self._speech(tts, clause):
                if "tts_first_audio_ms" not in self.metrics:
                    self.metrics["tts_first_audio_ms"] = round((self._deps.clock() - started) * 1000)
                if lead_in:
                    chunk = trim_lead_in(chunk, tts.sample_rate)
                    lead_in = chunk.size == 0
                await self._emit(index, framer.push(float32_to_ulaw(resampler.process(chunk))))
            await self._emit(index, framer.push(float32_to_ulaw(resampler.flush())))
            # The clause's last partial frame is padded with silence so its mark lands at its end.
            await self._emit(index, framer.flush())
            self._mark(index)

    def _mark(self, index: int) -> None:
        mark = f"{self.id}:{index}"
        self._marks[mark] = index
        self._out(mark)

    async def _speech(self, tts: TTS, clause: str) -> AsyncIterator[np.ndarray]:
        """The clause's audio. A fixed line (the greeting) is the same on every call of an agent: it
        is synthesised once per process and replayed, so calls that start together do not each spend
        the CPU on it while their first turns wait."""
        voice = self._deps.agent.voice
        if not self._fixed:
            async for chunk in tts.synthesize(tts_text(clause), voice=voice):
                yield chunk
            return
        for chunk in await fixed_audio(tts, clause, voice):
            yield chunk

    async def _emit(self, index: int, frames: list[bytes]) -> None:
        """Frames wait for the turn to be confirmed (a speculative reply is never heard early), then
        for the start policy (see `_maybe_start`)."""
        if not frames:
            return
        if not self._confirmed.is_set():
            waited = self._deps.clock()
            await self._confirmed.wait()
            self._paused_s += self._deps.clock() - waited
        self.clause_frames[index] += len(frames)
        self._made_frames += len(frames)
        if self._ready_at is None:
            self._ready_at = self._deps.clock()
        self._out((index, frames))
        self._maybe_start(done=False)

    def _out(self, item: tuple[int, list[bytes]] | str) -> None:
        if self._started_at is None:
            self._held.append(item)
        else:
            self._push(item)

    def _push(self, item: tuple[int, list[bytes]] | str) -> None:
        player = self._deps.player
        if isinstance(item, str):
            player.push_mark(item)
        else:
            player.push(item[1], tag=(self.id, item[0]))

    def cut_after(self) -> int | None:
        """Words the LLM's unfinished clause needs before it is cut at a phrase start (`shared.text`).

        Beside other calls a long clause is cut: its first half is heard sooner, and its TTS job holds
        a core half as long. 4 calls together, three runs each way, interleaved: p50 1312, 1448, 1093
        ms and no gap, against 1520, 1681, 1212 ms with a 1.6 s hole after "We are open on Friday".
        Sooner while this reply waits for the clause: playing with less than `DUE_BEFORE_DRY_S` ahead
        and nothing else to synthesise, or made so far but held for want of it (`StartPolicy`). A
        short first clause followed by a long one ("Sure, we can do that." | "How long will it take
        for you to move your appointments?") left the 382 and 384 ms holes of the last 4-call runs.
        A call alone keeps its clauses whole: it writes them faster than they play. Five interleaved
        4-call pairs on a slower AMD EPYC (AVX2) in a noisy hour: p50 2026, 2064, 2107, 2511, 3313 ms
        (one 311 ms gap) against 2552, 2496, 2243, 1869, 3069 ms without (two gaps, worst 482 ms);
        replies held before their start at most 261–704 ms against 751–2195 ms in the first three.
        """
        if not self._deps.policy.busy():
            return None
        waiting = self.state is ReplyState.PLAYING and self._deps.player.ahead_s() < DUE_BEFORE_DRY_S \
            or self.state is ReplyState.CONFIRMED and bool(self._held)
        return HURRY_CUT_MIN_WORDS if waiting and not self._next_text_known() else LONG_CUT_MIN_WORDS

    def _next_text_known(self) -> bool:
        """The LLM has written the next clause (or everything): only TTS remains for it."""
        return self._text_done or self._pending_text() > 0

    def _progress(self, *, done: bool) -> Progress:
        started = self._production_started
        elapsed = 0.0 if started is None else self._deps.clock() - started - self._paused_s
        text_ready = self._next_text_known()
        return Progress(audio_s=self._made_frames * FRAME_S, elapsed_s=max(0.0, elapsed), done=done,
                        text_ready=text_ready)

    def _maybe_start(self, *, done: bool) -> None:
        """Start playing once the rest of the reply is assured to arrive in time (`StartPolicy`): a
        reply that started at its first clause and then ran dry would leave a hole mid-sentence. A
        fixed line starts only when all of it is made. Held frames and marks go out at once, in order."""
        if self._started_at is not None or self.state is not ReplyState.CONFIRMED or not self._held \
                or self._start_held:
            return
        if not (done if self._fixed else self._deps.policy.may_start(self._progress(done=done))):
            return
        self._started_at = self._deps.clock()
        self._store_caller_line()  # its words are final now: the caller hears the answer to them
        self.state = ReplyState.PLAYING
        if self._ready_at is not None:
            self.metrics["held_ms"] = round((self._started_at - self._ready_at) * 1000)
        held, self._held = self._held, []
        for item in held:
            self._push(item)

    def _production_over(self, *, failed: bool) -> None:
        """Production finished (or failed: what was made still plays, nothing more will come)."""
        self._produced = True
        if self.ended:
            return
        if not failed and not self._fixed:
            progress = self._progress(done=True)
            self._deps.policy.observe(progress)
        self._maybe_start(done=True)
        self._maybe_end()

    def _maybe_end(self) -> None:
        if self._produced and self.holds_floor and not self._held and self.played >= len(self.clauses):
            self._store_caller_line()  # a reply that made nothing to play still answered the caller
            self.state = ReplyState.PLAYED
            self._deps.on_ended(self)

    def _store_caller_line(self) -> None:
        if not self._caller_line_stored and self.caller_text is not None and self.confirmed:
            self._caller_line_stored = True
            self._deps.on_caller_line(self)

    def _stop_production(self) -> None:
        self._held.clear()
        if self._task is not None:
            self._task.cancel()

    def _heard_part(self, index: int) -> str:
        """The words of a cut clause in proportion to its audio already played.

        The player knows which frames the far end has played (it plays in real time from the first
        frame; a pause takes back the rest); words are assumed evenly spread, close enough for a
        transcript.
        """
        total = self.clause_frames[index]
        played = self._deps.player.played_frames((self.id, index))
        if total == 0 or played <= 0:
            return ""
        words = self.clauses[index].split()
        keep = int(len(words) * min(1.0, played / total))
        return " ".join(words[:keep]) + ("…" if 0 < keep < len(words) else "")


FIXED_AUDIO_LINES = 64
"""Fixed lines kept per TTS engine (greetings of different agents, voices)."""
_FIXED_AUDIO: weakref.WeakKeyDictionary[TTS, dict[tuple[str | None, str], list[np.ndarray]]] = (
    weakref.WeakKeyDictionary()
)


async def fixed_audio(tts: TTS, clause: str, voice: str | None) -> list[np.ndarray]:
    """A fixed line's clause, synthesised once per process and TTS engine (then replayed)."""
    lines = _FIXED_AUDIO.setdefault(tts, {})
    cached = lines.get((voice, clause))
    if cached is None:
        made = [chunk async for chunk in tts.synthesize(clause, voice=voice)]
        if len(lines) >= FIXED_AUDIO_LINES:
            lines.pop(next(iter(lines)))
        cached = lines[(voice, clause)] = made
    return cached


async def prepare_fixed(tts: TTS, text: str, voice: str | None) -> None:
    """Synthesise a fixed line ahead of need (an outbound call's greeting and voicemail message while
    the agent listens to who answered), so it plays at once when it is said."""
    async for clause in split_clauses(_one_text(text), first_cut_min_words=None):
        await fixed_audio(tts, clause, voice)


def usable_text(heard: Transcription) -> str:
    """The caller's words, or "" when Whisper heard nothing or invented one of its classic lines on
    noise ("Thank you.") while rating the audio more likely silence than speech (no_speech_prob)."""
    text = heard.text.strip()
    if text.lower() in _HALLUCINATIONS and heard.no_speech_prob > 0.5:
        return ""
    return text


async def _one_text(text: str) -> AsyncIterator[str]:
    yield text
