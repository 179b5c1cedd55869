"""Scoring a call against what its caller really said: word errors, turns split or merged, repeated
replies, refusals, and what the agent did when the caller spoke over it. Pure: no I/O, no clock.

The stored caller lines of a call are compared with the reference lines as one text, so the word
error rate does not depend on where the gateway cut the turns. Where it cut them is read from the
same word alignment: a reference line whose words landed in two stored lines was split (a caller's
mid-thought pause taken for the end of the turn); a stored line holding words of two reference lines
merged them. Only exactly matching words place a line, so a misheard word cannot fake a split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from relayx_cli.voice_bench import Overlap, pct

# --- words (tests/support/wer.py scores with these too: one normalisation for tests and bench) --------

_ONES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
]  # fmt: skip
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> list[str]:
    """English words for 0 ≤ n < 1 000 000 ("80" and "eighty" must count as the same word)."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + (number_words(n % 10) if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    if n < 1_000_000:
        return [*number_words(n // 1000), "thousand"] + (number_words(n % 1000) if n % 1000 else [])
    return list(str(n))


def normalize(text: str) -> list[str]:
    """Lower-case words without punctuation; digits spelled out; "don't" → dont; "a.m." → am."""
    text = text.lower().replace("'", "").replace("’", "")
    text = re.sub(r"(?<=[a-z])\.(?=[a-z])", "", text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    words: list[str] = []
    for token in re.findall(r"[a-z]+|\d+", text):
        words += number_words(int(token)) if token.isdigit() else [token]
    return words


def align(reference: list[str], hypothesis: list[str]) -> tuple[int, list[tuple[int, int]]]:
    """Levenshtein alignment over words: (errors, pairs of (reference index, hypothesis index) that
    match exactly)."""
    n, m = len(reference), len(hypothesis)
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        cost[i][0] = i
    for j in range(m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j] + 1, cost[i][j - 1] + 1,
                             cost[i - 1][j - 1] + (reference[i - 1] != hypothesis[j - 1]))
    matches: list[tuple[int, int]] = []
    i, j = n, m
    while i > 0 and j > 0:
        same = reference[i - 1] == hypothesis[j - 1]
        if cost[i][j] == cost[i - 1][j - 1] + (not same):
            if same:
                matches.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return cost[n][m], matches[::-1]


@dataclass
class TurnScore:
    """A call's caller side against its references."""

    reference_words: int
    errors: int
    rows_of_line: list[set[int]]
    """For each reference line, the stored caller lines its words were heard in."""
    lines_of_row: list[set[int]] = field(default_factory=list)

    @property
    def wer(self) -> float | None:
        return self.errors / self.reference_words if self.reference_words else None

    @property
    def split(self) -> list[int]:
        """Reference lines stored as more than one caller line."""
        return [i for i, rows in enumerate(self.rows_of_line) if len(rows) > 1]

    @property
    def merged(self) -> list[int]:
        """Reference lines stored in one caller line together with another reference line."""
        return sorted({i for lines in self.lines_of_row if len(lines) > 1 for i in lines})

    @property
    def missing(self) -> list[int]:
        """Reference lines none of whose words were stored."""
        return [i for i, rows in enumerate(self.rows_of_line) if not rows]

    @property
    def wrong(self) -> list[int]:
        return sorted(set(self.split) | set(self.merged))


def score_turns(references: list[str], stored: list[str]) -> TurnScore:
    """Compare the caller lines a call stored (in order) with the lines the caller said."""
    ref_words: list[str] = []
    ref_line: list[int] = []
    for i, text in enumerate(references):
        words = normalize(text)
        ref_words += words
        ref_line += [i] * len(words)
    hyp_words: list[str] = []
    hyp_row: list[int] = []
    for r, text in enumerate(stored):
        words = normalize(text)
        hyp_words += words
        hyp_row += [r] * len(words)
    errors, matches = align(ref_words, hyp_words)
    rows_of_line: list[set[int]] = [set() for _ in references]
    lines_of_row: list[set[int]] = [set() for _ in stored]
    for ri, hi in matches:
        rows_of_line[ref_line[ri]].add(hyp_row[hi])
        lines_of_row[hyp_row[hi]].add(ref_line[ri])
    # A line stored out of order (a backchannel's row written after the next line's) falls out of the
    # alignment: place a line nothing matched on a row nothing matched that says exactly its words.
    for i, text in enumerate(references):
        if rows_of_line[i] or not normalize(text):
            continue
        row = next((r for r, t in enumerate(stored) if not lines_of_row[r] and normalize(t) == normalize(text)), None)
        if row is not None:
            rows_of_line[i].add(row)
            lines_of_row[row].add(i)
    return TurnScore(reference_words=len(ref_words), errors=errors, rows_of_line=rows_of_line,
                     lines_of_row=lines_of_row)


# --- the agent's lines ---------------------------------------------------------------------------


def repeated(agent_lines: list[str]) -> list[int]:
    """Agent lines that say, word for word (case and punctuation aside), what an earlier one said."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for i, text in enumerate(agent_lines):
        words = tuple(normalize(text))
        if not words:
            continue
        if words in seen:
            out.append(i)
        seen.add(words)
    return out


_REFUSAL = re.compile(
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:'t|not)|cannot|(?:am|'m) (?:unable|not able))"
    r"|\bI can(?:'t|not)(?: really)? (?:help|assist)(?: you)? with (?:that|this|your request)"
    r"|\bI(?:'m| am) (?:unable|not able) to (?:help|assist)"
    r"|\bI can(?:'t|not) (?:provide|fulfil+|answer) (?:that|this)"
    r"|\bas an AI\b",
    re.IGNORECASE,
)


def refusals(agent_lines: list[str]) -> list[int]:
    """Agent lines that refuse ("I'm sorry, but I can't assist with that", "As an AI…")."""
    return [i for i, text in enumerate(agent_lines) if _REFUSAL.search(text.replace("’", "'"))]


# --- figures over calls --------------------------------------------------------------------------


def call_scores(references: list[str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One call's caller-side and agent-side scores from its stored rows (speaker, text, metrics)."""
    caller = [r for r in rows if r["speaker"] == "caller"]
    agent = [r["text"] for r in rows if r["speaker"] == "agent"]
    turns = score_turns(references, [r["text"] for r in caller])
    rep, ref = repeated(agent), refusals(agent)
    return {
        "reference_words": turns.reference_words,
        "word_errors": turns.errors,
        "wer": turns.wer,
        "lines": len(references),
        "split": turns.split,
        "merged": turns.merged,
        "missing": turns.missing,
        "wrong": turns.wrong,
        "end_of_turn_ms": [r["metrics"]["end_of_turn_ms"] for r in caller if "end_of_turn_ms" in r["metrics"]],
        "stored_backchannels": sum(1 for r in caller if r["metrics"].get("backchannel")),
        "agent_lines": len(agent),
        "repeated_replies": [agent[i] for i in rep],
        "refusals": [agent[i] for i in ref],
        "stored_lines_of_reference": [sorted(s) for s in turns.rows_of_line],
        "caller_rows": [r["text"] for r in caller],
    }


def overlap_figures(overlaps: list[Overlap]) -> dict[str, Any]:
    """What the agent did when the caller spoke over it (`Overlap` records from the phone side)."""

    def figures(kind: str) -> dict[str, Any]:
        mine = [o for o in overlaps if o.kind == kind]
        over = [o for o in mine if o.over_agent]
        cleared = [o for o in over if o.clear_at is not None]
        ms = [v for o in cleared if (v := o.onset_to_clear_ms) is not None]
        return {
            "lines": len(mine),
            "over_agent": len(over),
            "cleared": len(cleared),
            "onset_to_clear_ms": {"p50": pct(ms, 50), "max": max(ms, default=None),
                                  "each": [round(v) for v in ms]},
            "resumed_after_clear": sum(1 for o in cleared if o.resumed),
            "played_on": len(over) - len(cleared),
        }

    every = [v for o in overlaps if o.over_agent and (v := o.onset_to_clear_ms) is not None]
    return {
        "backchannel": figures("backchannel"),
        "interruption": figures("interruption"),
        "onset_to_clear_ms": {"p50": pct(every, 50), "max": max(every, default=None)},
    }


def set_summary(references: list[list[str]], rows: list[list[dict[str, Any]]], overlaps: list[Overlap],
                tags: list[list[tuple[str, ...]]] | None = None) -> dict[str, Any]:
    """The whole set: WER over every stored caller line, share of lines split or merged,
    end-of-turn p50, repeated replies, refusals, overlaps; and each call's detail.

    `tags` (per call, per line) names the lines that carry a mid-thought pause ("pause"): how many of
    them were split is the figure a pause-tolerant turn-taker is judged on."""
    per_call = [call_scores(r, x) for r, x in zip(references, rows, strict=True)]
    tags = tags or [[() for _ in r] for r in references]
    pause = [(c, i) for c, call in enumerate(tags) for i, t in enumerate(call) if "pause" in t]
    words = sum(c["reference_words"] for c in per_call)
    lines = sum(c["lines"] for c in per_call)
    eot = [float(v) for c in per_call for v in c["end_of_turn_ms"]]
    return {
        "wer": round(sum(c["word_errors"] for c in per_call) / words, 4) if words else None,
        "reference_words": words,
        "lines": lines,
        "split_wrongly": sum(len(c["wrong"]) for c in per_call),
        "split_wrongly_share": round(sum(len(c["wrong"]) for c in per_call) / lines, 4) if lines else None,
        "split": sum(len(c["split"]) for c in per_call),
        "merged": sum(len(c["merged"]) for c in per_call),
        "missing": sum(len(c["missing"]) for c in per_call),
        "pause_lines": len(pause),
        "pause_lines_split": sum(1 for c, i in pause if i in per_call[c]["split"]),
        "end_of_turn_ms_p50": pct(eot, 50),
        "repeated_replies": sum(len(c["repeated_replies"]) for c in per_call),
        "refusals": sum(len(c["refusals"]) for c in per_call),
        "stored_backchannels": sum(c["stored_backchannels"] for c in per_call),
        "overlaps": overlap_figures(overlaps),
        "per_call": per_call,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def set_table(s: dict[str, Any]) -> str:
    """The test set's figures, a few readable lines."""
    o = s["overlaps"]
    bc, it = o["backchannel"], o["interruption"]
    wer = "-" if s["wer"] is None else f"{s['wer']:.1%}"
    share = "-" if s["split_wrongly_share"] is None else f"{s['split_wrongly_share']:.0%}"
    return "\n".join([
        (f"caller lines: WER {wer} over {s['reference_words']} words; split wrongly {s['split_wrongly']}/{s['lines']}"
        f" ({share}: {s['split']} split, {s['merged']} merged), {s['missing']} not stored; "
        f"mid-thought pauses split {s['pause_lines_split']}/{s['pause_lines']}"),
        (f"end_of_turn_ms p50 {_ms(s['end_of_turn_ms_p50'])}; repeated replies {s['repeated_replies']}; "
        f"refusals {s['refusals']}; caller lines stored as backchannels {s['stored_backchannels']}"),
        (f"interruptions: {it['over_agent']}/{it['lines']} over the agent, {it['cleared']} cleared, onset→clear "
        f"p50 {_ms(it['onset_to_clear_ms']['p50'])} max {_ms(it['onset_to_clear_ms']['max'])}"),
        (f"backchannels: {bc['over_agent']}/{bc['lines']} over the agent, {bc['played_on']} played on without a clear, "
        f"{bc['cleared']} cleared (onset→clear p50 {_ms(bc['onset_to_clear_ms']['p50'])}), "
        f"{bc['resumed_after_clear']} resumed after the clear"),
        f"all overlaps: onset→clear p50 {_ms(o['onset_to_clear_ms']['p50'])} max {_ms(o['onset_to_clear_ms']['max'])}",
    ])
