"""Realistic caller lines for `relayx bench`: 3–5 s sentences, several voices, a phone line's sound.

A benchmark is only as honest as its load (FIELD_NOTES): short, clean lines let the gateway finish
each stage before the next call needs the cores. These lines are what a caller says to a business
agent, spoken by the product's Piper voice at three speeds and pitches and by four espeak-ng voices,
then passed through a phone line: 8 kHz, 300–3400 Hz, pink noise at 20–25 dB SNR with a faint mains
hum, μ-law. Between lines the same line noise goes on (a live line is never digitally silent).

The set is deterministic (call c, line j always gets the same sentence and voice); the audio is
cached under the data dir keyed by a hash of text, voice and chain parameters, so reruns compare
like with like and do not re-synthesise (Piper samples its noise afresh, so a fresh synthesis would
differ a little).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import wave
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from backend.telephony.caller_voice import trim_silence
from shared.audio import PHONE_RATE, bandpass, float32_to_ulaw, int16_to_float32, resample

log = logging.getLogger(__name__)

MIN_S, MAX_S = 3.0, 5.0
"""A realistic caller line: long enough that STT and end of turn cost what they cost on a real call."""
SPEECH_DBFS = -20.0
"""Speech level on the line (RMS over the spoken part); the noise sits `snr_db` below it."""
NOISE_BED_S = 10.0
"""Length of the line-noise loop played between caller lines."""
CHAIN_VERSION = 2
"""Part of every cache key: bump it when the synthesis or the phone chain changes."""

SENTENCES = (
    "Hi, I'd like to book a teeth cleaning for sometime next week, please.",
    "Do you have anything open on Tuesday afternoon, maybe around three?",
    "My name is Sarah Johnson, and my date of birth is March fourth.",
    "How much does a cleaning cost if I don't have any dental insurance?",
    "What time do you open on Fridays, and are you open on the weekend?",
    "I need to move my appointment from Thursday to the following Monday.",
    "Can you tell me where your office is, and is there parking nearby?",
    "I think I have a cavity, my tooth has been hurting since yesterday.",
    "Could you book me in for the fourteenth of June at ten in the morning?",
    "Is it possible to bring my two kids along to the same appointment?",
    "How long does a regular cleaning take? I only have an hour at lunch.",
    "I'm calling to cancel my appointment on Wednesday, something came up.",
    "Do you take Delta Dental, or would I have to pay for it all myself?",
    "My callback number is five five five, one two three four.",
    "Yes, Tuesday at two thirty works for me, thank you.",
    "Sorry, could you repeat that? The line is a bit noisy on my end.",
    "I was there last month, and I think I left my glasses in the waiting room.",
    "Can I get a reminder by text message the day before my appointment?",
    "What should I bring with me for my first visit to your office?",
    "My son is seven. Do you see children at your practice?",
    "Are there any openings this Saturday morning, even a late cancellation?",
    "Okay, and how much would teeth whitening cost on top of the cleaning?",
    "I'd prefer a morning slot, because I work in the afternoons all week.",
    "That's great, please put me down for Monday the third at nine o'clock.",
)


@dataclass(frozen=True)
class Voice:
    """One simulated caller's voice and line.

    `rate` is Piper's speed (1.0 = as trained; its length_scale is 1/rate) or espeak-ng's words per
    minute; `pitch` resamples Piper's output as if it were at `pitch` × its rate (higher and brisker),
    so one Piper model gives several speakers, none of them the agent's own voice.
    """

    name: str
    engine: str  # "piper" or "espeak"
    espeak_voice: str = ""
    rate: float = 1.0
    pitch: float = 1.0
    snr_db: float = 22.0
    hum_db: float = -45.0
    """Mains hum (60 Hz and harmonics, before the band filter) relative to the speech level."""


VOICES = (
    Voice("piper-a", "piper", rate=0.7, pitch=1.05, snr_db=24.0),
    Voice("espeak-us-m3", "espeak", "en-us+m3", rate=170, snr_db=22.0),
    Voice("piper-b", "piper", rate=0.82, pitch=0.92, snr_db=21.0),
    Voice("espeak-gb-f2", "espeak", "en-gb+f2", rate=175, snr_db=25.0),
    Voice("piper-c", "piper", rate=0.75, pitch=1.15, snr_db=20.0),
    Voice("espeak-us-f4", "espeak", "en-us+f4", rate=170, snr_db=23.0),
    Voice("espeak-gb-m5", "espeak", "en-gb-x-rp+m5", rate=170, snr_db=20.0),
)


@dataclass(frozen=True)
class LineSpec:
    """What one caller line is: the words and who says them."""

    text: str
    voice: Voice


def call_script(call: int, lines: int, *, voices: tuple[Voice, ...] = VOICES) -> list[LineSpec]:
    """The lines call number `call` (0-based) says: its own voice, and sentences no other call of
    the first few uses at the same time (call c starts at sentence c × lines)."""
    voice = voices[call % len(voices)]
    return [LineSpec(SENTENCES[(call * lines + j) % len(SENTENCES)], voice) for j in range(lines)]


def cache_key(spec: LineSpec) -> str:
    """Hash of everything that shapes the audio: text, voice parameters, chain version."""
    blob = json.dumps({"text": spec.text, "voice": asdict(spec.voice), "chain": CHAIN_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def duration_s(ulaw: bytes) -> float:
    return len(ulaw) / PHONE_RATE


# --- synthesis ----------------------------------------------------------------------------------


def _espeak(text: str, voice: str, words_per_minute: float) -> tuple[np.ndarray, int]:
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(round(words_per_minute)), "-g", "2", "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav)) as reader:
        rate = reader.getframerate()
        samples = np.frombuffer(reader.readframes(reader.getnframes()), dtype=np.int16)
    return int16_to_float32(samples), rate


@lru_cache(maxsize=2)
def _piper_voice(path: str) -> Any:
    from piper import PiperVoice

    return PiperVoice.load(path)


def _piper(text: str, speed: float, voice_path: Path | None) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    from shared.tts.piper import bundled_voice_path

    voice = _piper_voice(str(voice_path or bundled_voice_path()))
    chunks = [c.audio_int16_array for c in voice.synthesize(text, syn_config=SynthesisConfig(length_scale=1 / speed))]
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    return int16_to_float32(audio), int(voice.config.sample_rate)


def _speak(text: str, voice: Voice, rate: float, voice_path: Path | None) -> np.ndarray:
    """The words at 8 kHz, float32, leading and trailing silence cut."""
    if voice.engine == "espeak":
        audio, sr = _espeak(text, voice.espeak_voice, rate)
    else:
        audio, sr = _piper(text, rate, voice_path)
        sr = round(sr * voice.pitch)  # played faster than made: a higher, brisker speaker
    return resample(trim_silence(audio, sr), sr, PHONE_RATE)


# --- the phone line -----------------------------------------------------------------------------


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def pink_noise(n: int, seed: int) -> np.ndarray:
    """Unit-RMS pink (1/f) noise: white noise shaped in the frequency domain."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(max(n, 2)))
    freqs = np.fft.rfftfreq(max(n, 2))
    freqs[0] = freqs[1]
    noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=max(n, 2))[:n]
    return (noise / (np.sqrt(np.mean(noise**2)) or 1.0)).astype(np.float32)


def hum(n: int, rate: int = PHONE_RATE, mains_hz: float = 60.0) -> np.ndarray:
    """Unit-RMS mains hum: 60 Hz and its odd harmonics (most of it falls below the phone band)."""
    t = np.arange(n) / rate
    wave_ = sum(np.sin(2 * np.pi * mains_hz * k * t) / k for k in (1, 3, 5, 7, 9))
    wave_ = np.asarray(wave_, dtype=np.float64)
    return (wave_ / (np.sqrt(np.mean(wave_**2)) or 1.0)).astype(np.float32)


def _db(value: float) -> float:
    return float(10 ** (value / 20))


def _unit(audio: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return (audio / rms).astype(np.float32) if rms > 0 else audio


def line_noise(n: int, voice: Voice, seed: int) -> np.ndarray:
    """The line's own sound at 8 kHz, in the phone band: pink noise `snr_db` under the speech level
    (measured in band, where the caller hears it) plus hum `hum_db` under it before the band filter
    (only its upper harmonics get through, as on a real line)."""
    level = _db(SPEECH_DBFS)
    pink = _unit(bandpass(pink_noise(n, seed), PHONE_RATE))
    mains = bandpass(hum(n), PHONE_RATE)
    return (level * (_db(-voice.snr_db) * pink + _db(voice.hum_db) * mains)).astype(np.float32)


def _speech_rms(audio: np.ndarray) -> float:
    """RMS over the 20 ms frames that carry speech (pauses would make a loud speaker look quiet)."""
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    if frames.size == 0:
        return 0.0
    energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = energy[energy > energy.max() * 0.1]
    return float(np.sqrt(np.mean(loud**2)))


def phone_chain(speech: np.ndarray, voice: Voice, seed: int) -> bytes:
    """8 kHz speech → 300–3400 Hz, set to the line's speech level, line noise added, μ-law."""
    speech = bandpass(speech, PHONE_RATE)
    rms = _speech_rms(speech)
    speech = speech * (_db(SPEECH_DBFS) / rms) if rms > 0 else speech
    return float32_to_ulaw(speech + line_noise(speech.size, voice, seed))


def noise_bed(voice: Voice) -> bytes:
    """What the line carries while the caller says nothing: the same noise and hum, μ-law, looped."""
    return float32_to_ulaw(line_noise(int(NOISE_BED_S * PHONE_RATE), voice, _seed("bed", voice.name)))


# --- building and caching -----------------------------------------------------------------------


def synthesize_line(spec: LineSpec, *, voice_path: Path | None = None) -> bytes:
    """Speak one line through the phone chain, nudging the speaking rate until it lasts 3–5 s."""
    rate = spec.voice.rate
    speech = _speak(spec.text, spec.voice, rate, voice_path)
    for _ in range(3):
        seconds = speech.size / PHONE_RATE
        if MIN_S + 0.1 <= seconds <= MAX_S - 0.1:
            break
        rate *= seconds / min(max(seconds, MIN_S + 0.5), MAX_S - 0.5)  # aim inside, away from the edges
        speech = _speak(spec.text, spec.voice, rate, voice_path)
    seconds = speech.size / PHONE_RATE
    if not MIN_S <= seconds <= MAX_S:
        log.warning("caller line %r (%s) lasts %.2f s, outside %s–%s s", spec.text, spec.voice.name,
                    seconds, MIN_S, MAX_S)
    return phone_chain(speech, spec.voice, _seed("line", cache_key(spec)))


def load_line(spec: LineSpec, cache_dir: Path, *, voice_path: Path | None = None) -> bytes:
    """The line's μ-law audio from the cache, synthesised and stored the first time."""
    path = cache_dir / f"{cache_key(spec)}.ulaw"
    if path.is_file():
        return path.read_bytes()
    audio = synthesize_line(spec, voice_path=voice_path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(audio)
    tmp.replace(path)
    return audio
