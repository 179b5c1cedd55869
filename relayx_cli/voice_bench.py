"""Voice-to-voice benchmark: simulated callers through a real gateway, measured as the caller hears it.

Each call is a caller on a Twilio Media Stream: a continuous real-time stream of 20 ms μ-law frames
(line noise or silence between its lines), one line at a time, each spoken once the agent's reply
has played out and 0.7 s have passed, as a person would. The caller's ear is Twilio's playout: the
agent's frames play back to back from their arrival, so a frame that arrives after the audio before
it has finished, inside one reply, is a gap the caller hears. Figures come from both ends: the phone
(voice-to-voice = last caller audio frame sent → first agent frame received, as FIELD_NOTES defines
it; gaps inside replies) and the gateway's per-turn metrics stored with each agent line.

A line can also be said over the agent's reply (a test set's backchannels and interruptions): it
starts a set time after the reply was first heard, and the phone records when its first frame went
out, when the gateway's `clear` came back, and whether agent audio followed the clear (`Overlap`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets

from backend.telephony.caller_voice import synthesize_caller
from backend.telephony.virtual_phone import CallerLine
from shared import stream_tokens, twilio_auth
from shared.audio import FRAME_BYTES, MULAW_SILENCE, ulaw_to_float32
from shared.settings import Settings
from shared.storage import build_storage

BENCH_AGENT = {
    "name": "Ava",
    "prompt": (
        "You answer calls for Bright Smile Dental. Help callers book a teeth cleaning. "
        "Open Monday to Friday, 9am to 5pm. A cleaning costs 80 dollars and takes 45 minutes. "
        "The office is at 12 Main Street."
    ),
    "greeting": "Hi, this is Ava from Bright Smile Dental. How can I help?",
    # Bench callers speak only once greeted: the agent greets at once (no answering-machine screening).
    "settings": {"business": "Bright Smile Dental", "voicemail": {"detect": False}},
}
BENCH_LINES = [
    "Hi, I would like to book a cleaning.",
    "What are your opening hours on Monday?",
    "How much does a cleaning cost?",
    "How long does it take?",
    "Where is your office?",
]
"""The quick lines: short and clean (Piper pitched up, no noise). Fast to run; flatters the gateway."""
STAGES = ("end_of_turn_ms", "stt_ms", "llm_first_token_ms", "tts_first_audio_ms", "voice_to_voice_ms", "held_ms")
"""Gateway metrics reported first; any other numeric `*_ms` metric of an agent line follows them."""

FRAME_S = FRAME_BYTES / 8000
GAP_MS = 40.0
"""A gap inside a reply longer than this is audible as a stall (and fails real time)."""
P95_MS = 2500.0
"""Voice-to-voice p95 above this fails a level of the capacity ramp."""
QUIET_AFTER_REPLY_S = 0.7
"""The caller speaks its next line this long after the agent's reply has finished playing."""
HANGUP_QUIET_S = 2.0
"""After its last line the caller listens this long past the reply's end before hanging up, so a
last clause that comes late is heard (and counted as a gap) rather than cut off by the hang-up."""
MIN_GAP_MS = 1.0
"""Gaps shorter than this are timer noise, not recorded."""
SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES
BACKCHANNEL_WAIT_S = 2.5
"""After a backchannel the caller says nothing for at least this long (time for the agent to resume)."""


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q % of the values at or below it
    (no interpolation: with few samples, report a value that happened)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) / 100 - 1e-9)  # the epsilon keeps 0.95 × 20 at rank 19
    return ordered[min(len(ordered), max(1, rank)) - 1]


# --- the caller's ear: Twilio's playout, pure ---------------------------------------------------


@dataclass
class Reply:
    """The agent audio received after one caller line ended, until the next line ended.

    `turn` is the caller line's index; None for the greeting (audio before the first line ended).
    """

    turn: int | None
    opened_at: float
    first_frame_at: float | None = None
    frames: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    """Every gap heard inside this reply (≥ 1 ms): a frame arriving after the audio before it played."""
    frames_over_caller: int = 0
    """Frames that arrived while the caller was speaking its next line (the agent talking over it)."""
    clears: int = 0

    @property
    def voice_to_voice_ms(self) -> float | None:
        if self.first_frame_at is None or self.turn is None:
            return None
        return (self.first_frame_at - self.opened_at) * 1000


@dataclass
class Overlap:
    """A caller line spoken over the agent, as the phone saw it: when it began, what the agent did.

    `clear_at` is the first `clear` after the onset (before the caller's next line); frames after it
    are the agent speaking again: after a backchannel, its reply resuming (or a new one).
    """

    turn: int
    kind: str  # "backchannel" or "interruption"
    onset_at: float
    over_agent: bool
    """The agent's audio was still playing at the onset (else the line did not overlap anything)."""
    ended_at: float | None = None
    clear_at: float | None = None
    frames_after_clear: int = 0

    @property
    def onset_to_clear_ms(self) -> float | None:
        return None if self.clear_at is None else (self.clear_at - self.onset_at) * 1000

    @property
    def resumed(self) -> bool:
        """Cleared, then the agent spoke again before the caller's next line."""
        return self.clear_at is not None and self.frames_after_clear > 0


def speech_onset_s(ulaw: bytes, *, rise_db: float = 15.0) -> float:
    """Where speech starts in a caller line: the first 20 ms frame 15 dB above the line's own floor
    (its quietest tenth), so onset → clear is timed from the first syllable, as a listener would."""
    pcm = ulaw_to_float32(ulaw)
    frames = pcm[: pcm.shape[0] // 160 * 160].reshape(-1, 160)
    if frames.shape[0] == 0:
        return 0.0
    level = 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)
    floor = float(np.percentile(level, 10))
    loud = np.flatnonzero(level > floor + rise_db)
    return float(loud[0]) * FRAME_S if loud.size else 0.0


class Playout:
    """Twilio's playout of the agent's audio, on the times it is handed (no clock, no I/O).

    Frames play back to back from their arrival: `play_end` is when everything received so far has
    played. Inside one reply a frame arriving after `play_end` leaves a gap of (arrival − play_end);
    the silence before a reply's first frame is the response time, not a gap, and so is the silence
    after a `clear` (the next audio is a new utterance).

    A silence inside the audio is a gap only if the audio after it belongs to the same reply. Audio
    carries no reply id, but each of the gateway's clauses ends with a mark named `<reply id>:<clause>`
    (`voice_gateway.reply`): a silence stays a suspect until the next mark names its reply. A reply
    to the first half of the caller's line, started in a pause inside that line, arrives while the
    bench still holds the last reply open: it is the agent speaking over the caller
    (`frames_over_caller`), not a hole in the reply before.
    """

    def __init__(self, start: float) -> None:
        self.replies: list[Reply] = [Reply(turn=None, opened_at=start)]
        self.overlaps: list[Overlap] = []
        self.play_end = start
        self._in_stretch = False
        self._caller_speaking = False
        self._overlap: Overlap | None = None  # the latest overlap, until the caller's next line starts
        self._mark_reply: str | None = None
        """The reply id of the last mark received (see `mark`)."""
        self._suspect: tuple[Reply, float] | None = None
        """A silence inside the audio, until the next mark says whether the audio after it was the same
        reply (a gap) or a new one."""

    @property
    def current(self) -> Reply:
        return self.replies[-1]

    def playing(self, at: float) -> bool:
        """The agent's audio received so far is still playing at `at`."""
        return self.play_end > at

    def line_started(self, at: float, *, turn: int | None = None, overlap: str | None = None,
                     onset_s: float = 0.0) -> None:
        """The caller's line began (its first frame was sent); `overlap` names a line said over the agent,
        whose speech starts `onset_s` into its audio (the line noise before it is not speech)."""
        self._caller_speaking = True
        self._overlap = None
        if overlap is not None and turn is not None:
            onset = at + onset_s
            self._overlap = Overlap(turn=turn, kind=overlap, onset_at=onset, over_agent=self.playing(onset))
            self.overlaps.append(self._overlap)

    def backchannel_ended(self, at: float) -> None:
        """A backchannel ended: unlike a line, it opens no reply (the agent's current one goes on)."""
        self._caller_speaking = False
        if self._overlap is not None:
            self._overlap.ended_at = at

    def line_ended(self, at: float, turn: int) -> None:
        """The caller's line `turn` ended (its last frame was sent): what arrives next is its reply."""
        self._caller_speaking = False
        if self._overlap is not None:
            self._overlap.ended_at = at
        self.replies.append(Reply(turn=turn, opened_at=at))
        self._in_stretch = False

    def frame(self, at: float, seconds: float = FRAME_S) -> float:
        """An agent frame arrived; returns the gap it left (0.0 when it came in time)."""
        reply = self.current
        reply.frames += 1
        if reply.first_frame_at is None:
            reply.first_frame_at = at
        if self._caller_speaking:
            reply.frames_over_caller += 1
        if self._overlap is not None and self._overlap.clear_at is not None:
            self._overlap.frames_after_clear += 1
        gap = at - self.play_end if self._in_stretch and at > self.play_end else 0.0
        if gap * 1000 >= MIN_GAP_MS:
            self._settle_suspect(same_reply=True)
            self._suspect = (reply, round(gap * 1000, 1))
        self._in_stretch = True
        self.play_end = max(self.play_end, at) + seconds
        return gap

    def mark(self, name: str) -> None:
        """A mark arrived (sent after the audio it follows): it settles a suspect silence."""
        reply_id = name.split("~", 1)[0].rsplit(":", 1)[0] if ":" in name else None
        if reply_id is None:
            self._settle_suspect(same_reply=True)
            return
        self._settle_suspect(same_reply=self._mark_reply is None or reply_id == self._mark_reply)
        self._mark_reply = reply_id

    def settle(self) -> None:
        """The call is over: a silence no mark settled counts as a gap (the cautious reading)."""
        self._settle_suspect(same_reply=True)

    def _settle_suspect(self, *, same_reply: bool) -> None:
        if self._suspect is not None and same_reply:
            reply, gap_ms = self._suspect
            reply.gaps_ms.append(gap_ms)
        self._suspect = None

    def clear(self, at: float) -> None:
        """`clear`: the buffered audio is dropped; nothing plays from now on."""
        self.play_end = min(self.play_end, at)
        self.current.clears += 1
        self._in_stretch = False
        if self._overlap is not None and self._overlap.clear_at is None:
            self._overlap.clear_at = at

    def mark_due(self, at: float) -> float:
        """When a mark received now is echoed: once everything received before it has played."""
        return max(self.play_end, at)

    def reply_done(self, at: float, quiet_s: float = QUIET_AFTER_REPLY_S) -> bool:
        """The current reply has been heard and has been over for `quiet_s` (time to speak again)."""
        return self.current.first_frame_at is not None and at >= self.play_end + quiet_s


# --- one caller on the socket -------------------------------------------------------------------


@dataclass(frozen=True)
class CallPlan:
    """What one simulated caller does: its lines, the line's noise between them, when it dials."""

    lines: list[CallerLine]
    voice: str = "piper (quick)"
    bed: bytes | None = None
    """μ-law line noise looped between lines (None: digital silence)."""
    start_delay_s: float = 0.0
    overlaps: dict[int, str] = field(default_factory=dict)
    """Lines said over the agent's reply, by index: "backchannel" or "interruption". Such a line starts
    its `barge_in_after_ms` after the reply was first heard instead of after the reply."""
    label: str = ""
    """The plan's name in reports (a phone-set call's id)."""

    def overlap(self, turn: int) -> str | None:
        """How line `turn` is said: None (after the reply) or over it, as a backchannel or an interruption
        (a line with `barge_in_after_ms` and no kind named is an interruption)."""
        line = self.lines[turn]
        if turn in self.overlaps:
            return self.overlaps[turn]
        return "interruption" if line.barge_in_after_ms is not None else None


@dataclass
class CallReport:
    """What one caller saw on the socket."""

    voice: str
    lines: list[str]
    start_delay_s: float
    replies: list[Reply] = field(default_factory=list)
    overlaps: list[Overlap] = field(default_factory=list)
    label: str = ""
    backchannels: int = 0
    """Lines that are backchannels: said over a reply, they expect none (not counted as turns)."""
    marks_echoed: int = 0
    close_code: int | None = None
    error: str | None = None


class BenchCaller:
    """Drives one Media Stream as a person on a phone would; `run()` returns what was heard."""

    def __init__(
        self, url: str, plan: CallPlan, *, custom_parameters: dict[str, str], reply_timeout_s: float = 15.0,
        greeting_timeout_s: float = 8.0, max_reply_s: float = 60.0,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.plan = plan
        self.custom_parameters = custom_parameters
        self.reply_timeout_s = reply_timeout_s
        self.greeting_timeout_s = greeting_timeout_s
        self.max_reply_s = max_reply_s
        self.on_event = on_event or (lambda kind, data: None)
        self.clock = clock
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.call_sid = "CA" + secrets.token_hex(16)
        self.report = CallReport(voice=plan.voice, lines=[l.text for l in plan.lines],
                                 start_delay_s=plan.start_delay_s, label=plan.label,
                                 backchannels=sum(1 for i in range(len(plan.lines)) if plan.overlap(i) == "backchannel"))
        self.playout = Playout(clock())
        self._line: tuple[int, bytes, str | None] | None = None
        self._line_sent: asyncio.Future[float] | None = None
        self._pending_marks: list[tuple[float, str]] = []
        self._bed_pos = 0
        self._sequence = 0
        self._ws: Any = None

    async def run(self) -> CallReport:
        await asyncio.sleep(self.plan.start_delay_s)
        try:
            async with websockets.connect(self.url, max_size=2**22) as ws:
                self._ws = ws
                await self._start()
                self.playout = Playout(self.clock())
                sender = asyncio.create_task(self._sender())
                receiver = asyncio.create_task(self._receiver())
                try:
                    await self._script(receiver, sender)
                    if not receiver.done():
                        with contextlib.suppress(websockets.ConnectionClosed):
                            await self._send({"event": "stop", "streamSid": self.stream_sid,
                                              "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid}})
                finally:
                    sender.cancel()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                        await sender
                    await ws.close()
                    with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed, TimeoutError):
                        await asyncio.wait_for(receiver, 5)
                self.report.close_code = ws.close_code
        except (OSError, websockets.WebSocketException) as exc:  # counted as unanswered turns, named
            self.report.error = f"{type(exc).__name__}: {exc}"
        self.playout.settle()
        self.report.replies = self.playout.replies
        self.report.overlaps = self.playout.overlaps
        return self.report

    # --- script ------------------------------------------------------------------------------
    async def _script(self, receiver: asyncio.Task[None], sender: asyncio.Task[None]) -> None:
        started = self.clock()
        # The agent greets first: listen to it (or give up on it) before speaking.
        while not self.playout.reply_done(self.clock()) and self.clock() - started < self.greeting_timeout_s:
            if receiver.done():
                return
            await asyncio.sleep(0.02)
        ended: float | None = None
        previous: str | None = None
        for turn, line in enumerate(self.plan.lines):
            kind = self.plan.overlap(turn)
            if ended is not None:  # the previous line's reply: listen to it, or to its start only
                if kind is not None and line.barge_in_after_ms is not None:
                    await self._await_overlap_point(turn - 1, ended, line.barge_in_after_ms / 1000, receiver)
                else:
                    await self._await_reply(turn - 1, ended, receiver, QUIET_AFTER_REPLY_S, previous)
            if receiver.done() or sender.done():
                return
            self._line_sent = asyncio.get_running_loop().create_future()
            self._line = (turn, line.audio, kind)
            ended = await self._line_sent
            previous = kind
        if ended is not None:
            await self._await_reply(len(self.plan.lines) - 1, ended, receiver, HANGUP_QUIET_S, previous)

    async def _await_reply(self, turn: int, ended: float, receiver: asyncio.Task[None], quiet_s: float,
                           kind: str | None = None) -> None:
        """Wait for the reply to be heard and over (+`quiet_s`), or give up on it after the timeout.

        After a backchannel the reply is the one it was said over; the caller also waits
        BACKCHANNEL_WAIT_S, as a person who said "okay" and heard the agent stop would, so that an
        agent that resumes has the time to."""
        min_wait_s = BACKCHANNEL_WAIT_S if kind == "backchannel" else 0.0
        while not receiver.done():
            now = self.clock()
            reply = self.playout.current
            if self.playout.reply_done(now, quiet_s) and now - ended >= min_wait_s:
                break
            if reply.first_frame_at is None and now - ended > self.reply_timeout_s:
                break
            if now - ended > self.max_reply_s:
                break
            await asyncio.sleep(0.02)
        v2v = None if kind == "backchannel" else self.playout.current.voice_to_voice_ms
        self.on_event("turn", {"turn": turn, "voice_to_voice_ms": None if v2v is None else round(v2v)})

    async def _await_overlap_point(self, turn: int, ended: float, after_s: float,
                                   receiver: asyncio.Task[None]) -> None:
        """Wait until the reply to line `turn` has been heard for `after_s` (the next line talks over it)."""
        while not receiver.done():
            now = self.clock()
            first = self.playout.current.first_frame_at
            if first is not None and now >= first + after_s:
                break
            if first is None and now - ended > self.reply_timeout_s:
                break
            await asyncio.sleep(0.02)
        v2v = self.playout.current.voice_to_voice_ms
        self.on_event("turn", {"turn": turn, "voice_to_voice_ms": None if v2v is None else round(v2v)})

    # --- wire --------------------------------------------------------------------------------
    async def _start(self) -> None:
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send({
            "event": "start",
            "streamSid": self.stream_sid,
            "start": {
                "accountSid": "AC" + "0" * 32, "streamSid": self.stream_sid, "callSid": self.call_sid,
                "tracks": ["inbound"], "customParameters": self.custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })

    async def _send(self, message: dict[str, Any]) -> None:
        self._sequence += 1
        if message["event"] != "connected":
            message = {"sequenceNumber": str(self._sequence), **message}
        await self._ws.send(json.dumps(message))

    def _bed_frame(self) -> bytes:
        bed = self.plan.bed
        if not bed:
            return SILENCE_FRAME
        if self._bed_pos + FRAME_BYTES > len(bed):
            self._bed_pos = 0
        frame = bed[self._bed_pos : self._bed_pos + FRAME_BYTES]
        self._bed_pos += FRAME_BYTES
        return frame

    async def _sender(self) -> None:
        """Twilio sends the caller's track continuously, one 20 ms frame at a time, in real time."""
        try:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._send_frames()
        finally:
            if self._line_sent is not None and not self._line_sent.done():
                self._line_sent.set_result(self.clock())  # the line is dead: nobody waits on it

    async def _send_frames(self) -> None:
        start = self.clock()
        chunk, pos = 0, 0
        while True:
            now = self.clock()
            for due, name in sorted(self._pending_marks):
                if due <= now:
                    self._pending_marks.remove((due, name))
                    await self._echo_mark(name)
            last = False
            if self._line is not None:
                turn, audio, kind = self._line
                if pos == 0:
                    # Over the agent, the clock starts at the first syllable, not at the line noise before it.
                    onset = speech_onset_s(audio) if kind is not None else 0.0
                    self.playout.line_started(now, turn=turn, overlap=kind, onset_s=onset)
                payload = audio[pos : pos + FRAME_BYTES]
                payload += self._bed_frame()[len(payload):]
                pos += FRAME_BYTES
                last = pos >= len(audio)
            else:
                payload = self._bed_frame()
            chunk += 1
            await self._send({
                "event": "media", "streamSid": self.stream_sid,
                "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                          "payload": base64.b64encode(payload).decode()},
            })
            if last and self._line is not None:
                sent = self.clock()
                if self._line[2] == "backchannel":
                    self.playout.backchannel_ended(sent)
                else:
                    self.playout.line_ended(sent, self._line[0])
                self._line, pos = None, 0
                if self._line_sent is not None and not self._line_sent.done():
                    self._line_sent.set_result(sent)
            await asyncio.sleep(max(0.0, start + chunk * FRAME_S - self.clock()))

    async def _echo_mark(self, name: str) -> None:
        self.report.marks_echoed += 1
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _receiver(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                message = json.loads(raw)
                event = message.get("event")
                now = self.clock()
                if event == "media":
                    self.playout.frame(now, len(base64.b64decode(message["media"]["payload"])) / 8000)
                elif event == "mark":
                    self.playout.mark(message["mark"]["name"])
                    self._pending_marks.append((self.playout.mark_due(now), message["mark"]["name"]))
                elif event == "clear":
                    self.playout.clear(now)
                    for _, name in sorted(self._pending_marks):  # Twilio returns the discarded audio's marks
                        await self._echo_mark(name)
                    self._pending_marks.clear()


# --- placing calls and reading the gateway's side ------------------------------------------------


@dataclass
class CallResult:
    phone: CallReport
    call_id: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """The gateway's metrics of every agent line (the greeting's included)."""
    transcript: list[tuple[str, str]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Every stored line in order: speaker, text and metrics (caller lines' `end_of_turn_ms`, `backchannel`)."""

    @property
    def late_ms(self) -> list[int]:
        return [int(m.get("max_frame_late_ms", 0)) for m in self.metrics]


async def caller_lines(texts: list[str]) -> list[CallerLine]:
    """The quick lines: `texts` in the simulator's callee voice (Piper pitched up), clean."""
    return [CallerLine(text, await synthesize_caller(text)) for text in texts]


async def run_plans(
    settings: Settings, gateway_ws: str, plans: list[CallPlan], *,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[CallResult]:
    """Place one call per plan against a running gateway (each dialling after its delay)."""
    storage = build_storage(settings)
    await storage.open()
    try:
        await storage.migrate()
        agent = await storage.create_agent(BENCH_AGENT)
        calls = [
            await storage.create_call(agent_id=agent.id, to_number="+15550000000", from_number=None,
                                      metadata={"bench": True})
            for _ in plans
        ]
        secret = twilio_auth.signing_token(settings)
        callers = [
            BenchCaller(stream_tokens.stream_url(f"{gateway_ws}/media", secret, c.id), plan,
                        custom_parameters={"call_id": c.id}, on_event=on_event)
            for c, plan in zip(calls, plans, strict=True)
        ]
        reports = await asyncio.gather(*(c.run() for c in callers))
        await _settled(storage, [c.id for c in calls])
        results = []
        for call, report in zip(calls, reports, strict=True):
            rows = await storage.list_transcripts(call.id)
            results.append(CallResult(
                phone=report, call_id=call.id,
                metrics=[dict(r.metrics) for r in rows if r.speaker == "agent"],
                transcript=[(r.speaker, r.text) for r in rows],
                rows=[{"speaker": r.speaker, "text": r.text, "metrics": dict(r.metrics)} for r in rows],
            ))
        return results
    finally:
        await storage.close()


async def _settled(storage: Any, call_ids: list[str], timeout_s: float = 15.0) -> None:
    """Wait until the gateway has closed every call (its last lines are written before the status)."""
    deadline = time.monotonic() + timeout_s
    pending = set(call_ids)
    while pending and time.monotonic() < deadline:
        for call_id in list(pending):
            if (await storage.get_call(call_id)).status == "completed":
                pending.discard(call_id)
        await asyncio.sleep(0.2)


async def run_calls(
    settings: Settings, gateway_ws: str, lines: list[CallerLine], *, concurrent: int,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> list[CallResult]:
    """`concurrent` calls starting together, each saying `lines` with silence between them."""
    return await run_plans(settings, gateway_ws, [CallPlan(lines) for _ in range(concurrent)], on_event=on_event)


# --- figures --------------------------------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float | None]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "min": min(values, default=None),
            "max": max(values, default=None)}


def _stage_names(results: list[CallResult]) -> list[str]:
    seen = {k for r in results for m in r.metrics for k, v in m.items()
            if k.endswith("_ms") and isinstance(v, int | float) and not isinstance(v, bool)}
    seen.discard("max_frame_late_ms")
    return [s for s in STAGES if s in seen] + sorted(seen - set(STAGES))


def call_summary(result: CallResult, stages: list[str]) -> dict[str, Any]:
    """One call's figures: phone side (turns, voice-to-voice, gaps) and gateway side (stages)."""
    phone = result.phone
    turns = [r for r in phone.replies if r.turn is not None]
    v2v = [v for r in turns if (v := r.voice_to_voice_ms) is not None]
    gaps = [g for r in phone.replies for g in r.gaps_ms]
    turn_rows = [m for m in result.metrics if "stt_ms" in m]
    return {
        "call_id": result.call_id,
        "voice": phone.voice,
        "start_delay_s": phone.start_delay_s,
        "turns": len(phone.lines) - phone.backchannels,
        "answered": len(v2v),
        "voice_to_voice_ms": {**_spread(v2v), "each": [round(v) for v in v2v]},
        "gaps_over_40ms": sum(1 for g in gaps if g > GAP_MS),
        "worst_gap_ms": max(gaps, default=0.0),
        "greeting_worst_gap_ms": max(phone.replies[0].gaps_ms, default=0.0) if phone.replies else 0.0,
        "agent_frames_over_caller": sum(r.frames_over_caller for r in phone.replies),
        "clears": sum(r.clears for r in phone.replies),
        "marks_echoed": phone.marks_echoed,
        "max_frame_late_ms": max(result.late_ms, default=0),
        "gateway_stages_ms": {s: [m[s] for m in turn_rows if s in m] for s in stages},
        "replies": [
            {"turn": r.turn, "voice_to_voice_ms": None if (v := r.voice_to_voice_ms) is None else round(v),
             "frames": r.frames, "gaps_ms": r.gaps_ms, "frames_over_caller": r.frames_over_caller, "clears": r.clears}
            for r in phone.replies
        ],
        "error": phone.error,
    }


def failures(summary: dict[str, Any], *, gap_ms: float = GAP_MS, p95_ms: float = P95_MS) -> list[str]:
    """Why a level is not real time (empty when it is): a turn unanswered, a gap over 40 ms heard
    at the phone or recorded by the gateway, or voice-to-voice p95 over 2.5 s."""
    reasons = []
    if summary["answered"] < summary["turns"]:
        reasons.append(f"{summary['turns'] - summary['answered']} of {summary['turns']} turns unanswered")
    if summary["worst_gap_ms"] > gap_ms:
        reasons.append(f"{summary['gaps_over_40ms']} gap(s) > {gap_ms:.0f} ms heard, worst {summary['worst_gap_ms']:.0f} ms")
    if summary["max_frame_late_ms"] > gap_ms:
        reasons.append(f"gateway max_frame_late_ms {summary['max_frame_late_ms']}")
    p95 = summary["voice_to_voice_ms"]["p95"]
    if p95 is None or p95 > p95_ms:
        reasons.append(f"voice-to-voice p95 {fmt(p95)} ms > {p95_ms:.0f} ms")
    return reasons


def summarise(results: list[CallResult]) -> dict[str, Any]:
    """Per call and overall: turns answered, voice-to-voice p50/p95, gaps heard, gateway stages."""
    stages = _stage_names(results)
    per_call = [call_summary(r, stages) for r in results]
    v2v = [v for c in per_call for v in c["voice_to_voice_ms"]["each"]]
    all_stages = {s: [v for c in per_call for v in c["gateway_stages_ms"][s]] for s in stages}
    summary: dict[str, Any] = {
        "calls": len(results),
        "turns": sum(c["turns"] for c in per_call),
        "answered": sum(c["answered"] for c in per_call),
        "voice_to_voice_ms": _spread(v2v),
        "gaps_over_40ms": sum(c["gaps_over_40ms"] for c in per_call),
        "worst_gap_ms": max((c["worst_gap_ms"] for c in per_call), default=0.0),
        "max_frame_late_ms": max((c["max_frame_late_ms"] for c in per_call), default=0),
        "gateway_stage_p50_ms": {s: pct(v, 50) for s, v in all_stages.items()},
        "gateway_stage_max_ms": {s: max(v, default=None) for s, v in all_stages.items()},
        "per_call": per_call,
    }
    summary["failures"] = failures(summary)
    summary["realtime"] = not summary["failures"]
    return summary


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


_SHORT = {"end_of_turn_ms": "eot", "stt_ms": "stt", "llm_first_token_ms": "llm", "tts_first_audio_ms": "tts",
          "voice_to_voice_ms": "gw v2v", "held_ms": "held"}


def table(summary: dict[str, Any]) -> str:
    """A readable table: one row per call, then the whole level and its verdict."""
    stages = list(summary["gateway_stage_p50_ms"])
    names = [_SHORT.get(s, s.removesuffix("_ms")) for s in stages]
    head = (f"{'call':>4} {'voice':<14} {'start':>6} {'answered':>8} {'v2v p50':>8} {'p95':>6} {'max':>6} "
            f"{'gaps>40':>7} {'worst':>6} {'gw late':>7}  " + " ".join(f"{n:>6}" for n in names))
    rows = [head]
    for i, c in enumerate(summary["per_call"], 1):
        v = c["voice_to_voice_ms"]
        stage_p50 = [fmt(pct(c["gateway_stages_ms"][s], 50)) for s in stages]
        rows.append(
            f"{i:>4} {c['voice'][:14]:<14} {c['start_delay_s']:>5.1f}s {c['answered']:>4}/{c['turns']:<3} "
            f"{fmt(v['p50']):>8} {fmt(v['p95']):>6} {fmt(v['max']):>6} {c['gaps_over_40ms']:>7} "
            f"{fmt(c['worst_gap_ms']):>6} {c['max_frame_late_ms']:>7}  " + " ".join(f"{x:>6}" for x in stage_p50)
            + (f"  ({c['error']})" if c["error"] else "")
        )
    v = summary["voice_to_voice_ms"]
    rows.append(
        f"{'all':>4} {'':<14} {'':>6} {summary['answered']:>4}/{summary['turns']:<3} {fmt(v['p50']):>8} "
        f"{fmt(v['p95']):>6} {fmt(v['max']):>6} {summary['gaps_over_40ms']:>7} {fmt(summary['worst_gap_ms']):>6} "
        f"{summary['max_frame_late_ms']:>7}  " + " ".join(f"{fmt(x):>6}" for x in summary["gateway_stage_p50_ms"].values())
    )
    verdict = "real time" if summary["realtime"] else "NOT real time: " + "; ".join(summary["failures"])
    rows.append(f"verdict: {verdict}")
    return "\n".join(rows)
