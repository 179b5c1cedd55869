"""A virtual phone that speaks Twilio's Media Streams protocol exactly, from Twilio's side.

It is the callee of a simulated call (TELEPHONY_PROVIDER=simulator) and the caller in end-to-end
tests: it sends `connected`, `start` and a continuous 20 ms stream of μ-law `media` (silence between
lines, like a real line), plays the agent's audio on a real-time clock, echoes each `mark` once the
audio before it has played, honours `clear`, and sends `stop` when its script is done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets

from shared.audio import FRAME_BYTES, MULAW_SILENCE

log = logging.getLogger(__name__)
FRAME_S = 0.02
SILENCE_FRAME = bytes([MULAW_SILENCE]) * FRAME_BYTES


@dataclass(frozen=True)
class CallerLine:
    """One thing the callee says: μ-law 8 kHz audio, its text (for reports), and when to say it."""

    text: str
    audio: bytes
    barge_in_after_ms: int | None = None
    """Speak this long after the agent starts talking (a barge-in) instead of waiting for silence."""


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


class VirtualPhone:
    """Runs one Media Stream against the gateway until the script is spoken and answered."""

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: dict[str, str],
        lines: list[CallerLine],
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
        self.lines = lines
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
        self._ws: Any = None

    # --- public ------------------------------------------------------------------------------------
    async def run(self) -> PhoneReport:
        """Connect, speak the script, wait for the last answer, hang up; returns what was seen."""
        async with websockets.connect(self.url, additional_headers=self.headers, max_size=2**22) as ws:
            self._ws = ws
            await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
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
                    with contextlib.suppress(websockets.ConnectionClosed):  # the agent may hang up first
                        await self._send({"event": "stop", "streamSid": self.report.stream_sid,
                                          "stop": {"accountSid": self.account_sid, "callSid": self.call_sid}})
            finally:
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
        """Each line waits for the agent's answer to fall silent, or barges into it when told to."""
        for index, line in enumerate(self.lines):
            if receiver.done():
                return
            if line.barge_in_after_ms is None:
                if index == 0:
                    await self._wait_quiet(receiver, first=True)  # the agent greets first
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._agent_started.wait(), self.reply_timeout_s)
                await asyncio.sleep(line.barge_in_after_ms / 1000)
            self._agent_started.clear()
            timing = await self._say(line)
            self.on_event("caller", {"text": line.text})
            if index + 1 < len(self.lines) and self.lines[index + 1].barge_in_after_ms is not None:
                continue
            await self._wait_quiet(receiver)
            if timing.voice_to_voice_ms is not None:
                self.on_event("turn", {"text": line.text, "voice_to_voice_ms": round(timing.voice_to_voice_ms)})

    async def _say(self, line: CallerLine) -> TurnTiming:
        self._speech_done.clear()
        self._outgoing += line.audio
        await self._speech_done.wait()
        timing = TurnTiming(text=line.text, speech_end=self.clock())
        self.report.turns.append(timing)
        return timing

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
            if quiet and (answered or (first and now - heard_since > 3.0)):
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
        async for raw in self._ws:
            message = json.loads(raw)
            event = message.get("event")
            now = self.clock()
            if event == "media":
                audio = base64.b64decode(message["media"]["payload"])
                if self._last_agent_frame and now - self._last_agent_frame < 1.0:
                    self.report.max_frame_gap_ms = max(
                        self.report.max_frame_gap_ms, (now - self._last_agent_frame) * 1000
                    )
                self.report.frames_received += 1
                self.report.agent_audio += audio
                self._last_agent_frame = now
                self._play_until = max(self._play_until, now) + len(audio) / 8000
                self._agent_started.set()
                for turn in self.report.turns:
                    if turn.first_agent_frame is None and now >= turn.speech_end:
                        turn.first_agent_frame = now
            elif event == "mark":
                # Echoed once everything received before it has played.
                self._pending_marks.append((self._play_until, message["mark"]["name"]))
            elif event == "clear":
                self.report.clears += 1
                self._play_until = now
                # Twilio returns the marks of the audio it discarded.
                for _, name in sorted(self._pending_marks):
                    await self._echo_mark(name)
                self._pending_marks.clear()
