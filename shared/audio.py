"""Sample formats in one place: μ-law, int16/float32, streaming resampling and 20 ms framing.

Twilio Media Streams carry 8 kHz μ-law; Whisper and Silero want 16 kHz float32; Piper speaks int16
at its voice's rate (22 050 Hz for joe-medium). Every conversion between those lives here.
"""

from __future__ import annotations

import warnings

import numpy as np
import soxr

with warnings.catch_warnings():
    # `audioop` is deprecated on 3.11-3.12 and removed in 3.13, where audioop-lts provides it.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PHONE_RATE = 8000
"""Twilio's media rate (G.711 μ-law, 8 bits per sample)."""
STT_RATE = 16000
"""Whisper's and Silero's rate."""
FRAME_MS = 20
"""Twilio paces media in 20 ms frames; we send the same size so marks and clears line up."""
FRAME_BYTES = PHONE_RATE * FRAME_MS // 1000
"""160 μ-law bytes per 20 ms frame."""
MULAW_SILENCE = 0xFF
"""μ-law code for zero amplitude (0xFF, not 0x00, which is full-scale negative)."""


# --- μ-law ----------------------------------------------------------------------------------------


def ulaw_to_pcm16(data: bytes) -> bytes:
    """Decode G.711 μ-law bytes to little-endian int16 PCM bytes."""
    return audioop.ulaw2lin(data, 2)


def pcm16_to_ulaw(pcm: bytes) -> bytes:
    """Encode little-endian int16 PCM bytes to G.711 μ-law."""
    return audioop.lin2ulaw(pcm, 2)


def ulaw_to_float32(data: bytes) -> np.ndarray:
    """Decode μ-law straight to float32 in [-1, 1] (what the resampler and VAD take)."""
    return int16_to_float32(np.frombuffer(ulaw_to_pcm16(data), dtype="<i2"))


def float32_to_ulaw(audio: np.ndarray) -> bytes:
    """Encode float32 in [-1, 1] to μ-law bytes (clipping out-of-range samples)."""
    return pcm16_to_ulaw(float32_to_int16(audio).astype("<i2").tobytes())


# --- int16 <-> float32 ----------------------------------------------------------------------------


def int16_to_float32(audio: np.ndarray) -> np.ndarray:
    """Scale int16 samples to float32 in [-1, 1)."""
    return np.asarray(audio, dtype=np.int16).astype(np.float32) / 32768.0


def float32_to_int16(audio: np.ndarray) -> np.ndarray:
    """Scale float32 samples to int16, clipping so loud peaks saturate instead of wrapping."""
    scaled = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype(np.int16)


def rms(audio: np.ndarray) -> float:
    """Root-mean-square level of float32 audio (0.0 for an empty array)."""
    if audio.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


ONSET_LEVEL = 0.01
"""A sample this loud (−40 dBFS) is sound: Piper's lead-in is −80 to −100 dBFS, its first phoneme
−45 dBFS or louder."""
ONSET_KEEP_S = 0.01
"""Kept before the first sound: the phoneme's own attack, not silence."""


def trim_lead_in(audio: np.ndarray, rate: int) -> np.ndarray:
    """`audio` without the silence before its first sound (all of it kept if it never sounds).

    A reply's first clause starts with whatever silence the TTS put before its first word: Piper
    measured 10–80 ms (joe-medium, four opening clauses). The caller waits through it as through any
    other latency, so it is cut there (and only there: inside a reply the pauses are the speech's own).
    """
    level = ONSET_LEVEL * (32768.0 if audio.dtype == np.int16 else 1.0)
    loud = np.flatnonzero(np.abs(audio) >= level)
    if loud.size == 0:
        return audio
    return audio[max(0, int(loud[0]) - round(ONSET_KEEP_S * rate)):]


# --- resampling -----------------------------------------------------------------------------------


class StreamResampler:
    """A stateful resampler for one direction of one call.

    Resampling chunk by chunk with a stateless resampler clicks at every chunk edge; soxr's
    `ResampleStream` keeps the filter history between chunks. Its filter also low-passes before
    going down (22 050 -> 8 000 Hz), so no aliasing lands in the phone band.
    """

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._passthrough = in_rate == out_rate
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=quality)
        )

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Resample the next chunk (float32, or int16 which is scaled first); returns float32."""
        audio = int16_to_float32(chunk) if chunk.dtype == np.int16 else np.asarray(chunk, np.float32)
        if self._stream is None:
            return audio.copy()
        return self._stream.resample_chunk(audio, last=False)

    def flush(self) -> np.ndarray:
        """Drain the filter's tail at the end of the stream; the resampler is then finished."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


class PhoneUpsampler:
    """8 kHz caller audio to 16 kHz, sample for sample as it arrives: every 20 ms frame in gives
    20 ms out, 3 ms behind.

    soxr's stream (`StreamResampler`) filters in blocks: 8 → 16 kHz at its HQ setting it returned
    nothing for the first six 20 ms frames and then ~104 ms at once every fifth frame. The turn
    detector behind it saw the caller's pause 50–100 ms late (more on some turns), and every
    end of turn and barge-in paid for it. Upsampling by two needs no block: a linear-phase
    half-band FIR (Kaiser-windowed sinc) run as two polyphase branches over the last few input
    samples. Its passband is flat to 3.5 kHz (the phone band ends at 3.4) and the images of the
    phone band (4.6–7.7 kHz) are down more than 90 dB.
    """

    TAPS = 95
    """Filter length at 16 kHz: group delay (TAPS − 1) / 2 = 47 samples, 2.9 ms."""
    BETA = 8.0
    """Kaiser window shape: about 80 dB of stopband."""

    def __init__(self) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        # Cut-off at 4 kHz (a quarter of 16 kHz); the gain of 2 restores the level zero-stuffing halves.
        taps = (np.sinc(n / 2) * np.kaiser(self.TAPS, self.BETA)).astype(np.float64)
        taps *= 2.0 / taps.sum()
        even, odd = taps[0::2], taps[1::2]
        width = even.size
        self._even = even
        self._odd = np.concatenate([odd, np.zeros(width - odd.size)])
        self._history = np.zeros(width - 1, dtype=np.float64)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Upsample the next chunk (float32, or int16 which is scaled first): exactly twice as many
        samples out as in."""
        audio = int16_to_float32(chunk) if chunk.dtype == np.int16 else np.asarray(chunk, np.float32)
        if audio.size == 0:
            return np.zeros(0, dtype=np.float32)
        ext = np.concatenate([self._history, audio.astype(np.float64)])
        self._history = ext[ext.size - self._history.size :]
        out = np.empty(2 * audio.size, dtype=np.float32)
        out[0::2] = np.convolve(ext, self._even, mode="valid")
        out[1::2] = np.convolve(ext, self._odd, mode="valid")
        return out

    def flush(self) -> np.ndarray:
        """The last few samples still inside the filter (its delay), at the end of the stream."""
        return self.process(np.zeros(self._history.size // 2 + 1, dtype=np.float32))


def resample(audio: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Resample a whole buffer at once (tests and offline tools; calls stream with StreamResampler)."""
    audio = int16_to_float32(audio) if audio.dtype == np.int16 else np.asarray(audio, np.float32)
    if in_rate == out_rate:
        return audio.copy()
    return soxr.resample(audio, in_rate, out_rate, quality="HQ").astype(np.float32)


# --- framing --------------------------------------------------------------------------------------


class Framer:
    """Cuts a μ-law byte stream into fixed 20 ms frames, carrying the remainder to the next push."""

    def __init__(self, frame_bytes: int = FRAME_BYTES) -> None:
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back until a full frame exists."""
        return len(self._pending)

    def push(self, data: bytes) -> list[bytes]:
        """Add bytes; return every complete frame now available."""
        self._pending += data
        n = len(self._pending) // self.frame_bytes * self.frame_bytes
        frames = [bytes(self._pending[i : i + self.frame_bytes]) for i in range(0, n, self.frame_bytes)]
        del self._pending[:n]
        return frames

    def flush(self) -> list[bytes]:
        """Return the last partial frame padded with μ-law silence (empty if nothing is pending)."""
        if not self._pending:
            return []
        frame = bytes(self._pending) + bytes([MULAW_SILENCE]) * (self.frame_bytes - len(self._pending))
        self._pending.clear()
        return [frame]


# --- phone band -----------------------------------------------------------------------------------


def bandpass(audio: np.ndarray, rate: int, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """Keep only the telephone band (300-3400 Hz), for tests that imitate a phone line.

    An FFT mask with 100 Hz cosine skirts: offline and exact enough for test signals, not streaming.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        return audio.copy()
    spectrum = np.fft.rfft(audio.astype(np.float64))
    freqs = np.fft.rfftfreq(audio.size, d=1.0 / rate)
    skirt = 100.0
    gain = np.ones_like(freqs)
    gain[freqs < low_hz - skirt] = 0.0
    gain[freqs > high_hz + skirt] = 0.0
    rising = (freqs >= low_hz - skirt) & (freqs < low_hz)
    gain[rising] = 0.5 - 0.5 * np.cos(np.pi * (freqs[rising] - (low_hz - skirt)) / skirt)
    falling = (freqs > high_hz) & (freqs <= high_hz + skirt)
    gain[falling] = 0.5 + 0.5 * np.cos(np.pi * (freqs[falling] - high_hz) / skirt)
    return np.fft.irfft(spectrum * gain, n=audio.size).astype(np.float32)


def phone_line(audio: np.ndarray, rate: int) -> bytes:
    """Imitate a phone call's uplink: band-limit, resample to 8 kHz and μ-law encode."""
    return float32_to_ulaw(resample(bandpass(audio, rate), rate, PHONE_RATE))
