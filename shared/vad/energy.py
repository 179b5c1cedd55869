"""An RMS-threshold VAD: no model, no dependency; the fallback and the unit tests' detector."""

from __future__ import annotations

import math

import numpy as np


class EnergyVAD:
    """Maps a window's RMS level (dBFS) to a speech probability with a soft ramp.

    Phone audio is loud and compressed, so a fixed floor works; it cannot tell speech from music
    or steady noise, which is why Silero is the default.
    """

    window_samples: int = 512

    def __init__(
        self, threshold_dbfs: float = -40.0, ramp_db: float = 6.0, window_samples: int = 512
    ) -> None:
        self.threshold_dbfs = threshold_dbfs
        self.ramp_db = ramp_db
        self.window_samples = window_samples

    def speech_prob(self, window: np.ndarray) -> float:
        """Probability-like score: 0.5 at the threshold, towards 1 above it, towards 0 below."""
        if window.size == 0:
            return 0.0
        level = float(np.sqrt(np.mean(np.square(window, dtype=np.float64))))
        dbfs = 20.0 * math.log10(max(level, 1e-9))
        return 1.0 / (1.0 + math.exp(-(dbfs - self.threshold_dbfs) / (self.ramp_db / 4.0)))

    def reset(self) -> None:
        """Nothing to forget: each window is scored on its own."""
