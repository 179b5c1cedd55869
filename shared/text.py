"""Turn a stream of LLM tokens into speakable clauses, as early as each clause is complete.

TTS starts on the first clause, not the whole reply, so the splitter must emit as soon as a boundary
is certain: a `.` after a digit only counts once the next character shows it is not a decimal (3.5),
nor a `:` a time (8:30); after a word (not an abbreviation: Dr., e.g.) a mark is taken at once, as
waiting for the token after it cost the caller one more decode step (~30 ms) on every reply. Commas
split only after a few words, so the first clause is short enough to arrive fast but long enough to
sound natural.

The first clause of a reply is what the caller waits for: every token of it is written, and all of it
synthesised, before the first sound. A reply is often one sentence ("I'm open on Tuesday afternoon
at 3 PM."), so while the reply's opening is short a clause with no comma is cut where a new phrase
begins, before a conjunction or a preposition ("…afternoon" | "at 3 PM."), once it has a few words.
A first clause of one or two words ("Sure,") is not spoken alone: it is joined with what follows
(and the cut then applies to the whole). The cut part is a `Continued` clause: spoken as if a comma
followed it (a phrase break's rising tone, not a sentence's fall), and stored as written. Beside other
calls a later clause is cut the same way once it is long, and sooner while the playing reply is
about to run dry (`cut_after`): a playing reply waits for it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable

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
PHRASE_STARTS = frozenset(
    {
        "and", "but", "or", "so", "because", "since", "if", "when", "while", "where", "which", "who",
        "whose", "after", "before", "until", "unless", "at", "on", "in", "for", "with", "from", "about",
        "during", "between", "than", "then", "though", "although",
    }
)
"""Words that begin a new phrase: a first clause may be cut before one (never before "of", "to" or an
article, which bind to the words before them)."""
FIRST_MIN_WORDS = 3
"""Words the first clause of a reply has at least: "Sure," or "Yes." alone is joined with what follows.
Spoken alone it reached the caller fast and then held the reply: the start waits until the next
clause's words are written (`voice_gateway.assurance`), and those were written while the short one
was synthesised. On the phone set, one call, replies that opened with "Sure,", "Yes." or "You're
welcome!" were held 180–700 ms after their first audio was ready (p50 ≈ 320 ms)."""
FIRST_CUT_MIN_WORDS = 4
"""Words a first clause has before it may be cut at a phrase start: "I'm open" alone says too little
to sound like a start, and three words save little."""
LONG_CUT_MIN_WORDS = 6
"""Words any later clause has before it may be cut at a phrase start while the machine is shared
(`ClauseSplitter`'s `cut_after`)."""
HURRY_CUT_MIN_WORDS = 3
"""Words a later clause has before it may be cut at a phrase start while the reply playing is about
to run dry: "How long will it take" | "for you to move…", "I'll check in" | "and see if…"."""


class Continued(str):
    """A clause cut before its sentence ended: TTS speaks it with a comma after it (see `tts_text`)."""


def tts_text(clause: str) -> str:
    """What TTS is given for a clause: a `Continued` one gets the comma its phrase break implies."""
    return f"{clause}," if isinstance(clause, Continued) else clause


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

    def __init__(
        self, min_words_for_comma: int = 4, *, first_min_words: int = FIRST_MIN_WORDS,
        first_cut_min_words: int | None = FIRST_CUT_MIN_WORDS, cut_after: Callable[[], int | None] | None = None,
    ) -> None:
        self.min_words_for_comma = min_words_for_comma
        self.cut_after = cut_after
        """Asked whenever a later clause is unfinished: the words it needs before it may be cut at a
        phrase start now (None: not now). A reply playing beside other calls waits for each next
        clause: its words one shared decode step at a time, then one TTS job, which holds a core for as
        long as the clause is (≈ 0.35 s on one core for "We'll be at 12 Main Street from Monday to
        Friday from 9am to 5pm."). Half of it arrives sooner, and the shorter job keeps every other
        call's reply waiting less (`LONG_CUT_MIN_WORDS`; fewer, `HURRY_CUT_MIN_WORDS`, while the
        playing reply is about to run dry)."""
        self.first_cut_min_words = first_cut_min_words
        """Cut an unpunctuated first clause at a phrase start after this many words (None: never)."""
        self.first_min_words = first_min_words
        """Words the first clause has at least, whatever punctuation ends it (see FIRST_MIN_WORDS)."""
        self._emitted = 0
        self._words_out = 0
        self._buffer = ""
        self._marks_follow = False

    def feed(self, piece: str) -> list[str]:
        """Add one token piece; return clauses that are now certainly complete (cleaned, non-empty)."""
        self._buffer += piece
        if self._marks_follow:
            # A clause ended on the last character of a piece: marks that arrive next ("?!", the rest of
            # "...", a closing quote) belong to it, and are not the start of the next one.
            rest = self._buffer.lstrip(_STRONG.replace("\n", "") + _CLOSERS + ",")
            self._marks_follow = not rest
            self._buffer = rest
        out: list[str] = []
        start = 0
        # A mark at the very end is judged now only where nothing that may follow could change it
        # (`_boundary_end`); otherwise it waits for the next piece (3. -> 3.5).
        for i in range(len(self._buffer)):
            if i < start:
                continue
            end = self._boundary_end(self._buffer, start, i)
            if end is not None:
                out.append(self._buffer[start:end])
                start = end
                self._emitted += 1
        self._buffer = self._buffer[start:]
        if out or self._buffer:
            self._marks_follow = bool(out) and not self._buffer
        cleaned = [c for c in (clean_for_speech(c) for c in out) if _speakable(c)]
        if not cleaned and (cut := self._opening_cut()) is not None:
            head, self._buffer = self._buffer[:cut], self._buffer[cut:]
            text = clean_for_speech(head)
            if _speakable(text):
                self._emitted += 1
                cleaned = [Continued(text)]
        self._words_out += sum(len(c.split()) for c in cleaned)
        return cleaned

    def _opening_cut(self) -> int | None:
        """Where the unfinished clause may be cut while the reply's opening is still short (fewer than
        `first_cut_min_words` words out: the first clause, or the one after "Sure,"): before a
        phrase-starting word that is complete (whitespace after it) with that many words before it.
        After a one-word "Sure," the caller hears half a second of audio while the next clause is
        written, so that clause is the one that must come fast. Past the opening, the same cut with
        as many words as `cut_after` says."""
        if self.first_cut_min_words is not None and self._words_out < self.first_cut_min_words:
            least = self.first_cut_min_words
        elif self.cut_after is not None and self._emitted > 0 and (after := self.cut_after()) is not None:
            least = after
        else:
            return None
        words = list(re.finditer(r"\S+", self._buffer))
        # The last word may still grow ("at" → "attend"): only words with whitespace after them count.
        if words and words[-1].end() == len(self._buffer):
            words.pop()
        for n, word in enumerate(words):
            if n >= least and word.group().lower() in PHRASE_STARTS:
                before = self._buffer[: word.start()].rstrip()
                if before and before[-1].isalnum():  # not after a dash, a quote, an open bracket
                    return word.start()
        return None

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
        if j == len(text):
            if not (i > start and text[i - 1].isalpha()):
                return None  # undecided yet: 3. may be 3.5, 8: may be 8:30, 1, may be 1,000
        elif not text[j].isspace():
            return None  # 3.5, 8:30, 1,000, "..." still going
        before = text[start:i]
        words = before.split()
        if not words:
            return None
        if self._emitted == 0 and len(words) < self.first_min_words:
            return None  # "Sure," alone: it is joined with the words that follow
        if char == "," and self._emitted > 0:
            return j if len(words) >= self.min_words_for_comma else None
        if char == ".":
            last = words[-1].lower().lstrip("(\"'*_")
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha() and last != "i"):
                return None  # Dr. Smith, e.g. this, middle initial J. Doe
            if len(words) == 1 and last.isdigit():
                return None  # "1. " starts a list item
        return j


def ends_sentence(clause: str) -> bool:
    """Whether a clause from `ClauseSplitter` closes a sentence (. ! ?), not a phrase (, ; :) or a cut."""
    if isinstance(clause, Continued):
        return False
    text = clause.rstrip().rstrip(_CLOSERS)
    return bool(text) and text[-1] in ".!?"


def _speakable(clause: str) -> bool:
    return any(ch.isalnum() for ch in clause)


async def split_clauses(
    tokens: AsyncIterator[str], min_words_for_comma: int = 4, *,
    first_cut_min_words: int | None = FIRST_CUT_MIN_WORDS, cut_after: Callable[[], int | None] | None = None,
) -> AsyncGenerator[str, None]:
    """Async adapter: LLM token stream in, clause stream out. A fixed line, synthesised whole ahead of
    need, passes `first_cut_min_words=None`: nobody waits on its first clause."""
    splitter = ClauseSplitter(min_words_for_comma, first_cut_min_words=first_cut_min_words, cut_after=cut_after)
    async for piece in tokens:
        for clause in splitter.feed(piece):
            yield clause
    for clause in splitter.flush():
        yield clause
