"""shared.text: streaming clause splitting and cleaning for speech."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.text import (
    FIRST_CUT_MIN_WORDS,
    HURRY_CUT_MIN_WORDS,
    LONG_CUT_MIN_WORDS,
    ClauseSplitter,
    Continued,
    clean_for_speech,
    split_clauses,
    tts_text,
)


def _split(pieces: list[str], **kwargs: int | None) -> list[list[str]]:
    """Feed pieces one by one; return what came out after each piece, then the flush. The first
    clause's phrase cut is off unless asked for: these tests are about punctuation."""
    kwargs.setdefault("first_cut_min_words", None)
    splitter = ClauseSplitter(**kwargs)  # type: ignore[arg-type]
    return [splitter.feed(p) for p in pieces] + [splitter.flush()]


def _all(pieces: list[str]) -> list[str]:
    return [c for step in _split(pieces) for c in step]


def test_a_sentence_after_a_number_is_emitted_as_soon_as_the_next_token_starts() -> None:
    steps = _split(["We", " open", " at", " 9", ".", " See", " you", " soon", "!"])
    assert steps[4] == []  # the "." alone might still be "9.5"
    assert steps[5] == ["We open at 9."]
    assert steps[-2] == ["See you soon!"] and steps[-1] == []


def test_a_mark_after_a_word_ends_the_clause_with_its_own_token() -> None:
    """Waiting for the token after "nine." cost the caller one decode step on every reply."""
    steps = _split(["We", " open", " at", " nine", ".", " See", " you", " soon", "?"])
    assert steps[4] == ["We open at nine."] and steps[8] == ["See you soon?"]
    assert _all(["Is that", " Dr", ".", " Smith", "?"]) == ["Is that Dr. Smith?"]
    assert _all(["We open", " at 9", ":", "30", " then."]) == ["We open at 9:30 then."]
    # What follows the mark belongs to it, not to the next clause.
    assert _all(["Let me check", ".", "..", " We", " have", " room", "?", "!", "\"", " Yes."]) == [
        "Let me check.", "We have room?", "Yes."
    ]
    assert _all(["It costs a lot", ",", " really", " a", " lot", " of", " money", "."]) == [
        "It costs a lot,", "really a lot of money."
    ]


def _tokens(text: str) -> list[str]:
    """The text as an LLM streams it: words with their leading space."""
    import re

    return re.findall(r" ?\S+", text)


def test_an_unpunctuated_first_clause_is_cut_before_a_phrase_start() -> None:
    steps = _split(_tokens("I'm open on Tuesday afternoon at 3 PM. See you then."),
                   first_cut_min_words=FIRST_CUT_MIN_WORDS)
    out = [c for step in steps for c in step]
    assert out == ["I'm open on Tuesday afternoon", "at 3 PM.", "See you then."]
    assert isinstance(out[0], Continued) and not isinstance(out[1], Continued)
    # Emitted as soon as " at" is known to be a whole word, i.e. when the next token arrives.
    assert steps[6] == ["I'm open on Tuesday afternoon"] and steps[5] == []
    assert tts_text(out[0]) == "I'm open on Tuesday afternoon," and tts_text(out[1]) == "at 3 PM."
    assert " ".join(out) == "I'm open on Tuesday afternoon at 3 PM. See you then."


@pytest.mark.parametrize(
    "text",
    [
        "Eric Johnson is on the first day of March.",  # "on" has three words before it: too soon
        "The price of a cleaning is 80 dollars.",  # "of" binds to the words before it
        "We can attend to that today.",  # "attend" begins with "at" but is not a phrase start
    ],
)
def test_a_first_clause_is_not_cut_where_it_would_sound_wrong(text: str) -> None:
    out = [c for step in _split(_tokens(text), first_cut_min_words=FIRST_CUT_MIN_WORDS) for c in step]
    assert not any(isinstance(c, Continued) for c in out)
    assert " ".join(out) == text


def test_only_the_opening_is_cut() -> None:
    text = "Yes. We are open Monday to Friday from nine to five. We close at noon on Fridays."
    out = [c for step in _split(_tokens(text), first_cut_min_words=FIRST_CUT_MIN_WORDS) for c in step]
    # "Yes." alone is joined with what follows, and the opening cut counts its word.
    assert out == ["Yes. We are open Monday to Friday", "from nine to five.", "We close at noon on Fridays."]
    out = [c for step in _split(_tokens("Sure, I can book that for you today."), first_cut_min_words=4)
           for c in step]
    assert out == ["Sure, I can book that", "for you today."]
    # Where the sentence ends as the phrase start is seen, it is spoken whole.
    out = [c for step in _split(_tokens("Sure, I can book that for you."), first_cut_min_words=4) for c in step]
    assert out == ["Sure, I can book that for you."]
    text = "We are open today. We close at noon on Fridays and on Saturdays."
    out = [c for step in _split(_tokens(text), first_cut_min_words=FIRST_CUT_MIN_WORDS) for c in step]
    assert out == ["We are open today.", "We close at noon on Fridays and on Saturdays."]


def test_a_long_later_clause_is_cut_at_a_phrase_start_only_while_asked() -> None:
    """Beside other calls a reply's next clause is cut, so half of it is heard sooner (`cut_after`)."""
    text = "Sure, please go ahead. We'll be at 12 Main Street from Monday to Friday from 9am to 5pm. Bye."
    shared = [True]
    splitter = ClauseSplitter(cut_after=lambda: LONG_CUT_MIN_WORDS if shared[0] else None)
    out = [c for piece in _tokens(text) for c in splitter.feed(piece)] + splitter.flush()
    # "at" has two words before it: too soon; "from" has six. The rest is under six words each.
    assert out == ["Sure, please go ahead.", "We'll be at 12 Main Street", "from Monday to Friday from 9am to 5pm.",
                   "Bye."]
    assert isinstance(out[1], Continued) and tts_text(out[1]) == "We'll be at 12 Main Street,"
    shared[0] = False  # a call alone: clauses end at punctuation, as before
    splitter = ClauseSplitter(cut_after=lambda: LONG_CUT_MIN_WORDS if shared[0] else None)
    out = [c for piece in _tokens(text) for c in splitter.feed(piece)] + splitter.flush()
    assert out == ["Sure, please go ahead.", "We'll be at 12 Main Street from Monday to Friday from 9am to 5pm.",
                   "Bye."]
    # The first clause keeps its own rule (four words before a phrase start), not the long-clause one
    # (six: "at" has five).
    splitter = ClauseSplitter(cut_after=lambda: LONG_CUT_MIN_WORDS)
    out = [c for piece in _tokens("I'm open on Tuesday afternoon at 3 PM.") for c in splitter.feed(piece)]
    assert out == ["I'm open on Tuesday afternoon", "at 3 PM."]


def test_a_clause_a_reply_waits_for_is_cut_sooner() -> None:
    """While the reply playing is about to run dry, its next clause is cut after three words."""
    text = "Sure, we can do that. How long will it take for you to move your appointments?"
    splitter = ClauseSplitter(cut_after=lambda: LONG_CUT_MIN_WORDS)
    out = [c for piece in _tokens(text) for c in splitter.feed(piece)] + splitter.flush()
    assert out == ["Sure, we can do that.", "How long will it take for you to move your appointments?"]
    splitter = ClauseSplitter(cut_after=lambda: HURRY_CUT_MIN_WORDS)
    out = [c for piece in _tokens(text) for c in splitter.feed(piece)] + splitter.flush()
    assert out == ["Sure, we can do that.", "How long will it take", "for you to move your appointments?"]


async def test_fixed_lines_can_turn_the_cut_off() -> None:
    async def tokens() -> AsyncIterator[str]:
        for piece in _tokens("Your appointment is booked for Tuesday at ten."):
            yield piece

    assert [c async for c in split_clauses(tokens())] == ["Your appointment is booked", "for Tuesday at ten."]
    assert [c async for c in split_clauses(tokens(), first_cut_min_words=None)] == [
        "Your appointment is booked for Tuesday at ten."
    ]


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
    assert _all(["Sure, we can. Yes, we", " can book that for you, and", " it is free."]) == [
        "Sure, we can.",
        "Yes, we can book that for you,",
        "and it is free.",
    ]


def test_a_first_clause_of_one_or_two_words_joins_what_follows() -> None:
    """Spoken alone, "Sure," would only be held until the next clause is written (see FIRST_MIN_WORDS)."""
    assert _all(["Sure, we", " can, yes."]) == ["Sure, we can,", "yes."]
    assert _all(["You're welcome! Have", " a good day."]) == ["You're welcome! Have a good day."]
    assert _all(["Yes."]) == ["Yes."]  # a whole reply of one word is still spoken
    assert _all(["Yes, we open at nine."]) == ["Yes, we open at nine."]
    splitter = ClauseSplitter(first_min_words=1, first_cut_min_words=None)
    assert splitter.feed("Sure, we can.") == ["Sure,", "we can."] and splitter.flush() == []


def test_question_semicolon_and_colon_are_boundaries() -> None:
    assert _all(["Is that right? Good; here is why: it works."]) == [
        "Is that right?",
        "Good;",
        "here is why:",
        "it works.",
    ]


def test_markdown_and_emoji_are_stripped_and_empty_clauses_dropped() -> None:
    assert _all(["**Sure, I can!** 😊 ", "- Call [us](https://x.y) at `555`.\n", "🎉"]) == [
        "Sure, I can!",
        "Call us at 555.",
    ]


def test_newlines_end_list_items() -> None:
    assert _all(["1. Cleaning\n", "2. Whitening\n"]) == ["Cleaning", "Whitening"]


def test_clean_for_speech_keeps_plain_text() -> None:
    assert clean_for_speech("  # Hello   *there*  ") == "Hello there"


def test_ellipsis_is_one_boundary() -> None:
    assert _all(["Let me", " see", "...", " one moment."]) == ["Let me see...", "one moment."]


@pytest.mark.parametrize("cut", [1, 2, 3, 7])
def test_the_result_does_not_depend_on_token_boundaries(cut: int) -> None:
    text = "Hello, this is Ava from Bright Smile Dental. We charge $90.50 for a cleaning; want one?"
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    assert _all(pieces) == _all([text])


async def test_split_clauses_adapts_an_async_token_stream() -> None:
    async def tokens() -> AsyncIterator[str]:
        for piece in ["Hi there, Sam.", " How can", " I help?"]:
            yield piece

    assert [c async for c in split_clauses(tokens())] == ["Hi there, Sam.", "How can I help?"]
