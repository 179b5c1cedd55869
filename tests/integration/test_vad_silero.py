"""Silero VAD on espeak speech through the phone line, and the turn detector driven by it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from shared.vad.silero import SileroVAD
from tests.integration.conftest import through_phone
from voice_gateway.turns import SpeechStarted, TurnConfig, TurnDetector, TurnEnded

pytestmark = pytest.mark.models


def _probs(vad: SileroVAD, signal: np.ndarray) -> np.ndarray:
    n = signal.size // 512
    return np.array([vad.speech_prob(signal[i * 512 : (i + 1) * 512]) for i in range(n)])


def test_silero_detects_speech_and_not_silence(espeak) -> None:
    signal, rate = espeak("Hello, I am calling about my order.")
    speech = _probs(SileroVAD(), through_phone(signal, rate))
    assert (speech > 0.5).mean() > 0.4
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(16000 * 2) * 0.003).astype(np.float32)
    assert (_probs(SileroVAD(), hiss) > 0.5).mean() == 0.0


def test_turn_detector_with_silero_finds_one_turn(espeak) -> None:
    signal, rate = espeak("Can I move my appointment to Thursday?")
    caller = through_phone(signal, rate)
    quiet = np.zeros(16000, dtype=np.float32)
    stream = np.concatenate([quiet, caller, quiet])
    detector = TurnDetector(SileroVAD(), TurnConfig(end_of_turn_silence_ms=500))
    events = [e for i in range(0, stream.size, 320) for e in detector.feed(stream[i : i + 320])]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, TurnEnded)]
    assert len(starts) == 1 and len(ends) == 1
    assert abs(starts[0].onset_sample - 16000) < 16000 * 0.3
    assert ends[0].audio.size > caller.size * 0.7


def test_speech_after_a_minute_of_silence_is_a_full_turn(espeak: Callable[[str], tuple[np.ndarray, int]]) -> None:
    """Silero's scores sink over long silence; the detector's periodic reset keeps late speech heard."""
    from voice_gateway.turns import TurnConfig, TurnDetector

    signal, rate = espeak("How much does a cleaning cost?")
    speech = through_phone(signal, rate)
    audio16 = np.concatenate([np.zeros(16000 * 60, np.float32), speech, np.zeros(16000, np.float32)])
    detector = TurnDetector(SileroVAD(), TurnConfig(min_speech_ms=150, end_of_turn_silence_ms=500))
    events = [e for i in range(0, audio16.size, 320) for e in detector.feed(audio16[i : i + 320])]
    started = next(e for e in events if isinstance(e, SpeechStarted))
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert len(ended) == 1, "the sentence is one turn"
    assert (ended[0].speech_end_sample - started.onset_sample) / 16000 > 1.2
