"""Detectors for repeats and refusals, and the history the model is shown — pure, no model."""

from __future__ import annotations

import itertools

from shared.conversation import (
    REFUSAL_PHRASES,
    asks_to_repeat,
    avoid_for,
    is_refusal,
    is_repeat,
    normalize,
    repeat_rate,
    trim_history,
)
from shared.llm.base import ChatMessage

SYSTEM = ChatMessage("system", "You are Ava.")


def test_normalize_ignores_case_punctuation_and_curly_quotes() -> None:
    assert normalize("Sure, I’ll do that!  What's her NAME?") == "sure i'll do that what's her name"


def test_a_reply_said_before_is_a_repeat_in_any_punctuation() -> None:
    earlier = ["Sure, I'll do that. What's her name?", "We open at nine."]
    assert is_repeat("sure i'll do that, what's her name", earlier)
    assert not is_repeat("Sure, I'll do that. What's his name?", earlier)
    assert not is_repeat("", earlier) and not is_repeat("...", [""])


def test_repeat_rate_counts_replies_after_the_first() -> None:
    assert repeat_rate(["A b.", "A b!", "C d.", "a B"]) == 2 / 3
    assert repeat_rate(["only one"]) == 0.0


def test_chat_model_refusals_are_detected() -> None:
    for line in ["I'm sorry, but I can't assist with that.", "I’m sorry, but I can’t cancel that.",
                 "I cannot help with that.", "As an AI, I don't have a phone.",
                 "I apologize, but as an artificial intelligence language model, I do not have access.",
                 "Hi, I can't help you.", "Hi, I can't provide that.",
                 "I'm sorry, I am unable to do that", "Sorry, I can't help you with this."]:
        assert is_refusal(line), line


def test_ordinary_replies_are_not_refusals() -> None:
    for line in ["I can't see a free slot on Tuesday; would Wednesday suit you?",
                 "I'm sorry to hear that. When would you like to come in?",
                 "Sure, I can help you with that.", "Our AI assistant line is open all day.",
                 "Yes, I'm an AI assistant; I can still book that for you."]:
        assert not is_refusal(line), line


def test_asking_to_repeat_is_recognised() -> None:
    for line in ["Sorry, could you repeat that?", "Can you say that again?", "Pardon?", "What?",
                 "I didn't catch that."]:
        assert asks_to_repeat(line), line
    assert not asks_to_repeat("I'd like to book a cleaning.")


def test_avoid_holds_the_agents_recent_replies_unless_the_caller_asks_to_repeat() -> None:
    history = [SYSTEM, ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello, how can I help?"),
               ChatMessage("user", "A cleaning"), ChatMessage("assistant", "Sure, which day?")]
    assert avoid_for(history, "Tuesday") == ["Hello, how can I help?", "Sure, which day?"]
    assert avoid_for(history, "Tuesday", replies=1) == ["Sure, which day?"]
    assert avoid_for(history, "Sorry, can you repeat that?") == []


def _turns(n: int, size: int = 10) -> list[ChatMessage]:
    return [ChatMessage("user" if i % 2 == 0 else "assistant", f"{i} " + "x" * size) for i in range(n)]


def test_trim_keeps_the_system_prompt_and_the_last_turns() -> None:
    turns = _turns(13)
    trimmed = trim_history([SYSTEM, *turns], keep=6, step=4)
    assert trimmed[0] == SYSTEM
    assert trimmed[1:] == turns[4:]  # 13 - 6 = 7 → the oldest 4 go (whole steps): 9 kept
    assert trimmed[1].role == "user"


def test_trim_drops_old_turns_in_steps_so_the_prompt_stays_a_prefix() -> None:
    # The gateway's context before each caller line: the kept history only changes every 2 exchanges.
    turns = _turns(20)
    kept = [trim_history([SYSTEM, *turns[:n]], keep=6, step=4) for n in range(2, 21, 2)]
    changes = sum(1 for a, b in itertools.pairwise(kept) if b[: len(a)] != a)
    assert changes <= len(kept) // 2
    assert all(6 <= len(k) - 1 <= 9 for k in kept if len(k) > 7)


def test_trim_respects_the_character_budget_but_keeps_the_newest_message() -> None:
    turns = _turns(7, size=100)
    trimmed = trim_history([SYSTEM, *turns], keep=6, max_chars=250)
    assert trimmed[-1] == turns[-1] and len(trimmed) <= 3
    huge = ChatMessage("user", "y" * 10_000)
    assert trim_history([SYSTEM, *turns, huge], max_chars=250) == [SYSTEM, huge]


def test_trim_leaves_a_short_history_alone() -> None:
    messages = [SYSTEM, ChatMessage("user", "Hi")]
    assert trim_history(messages) == messages


def test_refusal_phrases_cover_straight_and_curly_apostrophes() -> None:
    # Masked with only straight ones, the 0.5B model wrote "I'm sorry, but I can’t assist with that."
    for phrase in ["I'm sorry, but I can't", "I’m sorry, but I can’t", "I'm sorry, but I can’t", "Sorry, I cannot"]:
        assert phrase in REFUSAL_PHRASES, phrase
    assert all(is_refusal(phrase + " that.") for phrase in REFUSAL_PHRASES if "AI" not in phrase)
