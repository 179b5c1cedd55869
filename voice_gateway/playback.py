"""Outgoing audio: 20 ms μ-law frames paced in real time, with marks that prove what was played."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from shared.audio import FRAME_MS
from voice_gateway.media_stream import clear_message, mark_message, media_message

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
# Frames sent ahead of the play clock. Twilio buffers what it receives, so the lead absorbs stalls
# (two cores saturated by four calls' inference) without a gap on the line; a barge-in `clear`
# empties Twilio's buffer at once, so the lead costs nothing there. 100 ms let one of two
# four-call bench runs hear a 293 ms gap; 200 ms kept both later runs gap-free.
LEAD_FRAMES = 10


@dataclass(frozen=True)
class _MarkItem:
    name: str


Send = Callable[[str], Awaitable[None]]


class PlaybackTap(Protocol):
    """Follows what goes out on the line, as the typed values (the call recorder)."""

    def agent(self, ulaw: bytes) -> None:
        """A 20 ms frame was sent."""

    def cut(self) -> None:
        """`clear` was sent: audio the line still held will not be played."""


class Player:
    """Paces one call's outgoing audio; `run()` is the pacer task, the rest is called by the session."""

    def __init__(
        self, send: Send, stream_sid: str, *, clock: Callable[[], float] = time.monotonic,
        tap: PlaybackTap | None = None,
    ) -> None:
        self._send = send
        self._tap = tap
        self._stream_sid = stream_sid
        self._clock = clock
        self._queue: deque[tuple[bytes, object] | _MarkItem] = deque()
        self._wake = asyncio.Event()
        self._outstanding: set[str] = set()
        self.frames_sent = 0
        self.sent_by_tag: dict[object, int] = {}
        """Frames sent per tag (the session tags frames by clause, to tell how much of one was heard)."""
        self.lateness_by_reply: dict[object, float] = {}
        """Longest gap the far end heard inside each reply because a frame came after the audio before it."""
        self.on_frame_sent: Callable[[float], None] | None = None
        self._play_end = 0.0
        self._queued_frames = 0  # frames in `_queue`, kept as a count: read from other threads
        self._cleared = 0

    def ahead_s(self) -> float:
        """Seconds of audio the far end will still play from now: sent but unplayed, plus queued.

        Safe from any thread (the compute gate reads it from its workers): two plain attribute reads.
        """
        return max(0.0, self._play_end - self._clock()) + self._queued_frames * FRAME_S

    @property
    def busy(self) -> bool:
        """Audio is queued or sent but not yet confirmed played (a mark is outstanding)."""
        return bool(self._queue) or bool(self._outstanding)

    def push(self, frames: list[bytes], tag: object = None) -> None:
        """Queue 20 ms frames (160 bytes of μ-law each)."""
        if frames:
            self._queue.extend((frame, tag) for frame in frames)
            self._queued_frames += len(frames)
            self._wake.set()

    def push_mark(self, name: str) -> None:
        """Queue a mark after the frames pushed so far."""
        self._queue.append(_MarkItem(name))
        self._wake.set()

    def acknowledge(self, name: str) -> bool:
        """Twilio echoed a mark: everything before it has played. False for a mark we did not send."""
        if name in self._outstanding:
            self._outstanding.discard(name)
            return True
        return False

    async def clear(self) -> list[str]:
        """Barge-in: drop queued audio, tell Twilio to drop its buffer; returns marks that won't play."""
        dropped = [item.name for item in self._queue if isinstance(item, _MarkItem)]
        dropped += sorted(self._outstanding)
        self._queue.clear()
        self._queued_frames = 0
        self._cleared += 1  # a frame the pacer popped before this and is still waiting to send is dropped
        self._outstanding.clear()
        await self._send(clear_message(self._stream_sid))
        if self._tap is not None:
            self._tap.cut()
        return dropped

    async def run(self) -> None:
        """Send each frame `LEAD_FRAMES` ahead of the moment the far end will play it.

        `play_end` is when everything sent so far finishes playing at the far end (it plays frames
        as they come, back to back). A frame of the same reply sent after `play_end` arrives too late:
        the caller hears a gap of that length, recorded as the reply's lateness. A new reply starts a
        new stretch: the silence before it is a turn, not a stall.
        """
        play_end = self._play_end = 0.0
        stretch: object = None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            item = self._queue.popleft()
            if isinstance(item, _MarkItem):
                self._outstanding.add(item.name)
                await self._send(mark_message(self._stream_sid, item.name))
                continue
            frame, tag = item
            self._queued_frames -= 1
            reply = tag[0] if isinstance(tag, tuple) else tag
            now = self._clock()
            if reply != stretch:
                stretch, play_end = reply, now
            elif now > play_end:
                late = now - play_end
                self.lateness_by_reply[reply] = max(self.lateness_by_reply.get(reply, 0.0), late)
            delay = play_end - LEAD_FRAMES * FRAME_S - now
            if delay > 0:
                cleared = self._cleared
                await asyncio.sleep(delay)
                if cleared != self._cleared:
                    continue  # `clear` came while this frame waited its slot: it must not follow the clear
            await self._send(media_message(self._stream_sid, frame))
            if self._tap is not None:
                self._tap.agent(frame)
            sent_at = self._clock()
            play_end = self._play_end = max(play_end, sent_at) + FRAME_S
            self.frames_sent += 1
            self.sent_by_tag[tag] = self.sent_by_tag.get(tag, 0) + 1
            if self.on_frame_sent is not None:
                self.on_frame_sent(sent_at)
