"""The sampling-time guard against parroting and refusals: which next tokens a reply may not take."""

from __future__ import annotations

from shared.llm.avoid import (
    OPENING_MAX_TOKENS,
    AvoidMatcher,
    TokenTrie,
    ends_sentence,
    opening,
    sentences,
)

# A toy vocabulary: token id → text, as a tokenizer would cut "Sure, I'll do that. What's her name?"
PIECES = {1: "Sure", 2: ",", 3: " I", 4: "'ll", 5: " do", 6: " that", 7: ".", 8: " What", 9: "'s",
          10: " her", 11: " name", 12: "?", 13: " it", 14: "Yes", 15: "!", 16: " book"}


def piece(token: int) -> str:
    return PIECES[token]


def walk(matcher: AvoidMatcher, tokens: list[int]) -> list[set[int]]:
    """The banned set before each token, then the token taken."""
    seen = []
    for token in tokens:
        seen.append(matcher.banned())
        matcher.advance(token, ends_sentence=ends_sentence(piece(token)))
    seen.append(matcher.banned())
    return seen


def test_an_earlier_opening_cannot_be_completed_at_the_start_of_a_reply() -> None:
    openings = TokenTrie([[1, 2, 3, 4, 5, 6]])  # "Sure, I'll do that"
    banned = walk(AvoidMatcher(openings, TokenTrie()), [1, 2, 3, 4, 5])
    assert banned[:5] == [set()] * 5
    assert banned[5] == {6}  # " that" would complete it: masked; " it" stays open


def test_an_opening_is_matched_again_after_each_sentence_end_but_not_mid_sentence() -> None:
    openings = TokenTrie([[1, 2, 3]])
    matcher = AvoidMatcher(openings, TokenTrie())
    # "Yes! Sure, I…": a new sentence starts after "!", so the opening applies there too.
    assert walk(matcher, [14, 15, 1, 2])[-1] == {3}
    # "Yes Sure, I…" inside one sentence: not a sentence opening.
    assert walk(AvoidMatcher(openings, TokenTrie()), [14, 1, 2])[-1] == set()


def test_a_reply_that_took_another_word_is_free_of_that_opening() -> None:
    matcher = AvoidMatcher(TokenTrie([[1, 2, 3, 4, 5, 6]]), TokenTrie())
    assert all(not b for b in walk(matcher, [1, 2, 3, 4, 16, 6]))  # "Sure, I'll book that": never banned


def test_a_phrase_is_banned_wherever_it_starts() -> None:
    phrases = TokenTrie([[10, 11]])  # " her name"
    banned = walk(AvoidMatcher(TokenTrie(), phrases), [1, 2, 8, 9, 10])
    assert banned[-1] == {11}
    # Overlapping starts are all followed: "her her name".
    assert walk(AvoidMatcher(TokenTrie(), phrases), [10, 10])[-1] == {11}


def test_a_one_token_phrase_is_banned_from_the_first_step() -> None:
    assert AvoidMatcher(TokenTrie(), TokenTrie([[15]])).banned() == {15}


def test_several_openings_share_a_trie() -> None:
    openings = TokenTrie([[1, 2, 3, 4], [1, 2, 3, 13]])
    assert walk(AvoidMatcher(openings, TokenTrie()), [1, 2, 3])[-1] == {4, 13}


def test_an_opening_is_the_first_clause_without_its_punctuation() -> None:
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # "Sure, I'll do that. What's her name?"
    assert opening(tokens, piece) == [1, 2, 3, 4, 5, 6]  # "Sure," is too short a clause: up to "that"


def test_an_opening_stops_at_the_longest_allowed() -> None:
    tokens = [1, 3, 4, 5, 6, 13, 16, 10, 11, 3, 4]
    assert opening(tokens, piece) == tokens[:OPENING_MAX_TOKENS]


def test_a_one_word_sentence_is_not_an_opening() -> None:
    assert opening([14, 15], piece) == []  # "Yes!"
    assert opening([], piece) == []


def test_sentences_split_a_reply() -> None:
    assert sentences("Sure, I'll do that. What's her name?") == ["Sure, I'll do that.", "What's her name?"]
    assert sentences("  ") == []
    assert sentences("No end") == ["No end"]
