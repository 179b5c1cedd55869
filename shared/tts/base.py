"""The text-to-speech seam: one Protocol that streams audio, one module per engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

import numpy as np


class TTS(Protocol):
    """Synthesises one clause, yielding int16 mono chunks at `sample_rate` as soon as they exist."""

    sample_rate: int

    def synthesize(self, text: str, *, voice: str | None = None) -> AsyncIterator[np.ndarray]: ...

    def warmup(self) -> None: ...
