"""shared.llm.llama_batch's cache bookkeeping: which slot a prompt takes and when a trim is a shift.

Pure token lists, no model: the engine's integration tests run the same rules on llama.cpp.
"""

from __future__ import annotations

from shared.llm.llama_batch import SHARE_MIN_TOKENS, _cut_block, _Slot, _slot_fit

SYSTEM = list(range(1000, 1050))
OLD = list(range(2000, 2040))  # the turns trim_history drops
KEPT = list(range(3000, 3060))  # the turns it keeps
NEW = list(range(4000, 4010))  # the new caller line


def test_a_trimmed_conversation_is_found_as_a_cut_block() -> None:
    held = SYSTEM + OLD + KEPT
    cut = _cut_block(held, SYSTEM + KEPT + NEW)
    assert cut == (len(SYSTEM), len(SYSTEM) + len(OLD), len(held))


def test_a_prompt_that_only_extends_the_conversation_is_not_a_cut() -> None:
    held = SYSTEM + OLD + KEPT
    assert _cut_block(held, held + NEW) is None
    assert _cut_block(held, held) is None


def test_too_little_kept_after_the_cut_is_not_a_cut() -> None:
    held = SYSTEM + OLD + KEPT[: SHARE_MIN_TOKENS - 1]
    assert _cut_block(held, SYSTEM + KEPT + NEW) is None


def test_another_calls_conversation_is_not_a_cut() -> None:
    other = SYSTEM + list(range(5000, 5100))
    assert _cut_block(other, SYSTEM + KEPT + NEW) is None


def test_the_calls_own_trimmed_slot_comes_before_another_calls() -> None:
    prompt = SYSTEM + KEPT + NEW
    own = _Slot(seq=0, tokens=SYSTEM + OLD + KEPT)
    other = _Slot(seq=1, tokens=SYSTEM + list(range(5000, 5030)))
    assert max((other, own), key=lambda s: _slot_fit(s, prompt)) is own
    # An empty slot loses nothing either, but the own one already holds the kept turns.
    empty = _Slot(seq=2)
    assert max((empty, own), key=lambda s: _slot_fit(s, prompt)) is own
