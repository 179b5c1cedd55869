"""One call's conversation: turn-taking, speculative replies, barge-in, and transcript writes.

Data path: caller μ-law → 16 kHz → TurnDetector → (at the first pause, speculatively) STT → LLM
tokens → clauses → TTS → 8 kHz μ-law → 20 ms frames → Player. Nothing is played until the turn is
confirmed over; if the caller goes on instead, the speculative reply is cancelled unheard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.agent_config import LLMConfig
from shared.audio import PHONE_RATE, STT_RATE, Framer, StreamResampler, float32_to_ulaw, ulaw_to_float32
from shared.llm.base import ChatMessage, LLMError
from shared.storage.base import Agent, Call, Storage
from shared.stt.base import Transcription
from shared.text import split_clauses
from voice_gateway.call_writer import CallWriter
from voice_gateway.engines import Engines
from voice_gateway.playback import LEAD_FRAMES, Player, Send
from voice_gateway.prompts import stt_prompt, system_prompt
from voice_gateway.recorder import CallRecorder
from voice_gateway.spool import Spool
from voice_gateway.turns import (
    PauseDetected,
    SpeechResumed,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEnded,
    TurnEvent,
)

log = logging.getLogger(__name__)

FALLBACK_LINE = "Sorry, I didn't catch that. Could you say it again?"
# Whisper's classic inventions on noise: dropped when Whisper itself doubts there was speech.
_HALLUCINATIONS = frozenset({"thank you.", "thanks for watching!", "you", "thank you very much.", "."})
CLAUSE_QUEUE = 8  # bounded: the LLM may run at most a few clauses ahead of speech


@dataclass
class _Reply:
    """One agent reply, from the caller's utterance (or a fixed line) to the last mark echoed."""

    id: int
    confirmed: asyncio.Event
    speech_end_sample: int | None = None
    speech_end_wall: float | None = None
    caller_text: str | None = None
    caller_committed: bool = False
    clauses: list[str] = field(default_factory=list)
    clause_frames: list[int] = field(default_factory=list)
    played: int = 0
    done_sending: bool = False
    finalized: bool = False
    first_frame_wall: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


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
        self._upsampler = StreamResampler(PHONE_RATE, STT_RATE)
        self._fed = 0  # 16 kHz samples handed to the detector
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=512)
        self._history: list[ChatMessage] = []
        self._system = ChatMessage("system", system_prompt(agent))
        self._stt_prompt = stt_prompt(agent)
        self._replies = 0
        self._current: _Reply | None = None
        self._by_id: dict[int, _Reply] = {}
        self._pacer: asyncio.Task[None] | None = None
        self._prefill: asyncio.Task[None] | None = None
        self._started_wall = clock()
        self._barge_onset: int | None = None
        # Talking over the agent interrupts it only after this much speech: "mm-hm", "ok", a cough or
        # a line click is shorter, and is stored as a backchannel instead of cutting the agent off.
        self._barge_samples = agent.settings.barge_in_min_ms * STT_RATE // 1000
        self._side_tasks: set[asyncio.Task[None]] = set()
        self.turns: list[dict[str, Any]] = []
        """Per-turn metrics of every reply that played (for logs and benchmarks)."""
        self.barge_ins = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the history (a reconnected stream continues the call) and greet at once."""
        for line in await self.storage.list_transcripts(self.call.id):
            self._history.append(ChatMessage("user" if line.speaker == "caller" else "assistant", line.text))
        self.writer.start()
        self._pacer = asyncio.create_task(self.player.run(), name=f"pacer-{self.call.id}")
        self.writer.job("call_started")
        greeting: asyncio.Task[None] | None = None
        if self.agent.greeting:
            reply = self._new_reply(confirmed=True)
            reply.task = greeting = asyncio.create_task(self._speak(reply, fixed=self.agent.greeting))
        self._prefill = asyncio.create_task(self._prefill_prompt(after=greeting), name=f"prefill-{self.call.id}")

    async def _prefill_prompt(self, *, after: asyncio.Task[None] | None) -> None:
        """Evaluate the system prompt while the greeting plays, so the first answer reuses its KV cache.

        It starts once the greeting is synthesised (`after`), not beside it: on two cores the two
        would share the CPU and the greeting's second clause could arrive after its first had played,
        a hole the caller hears. The greeting plays for seconds; the prefill takes a fraction of that.
        """
        if after is not None:
            await asyncio.wait({after})  # finished, failed or cancelled (barge-in): prefill either way
        messages = [self._system, *self._history, ChatMessage("user", "Hello?")]
        try:
            async for _ in self.engines.llm.stream(messages, LLMConfig(max_tokens=1)):
                pass
        except LLMError as exc:
            log.warning("call %s: prompt prefill failed: %s", self.call.id, exc)

    async def close(self) -> None:
        """The stream ended. Whatever failed before (a pacer that died on a dropped socket, a reply
        that raised), every step still runs: keep what was played, close the recording, then write
        every line, the final status and the post-call job (to the database, else to the spool)."""
        await _step(self.call.id, "stopping the prompt prefill", _stop(self._prefill))
        reply = self._current
        await _step(self.call.id, "stopping the reply", _stop(reply.task if reply is not None else None))
        for side in list(self._side_tasks):  # a backchannel being transcribed: keep its line
            await _step(self.call.id, "waiting for side work", asyncio.wait_for(asyncio.shield(side), 5))
        for pending in list(self._by_id.values()):
            try:
                self._commit_caller(pending)
                self._finalize(pending, interrupted=not pending.done_sending or pending.played < len(pending.clauses))
            except Exception:
                log.exception("call %s: could not keep reply %d", self.call.id, pending.id)
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
        audio = self._upsampler.process(ulaw_to_float32(ulaw))
        self._fed += audio.shape[0]
        self._arrivals.append((self._fed, self.clock()))
        for event in self.detector.feed(audio):
            await self._on_turn_event(event)
        onset = self._barge_onset
        if onset is not None and self.detector.speaking and self.detector.speech_end - onset >= self._barge_samples:
            # The caller has talked over the agent long enough to be more than "mm-hm": yield the floor.
            self._barge_onset = None
            if self._current is not None and self._current.confirmed.is_set() and not self._current.finalized:
                await self._barge_in(self._current)

    def on_mark(self, name: str) -> None:
        """Twilio played everything up to this mark: that clause was heard."""
        if not self.player.acknowledge(name):
            log.debug("call %s: unknown mark %r", self.call.id, name)
            return
        reply_id, _, clause = name.partition(":")
        reply = self._by_id.get(int(reply_id)) if reply_id.isdigit() else None
        if reply is None:
            return
        reply.played = max(reply.played, int(clause) + 1)
        if reply.done_sending and reply.played >= len(reply.clauses):
            self._finalize(reply, interrupted=False)

    def on_dtmf(self, digit: str) -> None:
        log.info("call %s: DTMF %s", self.call.id, digit)

    async def _on_turn_event(self, event: TurnEvent) -> None:
        log.debug("call %s: %s at %.2f s", self.call.id, type(event).__name__, event.at_sample / STT_RATE)
        current = self._current
        agent_busy = current is not None and current.confirmed.is_set() and not current.finalized
        if isinstance(event, SpeechStarted):
            if agent_busy:
                self._barge_onset = event.onset_sample  # barge in only if it lasts (see on_media)
            return
        if self._barge_onset is not None:
            # Speech that began while the agent talked and has not lasted long enough to interrupt.
            if not isinstance(event, TurnEnded):
                return
            self._barge_onset = None
            if agent_busy:
                self._track(self._backchannel(event.audio))  # "mm-hm", "ok": kept, not answered
                return
            # The agent finished meanwhile: this short turn ("yes") is an answer; handle it as one.
        if isinstance(event, PauseDetected):
            self._cancel_unconfirmed()
            reply = self._new_reply(confirmed=False, speech_end_sample=event.speech_end_sample)
            reply.task = asyncio.create_task(self._speak(reply, audio=event.audio))
        elif isinstance(event, SpeechResumed):
            self._cancel_unconfirmed()
        elif isinstance(event, TurnEnded):
            if current is not None and not current.confirmed.is_set() \
                    and current.speech_end_sample == event.speech_end_sample:
                reply = current
            else:
                self._cancel_unconfirmed()
                reply = self._new_reply(confirmed=False, speech_end_sample=event.speech_end_sample)
                reply.task = asyncio.create_task(self._speak(reply, audio=event.audio))
            reply.metrics["end_of_turn_ms"] = round(event.end_of_turn_ms)
            reply.confirmed.set()
            self._commit_caller(reply)

    async def _backchannel(self, audio: np.ndarray) -> None:
        """Store a short utterance made over the agent (a backchannel) without answering it."""
        text = usable_text(await self.engines.stt.transcribe(audio, prompt=self._stt_prompt))
        if text:
            self.writer.add("caller", text, metrics={"backchannel": True})
            self._history.append(ChatMessage("user", text))

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
    def _new_reply(self, *, confirmed: bool, speech_end_sample: int | None = None) -> _Reply:
        self._replies += 1
        reply = _Reply(id=self._replies, confirmed=asyncio.Event(), speech_end_sample=speech_end_sample)
        if speech_end_sample is not None:
            reply.speech_end_wall = self._wall_at(speech_end_sample)
        if confirmed:
            reply.confirmed.set()
        self._current = reply
        self._by_id[reply.id] = reply
        return reply

    def _cancel_unconfirmed(self) -> None:
        reply = self._current
        if reply is not None and not reply.confirmed.is_set():
            if reply.task is not None:
                reply.task.cancel()
            self._by_id.pop(reply.id, None)
            self._current = None

    async def _barge_in(self, reply: _Reply) -> None:
        """The caller talks over the agent: stop generating, drop buffered audio, keep what was heard."""
        self.barge_ins += 1
        if reply.task is not None:
            reply.task.cancel()
        await self.player.clear()
        reply.metrics["interrupted"] = True
        self._finalize(reply, interrupted=True)
        log.info("call %s: barge-in, reply %d cut after %d clause(s)", self.call.id, reply.id, reply.played)

    async def _speak(self, reply: _Reply, *, audio: np.ndarray | None = None, fixed: str | None = None) -> None:
        """Produce one reply; frames wait for `confirmed` so a speculative reply is never heard early."""
        try:
            if fixed is not None:
                await self._synthesize(reply, split_clauses(_one(fixed)), whole=True)
                return
            assert audio is not None
            started = self.clock()
            heard = await self.engines.stt.transcribe(audio, prompt=self._stt_prompt)
            reply.metrics["stt_ms"] = round((self.clock() - started) * 1000)
            text = usable_text(heard)
            if not text:
                log.info("call %s: nothing usable heard (%r, no_speech %.2f)", self.call.id, text,
                         heard.no_speech_prob)
                reply.finalized = True
                self._by_id.pop(reply.id, None)
                return
            messages = [self._system, *self._history, ChatMessage("user", text)]
            reply.caller_text = text
            if reply.confirmed.is_set():
                self._commit_caller(reply)
            await self._synthesize(reply, self._clauses(messages, reply))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call %s: reply %d failed", self.call.id, reply.id)
        finally:
            reply.done_sending = True
            if reply.played >= len(reply.clauses) and reply.confirmed.is_set() and not self.player.busy:
                self._finalize(reply, interrupted=False)

    async def _clauses(self, messages: list[ChatMessage], reply: _Reply) -> AsyncIterator[str]:
        """LLM tokens → speakable clauses, produced ahead of TTS through a bounded queue."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(CLAUSE_QUEUE)

        async def tokens() -> AsyncIterator[str]:
            started = self.clock()
            async for piece in self.engines.llm.stream(messages, self.agent.llm):
                if "llm_first_token_ms" not in reply.metrics:
                    reply.metrics["llm_first_token_ms"] = round((self.clock() - started) * 1000)
                yield piece

        async def produce() -> None:
            produced = False
            try:
                async for clause in split_clauses(tokens()):
                    produced = True
                    await queue.put(clause)
            except LLMError as exc:
                log.warning("call %s: LLM failed (%s): speaking the fallback line", self.call.id, exc)
                reply.metrics["llm_error"] = str(exc)
                if not produced:
                    await queue.put(FALLBACK_LINE)
            finally:
                await queue.put(None)

        producer = asyncio.create_task(produce())
        try:
            while (clause := await queue.get()) is not None:
                yield clause
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer

    async def _synthesize(self, reply: _Reply, clauses: AsyncIterator[str], *, whole: bool = False) -> None:
        """Speak clauses as they come. With `whole` (a fixed line such as the greeting, whose text is all
        known), nothing plays until every clause is synthesised: a short first clause ("Hi,") would
        otherwise play alone while the next is still being made, and on a busy machine the caller hears
        the hole. It costs the greeting a fraction of a second before it starts; a reply, whose text
        arrives token by token, still starts at its first clause."""
        tts = self.engines.tts
        resampler = StreamResampler(tts.sample_rate, PHONE_RATE)
        framer = Framer()
        held: list[tuple[int, list[bytes]] | str] | None = [] if whole else None
        async for clause in clauses:
            index = len(reply.clauses)
            reply.clauses.append(clause)
            reply.clause_frames.append(0)
            started = self.clock()
            async for chunk in tts.synthesize(clause, voice=self.agent.voice):
                if "tts_first_audio_ms" not in reply.metrics:
                    reply.metrics["tts_first_audio_ms"] = round((self.clock() - started) * 1000)
                await self._emit(reply, index, framer.push(float32_to_ulaw(resampler.process(chunk))), held)
            # The clause's last partial frame is padded with silence so its mark lands at its end.
            await self._emit(reply, index, framer.flush(), held)
            mark = f"{reply.id}:{index}"
            if held is None:
                self.player.push_mark(mark)
            else:
                held.append(mark)
        for item in held or ():
            if isinstance(item, str):
                self.player.push_mark(item)
            else:
                self.player.push(item[1], tag=(reply.id, item[0]))

    async def _emit(
        self, reply: _Reply, index: int, frames: list[bytes], held: list[tuple[int, list[bytes]] | str] | None
    ) -> None:
        if not frames:
            return
        if not reply.confirmed.is_set():
            await reply.confirmed.wait()
        reply.clause_frames[index] += len(frames)
        if held is not None:
            held.append((index, frames))
        else:
            self.player.push(frames, tag=(reply.id, index))

    def _on_frame_sent(self, wall: float) -> None:
        reply = self._current
        if reply is not None and reply.first_frame_wall is None and reply.confirmed.is_set():
            reply.first_frame_wall = wall
            if reply.speech_end_wall is not None:
                reply.metrics["voice_to_voice_ms"] = round((wall - reply.speech_end_wall) * 1000)

    # --- transcript ----------------------------------------------------------------------------------
    def _commit_caller(self, reply: _Reply) -> None:
        """Store the caller's line once the turn is confirmed and STT is done (whichever is last)."""
        if reply.caller_committed or reply.caller_text is None or not reply.confirmed.is_set():
            return
        reply.caller_committed = True
        metrics: dict[str, Any] = {k: reply.metrics[k] for k in ("stt_ms", "end_of_turn_ms") if k in reply.metrics}
        self.writer.add("caller", reply.caller_text, metrics=metrics)
        self._history.append(ChatMessage("user", reply.caller_text))

    def _finalize(self, reply: _Reply, *, interrupted: bool) -> None:
        """Store what the caller actually heard: the clauses whose marks came back, and on barge-in
        the words of the clause in progress that fit in the audio already played."""
        if reply.finalized:
            return
        reply.finalized = True
        self._by_id.pop(reply.id, None)
        heard_clauses = reply.clauses[: reply.played]
        if interrupted and reply.played < len(reply.clauses):
            heard_clauses.append(self._heard_part(reply, reply.played))
        heard = " ".join(c for c in heard_clauses if c).strip()
        if not heard:
            return
        metrics = dict(reply.metrics)
        metrics["max_frame_late_ms"] = round(self.player.lateness_by_reply.pop(reply.id, 0.0) * 1000)
        if interrupted:
            metrics["interrupted"] = True
        self.writer.add("agent", heard, metrics=metrics)
        self._history.append(ChatMessage("assistant", heard))
        self.turns.append(metrics)
        log.info("call %s: turn %s", self.call.id, metrics)
        if not interrupted and self._hangup is not None and is_farewell(reply.caller_text) and is_farewell(heard):
            # Both said goodbye and the agent's goodbye has played (its marks came back): end the call,
            # as a person would, instead of waiting in silence for the callee to hang up.
            log.info("call %s: goodbye played, hanging up", self.call.id)
            self._track(self._hangup())

    def _heard_part(self, reply: _Reply, index: int) -> str:
        """The words of a cut clause in proportion to its audio already played.

        Frames sent minus the pacer's lead is what Twilio has played (it plays in real time from the
        first frame); words are assumed evenly spread, which is close enough for a transcript.
        """
        total = reply.clause_frames[index]
        sent = self.player.sent_by_tag.get((reply.id, index), 0)
        if total == 0 or sent <= LEAD_FRAMES:
            return ""
        words = reply.clauses[index].split()
        keep = int(len(words) * min(1.0, (sent - LEAD_FRAMES) / total))
        return " ".join(words[:keep]) + ("…" if 0 < keep < len(words) else "")

    def _wall_at(self, sample: int) -> float:
        """Wall-clock time at which the detector's `sample` arrived (chunks arrive in real time)."""
        for fed, wall in self._arrivals:
            if fed >= sample:
                return wall - (fed - sample) / STT_RATE
        if self._arrivals:
            fed, wall = self._arrivals[-1]
            return wall + (sample - fed) / STT_RATE
        return self.clock()


def usable_text(heard: Transcription) -> str:
    """The caller's words, or "" when Whisper heard nothing or invented one of its classic lines on
    noise ("Thank you.") while rating the audio more likely silence than speech (no_speech_prob)."""
    text = heard.text.strip()
    if text.lower() in _HALLUCINATIONS and heard.no_speech_prob > 0.5:
        return ""
    return text


_FAREWELL = re.compile(r"\b(good ?bye|bye|have a (nice|good|great) (day|one|evening))\b", re.IGNORECASE)


def is_farewell(text: str | None) -> bool:
    """A line that closes the conversation (checked on both sides before the agent hangs up)."""
    return bool(text) and _FAREWELL.search(text or "") is not None


async def _one(text: str) -> AsyncIterator[str]:
    yield text


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

