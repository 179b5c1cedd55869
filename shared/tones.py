"""Telephone tones, made and heard: DTMF keys (both ways) and an answering machine's beep.

Pure numpy on phone audio (float32 in [-1, 1] at 8 kHz, what `shared.audio.ulaw_to_float32` gives).
No I/O and no clock: time is the sample index, so the same audio gives the same answer on every CPU
and however it is cut into chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shared.audio import PHONE_RATE

# --- DTMF (ITU-T Q.23 frequencies, Q.24 reception rules) -------------------------------------------

DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
_KEYPAD = ("123A", "456B", "789C", "*0#D")
DTMF_DIGITS = "0123456789*#ABCD"
_PAIRS = {key: (DTMF_ROWS[r], DTMF_COLS[c]) for r, keys in enumerate(_KEYPAD) for c, key in enumerate(keys)}

_DTMF_BLOCK_S = 205 / 8000
"""The classic Goertzel block (25.6 ms): its 39 Hz bins keep 697 and 770 Hz (73 Hz apart) 23 dB apart."""
_DTMF_HOP_S = 0.005
"""Blocks start every 5 ms, so a press's duration is measured to a few ms, not to a whole block."""
_MIN_ON = 4
"""Consecutive blocks holding one key before it counts: tones of 40 ms or more are always heard,
tones under 25 ms never (Q.24 asks for acceptance at 40 ms, rejection under 23 ms)."""
_MIN_OFF = 3
"""Consecutive blocks without the key that end a press: a 40 ms gap separates two presses of the
same key, while one noisy block inside a tone does not split it in two."""
_MIN_TONE_AMPLITUDE = 0.01
"""Each of the pair must reach -40 dBFS: quieter is line noise, not a key."""
_MIN_TONE_SHARE = 0.7
"""The pair must hold this share of the block's energy. Speech spreads its energy over many
harmonics and formants; this is the check that keeps it from "pressing keys" (talk-off)."""
_DOMINANCE = 10 ** (6 / 10)
"""The strongest row (and column) is at least 6 dB above the next in its group."""
_NORMAL_TWIST_DB = 8.0
"""The column tone may be this much weaker than the row tone (lines lose highs)…"""
_REVERSE_TWIST_DB = 4.0
"""…and this much stronger."""


def dtmf_tones(
    digits: str, *, rate: int = PHONE_RATE, tone_ms: int = 100, gap_ms: int = 80, level: float = 0.3
) -> np.ndarray:
    """The tones of `digits` (0-9 * # A-D) as a phone sends them: one pair per key, silence between.

    `level` is the peak of the pair (each tone at half of it); 2 ms fades keep the edges from
    clicking, which a decoder would otherwise hear as a burst of every frequency.
    """
    keys = digits.upper()
    unknown = "".join(sorted({c for c in digits if c.upper() not in DTMF_DIGITS}))
    if unknown:
        raise ValueError(f"not DTMF keys: {unknown!r} (use 0-9 * # A-D)")
    tone_n = round(rate * tone_ms / 1000)
    gap = np.zeros(round(rate * gap_ms / 1000), dtype=np.float32)
    t = np.arange(tone_n) / rate
    fade = _fade(tone_n, round(rate * 0.002))
    parts: list[np.ndarray] = []
    for index, key in enumerate(keys):
        row, col = _PAIRS[key]
        pair = (np.sin(2 * np.pi * row * t) + np.sin(2 * np.pi * col * t)) * (level / 2) * fade
        if index:
            parts.append(gap)
        parts.append(pair.astype(np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def decode_dtmf(audio: np.ndarray, rate: int = PHONE_RATE) -> str:
    """The keys pressed in `audio`, in order, each press once (Goertzel blocks on a 5 ms hop).

    A block names a key when one row and one column tone stand out in their groups, their levels
    are within the twist limits and together they hold most of the block's energy; a key counts
    once it holds for `_MIN_ON` blocks, and a press ends after `_MIN_OFF` blocks without it.
    """
    labels = _dtmf_blocks(np.asarray(audio, dtype=np.float64), rate)
    keys: list[str] = []
    held: str | None = None  # the key of the press in progress (already counted)
    off = 0
    run_key: str | None = None
    run = 0
    for label in labels:
        run = run + 1 if label == run_key else 1
        run_key = label
        if held is not None:
            off = 0 if label == held else off + 1
            if off >= _MIN_OFF:
                held = None
        if held is None and label is not None and run >= _MIN_ON:
            keys.append(label)
            held, off = label, 0
    return "".join(keys)


def _dtmf_blocks(audio: np.ndarray, rate: int) -> list[str | None]:
    """The key each block holds, or None: all blocks at once, one matrix product for the 8 bins.

    Each column of `basis` is Goertzel's single-bin DFT at one DTMF frequency (not rounded to an
    FFT bin), so a block's product with it is exactly what the Goertzel recurrence would return.
    """
    block = round(_DTMF_BLOCK_S * rate)
    hop = max(1, round(_DTMF_HOP_S * rate))
    if audio.size < block:
        return []
    frames = sliding_window_view(audio, block)[::hop]
    freqs = np.array(DTMF_ROWS + DTMF_COLS)
    basis = np.exp(-2j * np.pi * np.outer(np.arange(block), freqs) / rate)
    amplitude = 2 * np.abs(frames @ basis) / block  # each tone's amplitude over the block
    energy = np.einsum("ij,ij->i", frames, frames)
    rows, cols = amplitude[:, :4], amplitude[:, 4:]
    r = np.argmax(rows, axis=1)
    c = np.argmax(cols, axis=1)
    index = np.arange(len(frames))
    row_amp, col_amp = rows[index, r], cols[index, c]
    next_row = np.sort(rows, axis=1)[:, -2]
    next_col = np.sort(cols, axis=1)[:, -2]
    twist_db = 20 * np.log10(np.maximum(col_amp, 1e-12) / np.maximum(row_amp, 1e-12))
    share = (row_amp**2 + col_amp**2) * block / 2 / np.maximum(energy, 1e-12)
    ok = (
        (row_amp >= _MIN_TONE_AMPLITUDE) & (col_amp >= _MIN_TONE_AMPLITUDE)
        & (row_amp**2 >= _DOMINANCE * next_row**2) & (col_amp**2 >= _DOMINANCE * next_col**2)
        & (twist_db >= -_NORMAL_TWIST_DB) & (twist_db <= _REVERSE_TWIST_DB)
        & (share >= _MIN_TONE_SHARE)
    )
    return [_KEYPAD[ri][ci] if good else None for ri, ci, good in zip(r, c, ok, strict=True)]


def _fade(n: int, ramp: int) -> np.ndarray:
    """A gain of 1 with raised-cosine ramps of `ramp` samples at both ends."""
    gain = np.ones(n)
    ramp = min(ramp, n // 2)
    if ramp:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        gain[:ramp] = edge
        gain[n - ramp :] = edge[::-1]
    return gain


# --- the answering machine's beep ---------------------------------------------------------------


def beep(hz: float = 1000.0, ms: int = 500, rate: int = PHONE_RATE, level: float = 0.3) -> np.ndarray:
    """An answering machine's beep: one steady sine, `level` peak, 5 ms fades at both ends."""
    n = round(rate * ms / 1000)
    t = np.arange(n) / rate
    return (level * np.sin(2 * np.pi * hz * t) * _fade(n, round(rate * 0.005))).astype(np.float32)


@dataclass(frozen=True)
class BeepHeard:
    """A steady single tone that has just stopped: the machine is recording from `end_s`."""

    start_sample: int
    """Where the tone rose through half its amplitude (samples since the stream's start)."""
    end_sample: int
    """Where it fell through half its amplitude, to within a few ms."""
    hz: float
    """Its mean frequency."""
    rate: int = PHONE_RATE

    @property
    def start_s(self) -> float:
        return self.start_sample / self.rate

    @property
    def end_s(self) -> float:
        return self.end_sample / self.rate

    @property
    def duration_s(self) -> float:
        return (self.end_sample - self.start_sample) / self.rate


_HOP_S = 0.02
"""Decisions are made per 20 ms: the frame Twilio sends, so one hop per media message."""
_WINDOW_S = 0.064
"""The spectrum is taken over the last 64 ms: Hann main lobe ±31 Hz, fine enough to ask whether the
energy sits within ±30 Hz of one frequency."""
_PURITY = 0.9
"""Share of the 250-3500 Hz energy within ±`_PURITY_HZ` of the peak. A sine through μ-law and a
20 dB-SNR line keeps ~0.99; a sung vowel spreads over its harmonics, DTMF over two tones (~0.5)."""
_PURITY_HZ = 30.0
_HOP_SHARE = 0.8
"""Share of each 20 ms hop explained by a sine at the tone's frequency: the test that notices, within
one hop, that the tone has stopped or something else has started."""
_STEADY = 0.01
"""Each hop's frequency stays within 1 % of the tone's mean: a beep is crystal-steady (its estimate
moves by ~0.1 % in line noise), a singer's vibrato (±2-6 %), jitter and glides are not."""
_GLIDE = 0.1
"""A pure tone within 10 % of the tone's frequency is the same sound gliding (and so no beep, if it
moved more than `_STEADY`); further away it is another tone (two-tone beeps, a melody)."""
_LEVEL_RANGE = (0.5, 2.0)
"""Each hop's level stays within -6/+6 dB of the tone's mean level."""
_MIN_LEVEL = 0.005
"""Hops quieter than -46 dBFS RMS are silence, whatever their spectrum."""
_BAND_HZ = (250.0, 3500.0)


@dataclass
class _Tone:
    """A tone in progress: its first hops (to find its onset later) and its running frequency and level."""

    onset_sample: int
    """The first sample of `onset`: the hop the tone was first seen in and the two before it (a hop
    the tone covers less than `_HOP_SHARE` of does not pass)."""
    onset: np.ndarray
    hz: float
    level: float
    hops: int = 1
    steady: bool = True

    def add(self, hz: float, level: float) -> None:
        if self.hops == 1 and level > self.level:
            self.level = level  # the first hop was only partly tone
        self.hops += 1
        self.hz += (hz - self.hz) / self.hops
        self.level += (level - self.level) / self.hops


class BeepDetector:
    """Streaming: feed a call's audio in any chunks, get each beep back when it stops.

    A beep is one sine (a peak in `low_hz`..`high_hz` holding `_PURITY` of the spectrum) that holds its
    frequency within 1 % and its level within ±6 dB for `min_ms`..`max_ms` (between half-amplitude
    points: a 150 ms beep with fades measures ~145 ms, hence the lower floor) and then stops. Speech and
    DTMF are never that pure; a singer is never that steady. A hummed note held dead straight (under
    ±1 % of pitch movement) with almost no harmonics would pass: it is, physically, a beep.
    Per 20 ms it costs one 2048-point FFT and a dot product, and nothing at all on a silent line.
    """

    def __init__(
        self, rate: int = PHONE_RATE, *, min_ms: int = 120, max_ms: int = 4000,
        low_hz: float = 350.0, high_hz: float = 2500.0,
    ) -> None:
        self.rate = rate
        self.min_samples = round(rate * min_ms / 1000)
        self.max_samples = round(rate * max_ms / 1000)
        self.low_hz, self.high_hz = low_hz, high_hz
        self._hop = round(rate * _HOP_S)
        self._window = round(rate * _WINDOW_S)
        self._nfft = 4 * (1 << (self._window - 1).bit_length())  # zero-padded: peaks to ~1 Hz
        self._hann = np.hanning(self._window)
        freqs = np.fft.rfftfreq(self._nfft, 1 / rate)
        self._freqs = freqs
        self._band = (freqs >= _BAND_HZ[0]) & (freqs <= _BAND_HZ[1])
        self._history = np.zeros(max(self._window, 4 * self._hop))  # the newest samples
        self._pending = np.zeros(0)
        self._seen = 0  # samples analysed so far (whole hops)
        self._tone: _Tone | None = None
        self._ending: _Tone | None = None

    def feed(self, audio: np.ndarray) -> list[BeepHeard]:
        """Add the next samples (float32, [-1, 1]); returns the beeps that ended in them."""
        self._pending = np.concatenate([self._pending, np.asarray(audio, dtype=np.float64).ravel()])
        heard: list[BeepHeard] = []
        while self._pending.size >= self._hop:
            hop, self._pending = self._pending[: self._hop], self._pending[self._hop :]
            found = self._step(hop)
            if found is not None:
                heard.append(found)
        return heard

    def _step(self, hop: np.ndarray) -> BeepHeard | None:
        self._history = np.concatenate([self._history[hop.size :], hop])
        self._seen += hop.size
        level = float(np.sqrt(np.mean(hop * hop)))
        hz = self._tonal_hz(hop, level)
        heard = None
        if self._ending is not None:  # judged one hop late, to see the line after the tone
            heard, self._ending = self._ended(self._ending), None
        tone = self._tone
        if tone is not None:
            if hz is not None and abs(hz - tone.hz) <= _GLIDE * tone.hz:
                low, high = _LEVEL_RANGE
                steady_level = low * tone.level <= level and (level <= high * tone.level or tone.hops == 1)
                if abs(hz - tone.hz) > _STEADY * tone.hz or not steady_level:
                    tone.steady = False  # the same sound, wavering: a voice, not a machine
                tone.add(hz, level)
                return heard
            self._ending = tone
        # A sine in this hop that does not continue the tone starts one (maybe straight after another).
        self._tone = None
        if hz is not None:
            onset = self._history[-3 * self._hop :].copy()
            self._tone = _Tone(self._seen - onset.size, onset, hz, level)
        return heard

    def _tonal_hz(self, hop: np.ndarray, level: float) -> float | None:
        """The frequency of the sine this hop is, or None (silence, noise, speech, two tones)."""
        if level < _MIN_LEVEL:
            return None
        power = np.abs(np.fft.rfft(self._history[-self._window :] * self._hann, self._nfft)) ** 2
        band = power * self._band
        total = float(band.sum())
        if total <= 0:
            return None
        hz = self._interpolate(power, int(np.argmax(band)))
        if float(band[np.abs(self._freqs - hz) <= _PURITY_HZ].sum()) < _PURITY * total:
            return None
        # Does a sine at `hz` explain this very hop? (The window still holds 44 ms of the past.)
        n = np.arange(hop.size)
        fitted = 2 * abs(np.dot(hop, np.exp(-2j * np.pi * hz * n / self.rate))) / hop.size
        if fitted**2 * hop.size / 2 < _HOP_SHARE * float(np.dot(hop, hop)):
            return None
        return hz

    def _interpolate(self, power: np.ndarray, peak: int) -> float:
        """The peak's frequency between FFT bins (a parabola through the log powers around it)."""
        if 0 < peak < power.size - 1:
            a, b, c = np.log(power[peak - 1 : peak + 2] + 1e-30)
            denominator = a - 2 * b + c
            offset = 0.5 * (a - c) / denominator if denominator else 0.0
            return float(self._freqs[peak] + offset * (self._freqs[1] - self._freqs[0]))
        return float(self._freqs[peak])

    def _ended(self, tone: _Tone) -> BeepHeard | None:
        """The tone failed the hop before this one: find its edges, and keep it if it was a beep."""
        half = 0.5 * tone.level * np.sqrt(2)  # half the sine's amplitude
        above = np.flatnonzero(self._envelope(tone.onset, tone.hz) >= half)
        box = self._box(tone.hz)
        start = tone.onset_sample + (int(above[0]) + box // 2 if above.size else 0)
        region = self._history[-4 * self._hop :]
        envelope = self._envelope(region, tone.hz)
        above = np.flatnonzero(envelope >= half)
        last = int(above[-1]) if above.size else 0
        end = self._seen - region.size + last + box // 2
        # A beep stops: at its frequency the line falls quiet. A voice losing its purity sounds on.
        stopped = last < envelope.size - box
        beep_like = stopped and tone.steady and self.low_hz <= tone.hz <= self.high_hz
        if not beep_like or not self.min_samples <= end - start <= self.max_samples:
            return None
        return BeepHeard(start_sample=start, end_sample=end, hz=round(tone.hz, 1), rate=self.rate)

    def _box(self, hz: float) -> int:
        """About 5 ms, as a whole number of periods of `hz` (so the 2f ripple cancels)."""
        return max(1, round(max(1, round(0.005 * hz)) * self.rate / hz))

    def _envelope(self, audio: np.ndarray, hz: float) -> np.ndarray:
        """The amplitude of the sine at `hz` through `audio`: demodulated, then a ~5 ms moving average.

        `envelope[i]` covers `audio[i : i + box]`; where the tone starts or stops it crosses half the
        tone's amplitude with its box half over the tone, which places an edge to within a few ms.
        (A hop the tone only partly covers may pass or fail, so an onset lies in the first hop that
        passed or the two before it, an end in the last one or the next.)
        """
        n = np.arange(audio.size)
        baseband = audio * np.exp(-2j * np.pi * hz * n / self.rate)
        box = self._box(hz)
        return 2 * np.abs(np.convolve(baseband, np.ones(box) / box, mode="valid"))
