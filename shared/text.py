"""Turn a stream of LLM tokens into speakable clauses, as early as each clause is complete.

TTS starts on the first clause, not the whole reply, so the splitter must emit as soon as a boundary
is certain: a `.` only counts once the next character shows it is not a decimal (3.5), a time (8:30)
or an abbreviation (Dr., e.g.). Commas split only after a few words, so the first clause is short
enough to arrive fast but long enough to sound natural.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "jr",
        "sr",
        "vs",
        "etc",
        "inc",
        "ltd",
        "co",
        "corp",
        "approx",
        "ave",
        "apt",
        "dept",
        "est",
        "fig",
        "mt",
        "rd",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "u.s",
        "u.k",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    ]
)
_STRONG = ".!?;:\n"
_CLOSERS = "*_`)]\"'\u201d\u2019"
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U00002b00-\U00002bff\ufe0f\u200d\u20e3]+", re.UNICODE
)
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARKUP = re.compile(r"^\s*(?:#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)", re.MULTILINE)
_INLINE_MARKUP = re.compile(r"(\*\*|__|\*|`+|~~)")
_SPACES = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Remove what a TTS would read aloud literally: markdown marks, links' URLs, emoji."""
    text = _EMOJI.sub("", _LINK.sub(r"\1", text)).strip()
    text = _LINE_MARKUP.sub("", text)
    text = _INLINE_MARKUP.sub("", text)
    return _SPACES.sub(" ", text).strip()


class ClauseSplitter:
    """Accumulates token pieces; `feed` returns the clauses completed so far, `flush` the rest."""

    def __init__(self, min_words_for_comma: int = 4, *, first_min_words_for_comma: int = 1) -> None:
        self.min_words_for_comma = min_words_for_comma
        # The first clause gates the reply's latency: "Sure," alone is a natural thing to say first,
        # and speaking it while the rest is generated saves the whole rest of the sentence's tokens.
        self.first_min_words_for_comma = first_min_words_for_comma
        self._emitted = 0
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        """Add one token piece; return clauses that are now certainly complete (cleaned, non-empty)."""
        self._buffer += piece
        out: list[str] = []
        start = 0
        # The last character can't be judged until the next one arrives (3. -> 3.5), so stop before it.
        for i in range(len(self._buffer) - 1):
            if i < start:
                continue
            end = self._boundary_end(self._buffer, start, i)
            if end is not None:
                out.append(self._buffer[start:end])
                start = end
                self._emitted += 1
        self._buffer = self._buffer[start:]
        return [c for c in (clean_for_speech(c) for c in out) if _speakable(c)]

    def flush(self) -> list[str]:
        """End of the reply: whatever is left is the last clause."""
        rest, self._buffer = clean_for_speech(self._buffer), ""
        return [rest] if _speakable(rest) else []

    def _boundary_end(self, text: str, start: int, i: int) -> int | None:
        """If text[i] ends a clause, the index just past it (and any closing marks), else None."""
        char = text[i]
        if char == "\n":
            return i + 1 if text[start:i].strip() else None
        if char not in _STRONG and char != ",":
            return None
        j = i + 1
        while j < len(text) and text[j] in _CLOSERS:
            j += 1
        if j == len(text) or not text[j].isspace():
            return None  # undecided yet, or 3.5, 8:30, 1,000, "..." still going
        before = text[start:i]
        words = before.split()
        if not words:
            return None
        if char == ",":
            needed = self.first_min_words_for_comma if self._emitted == 0 else self.min_words_for_comma
            return j if len(words) >= needed else None
        if char == ".":
            last = words[-1].lower().lstrip("(\"'*_")
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha() and last != "i"):
                return None  # Dr. Smith, e.g. this, middle initial J. Doe
            if len(words) == 1 and last.isdigit():
                return None  # "1. " starts a list item
        return j


def _speakable(clause: str) -> bool:
    return any(ch.isalnum() for ch in clause)


async def split_clauses(tokens: AsyncIterator[str], min_words_for_comma: int = 4) -> AsyncIterator[str]:
    """Async adapter: LLM token stream in, clause stream out."""
    splitter = ClauseSplitter(min_words_for_comma)
    async for piece in tokens:
        for clause in splitter.feed(piece):
            yield clause
    for clause in splitter.flush():
        yield clause
