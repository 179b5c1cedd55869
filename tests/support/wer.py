"""Word error rate: how far a transcript is from what was said, tolerant of spelling and layout.

Tests that read a model's output assert a bound on this measure, never exact words: int8 kernels
decode differently on different CPUs (AVX2, AVX-512…), so the same audio can give "Tuesday" on one
machine and "Thursday" on the next. A bound still fails on what matters: silence, a wrong sample
rate or a broken codec turn a line into nothing or into unrelated words, far above any bound here.
"""

from __future__ import annotations

from relayx_cli.turn_scoring import normalize, number_words

__all__ = ["normalize", "number_words", "wer", "word_errors"]


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i]
        for j, hyp in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp)))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word errors per reference word, after `normalize` (0.0 is perfect; may exceed 1.0)."""
    ref = normalize(reference)
    if not ref:
        raise ValueError("the reference has no words to measure against")
    return word_errors(ref, normalize(hypothesis)) / len(ref)
