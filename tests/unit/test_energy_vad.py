"""shared.vad.energy: the dependency-free fallback detector."""

from __future__ import annotations

import numpy as np

from shared.settings import Settings
from shared.vad import build_vad
from shared.vad.energy import EnergyVAD


def test_energy_vad_scores_loud_windows_high_and_quiet_low() -> None:
    vad = EnergyVAD()
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(512) * 0.001).astype(np.float32)  # about -60 dBFS
    loud = (rng.standard_normal(512) * 0.1).astype(np.float32)  # about -20 dBFS
    assert vad.speech_prob(quiet) < 0.05
    assert vad.speech_prob(loud) > 0.95
    assert vad.speech_prob(np.zeros(512, np.float32)) < 0.01


def test_build_vad_returns_a_new_detector_per_call() -> None:
    settings = Settings(VAD_ENGINE="energy")
    first, second = build_vad(settings), build_vad(settings)
    assert isinstance(first, EnergyVAD) and first is not second
    assert first.window_samples == 512
