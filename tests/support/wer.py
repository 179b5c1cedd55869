"""Word error rate: how far a transcript is from what was said, tolerant of spelling and layout.

Tests that read a model's output assert a bound on this measure, never exact words: int8 kernels
decode differently on different CPUs (AVX2, AVX-512…), so the same audio can give "Tuesday" on one
machine and "Thursday" on the next. A bound still fails on what matters: silence, a wrong sample
rate or a broken codec turn a line into nothing or into unrelated words, far above any bound here.
"""

from __future__ import annotations

import re

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> list[str]:
    """English words for 0 ≤ n < 1 000 000 ("80" and "eighty" must count as the same word)."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + (number_words(n % 10) if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    if n < 1_000_000:
        return [*number_words(n // 1000), "thousand"] + (number_words(n % 1000) if n % 1000 else [])
    return list(str(n))


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation; digits spelled out ("9am" → nine am, "8:30" → eight thirty).

    Apostrophes are dropped inside words ("don't" → dont) so either spelling of a contraction matches,
    and a period between letters goes ("a.m." → am); every other non-alphanumeric character splits words.
    """
    text = text.lower().replace("'", "").replace("’", "")
    text = re.sub(r"(?<=[a-z])\.(?=[a-z])", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 is one number
    words: list[str] = []
    for token in re.findall(r"[a-z]+|\d+", text):
        words += number_words(int(token)) if token.isdigit() else [token]
    return words


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
