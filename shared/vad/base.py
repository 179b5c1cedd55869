"""The voice-activity seam: a per-call detector over fixed 16 kHz windows."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class VAD(Protocol):
    """Scores speech probability for consecutive windows of one call's audio.

    One instance per call (detectors keep recurrent state); `window_samples` at 16 kHz.
    """

    window_samples: int

    def speech_prob(self, window: np.ndarray) -> float: ...

    def reset(self) -> None: ...
