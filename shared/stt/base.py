"""The speech-to-text seam: one Protocol, one module per engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Transcription:
    """What an engine heard in one utterance, with the signals used to drop hallucinations."""

    text: str
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0


class STT(Protocol):
    """Transcribes one caller utterance.

    `audio` is mono float32 in [-1, 1] at 16 kHz (Whisper's rate: never hand it 8 kHz audio).
    Implementations run inference off the event loop and load their model once per process.
    """

    async def transcribe(self, audio: np.ndarray, *, prompt: str | None = None) -> Transcription: ...

    def warmup(self) -> None: ...
