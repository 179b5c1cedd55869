"""Synthetic callee speech for the simulator and tests: text → phone-band μ-law 8 kHz."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import wave

import numpy as np

from shared.audio import int16_to_float32, phone_line


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak_ulaw(text: str, *, voice: str = "en-us", words_per_minute: int = 140) -> bytes:
    """Speak `text` with espeak-ng and pass it through a telephone line (300–3400 Hz, μ-law 8 kHz)."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-g", "3", "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    return phone_line(trim_silence(int16_to_float32(samples), rate), rate)


def trim_silence(audio: np.ndarray, rate: int, *, threshold: float = 0.01) -> np.ndarray:
    """Cut the synthesiser's leading and trailing silence, so "last caller audio" means last speech."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    pad = rate // 50  # keep 20 ms either side: soft consonants sit near the threshold
    return audio[max(0, loud[0] - pad) : loud[-1] + pad]


# Played 9 % fast: the callee's Piper voice sounds higher and brisker than the agent's same voice.
CALLER_PITCH = 1.09


async def synthesize_caller(text: str, *, engine: str = "piper") -> bytes:
    """The callee's voice: Piper (clear enough for Whisper, pitched up to differ from the agent's)
    or espeak-ng (robotic, a harder test for STT)."""
    if engine == "espeak":
        return await asyncio.to_thread(espeak_ulaw, text)
    from shared.settings import Settings
    from shared.tts import build_tts

    tts = build_tts(Settings())
    chunks = [chunk async for chunk in tts.synthesize(text)]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    rate = round(tts.sample_rate * CALLER_PITCH)
    return phone_line(trim_silence(int16_to_float32(audio), rate), rate)
