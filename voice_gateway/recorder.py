"""Call recordings: a two-channel 8 kHz 16-bit WAV, caller left, agent right, written as the call goes.

Time runs on the caller's stream: Twilio sends caller audio continuously in real time (silence
included), so each caller chunk written also takes as many agent samples as were due to play in the
same span. Agent frames join a small "in flight" buffer when sent and leave it when their time comes;
a barge-in `clear` empties it, just as Twilio drops the audio it still holds — so the right channel
is what the caller actually heard, cut where it was cut.

The header's sizes are rewritten and the file flushed to the OS every second: if the gateway process
crashes the file holds everything up to the last second (no fsync: a power cut may lose what the OS
had not yet written, which is not worth a blocking disk sync per call per second on the event loop).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from shared.audio import PHONE_RATE, ulaw_to_pcm16
from shared.recording import recording_path

log = logging.getLogger(__name__)

CHANNELS = 2
SAMPLE_BYTES = 2
HEADER_BYTES = 44
# Agent audio sent but not yet heard is normally a few frames (the pacer's lead); if the caller's
# stream ever stalls, audio older than this is written against caller silence so nothing piles up.
MAX_IN_FLIGHT_S = 2.0


def _header(data_bytes: int) -> bytes:
    byte_rate = PHONE_RATE * CHANNELS * SAMPLE_BYTES
    return (
        b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, CHANNELS, PHONE_RATE, byte_rate, CHANNELS * SAMPLE_BYTES, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )


class CallRecorder:
    """Writes one call; the session feeds it caller audio, the pacer each agent frame and `clear` (a `PlaybackTap`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: BinaryIO | None = path.open("wb")
        self._file.write(_header(0))
        self._in_flight = np.zeros(0, dtype=np.int16)
        self._data_bytes = 0
        self._since_flush = 0

    @classmethod
    def open(cls, recordings_dir: Path, call_id: str) -> CallRecorder:
        return cls(recording_path(recordings_dir, call_id))

    @property
    def seconds(self) -> float:
        return self._data_bytes / (PHONE_RATE * CHANNELS * SAMPLE_BYTES)

    def caller(self, ulaw: bytes) -> None:
        """Caller audio as it arrives: written with the agent audio due in the same span."""
        left = np.frombuffer(ulaw_to_pcm16(ulaw), dtype=np.int16)
        n = left.shape[0]
        right = self._in_flight[:n]
        self._in_flight = self._in_flight[n:]
        if right.shape[0] < n:
            right = np.concatenate([right, np.zeros(n - right.shape[0], dtype=np.int16)])
        self._write(left, right)

    def agent(self, ulaw: bytes) -> None:
        """An agent frame was sent to the line: it plays once the caller audio before it has."""
        self._in_flight = np.concatenate([self._in_flight, np.frombuffer(ulaw_to_pcm16(ulaw), dtype=np.int16)])
        excess = self._in_flight.shape[0] - int(MAX_IN_FLIGHT_S * PHONE_RATE)
        if excess > 0:
            self._write(np.zeros(excess, dtype=np.int16), self._in_flight[:excess])
            self._in_flight = self._in_flight[excess:]

    def cut(self) -> None:
        """Barge-in: the line drops what it still held, so that audio was never heard."""
        self._in_flight = np.zeros(0, dtype=np.int16)

    def _write(self, left: np.ndarray, right: np.ndarray) -> None:
        if self._file is None:
            return
        frames = np.empty(left.shape[0] * 2, dtype="<i2")
        frames[0::2] = left
        frames[1::2] = right
        self._file.write(frames.tobytes())
        self._data_bytes += frames.nbytes
        self._since_flush += left.shape[0]
        if self._since_flush >= PHONE_RATE:
            self._sync()

    def _sync(self) -> None:
        """Rewrite the sizes in the header and hand the bytes to the OS (a process crash now loses nothing)."""
        assert self._file is not None
        end = self._file.tell()
        self._file.seek(0)
        self._file.write(_header(self._data_bytes))
        self._file.seek(end)
        self._file.flush()
        self._since_flush = 0

    def close(self) -> None:
        """Audio still in flight at hang-up was never played: it is dropped."""
        if self._file is None:
            return
        try:
            self._sync()
        finally:
            self._file.close()
            self._file = None
        log.info("recording %s: %.1f s", self.path, self.seconds)
