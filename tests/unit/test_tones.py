"""shared.tones: DTMF both ways and the answering machine's beep, on phone audio as a call carries it
(μ-law, line noise), against the speech of the committed phone set and sung vowels. No models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared import audio, tones

RATE = 8000
PHONE_SET = Path(__file__).resolve().parent.parent / "data" / "phone_set"
SPEECH = [audio.ulaw_to_float32(p.read_bytes()) for p in sorted(PHONE_SET.glob("*.ulaw")) if "bed" not in p.name]
BEDS = [audio.ulaw_to_float32(p.read_bytes()) for p in sorted(PHONE_SET.glob("bed-*.ulaw"))]


def _line(signal: np.ndarray, *, snr_db: float | None = 20.0, seed: int = 0) -> np.ndarray:
    """`signal` as the far end hears it: white line noise at `snr_db` below its loud parts, then μ-law."""
    signal = np.asarray(signal, dtype=np.float32)
    if snr_db is not None:
        loud = signal[np.abs(signal) > 0.01]
        power = float(np.mean(loud**2)) if loud.size else 1e-4
        noise = np.random.default_rng(seed).normal(0, np.sqrt(power / 10 ** (snr_db / 10)), signal.size)
        signal = signal + noise.astype(np.float32)
    return audio.ulaw_to_float32(audio.float32_to_ulaw(signal))


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(RATE * seconds), dtype=np.float32)


def _beeps(signal: np.ndarray, chunk: int = 160) -> list[tones.BeepHeard]:
    detector = tones.BeepDetector()
    heard: list[tones.BeepHeard] = []
    for i in range(0, signal.size, chunk):
        heard += detector.feed(signal[i : i + chunk])
    return heard


# --- DTMF -----------------------------------------------------------------------------------------


def test_all_sixteen_keys_round_trip() -> None:
    assert tones.decode_dtmf(tones.dtmf_tones(tones.DTMF_DIGITS)) == tones.DTMF_DIGITS


@pytest.mark.parametrize("snr_db", [None, 20.0, 12.0])
def test_keys_survive_ulaw_and_line_noise(snr_db: float | None) -> None:
    keys = "0123456789*#ABCD" + "159#"
    assert tones.decode_dtmf(_line(tones.dtmf_tones(keys), snr_db=snr_db, seed=1)) == keys


def test_keys_are_heard_after_speech_and_at_a_low_level() -> None:
    signal = np.concatenate([SPEECH[0], _silence(0.2), tones.dtmf_tones("42", level=0.05), SPEECH[1]])
    assert tones.decode_dtmf(_line(signal)) == "42"


def test_each_press_counts_once_and_a_short_gap_separates_repeats() -> None:
    assert tones.decode_dtmf(tones.dtmf_tones("5", tone_ms=1000)) == "5"
    assert tones.decode_dtmf(_line(tones.dtmf_tones("5555", tone_ms=60, gap_ms=40))) == "5555"
    assert tones.decode_dtmf(_line(tones.dtmf_tones("1122", tone_ms=40, gap_ms=40))) == "1122"


def test_blips_shorter_than_a_key_press_are_not_keys() -> None:
    signal = np.concatenate([_silence(0.1), tones.dtmf_tones("7", tone_ms=20), _silence(0.1)])
    assert tones.decode_dtmf(signal) == ""


def test_a_single_tone_is_not_a_key() -> None:
    assert tones.decode_dtmf(tones.beep(770, 500)) == ""
    assert tones.decode_dtmf(tones.beep(1336, 500)) == ""


def test_no_keys_in_real_speech_or_line_noise() -> None:
    everything = SPEECH + BEDS
    assert sum(s.size for s in everything) / RATE > 60  # over a minute of speech and noise
    assert [tones.decode_dtmf(s) for s in everything] == [""] * len(everything)
    assert [tones.decode_dtmf(_line(s, snr_db=20, seed=i)) for i, s in enumerate(SPEECH)] == [""] * len(SPEECH)


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="x"):
        tones.dtmf_tones("12x")
    assert tones.dtmf_tones("").size == 0
    assert tones.decode_dtmf(np.zeros(10, dtype=np.float32)) == ""


# --- the beep ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("hz", [440.0, 850.0, 1000.0, 1400.0, 2100.0])
def test_a_beep_after_a_greeting_is_heard_where_it_ends(hz: float) -> None:
    greeting = SPEECH[int(hz) % len(SPEECH)]
    before = greeting.size + round(0.3 * RATE)
    for ms, chunk in ((150, 160), (600, 97), (1500, 400)):
        signal = _line(np.concatenate([greeting, _silence(0.3), tones.beep(hz, ms), _silence(1.0)]), seed=ms)
        (heard,) = _beeps(signal, chunk)
        true_end = (before + round(ms * RATE / 1000)) / RATE
        assert heard.end_s == pytest.approx(true_end, abs=0.04)
        assert heard.hz == pytest.approx(hz, rel=0.01)
        assert heard.duration_s == pytest.approx(ms / 1000, abs=0.04)


def test_a_beep_is_reported_as_soon_as_it_stops() -> None:
    signal = np.concatenate([_silence(0.5), tones.beep(1000, 400), _silence(1.0)])
    detector = tones.BeepDetector()
    for i in range(0, signal.size, 160):
        if detector.feed(signal[i : i + 160]):
            break
    assert (i + 160) / RATE - 0.9 <= 0.06  # within three 20 ms frames of the end


def test_the_same_beeps_whatever_the_chunking() -> None:
    signal = _line(np.concatenate([SPEECH[2], tones.beep(1200, 300), _silence(0.4), tones.beep(700, 250),
                                   _silence(0.3)]))
    expected = _beeps(signal, 160)
    assert [round(b.hz, -1) for b in expected] == [1200, 700]
    for chunk in (1, 37, 1000, signal.size):
        assert _beeps(signal, chunk) == expected


def test_too_short_or_too_long_tones_are_not_beeps() -> None:
    signal = np.concatenate([_silence(0.2), tones.beep(1000, 60), _silence(0.3), tones.beep(1000, 6000), _silence(0.3)])
    assert _beeps(signal) == []


def test_no_beep_in_speech_line_noise_silence_or_dtmf() -> None:
    speech = np.concatenate(SPEECH)
    assert _beeps(speech) == []
    assert _beeps(_line(speech, seed=3)) == []
    assert [_beeps(bed) for bed in BEDS] == [[] for _ in BEDS]
    assert _beeps(np.random.default_rng(0).normal(0, 0.1, 5 * RATE).astype(np.float32)) == []
    assert _beeps(_silence(5)) == []
    assert _beeps(_line(tones.dtmf_tones("0123456789*#ABCD", tone_ms=400, gap_ms=100))) == []


# Formants (Hz, bandwidth) of sung vowels; the source falls 6 dB an octave.
VOWELS = {"ah": ((730, 80), (1090, 90), (2440, 120)), "oo": ((300, 50), (870, 80), (2240, 100)),
          "ee": ((270, 60), (2290, 100), (3010, 120)), "eh": ((530, 60), (1840, 100), (2480, 120))}


def _sung(vowel: str, f0: float, vibrato: float, seed: int) -> np.ndarray:
    """A sung vowel through the phone band: harmonics shaped by formants, a 5.5 Hz vibrato of
    ±`vibrato`, slow pitch jitter, tremolo and 60 ms onset and release."""
    rng = np.random.default_rng(seed)
    seconds = 1.5
    t = np.arange(round(seconds * RATE)) / RATE
    jitter = np.convolve(rng.normal(0, 1, t.size), np.ones(400) / 400, "same")
    pitch = f0 * (1 + vibrato * np.sin(2 * np.pi * 5.5 * t) + 0.003 * jitter / (jitter.std() + 1e-9))
    phase = 2 * np.pi * np.cumsum(pitch) / RATE
    voice = np.zeros_like(t)
    for k in range(1, int(3800 / f0) + 1):
        gain = sum(1 / (1 + ((k * f0 - f) / bw) ** 2) for f, bw in VOWELS[vowel]) / k
        voice += gain * np.sin(k * phase)
    voice *= (1 + 0.1 * np.sin(2 * np.pi * 5.5 * t)) * np.minimum(1, np.minimum(t, seconds - t) / 0.06)
    voice = np.concatenate([_silence(0.2), 0.3 * voice / np.max(np.abs(voice)), _silence(0.3)])
    return audio.ulaw_to_float32(audio.phone_line(voice.astype(np.float32), RATE))


def test_no_beep_in_sung_vowels() -> None:
    """Some of these hold 90 % of their energy in the fundamental: steadiness is what tells them apart."""
    heard = {
        (vowel, f0, vibrato): _beeps(_sung(vowel, f0, vibrato, seed=int(f0)))
        for vowel in VOWELS for f0 in (220.0, 350.0, 520.0, 660.0, 800.0) for vibrato in (0.015, 0.03)
    }
    assert {key: found for key, found in heard.items() if found} == {}
