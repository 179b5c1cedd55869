"""Which Whisper segments count as speech, and how an utterance's segments become one Transcription.

Both Whisper engines decode with `no_speech_threshold=None` so that every segment comes back with its
signals; the rule below then drops the ones Whisper itself would call silence, and the worst and mean
signals still reach the session, which gates hallucinated stock phrases on them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.stt.base import Transcription

NO_SPEECH_THRESHOLD = 0.6
"""Whisper's own cut-off: above it (with a low log-prob) a segment is a hallucination on silence."""
LOGPROB_THRESHOLD = -1.0
"""Whisper's own cut-off: a segment decoded with less mean confidence than this is not trusted."""


@dataclass(frozen=True)
class Segment:
    """One decoded segment, as either engine reports it (faster-whisper objects, openai-whisper dicts)."""

    text: str
    no_speech_prob: float
    avg_logprob: float


def is_speech(
    segment: Segment,
    *,
    no_speech_threshold: float = NO_SPEECH_THRESHOLD,
    log_prob_threshold: float = LOGPROB_THRESHOLD,
) -> bool:
    """Whisper's silence rule (a segment that is both likely silence and unsure is dropped), and no
    words, no speech: on silence tiny.en decodes a lone "." whose log-prob sits near the cut-off
    (-1.16 to -1.30 depending on the CPU's int8 kernels), so that rule alone is not enough."""
    if not any(ch.isalnum() for ch in segment.text):
        return False
    return not (segment.no_speech_prob > no_speech_threshold and segment.avg_logprob < log_prob_threshold)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    """The words of a decode, lower-cased, without punctuation: what the loop rules compare."""
    return _WORD.findall(text.lower())


def without_repeated_sentences(text: str) -> str:
    """Drop a sentence of two or more words that comes again at once ("Okay, thank you. Okay, thank
    you."): Whisper's loop on a short utterance padded with silence in the short window. Four repeated
    words send such a decode back to Whisper's own path (`shared.stt.decoding.repeats`); a shorter
    sentence said twice slips under that rule and was stored twice on the phone set ("Yeah, not work.
    Yeah, not work."). A one-word sentence said twice ("No. No.") is kept: people do. Only the short
    window's one-pass decode is collapsed: a long turn decoded the usual way may really say a line
    twice, and a caller who does in a short one is stored saying it once, the meaning kept."""
    kept: list[str] = []
    last: list[str] | None = None
    for sentence in _SENTENCE_END.split(text.strip()):
        words = words_of(sentence)
        if len(words) >= 2 and words == last:
            continue
        kept.append(sentence.strip())
        last = words or last
    return " ".join(s for s in kept if s)


def summarise(
    segments: Sequence[Segment],
    *,
    no_speech_threshold: float = NO_SPEECH_THRESHOLD,
    log_prob_threshold: float = LOGPROB_THRESHOLD,
) -> Transcription:
    """Join the speech segments; report the worst no-speech and the mean log-prob over all of them.
    The thresholds are Whisper's unless a measured decoding setting says otherwise."""
    if not segments:
        return Transcription(text="", no_speech_prob=1.0, avg_logprob=-10.0)
    return Transcription(
        text=" ".join(
            s.text.strip()
            for s in segments
            if is_speech(s, no_speech_threshold=no_speech_threshold, log_prob_threshold=log_prob_threshold)
        ).strip(),
        no_speech_prob=max(s.no_speech_prob for s in segments),
        avg_logprob=float(np.mean([s.avg_logprob for s in segments])),
    )
