"""shared.audio: μ-law, sample scaling, streaming resampling, framing and the phone band."""

from __future__ import annotations

import numpy as np
import pytest

from shared import audio


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _power_at(signal: np.ndarray, rate: int, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(signal))
    freqs = np.fft.rfftfreq(signal.size, 1 / rate)
    return float(spectrum[np.argmin(np.abs(freqs - freq))])


def test_ulaw_round_trip_is_close_and_one_byte_per_sample() -> None:
    tone = _tone(440, 8000, 0.1)
    encoded = audio.float32_to_ulaw(tone)
    assert len(encoded) == tone.size
    decoded = audio.ulaw_to_float32(encoded)
    assert np.max(np.abs(decoded - tone)) < 0.02


def test_ulaw_silence_byte_decodes_to_zero() -> None:
    assert np.all(audio.ulaw_to_float32(bytes([audio.MULAW_SILENCE]) * 10) == 0.0)


def test_float32_to_int16_clips_instead_of_wrapping() -> None:
    out = audio.float32_to_int16(np.array([2.0, -2.0, 0.0], np.float32))
    assert out.tolist() == [32767, -32767, 0]
    back = audio.int16_to_float32(np.array([16384], np.int16))
    assert back.dtype == np.float32 and back[0] == pytest.approx(0.5)


def test_stream_resampler_chunked_equals_whole_and_has_no_edge_clicks() -> None:
    tone = _tone(300, 8000, 1.0)
    whole = audio.StreamResampler(8000, 16000)
    expected = np.concatenate([whole.process(tone), whole.flush()])
    chunked = audio.StreamResampler(8000, 16000)
    pieces = [chunked.process(tone[i : i + 160]) for i in range(0, tone.size, 160)]
    got = np.concatenate([*pieces, chunked.flush()])
    assert got.size == expected.size == 16000
    assert np.allclose(got, expected, atol=1e-4)
    # A 300 Hz tone at 16 kHz moves at most ~0.06 per sample: a chunk-edge click would jump far more.
    body = got[200:-200]
    assert np.max(np.abs(np.diff(body))) < 0.07


def test_phone_upsampler_gives_every_frame_back_at_once() -> None:
    """The turn detector must see each 20 ms frame as it arrives: soxr's stream held 8 → 16 kHz
    audio back in ~100 ms blocks, and every pause was found that much later."""
    up = audio.PhoneUpsampler()
    tone = _tone(1000, 8000, 1.0)
    sizes = [up.process(tone[i : i + 160]).size for i in range(0, tone.size, 160)]
    assert sizes == [320] * 50
    impulse = np.zeros(400, np.float32)
    impulse[100] = 1.0
    delay = int(np.argmax(np.abs(audio.PhoneUpsampler().process(impulse)))) - 200
    assert 0 <= delay <= 48  # 3 ms at 16 kHz


def test_phone_upsampler_keeps_the_phone_band_and_drops_images() -> None:
    for freq in (300.0, 1000.0, 3400.0):
        tone = _tone(freq, 8000, 1.0)
        chunked = audio.PhoneUpsampler()
        out = np.concatenate([chunked.process(tone[i : i + 160]) for i in range(0, tone.size, 160)])
        assert np.allclose(out, audio.PhoneUpsampler().process(tone), atol=1e-6)  # chunks change nothing
        body = out[400:-400] * np.hanning(out.size - 800)
        kept, image = _power_at(body, 16000, freq), _power_at(body, 16000, 8000 - freq)
        assert image < 1e-3 * kept  # zero-stuffing's mirror image, down more than 60 dB
        assert abs(np.max(np.abs(out[400:-400])) - 0.5) < 0.03  # level kept


def test_stream_resampler_down_to_phone_rate_removes_energy_above_4khz() -> None:
    rate = 22050
    mixed = _tone(1000, rate, 1.0, 0.4) + _tone(6000, rate, 1.0, 0.4)
    down = audio.StreamResampler(rate, 8000)
    out = np.concatenate([down.process(audio.float32_to_int16(mixed)), down.flush()])
    assert abs(out.size - 8000) <= 1
    # 6 kHz would alias to 2 kHz without the resampler's low-pass.
    assert _power_at(out, 8000, 2000) < 0.01 * _power_at(out, 8000, 1000)


def test_framer_keeps_remainder_and_pads_last_frame_with_ulaw_silence() -> None:
    framer = audio.Framer()
    assert framer.push(b"\x01" * 100) == []
    frames = framer.push(b"\x02" * 300)
    assert [len(f) for f in frames] == [160, 160]
    assert framer.pending == 80
    assert frames[0] == b"\x01" * 100 + b"\x02" * 60
    (last,) = framer.flush()
    assert last == b"\x02" * 80 + bytes([0xFF]) * 80
    assert framer.flush() == []


def test_bandpass_keeps_voice_band_and_drops_hum_and_hiss() -> None:
    rate = 16000
    signal = _tone(100, rate, 1.0) + _tone(1000, rate, 1.0) + _tone(6000, rate, 1.0)
    out = audio.bandpass(signal, rate)
    assert _power_at(out, rate, 1000) > 0.9 * _power_at(signal, rate, 1000)
    assert _power_at(out, rate, 100) < 0.01 * _power_at(signal, rate, 100)
    assert _power_at(out, rate, 6000) < 0.01 * _power_at(signal, rate, 6000)


def test_phone_line_is_8khz_ulaw() -> None:
    payload = audio.phone_line(_tone(500, 16000, 0.5), 16000)
    assert abs(len(payload) - 4000) <= 1
