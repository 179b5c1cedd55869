"""Whisper's initial prompt for a call: the text the caller's first words follow.

Whisper reads its prompt as the transcript so far. A list of names ("Ava, Bright Smile Dental,
cleaning.") teaches it spellings; written as the conversation it is in (the business's words, then the
agent's greeting, the line the caller is answering) it also sets the register: a spoken, punctuated
exchange about this business, which is what the caller's turn is. On the bench's 28 phone-band caller
lines (scripts/measure_stt.py) tiny.en made 0.338 word errors per word without a prompt, 0.288 with the
list and 0.274 with this prompt, at no cost in time (the list also made two lines loop and be decoded
again); Whisper base 0.277, 0.271 and 0.243.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_PROMPT_CHARS = 400
"""Whisper keeps at most 223 prompt tokens; a prompt that long also slows every decode. ~100 tokens."""


def initial_prompt(
    *, greeting: str | None, business: str | None = None, expected_answers: Sequence[str] = ()
) -> str | None:
    """The words callers of this agent use (business name, expected answers), then its greeting last,
    nearest the caller's words; None when the agent gives nothing to say."""
    vocabulary = [w.strip() for w in [business or "", *expected_answers] if w and w.strip()]
    parts = []
    if vocabulary:
        parts.append(", ".join(vocabulary) + ".")
    if greeting and greeting.strip():
        parts.append(greeting.strip())
    text = " ".join(parts)
    if not text:
        return None
    return text if len(text) <= MAX_PROMPT_CHARS else text[-MAX_PROMPT_CHARS:].split(" ", 1)[-1]
