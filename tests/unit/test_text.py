"""shared.text: streaming clause splitting and cleaning for speech."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.text import ClauseSplitter, clean_for_speech, split_clauses


def _split(pieces: list[str], **kwargs: int) -> list[list[str]]:
    """Feed pieces one by one; return what came out after each piece, then the flush."""
    splitter = ClauseSplitter(**kwargs)
    return [splitter.feed(p) for p in pieces] + [splitter.flush()]


def _all(pieces: list[str]) -> list[str]:
    return [c for step in _split(pieces) for c in step]


def test_a_sentence_is_emitted_as_soon_as_the_next_token_starts() -> None:
    steps = _split(["We", " open", " at", " nine", ".", " See", " you", " soon", "!"])
    assert steps[4] == []  # the "." alone might still be "9.5"
    assert steps[5] == ["We open at nine."]
    assert steps[-1] == ["See you soon!"]


def test_decimals_times_and_thousands_are_not_split() -> None:
    assert _all(["It costs 3", ".", "5 dollars", " at 8", ":", "30, or 1", ",", "000 in all."]) == [
        "It costs 3.5 dollars at 8:30,",
        "or 1,000 in all.",
    ]


def test_abbreviations_do_not_end_a_clause() -> None:
    text = "Dr. Smith can see you, e.g. on Monday at 9 a.m. Mr. J. Doe too. Thanks."
    assert _all(list(text)) == [
        "Dr. Smith can see you,",
        "e.g. on Monday at 9 a.m. Mr. J. Doe too.",
        "Thanks.",
    ]


def test_commas_split_only_after_enough_words() -> None:
    assert _all(["Sure. Yes, we", " can book that for you, and", " it is free."]) == [
        "Sure.",
        "Yes, we can book that for you,",
        "and it is free.",
    ]


def test_first_clause_may_end_at_an_early_comma() -> None:
    """The first clause gates latency: "Sure," is spoken while the rest is generated."""
    assert _all(["Sure, we", " can, yes."]) == ["Sure,", "we can, yes."]


def test_question_semicolon_and_colon_are_boundaries() -> None:
    assert _all(["Is that right? Good; here is why: it works."]) == [
        "Is that right?",
        "Good;",
        "here is why:",
        "it works.",
    ]


def test_markdown_and_emoji_are_stripped_and_empty_clauses_dropped() -> None:
    assert _all(["**Sure!** 😊 ", "- Call [us](https://x.y) at `555`.\n", "🎉"]) == [
        "Sure!",
        "Call us at 555.",
    ]


def test_newlines_end_list_items() -> None:
    assert _all(["1. Cleaning\n", "2. Whitening\n"]) == ["Cleaning", "Whitening"]


def test_clean_for_speech_keeps_plain_text() -> None:
    assert clean_for_speech("  # Hello   *there*  ") == "Hello there"


def test_ellipsis_is_one_boundary() -> None:
    assert _all(["Well", "...", " let me check."]) == ["Well...", "let me check."]


@pytest.mark.parametrize("cut", [1, 2, 3, 7])
def test_the_result_does_not_depend_on_token_boundaries(cut: int) -> None:
    text = "Hello, this is Ava from Bright Smile Dental. We charge $90.50 for a cleaning; want one?"
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    assert _all(pieces) == _all([text])


async def test_split_clauses_adapts_an_async_token_stream() -> None:
    async def tokens() -> AsyncIterator[str]:
        for piece in ["Hi there.", " How can", " I help?"]:
            yield piece

    assert [c async for c in split_clauses(tokens())] == ["Hi there.", "How can I help?"]
