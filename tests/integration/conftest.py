"""Real-model fixtures: each model is loaded once per test session; speech is made by espeak-ng at test time."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shared import audio
from shared.llm.llama_cpp import LlamaCppLLM
from shared.stt.faster_whisper import FasterWhisperSTT
from shared.tts.piper import PiperTTS
from tests.support.speech import gateway_hears

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def espeak(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[np.ndarray, int]]:
    """Synthesise `text` with espeak-ng; returns (float32 audio, rate). Skips if espeak-ng is absent."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    folder = tmp_path_factory.mktemp("espeak")
    counter = iter(range(10_000))

    def speak(text: str) -> tuple[np.ndarray, int]:
        path = folder / f"{next(counter)}.wav"
        subprocess.run([exe, "-v", "en-us", "-s", "160", "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return audio.int16_to_float32(pcm), rate

    return speak


def through_phone(signal: np.ndarray, rate: int) -> np.ndarray:
    """Caller audio as the gateway sees it: phone band, 8 kHz μ-law in 20 ms frames, back to 16 kHz."""
    return gateway_hears(audio.phone_line(signal, rate))


@pytest.fixture(scope="session")
def stt() -> FasterWhisperSTT:
    """The bundled tiny.en, loaded and warmed once."""
    engine = FasterWhisperSTT()
    engine.warmup()
    return engine


@pytest.fixture(scope="session")
def tts() -> PiperTTS:
    """The bundled joe-medium voice, loaded once."""
    return PiperTTS()


@pytest.fixture(scope="session")
def llm() -> LlamaCppLLM:
    """The embedded Qwen model, assembled into data/models once (kept between runs) and loaded once."""
    pytest.importorskip("llama_cpp")
    engine = LlamaCppLLM(cache_dir=REPO / "data" / "models")
    engine.warmup()
    return engine
