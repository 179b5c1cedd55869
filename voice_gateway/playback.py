"""Outgoing audio: 20 ms μ-law frames paced in real time, with marks that prove what was played."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from shared.audio import FRAME_MS
from voice_gateway.media_stream import clear_message, mark_message, media_message

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
# Frames sent ahead of the play clock. Twilio buffers what it receives, so a small lead absorbs
# event-loop jitter without starving the line, while a barge-in `clear` discards at most ~60 ms.
LEAD_FRAMES = 3


@dataclass(frozen=True)
class _MarkItem:
    name: str


Send = Callable[[str], Awaitable[None]]


class Player:
    """Paces one call's outgoing audio; `run()` is the pacer task, the rest is called by the session."""

    def __init__(self, send: Send, stream_sid: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self._stream_sid = stream_sid
        self._clock = clock
        self._queue: deque[tuple[bytes, object] | _MarkItem] = deque()
        self._wake = asyncio.Event()
        self._outstanding: set[str] = set()
        self.frames_sent = 0
        self.sent_by_tag: dict[object, int] = {}
        """Frames sent per tag (the session tags frames by clause, to tell how much of one was heard)."""
        self.max_lateness_s = 0.0
        """Largest delay of a frame past its slot in a continuous stretch (0 when never late)."""
        self.on_frame_sent: Callable[[float], None] | None = None

    @property
    def busy(self) -> bool:
        """Audio is queued or sent but not yet confirmed played (a mark is outstanding)."""
        return bool(self._queue) or bool(self._outstanding)

    def push(self, frames: list[bytes], tag: object = None) -> None:
        """Queue 20 ms frames (160 bytes of μ-law each)."""
        if frames:
            self._queue.extend((frame, tag) for frame in frames)
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
        self._outstanding.clear()
        await self._send(clear_message(self._stream_sid))
        return dropped

    async def run(self) -> None:
        """Send queued frames on a 20 ms clock that restarts whenever the queue ran dry."""
        next_slot: float | None = None
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
            now = self._clock()
            if next_slot is None or now - next_slot > FRAME_S:
                next_slot = now  # first frame of a stretch, or after an underrun: restart the clock
            else:
                self.max_lateness_s = max(self.max_lateness_s, now - next_slot - LEAD_FRAMES * FRAME_S)
            delay = next_slot - LEAD_FRAMES * FRAME_S - now
            if delay > 0:
                await asyncio.sleep(delay)
            frame, tag = item
            await self._send(media_message(self._stream_sid, frame))
            self.frames_sent += 1
            self.sent_by_tag[tag] = self.sent_by_tag.get(tag, 0) + 1
            if self.on_frame_sent is not None:
                self.on_frame_sent(self._clock())
            next_slot += FRAME_S
