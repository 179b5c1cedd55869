"""faster-whisper on phone-band speech: the words survive μ-law, 8 kHz and resampling."""

from __future__ import annotations

import re

import numpy as np
import pytest

from shared.settings import Settings
from shared.stt import build_stt
from shared.stt.faster_whisper import FasterWhisperSTT
from tests.integration.conftest import through_phone

pytestmark = pytest.mark.models


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


async def test_phone_band_speech_is_transcribed(stt: FasterWhisperSTT, espeak) -> None:
    signal, rate = espeak("I would like to book an appointment for Tuesday morning.")
    result = await stt.transcribe(through_phone(signal, rate))
    assert {"appointment", "tuesday", "morning"} <= _words(result.text)
    assert result.no_speech_prob < 0.6


async def test_silence_gives_no_text(stt: FasterWhisperSTT) -> None:
    result = await stt.transcribe(np.zeros(16000, dtype=np.float32))
    assert result.text == ""
    assert result.no_speech_prob > 0.6


async def test_prompt_is_accepted_and_factory_builds_the_default(stt: FasterWhisperSTT, espeak) -> None:
    signal, rate = espeak("Bright Smile Dental, good morning.")
    result = await stt.transcribe(through_phone(signal, rate), prompt="Bright Smile Dental")
    assert "smile" in _words(result.text)
    built = build_stt(Settings(_env_file=None))
    assert isinstance(built, FasterWhisperSTT) and built.model_name == stt.model_name
