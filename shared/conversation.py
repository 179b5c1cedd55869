"""What the agent must not say twice, must not say at all, and which turns the model is shown — pure.

A 0.5B coding model on a plain prompt parrots (five different caller lines answered with one sentence,
word for word) and refuses ordinary lines ("I'm sorry, but I can't assist with that."). The engines
steer away from both while generating (`shared.llm.avoid`): replies stream clause by clause to TTS, so
a check after the reply would come too late. The detectors here measure and log what still gets
through; `trim_history` keeps what the model reads short and recent, where an old reply is less
likely to be copied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shared.llm.base import ChatMessage

HISTORY_MESSAGES = 6
"""Turns the model sees besides the system prompt: the last three exchanges. Older ones mostly give
a small model sentences to copy; the facts it needs are in the system prompt."""
HISTORY_STEP = 4
"""Older turns are dropped this many at a time (two exchanges), so the prompt stays cacheable."""
HISTORY_CHARS = 2400
"""At most this much history text (≈ 600 tokens): a long monologue does not crowd out the prompt."""
AVOID_REPLIES = 8
"""How many of the agent's most recent replies a new reply must not reopen with."""

_SORRY = ("I'm sorry, but", "I'm sorry,", "I am sorry, but", "Sorry, but", "Sorry,", "I apologize, but",
          "I'm afraid")
_CANNOT = ("I can't", "I cannot", "I can not", "I won't be able", "I'm unable", "I am unable", "I'm not able",
           "I am not able")
_CANNOT_DO = ("I can't", "I cannot", "I can not", "I won't be able to", "I'm unable to", "I am unable to",
              "I'm not able to", "I am not able to")


def _apostrophes(phrase: str) -> list[str]:
    """The phrase with every mix of straight and curly apostrophes (a model writes either, even both)."""
    variants = [""]
    for part in phrase.split("'")[:-1]:
        variants = [v + part + mark for v in variants for mark in ("'", "’")]
    return [v + phrase.split("'")[-1] for v in variants]


REFUSAL_PHRASES: tuple[str, ...] = tuple(
    variant
    for phrase in (
        *(f"{sorry} {cannot}" for sorry in _SORRY for cannot in _CANNOT),
        # Measured: with "I can't assist with" masked, the 0.5B model went on with "I can't help you.",
        # "I can't assist that.", "I can't provide that." — so the verb itself is masked.
        *(f"{cannot} {verb}" for cannot in _CANNOT_DO for verb in ("assist", "help", "provide")),
        # The chat model's preamble, not the honest answer to "am I talking to a robot?": "I'm an AI
        # assistant" stays allowed (callers may be owed that disclosure).
        "As an AI", "as an AI", "As an artificial intelligence", "as an artificial intelligence",
        "AI language model", "a language model",
    )
    for variant in _apostrophes(phrase)
)
"""Refusal wordings the engines never let a reply complete (a coding model's habit, not a receptionist's):
"sorry" followed by "I can't", "I can't assist with", "as an AI"."""

_REFUSAL = re.compile(
    r"\b(?:(?:sorry|apologi[sz]e|afraid),? (?:but )?(?:i (?:can ?not|can't|won't|am unable|am not able)|i'm (?:unable|not able))\b"
    r"|(?:can ?not|can't|unable to|not able to|won't be able to) (?:assist|help|provide|comply)\b"
    r"|as an (?:ai|artificial intelligence)\b|language model)",
)
_REPEAT_REQUEST = re.compile(
    r"\b(?:repeat|say (?:that|it) again|say again|come again|pardon|what did you say|didn'?t (?:catch|hear)"
    r"|one more time|once more|sorry\?$|what\?$)",
)
_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def normalize(text: str) -> str:
    """Lower-case words only: "Sure, I'll do that!" and "sure i'll do that" are the same line."""
    return " ".join(_WORDS.findall(text.lower().replace("’", "'")))


def is_repeat(reply: str, earlier: Sequence[str]) -> bool:
    """The reply is, word for word, a line the agent already said in this call."""
    said = normalize(reply)
    return bool(said) and any(normalize(line) == said for line in earlier)


def repeat_rate(replies: Sequence[str]) -> float:
    """Share of a call's replies (after the first) that repeat an earlier one: the parroting measure."""
    if len(replies) < 2:
        return 0.0
    return sum(is_repeat(r, replies[:i]) for i, r in enumerate(replies) if i) / (len(replies) - 1)


def is_refusal(reply: str) -> bool:
    """The reply refuses the way a chat model does ("I can't assist with that", "as an AI")."""
    return bool(_REFUSAL.search(reply.lower().replace("’", "'").strip()))


def asks_to_repeat(caller_line: str) -> bool:
    """The caller asks the agent to say it again: then repeating is the right answer."""
    return bool(_REPEAT_REQUEST.search(caller_line.lower().replace("’", "'").strip()))


def avoid_for(history: Sequence[ChatMessage], caller_line: str, *, replies: int = AVOID_REPLIES) -> list[str]:
    """The agent's recent replies a new reply must not reopen with; none when the caller asks to repeat."""
    if asks_to_repeat(caller_line):
        return []
    said = [m.content for m in history if m.role == "assistant" and m.content.strip()]
    return said[-replies:]


def trim_history(
    messages: Sequence[ChatMessage],
    *,
    keep: int = HISTORY_MESSAGES,
    step: int = HISTORY_STEP,
    max_chars: int = HISTORY_CHARS,
) -> list[ChatMessage]:
    """System messages plus the recent turns: at least `keep` of them (fewer only past `max_chars`).

    Old turns are dropped `step` at a time, not one by one: the engine re-evaluates everything after
    the first token that differs from what its KV cache holds, so a window sliding every turn would
    re-read the whole kept history each turn (a few hundred tokens: ~0.5 s on 2 cores); dropped in
    blocks, the prompt stays a prefix of the next one for `step / 2` exchanges. The newest message is
    always kept, and the kept turns start with a caller line where possible (a reply without its
    question reads as something to continue).
    """
    system = [m for m in messages if m.role == "system"]
    turns = [m for m in messages if m.role != "system"]
    first = max(0, (len(turns) - keep) // step * step)
    while first < len(turns) - 1 and sum(len(m.content) for m in turns[first:]) > max_chars:
        first = min(first + step, len(turns) - 1)
    # Only a cut history starts at a caller line: uncut, its first message is the agent's greeting,
    # which the first turn's prompt (and so the KV cache) holds; dropping it on the second turn made
    # every call's second turn evaluate its whole conversation again.
    while 0 < first < len(turns) - 1 and turns[first].role == "assistant":
        first += 1
    return [*system, *turns[first:]]
