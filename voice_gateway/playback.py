"""Outgoing audio: 20 ms μ-law frames paced in real time, with marks that prove what was played.

A caller who starts talking over the agent pauses it at once (`pause`: Twilio's buffer is cleared, the
audio it had not played yet is kept); if that was only "mm-hm", `resume` plays on from the exact frame
the caller stopped hearing; if it was an interruption, `clear` drops the rest.
"""

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


_Item = tuple[bytes, object] | _MarkItem


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
        self._queue: deque[_Item] = deque()
        self._wake = asyncio.Event()
        self._outstanding: dict[str, str] = {}  # wire name → mark name, sent and not echoed yet
        self._resent = 0
        self._taken_back: set[str] = set()
        # What went out and when the far end plays it (frames: their start; marks: when reached), until
        # played: what a pause takes back.
        self._in_flight: deque[tuple[float, _Item]] = deque()
        self._popped: _Item | None = None  # the item the pacer holds while it waits for its slot
        self._paused = False
        self._new_stretch = False
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

    @property
    def paused(self) -> bool:
        return self._paused

    def played_frames(self, tag: object) -> int:
        """Frames of `tag` the far end has played by now (sent, minus those still ahead of its clock)."""
        now = self._clock()
        ahead = sum(1 for start, item in self._in_flight if start > now and not isinstance(item, _MarkItem)
                    and item[1] == tag)
        return self.sent_by_tag.get(tag, 0) - ahead

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

    def acknowledge(self, wire_name: str) -> str | None:
        """Twilio echoed a mark: everything before it has played. Returns the mark's name (as pushed),
        or None for a mark we did not send or took back (a pause re-sends it under a new wire name)."""
        return self._outstanding.pop(wire_name, None)

    async def clear(self) -> list[str]:
        """Barge-in: drop queued audio, tell Twilio to drop its buffer; returns marks that won't play."""
        dropped = [item.name for item in self._queue if isinstance(item, _MarkItem)]
        dropped += sorted(self._outstanding.values())
        self._queue.clear()
        self._queued_frames = 0
        self._cleared += 1  # a frame the pacer popped before this and is still waiting to send is dropped
        self._popped = None
        self._outstanding.clear()
        self._taken_back.clear()
        self._in_flight.clear()
        if self._paused:  # the pause cleared the line already, and nothing was sent since
            self._paused = False
            return dropped
        await self._send(clear_message(self._stream_sid))
        if self._tap is not None:
            self._tap.cut()
        return dropped

    async def pause(self) -> None:
        """The caller may be interrupting: stop the agent's audio now, keep what was not heard.

        Twilio drops its buffer (`clear`); the frames and marks it had not reached go back to the front of
        the queue, in order, with the frame the pacer held, and nothing is sent until `resume` or `clear`.
        A mark already reached is left to echo. Taken-back frames no longer count as sent (`sent_by_tag`).
        """
        if self._paused:
            return
        now = self._clock()
        back: list[_Item] = []
        for start, item in self._in_flight:
            if isinstance(item, _MarkItem):
                if start > now:
                    back.append(item)
                    self._taken_back.add(item.name)
                    self._outstanding = {w: n for w, n in self._outstanding.items() if n != item.name}
            elif start >= now:  # a frame already playing counts as heard
                back.append(item)
                self.sent_by_tag[item[1]] -= 1
        if self._popped is not None:
            back.append(self._popped)
            self._popped = None
        self._queue.extendleft(reversed(back))
        self._queued_frames += sum(1 for item in back if not isinstance(item, _MarkItem))
        self._in_flight.clear()
        self._cleared += 1  # the pacer's held frame is in the queue again: it drops its copy
        self._paused = True
        self._new_stretch = True  # the silence of the pause is not a stall
        self._play_end = now
        await self._send(clear_message(self._stream_sid))
        if self._tap is not None:
            self._tap.cut()

    def resume(self) -> None:
        """Play on from where `pause` stopped (the caller only said "mm-hm")."""
        if self._paused:
            self._paused = False
            self._wake.set()

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
            if not self._queue or self._paused:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._new_stretch:
                self._new_stretch, stretch = False, None
            item = self._queue.popleft()
            if isinstance(item, _MarkItem):
                wire = item.name
                if item.name in self._taken_back:
                    # Sent before and taken back by a pause: a late echo of the first one must not count.
                    self._taken_back.discard(item.name)
                    self._resent += 1
                    wire = f"{item.name}~{self._resent}"
                self._outstanding[wire] = item.name
                self._in_flight.append((play_end, item))
                await self._send(mark_message(self._stream_sid, wire))
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
                self._popped = item
                await asyncio.sleep(delay)
                if cleared != self._cleared:
                    continue  # `clear` or `pause` came while this frame waited: dropped, or queued again
                self._popped = None
            await self._send(media_message(self._stream_sid, frame))
            if self._tap is not None:
                self._tap.agent(frame)
            sent_at = self._clock()
            start = max(play_end, sent_at)
            play_end = self._play_end = start + FRAME_S
            self._in_flight.append((start, item))
            while self._in_flight and self._in_flight[0][0] + FRAME_S < sent_at - 1.0:
                self._in_flight.popleft()  # played long ago
            self.frames_sent += 1
            self.sent_by_tag[tag] = self.sent_by_tag.get(tag, 0) + 1
            if self.on_frame_sent is not None:
                self.on_frame_sent(sent_at)
