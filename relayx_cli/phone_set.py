"""The phone-band test set (tests/data/phone_set): caller lines with what each caller really said.

`relayx bench --set phone` plays it; scripts/make_phone_set.py rebuilt it. The audio is committed and
never re-synthesised here, so every run hears the same bytes. Each line is one μ-law 8 kHz file
(a pause inside a line is line noise in the file, so the wire carries it as a real pause) and one
reference string, however many sentences or pauses it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.telephony.virtual_phone import CallerLine

SET_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "phone_set"
MANIFEST = "manifest.json"
OVERLAPS = ("backchannel", "interruption")
"""How a line spoken over the agent is meant: a short "okay" that should not stop it, or a real
interruption that should."""


class PhoneSetError(ValueError):
    """The manifest or an audio file of the set is missing or malformed."""


@dataclass(frozen=True)
class SetLine:
    """One caller line of the set."""

    id: str
    file: str
    reference: str
    tags: tuple[str, ...] = ()
    pauses_s: tuple[float, ...] = ()
    overlap: str | None = None
    """None: said after the agent's reply; else one of OVERLAPS, said over it."""
    over_agent_after_ms: int | None = None
    """For an overlap: how long after the agent's reply was first heard the caller starts."""
    repeat_of: str | None = None
    """The id of an earlier line asking the same thing in other words."""
    duration_s: float = 0.0


@dataclass(frozen=True)
class SetCall:
    """One call of the set: one voice, its line noise, its lines in order."""

    id: str
    voice: str
    bed: str
    lines: tuple[SetLine, ...]


@dataclass(frozen=True)
class PhoneSet:
    root: Path
    calls: tuple[SetCall, ...]
    sample_rate: int = 8000
    encoding: str = "audio/x-mulaw"

    @property
    def lines(self) -> list[SetLine]:
        return [line for call in self.calls for line in call.lines]

    def audio(self, name: str) -> bytes:
        path = self.root / name
        if not path.is_file():
            raise PhoneSetError(f"{path} is missing (rebuild the set with scripts/make_phone_set.py)")
        return path.read_bytes()

    def caller_lines(self, call: SetCall) -> list[CallerLine]:
        """The call's lines as the bench caller says them (text = the reference)."""
        return [CallerLine(line.reference, self.audio(line.file), barge_in_after_ms=line.over_agent_after_ms)
                for line in call.lines]


def _line(raw: dict[str, Any]) -> SetLine:
    overlap = raw.get("overlap")
    if overlap is not None and overlap not in OVERLAPS:
        raise PhoneSetError(f"line {raw.get('id')}: overlap {overlap!r} is not one of {OVERLAPS}")
    if overlap is not None and not raw.get("over_agent_after_ms"):
        raise PhoneSetError(f"line {raw.get('id')}: an overlap needs over_agent_after_ms")
    try:
        return SetLine(
            id=str(raw["id"]), file=str(raw["file"]), reference=str(raw["reference"]),
            tags=tuple(raw.get("tags") or ()), pauses_s=tuple(float(p) for p in raw.get("pauses_s") or ()),
            overlap=overlap, over_agent_after_ms=raw.get("over_agent_after_ms"), repeat_of=raw.get("repeat_of"),
            duration_s=float(raw.get("duration_s") or 0.0),
        )
    except KeyError as exc:
        raise PhoneSetError(f"a line of the manifest lacks {exc}") from None


def load(root: Path = SET_DIR) -> PhoneSet:
    """Read the manifest (the audio is read when a call is played)."""
    path = root / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PhoneSetError(f"cannot read {path}: {exc}") from exc
    calls = tuple(
        SetCall(id=str(c["id"]), voice=str(c["voice"]["name"]), bed=str(c["bed"]),
                lines=tuple(_line(x) for x in c["lines"]))
        for c in raw["calls"]
    )
    return PhoneSet(root=root, calls=calls, sample_rate=int(raw["sample_rate"]), encoding=str(raw["encoding"]))
