"""Token sequences a reply must not complete, checked at every sampling step — pure, no model.

Replies stream clause by clause to TTS, so a guard against parroting must act while the reply is
generated, not after it. Two tries of token sequences:

- sentence openings: the first words of every sentence the agent already said in the call (its first
  clause, 3 to 8 tokens, without the closing punctuation). Matched where a sentence starts in the new
  reply: at its first token and after each `.`, `!` or `?`. Measured on the 0.5B model with a plain
  prompt, the parroting is mostly whole sentences: every reply of a call opening "I'm Ava. I'm the one
  you're asking about." or closing "What can I do for you today?".
- phrases: refusal wordings ("I'm sorry, but I can't"), matched wherever they start.

Before each token is sampled, `banned()` names the tokens that would complete a sequence; the engine
masks their logits, so the model takes its next best word there ("Yes, there is parking close by"
instead of "…nearby" once more). Only the last token of a sequence is masked, so a reply always goes on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

OPENING_MIN_TOKENS = 3
"""A sentence opening runs at least this far: "Sure," alone is too common a start to forbid."""
OPENING_MAX_TOKENS = 8
"""…and at most this far: the first clause, or its first words when it is long."""
_CLAUSE_END = (",", ".", "!", "?", ";", ":")
_SENTENCE_END = (".", "!", "?")
_SENTENCES = re.compile(r"[^.!?]+[.!?]*")


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    end: bool = False

    def endings(self) -> set[int]:
        """Tokens that complete a sequence from here."""
        return {token for token, child in self.children.items() if child.end}


class TokenTrie:
    """A set of token sequences, walked one token at a time."""

    def __init__(self, sequences: Iterable[Sequence[int]] = ()) -> None:
        self.root = _Node()
        for sequence in sequences:
            self.add(sequence)

    def add(self, sequence: Sequence[int]) -> None:
        if not sequence:
            return
        node = self.root
        for token in sequence:
            node = node.children.setdefault(token, _Node())
        node.end = True

    def __bool__(self) -> bool:
        return bool(self.root.children)


class AvoidMatcher:
    """Follows one reply as it is generated and says which next tokens would complete a banned sequence."""

    def __init__(self, openings: TokenTrie, phrases: TokenTrie) -> None:
        self._openings = openings
        self._phrases = phrases
        self._sentence: _Node | None = openings.root
        """Where the current sentence stands in `openings`; None once it left every opening."""
        self._partial: list[_Node] = []
        """Nodes of `phrases` reached by some suffix of the reply so far (its root is always implied)."""

    def banned(self) -> set[int]:
        """The tokens the next step must not sample."""
        out = self._sentence.endings() if self._sentence is not None else set()
        for node in (self._phrases.root, *self._partial):
            out |= node.endings()
        return out

    def advance(self, token: int, *, ends_sentence: bool = False) -> None:
        """The reply's next token was sampled; `ends_sentence` when its text ends with . ! or ?."""
        if ends_sentence:
            self._sentence = self._openings.root
        elif self._sentence is not None:
            self._sentence = self._sentence.children.get(token)
        nodes = (self._phrases.root, *self._partial)
        self._partial = [child for node in nodes if (child := node.children.get(token)) is not None]


def sentences(text: str) -> list[str]:
    """The sentences of a reply, stripped ("Sure. What's her name?" → ["Sure.", "What's her name?"])."""
    return [s.strip() for s in _SENTENCES.findall(text) if s.strip()]


def opening(tokens: Sequence[int], piece: Callable[[int], str]) -> list[int]:
    """The first words of a sentence's tokens, which a new sentence may not repeat.

    Its first clause, but at least `OPENING_MIN_TOKENS` and at most `OPENING_MAX_TOKENS`, without the
    punctuation that closes it: masking a final "." would only turn the same words into "!". Empty
    when fewer than two word tokens remain (too common to forbid: "Yes.", "Sure!").
    """
    cut = list(tokens[:OPENING_MAX_TOKENS])
    for i, token in enumerate(cut):
        if i + 1 >= OPENING_MIN_TOKENS and piece(token).rstrip().endswith(_CLAUSE_END):
            cut = cut[: i + 1]
            break
    while cut and not any(ch.isalnum() for ch in piece(cut[-1])):
        cut.pop()
    return cut if len(cut) >= 2 else []


def ends_sentence(text: str) -> bool:
    """A token's text closes a sentence (the next token starts a new one)."""
    return text.rstrip().endswith(_SENTENCE_END)
