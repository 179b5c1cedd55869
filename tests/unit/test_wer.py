"""The word error rate the model tests bound: normalisation, alignment, and what garbage scores."""

from __future__ import annotations

import pytest

from tests.support.wer import normalize, number_words, wer


def test_identical_text_up_to_case_and_punctuation_is_perfect() -> None:
    said = "I would like to book an appointment for Tuesday morning."
    assert wer(said, "i would like to book an appointment, for Tuesday morning") == 0.0


def test_digits_and_number_words_are_the_same_words() -> None:
    assert normalize("A cleaning costs $80, open 9am to 5 p.m., 8:30 or 1,000") == [
        "a", "cleaning", "costs", "eighty", "open", "nine", "am", "to", "five", "pm",
        "eight", "thirty", "or", "one", "thousand",
    ]  # fmt: skip
    assert wer("It costs eighty dollars.", "It costs 80 dollars.") == 0.0
    assert number_words(0) == ["zero"] and number_words(115) == ["one", "hundred", "fifteen"]
    assert number_words(2024) == ["two", "thousand", "twenty", "four"]


def test_contractions_and_hyphens_are_tolerated() -> None:
    assert normalize("Don't worry, it's twenty-five.") == ["dont", "worry", "its", "twenty", "five"]
    assert normalize("Don’t") == ["dont"]


def test_substitutions_deletions_and_insertions_each_count_one() -> None:
    ref = "what are your opening hours on monday"  # 7 words
    assert wer(ref, "what are your opening hours on sunday") == pytest.approx(1 / 7)
    assert wer(ref, "what are your hours on monday") == pytest.approx(1 / 7)
    assert wer(ref, "so what are your opening hours on monday") == pytest.approx(1 / 7)
    assert wer(ref, "what are you're opening hours monday please") == pytest.approx(3 / 7)


def test_nothing_heard_or_unrelated_words_score_high() -> None:
    """What a broken pipeline yields: silence (1.0), or fluent nonsense (0.8 and 0.9 here)."""
    ref = "I would like to book an appointment for Tuesday morning."
    assert wer(ref, "") == 1.0
    # tiny.en's reading of espeak-ng on an AVX-512 CPU: right opening, wrong everything after.
    assert wer(ref, "I would like to come up with a few minutes for you. May morning.") == pytest.approx(0.8)
    assert wer(ref, "Thank you for watching.") == pytest.approx(0.9)  # Whisper's favourite hallucination


def test_a_reference_without_words_is_refused() -> None:
    with pytest.raises(ValueError, match="no words"):
        wer(" ... ", "anything")
