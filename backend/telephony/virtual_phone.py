"""A virtual phone that speaks Twilio's Media Streams protocol exactly, from Twilio's side.

It is the callee of a simulated call (TELEPHONY_PROVIDER=simulator) and the caller in end-to-end
tests: it sends `connected`, `start` and a continuous 20 ms stream of μ-law `media` (silence between
lines, like a real line), plays the agent's audio on a real-time clock, echoes each `mark` once the
audio before it has played, honours `clear`, and sends `stop` when its script is done.

Besides a person's lines, the script can make it an answering machine (a greeting said at once, a
beep, then silence while it records), an IVR (a menu, then the keys the agent pressed, decoded from
the agent's audio), a caller who types keys (Media Streams `dtmf` events) or one who says nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import websockets

from shared import tones
from shared.audio import FRAME_BYTES, MULAW_SILENCE, PHONE_RATE, float32_to_ulaw, ulaw_to_float32

log = logging.getLogger(__name__)
FRAME_S = 0.02
AGENT_SILENT_S = 5.0
"""A callee who waits to be greeted speaks anyway after this long: longer than an outbound agent's own
wait for the callee to speak first (`VoicemailConfig.wait_for_callee_ms`, 2.5 s) plus its greeting's
synthesis, so the two never start talking at the same moment."""
SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES
KEY_TONE_MS = 100
"""A typed key's tone (when the caller's track carries them); the rest of `KeyPresses.gap_ms` is quiet."""
DTMF_POLL_S = 0.1
"""How often an IVR line decodes the agent's new audio while it waits for keys."""


# --- the script ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallerLine:
    """One thing the callee says: μ-law 8 kHz audio, its text (for reports), and when to say it."""

    text: str
    audio: bytes
    barge_in_after_ms: int | None = None
    """Speak this long after the agent starts talking (a barge-in) instead of waiting for silence."""
    speak_first: bool = False
    """Say it without waiting for the agent: at once when the stream starts (a first line), else
    straight after the line before. An answering machine's greeting, an IVR's menu."""
    expect_dtmf: str | None = None
    """An IVR prompt: after it, listen for the agent to press these keys (decoded from its audio since
    the prompt began) until they are heard or `dtmf_timeout_s` passes; then go on at once."""
    dtmf_timeout_s: float | None = None
    """None: the phone's `reply_timeout_s`."""


@dataclass(frozen=True)
class Beep:
    """An answering machine's beep; then it records: silence until the agent hangs up or `record_s`."""

    hz: float = 1000.0
    ms: int = 500
    record_s: float = 30.0

    @property
    def text(self) -> str:
        return f"(beep {self.hz:g} Hz)"


@dataclass(frozen=True)
class KeyPresses:
    """The caller types keys: one Media Streams `dtmf` event per key, `gap_ms` apart.

    Twilio strips the tones from the audio it forwards and sends events instead; `tones` puts them on
    the caller's track as well, for a gateway that should ignore (or hear) them there.
    """

    digits: str
    gap_ms: int = 150
    tones: bool = False
    speak_first: bool = False

    @property
    def text(self) -> str:
        return f"(keys {self.digits})"


@dataclass(frozen=True)
class Silence:
    """The caller says nothing for `seconds` (the line carries silence), or until the agent hangs up."""

    seconds: float

    @property
    def text(self) -> str:
        return f"(silence {self.seconds:g} s)"


ScriptLine = CallerLine | Beep | KeyPresses | Silence


def _at_once(line: ScriptLine) -> bool:
    """Whether a line starts without waiting for the agent's answer to the one before it."""
    if isinstance(line, CallerLine):
        return line.speak_first or line.barge_in_after_ms is not None
    return isinstance(line, Beep) or (isinstance(line, KeyPresses) and line.speak_first)


# --- the report ---------------------------------------------------------------------------------


@dataclass
class TurnTiming:
    """What one caller line produced, measured as Twilio would see it."""

    text: str
    speech_end: float
    first_agent_frame: float | None = None

    @property
    def voice_to_voice_ms(self) -> float | None:
        if self.first_agent_frame is None:
            return None
        return (self.first_agent_frame - self.speech_end) * 1000


@dataclass
class AgentUtterance:
    """One stretch of agent audio as the callee hears it: from its first frame until it fell silent
    (its audio played out) for the phone's quiet time. An idle re-prompt is one of these."""

    started_at: float
    """Clock time its first frame arrived (and began to play)."""
    offset: int
    """Where it begins in `PhoneReport.agent_audio` (bytes, one per sample)."""
    ends_at: float
    """Clock time its audio has finished playing (so far)."""
    frames: int = 0


@dataclass
class BeepPlayed:
    """When the answering machine's beep finished, and what of the agent's audio came after it."""

    hz: float
    ended_at: float
    """Clock time the beep's last frame went out."""
    agent_offset: int
    """`len(agent_audio)` at that moment: agent audio from this offset on was sent after the beep."""
    first_agent_frame: float | None = None
    """Clock time of the first agent frame received after the beep."""


@dataclass(frozen=True)
class DtmfHeard:
    """The keys an IVR line decoded from the agent's audio."""

    prompt: str
    expected: str
    heard: str

    @property
    def matched(self) -> bool:
        return self.heard == self.expected


@dataclass
class PhoneReport:
    """Everything the virtual phone saw on the socket."""

    stream_sid: str
    frames_received: int = 0
    agent_audio: bytearray = field(default_factory=bytearray)
    marks_echoed: list[str] = field(default_factory=list)
    clears: int = 0
    turns: list[TurnTiming] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    max_frame_gap_ms: float = 0.0
    """Largest gap between two consecutive agent frames inside one reply (stall detector)."""
    started_at: float | None = None
    """Clock time the `start` message went out: the call's zero."""
    utterances: list[AgentUtterance] = field(default_factory=list)
    beeps: list[BeepPlayed] = field(default_factory=list)
    keys_sent: str = ""
    """Every key sent as a `dtmf` event, in order."""
    dtmf_heard: list[DtmfHeard] = field(default_factory=list)
    hangup_at: float | None = None
    """Clock time the agent closed the stream; None when the phone hung up first."""


# --- the phone ----------------------------------------------------------------------------------


class VirtualPhone:
    """Runs one Media Stream against the gateway until the script is spoken and answered."""

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: dict[str, str],
        lines: Sequence[ScriptLine],
        headers: dict[str, str] | None = None,
        call_sid: str | None = None,
        account_sid: str = "AC" + "0" * 32,
        quiet_ms: int = 900,
        reply_timeout_s: float = 20.0,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.custom_parameters = custom_parameters
        self.lines = list(lines)
        self.headers = headers or {}
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.account_sid = account_sid
        self.quiet_s = quiet_ms / 1000
        self.reply_timeout_s = reply_timeout_s
        self.on_event = on_event or (lambda kind, data: None)
        self.clock = clock
        self.report = PhoneReport(stream_sid="MZ" + secrets.token_hex(16))
        self._outgoing = bytearray()
        self._speech_done = asyncio.Event()
        self._play_until = 0.0  # when the agent audio received so far will have finished playing
        self._last_agent_frame = 0.0
        self._pending_marks: list[tuple[float, str]] = []
        self._agent_started = asyncio.Event()
        self._sequence = 0
        self._hanging_up = False
        self._ws: Any = None

    # --- public ------------------------------------------------------------------------------------
    async def run(self) -> PhoneReport:
        """Connect, speak the script, wait for the last answer, hang up; returns what was seen."""
        async with websockets.connect(self.url, additional_headers=self.headers, max_size=2**22) as ws:
            self._ws = ws
            await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            self.report.started_at = self.clock()
            await self._send({
                "event": "start",
                "streamSid": self.report.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.report.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            })
            sender = asyncio.create_task(self._sender())
            receiver = asyncio.create_task(self._receiver())
            try:
                await self._script(receiver)
                if not receiver.done():
                    self._hanging_up = True
                    with contextlib.suppress(websockets.ConnectionClosed):  # the agent may hang up first
                        await self._send({"event": "stop", "streamSid": self.report.stream_sid,
                                          "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
            finally:
                self._hanging_up = self._hanging_up or not receiver.done()
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await sender
                await ws.close()
                with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                    await asyncio.wait_for(receiver, 5)
            self.report.close_code = ws.close_code
            self.report.close_reason = ws.close_reason
        return self.report

    # --- script ------------------------------------------------------------------------------------
    async def _script(self, receiver: asyncio.Task[None]) -> None:
        """Each line waits for the agent's answer to fall silent, or barges into it when told to.

        A first line waits for the agent's greeting unless it speaks first; a line said at once
        (`_at_once`) follows the one before without waiting. After its sound, a beep records, an IVR
        prompt listens for keys and silence is only waiting: none of them waits for an answer.
        """
        for index, line in enumerate(self.lines):
            if receiver.done():
                return
            if isinstance(line, (CallerLine, KeyPresses)) and not _at_once(line) and index == 0:
                await self._wait_quiet(receiver, first=True)  # the agent greets first
            elif isinstance(line, CallerLine) and line.barge_in_after_ms is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._agent_started.wait(), self.reply_timeout_s)
                await asyncio.sleep(line.barge_in_after_ms / 1000)
            self._agent_started.clear()
            if isinstance(line, Beep):
                await self._beep(line, receiver)
                continue
            if isinstance(line, Silence):
                self.on_event("caller", {"text": line.text})
                await asyncio.wait([receiver], timeout=line.seconds)
                continue
            offset = len(self.report.agent_audio)
            timing = await (self._say(line) if isinstance(line, CallerLine) else self._press(line))
            self.on_event("caller", {"text": line.text})
            if isinstance(line, CallerLine) and line.expect_dtmf is not None:
                await self._listen_for_keys(line, line.expect_dtmf, offset, receiver)
                continue
            if index + 1 < len(self.lines) and _at_once(self.lines[index + 1]):
                continue
            await self._wait_quiet(receiver)
            if timing.voice_to_voice_ms is not None:
                self.on_event("turn", {"text": line.text, "voice_to_voice_ms": round(timing.voice_to_voice_ms)})

    async def _play(self, audio: bytes) -> None:
        """Put μ-law audio on the caller's track; returns once its last frame has gone out."""
        self._speech_done.clear()
        self._outgoing += audio
        await self._speech_done.wait()

    async def _say(self, line: CallerLine) -> TurnTiming:
        await self._play(line.audio)
        return self._turn(line.text)

    def _turn(self, text: str) -> TurnTiming:
        timing = TurnTiming(text=text, speech_end=self.clock())
        self.report.turns.append(timing)
        return timing

    async def _press(self, line: KeyPresses) -> TurnTiming:
        """One `dtmf` event per key, as Twilio sends them once a key is released."""
        for index, digit in enumerate(line.digits):
            if index:
                await asyncio.sleep(max(0, line.gap_ms - (KEY_TONE_MS if line.tones else 0)) / 1000)
            if line.tones:
                await self._play(float32_to_ulaw(tones.dtmf_tones(digit, tone_ms=KEY_TONE_MS, gap_ms=0)))
            await self._send({"event": "dtmf", "streamSid": self.report.stream_sid,
                              "dtmf": {"track": "inbound_track", "digit": digit}})
            self.report.keys_sent += digit
        return self._turn(line.text)

    async def _beep(self, line: Beep, receiver: asyncio.Task[None]) -> None:
        """Play the beep, note when it ended, then record in silence (until hung up or `record_s`)."""
        await self._play(float32_to_ulaw(tones.beep(line.hz, line.ms)))
        self.report.beeps.append(BeepPlayed(hz=line.hz, ended_at=self.clock(),
                                            agent_offset=len(self.report.agent_audio)))
        self.on_event("caller", {"text": line.text})
        await asyncio.wait([receiver], timeout=line.record_s)

    async def _listen_for_keys(
        self, line: CallerLine, expected: str, offset: int, receiver: asyncio.Task[None]
    ) -> None:
        """Decode the agent's audio since the prompt began until the expected number of keys is heard
        and has played out, or the line's timeout passes."""
        deadline = self.clock() + (line.dtmf_timeout_s or self.reply_timeout_s)
        heard, decoded_to = "", -1
        while not receiver.done():
            size = len(self.report.agent_audio)
            if size != decoded_to:
                heard = tones.decode_dtmf(ulaw_to_float32(bytes(self.report.agent_audio[offset:])), PHONE_RATE)
                decoded_to = size
            now = self.clock()
            if (len(heard) >= len(expected) and now >= self._play_until) or now >= deadline:
                break
            await asyncio.sleep(DTMF_POLL_S)
        self.report.dtmf_heard.append(DtmfHeard(prompt=line.text, expected=expected, heard=heard))
        self.on_event("dtmf_heard", {"expected": expected, "heard": heard})

    async def _wait_quiet(self, receiver: asyncio.Task[None], *, first: bool = False) -> None:
        """Wait until the agent has answered and fallen silent (its audio played out)."""
        deadline = self.clock() + self.reply_timeout_s
        heard_since = self.clock()
        answered = False
        while self.clock() < deadline and not receiver.done():
            now = self.clock()
            if self._last_agent_frame >= heard_since:
                answered = True
            quiet = now >= self._play_until and now - self._last_agent_frame >= self.quiet_s
            if quiet and (answered or (first and now - heard_since > AGENT_SILENT_S)):
                return
            await asyncio.sleep(0.02)

    # --- wire --------------------------------------------------------------------------------------
    async def _send(self, message: dict[str, Any]) -> None:
        self._sequence += 1
        if message["event"] != "connected":
            message = {"sequenceNumber": str(self._sequence), **message}
        await self._ws.send(json.dumps(message))

    async def _sender(self) -> None:
        """Twilio sends the caller's track continuously, one 20 ms frame at a time, in real time."""
        try:
            with contextlib.suppress(websockets.ConnectionClosed):  # the far end hung up: the line is dead
                await self._send_frames()
        finally:
            self._speech_done.set()  # nobody waits for words that can no longer be said

    async def _send_frames(self) -> None:
        start = self.clock()
        chunk = 0
        while True:
            now = self.clock()
            for due, name in list(self._pending_marks):
                if due <= now:
                    self._pending_marks.remove((due, name))
                    await self._echo_mark(name)
            if self._outgoing:
                payload = bytes(self._outgoing[:FRAME_BYTES]).ljust(FRAME_BYTES, bytes([MULAW_SILENCE]))
                del self._outgoing[:FRAME_BYTES]
                if not self._outgoing:
                    self._speech_done.set()
            else:
                payload = SILENCE_FRAME
            chunk += 1
            await self._send({
                "event": "media",
                "streamSid": self.report.stream_sid,
                "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(chunk * 20),
                          "payload": base64.b64encode(payload).decode()},
            })
            next_tick = start + chunk * FRAME_S
            await asyncio.sleep(max(0.0, next_tick - self.clock()))

    async def _echo_mark(self, name: str) -> None:
        self.report.marks_echoed.append(name)
        await self._send({"event": "mark", "streamSid": self.report.stream_sid, "mark": {"name": name}})

    async def _receiver(self) -> None:
        try:
            async for raw in self._ws:
                await self._on_message(json.loads(raw))
        finally:
            if not self._hanging_up:
                self.report.hangup_at = self.clock()  # the agent ended the call

    async def _on_message(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        now = self.clock()
        if event == "media":
            self._on_media(base64.b64decode(message["media"]["payload"]), now)
        elif event == "mark":
            # Echoed once everything received before it has played.
            self._pending_marks.append((self._play_until, message["mark"]["name"]))
        elif event == "clear":
            self.report.clears += 1
            self._play_until = now
            if self.report.utterances:
                self.report.utterances[-1].ends_at = min(self.report.utterances[-1].ends_at, now)
            # Twilio returns the marks of the audio it discarded.
            for _, name in sorted(self._pending_marks):
                await self._echo_mark(name)
            self._pending_marks.clear()

    def _on_media(self, audio: bytes, now: float) -> None:
        report = self.report
        if self._last_agent_frame and now - self._last_agent_frame < 1.0:
            report.max_frame_gap_ms = max(report.max_frame_gap_ms, (now - self._last_agent_frame) * 1000)
        utterances = report.utterances
        if not utterances or now - utterances[-1].ends_at >= self.quiet_s:
            utterances.append(AgentUtterance(started_at=now, offset=len(report.agent_audio), ends_at=now))
        report.frames_received += 1
        report.agent_audio += audio
        self._last_agent_frame = now
        self._play_until = max(self._play_until, now) + len(audio) / PHONE_RATE
        utterances[-1].frames += 1
        utterances[-1].ends_at = self._play_until
        self._agent_started.set()
        for turn in report.turns:
            if turn.first_agent_frame is None and now >= turn.speech_end:
                turn.first_agent_frame = now
        for beep in report.beeps:
            if beep.first_agent_frame is None:
                beep.first_agent_frame = now
