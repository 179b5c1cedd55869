"""The Whisper segment rule both STT engines share: which segments are speech, what the session is told."""

from __future__ import annotations

import pytest

from shared.stt.segments import LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD, Segment, is_speech, summarise


@pytest.mark.parametrize(
    ("no_speech_prob", "avg_logprob", "speech"),
    [
        (0.9, -1.5, False),  # likely silence and unsure: Whisper's hallucination on silence
        (0.9, -0.5, True),  # likely silence but confident: kept
        (0.1, -2.0, True),  # unsure but likely speech: kept
        (NO_SPEECH_THRESHOLD, -1.5, True),  # the cut-offs are strict
        (0.9, LOGPROB_THRESHOLD, True),
    ],
)
def test_a_segment_is_dropped_only_when_both_signals_say_silence(
    no_speech_prob: float, avg_logprob: float, speech: bool
) -> None:
    assert is_speech(Segment("Hello.", no_speech_prob, avg_logprob)) is speech


def test_no_segments_reads_as_certain_silence() -> None:
    heard = summarise([])
    assert (heard.text, heard.no_speech_prob, heard.avg_logprob) == ("", 1.0, -10.0)


def test_dropped_segments_lose_their_text_but_keep_their_signals() -> None:
    heard = summarise(
        [
            Segment(" I'd like to book ", 0.1, -0.25),
            Segment(" Thank you.", 0.95, -1.75),
            Segment("for Tuesday. ", 0.2, -0.5),
        ]
    )
    assert heard.text == "I'd like to book for Tuesday."
    assert heard.no_speech_prob == 0.95
    assert heard.avg_logprob == pytest.approx((-0.25 - 1.75 - 0.5) / 3)


def test_only_silence_gives_empty_text_with_the_worst_signal() -> None:
    heard = summarise([Segment(" you", 0.8, -1.2)])
    assert heard.text == "" and heard.no_speech_prob == 0.8


@pytest.mark.parametrize("text", [" .", "...", " ?! ", ""])
def test_a_segment_without_a_word_is_never_speech_however_sure(text: str) -> None:
    assert is_speech(Segment(text, 0.01, -0.1)) is False
    assert summarise([Segment(text, 0.01, -0.1), Segment(" Yes.", 0.05, -0.2)]).text == "Yes."


def test_a_short_window_decode_that_says_the_same_words_twice_is_redone() -> None:
    from shared.stt.faster_whisper import _repeats

    assert _repeats("How much does the cleaning cost? How much does the cleaning cost?")
    assert not _repeats("What are your opening hours on Monday?")
    assert not _repeats("No, no, no, no.")  # four words, said once
    assert not _repeats("I need to book, I need to")  # three words twice is still speech
