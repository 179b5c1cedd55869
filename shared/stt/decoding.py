"""How faster-whisper decodes a caller turn, and when a short-window decode is not to be trusted.

Pure: no model here, so the settings `scripts/measure_stt.py` compares and the rule that sends a turn
back to Whisper's own path are testable without one. The defaults are the measured choice (see
`DecodeOptions`); every other value is there to be measured against them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from shared.stt.segments import NO_SPEECH_THRESHOLD, words_of

FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
"""Whisper's own ladder: each step re-decodes by sampling when the last one looped or was unsure."""


@dataclass(frozen=True)
class DecodeOptions:
    """One way of decoding a turn: beam 5 in a window cut to the utterance, no temperature ladder.

    Beam 5 (Whisper's own default) is chosen on what the gateway really hears. On the phone set's
    lines cut by the gateway's turn detector (`scripts/measure_stt.py --lines phone`, 18 lines × 4 cuts,
    Intel AVX-512, 2026-11-30): 0.202 word errors per word against 0.242 greedy (beam 3 0.216, beam 2
    0.220); end to end (`relayx bench --set phone`, interleaved): 27.8 and 27.1 % against 34.0 and
    34.7 %. Greedy goes astray on a hard line and never comes back ("Hi, this is Tom Baker. Hi, the new
    microphone." where beam 5 heard "…I need to move my appointment."). It costs 15–30 ms a turn on
    this machine (p50 107 against 92 ms on the cuts; STT p50 120 against 89–104 ms end to end). On the
    bench's 28 lines, each whole with its noise, greedy was a little better (0.271 against 0.288; on an
    AMD EPYC AVX2 earlier, 0.274 against 0.282 for ~100 ms more), as on the phone set's whole files
    (0.216 against 0.232): beam search pays where the cut and the noise make a line hard. The ladder
    never fired in the short window and in the 30 s one made things worse (0.321 against 0.316) with a
    long tail. Thresholds moved no line's words (only the noise rule below). `STT_BEAM_SIZE` overrides.
    """

    short_window: bool = True
    """Encode a window cut to the utterance instead of Whisper's 30 s (see `short_windows_s`)."""
    short_windows_s: tuple[int, ...] = (8, 10)
    """The short windows tried in turn, each stretched to the audio + 1 s, before Whisper's own path.
    An 8 s window encodes a fifth less than 10 s; where its decode shows a sign of failure, 10 s is
    tried before Whisper's 30 s. Interleaved on the bench's 28 lines (scripts/measure_stt.py, greeting
    prompt): WER 0.271 against 0.265 for 10 s alone, p50 199 against 219 ms, p95 243 against 283 ms;
    (6, 10): 0.291, 182 ms, and twice the redone decodes. Phone set (tests/data/phone_set, each line
    cut by the gateway's own turn detector at four offsets): 35.6 against 35.1 %, mean 174 against
    239 ms; (6, 10) 31.2 % but a mean of 215 ms. WER moves by a few points from one cut to the next on
    these lines, so the windows were chosen for time at an unchanged WER."""
    beam_size: int = 5
    """Beams of the short window's decode (every turn under ~29 s that decodes cleanly)."""
    full_window_beam_size: int = 1
    """Beams on Whisper's own 30 s path (turns past ~29 s, and short decodes that failed): greedy. On
    32 s of one booking line said eight times with pauses, beam 5 ended the first window after two
    takes (tests/integration/test_stt_faster_whisper.py), where greedy wrote all of them."""
    temperature_fallback: bool = False
    """Re-decode by sampling (Whisper's ladder) when a decode loops or is unsure; off: one greedy pass."""
    compression_ratio_threshold: float = 2.4
    """Whisper's sign of a looping decode: a text that zlib compresses more than this."""
    log_prob_threshold: float = -1.0
    """Below this mean log-prob the ladder (when on) decodes again."""
    no_speech_threshold: float = NO_SPEECH_THRESHOLD
    """Above this (with a log-prob under `log_prob_threshold`) a segment is silence and is dropped."""
    condition_on_previous_text: bool = False
    """Only utterances past 30 s have a previous window; a caller turn rarely does."""
    max_new_tokens: int = 120
    """A caller turn is a sentence or two; a decode that reaches this is a loop."""

    @property
    def temperatures(self) -> tuple[float, ...]:
        return FALLBACK_TEMPERATURES if self.temperature_fallback else (0.0,)


BASE_NO_SPEECH_THRESHOLD = 0.4
"""Whisper base, given an initial prompt, writes a sentence on bare line noise ("I'm going to clean the
air.") at no-speech 0.49-0.79 and log-prob under -1.4; its caller lines score no-speech ≤ 0.04. At 0.4
none of 21 stretches of noise gave words (14 at Whisper's 0.6) and the 28 lines' WER did not move.
tiny.en keeps 0.6: it gave no words on that noise, and at 0.4 two lines were decoded twice for nothing."""


def options_for(model: str | None) -> DecodeOptions:
    """The measured defaults for the model `STT_MODEL` names (see `DecodeOptions`)."""
    if (model or "").strip() == "base":
        return DecodeOptions(no_speech_threshold=BASE_NO_SPEECH_THRESHOLD)
    return DecodeOptions()


def compression_ratio(text: str) -> float:
    """Whisper's loop measure: bytes of text per byte of its zlib compression."""
    raw = text.strip().encode("utf-8")
    return len(raw) / max(1, len(zlib.compress(raw)))


def repeats(text: str, n: int = 4) -> bool:
    """The same run of `n` words twice: the short window's loop at its mildest ("How much does the
    cleaning cost? How much does the cleaning cost?"), too short for the compression ratio to show.
    People rarely repeat four words in one breath; when they do, the fallback decode keeps them."""
    words = words_of(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def short_decode_failed(text: str, tokens: int, no_speech_prob: float, options: DecodeOptions) -> bool:
    """Whisper's signs of a bad short-window decode: a looping text (it compresses too well, a run of
    words comes twice, or it hits the token cap) or audio it rates as silence. Out of the 30 s window it
    was trained on, the decoder loops more often on clean speech padded with digital silence; such a
    turn is decoded again the usual way. An empty decode is kept: it is the answer for silence."""
    if tokens == 0:
        return False
    return (
        compression_ratio(text) > options.compression_ratio_threshold
        or no_speech_prob > options.no_speech_threshold
        or tokens >= options.max_new_tokens
        or repeats(text)
    )
