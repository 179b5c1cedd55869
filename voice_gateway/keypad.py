"""Keypad digits from the caller (Media Streams `dtmf` events), collected into one entry.

A caller types a number digit by digit; the agent must read the whole entry, not answer each key.
An entry ends at `#` (not part of it) or when no key came for `timeout_s`. The session asks
`due(now)` on every media chunk (Twilio streams one every 20 ms), so no timer task is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DIGITS = frozenset("0123456789*#ABCD")


@dataclass
class Keypad:
    timeout_s: float
    _digits: list[str] = field(default_factory=list)
    _last: float | None = None

    def press(self, digit: str, now: float) -> str | None:
        """One key; the finished entry when it was `#` (None if nothing was typed before it)."""
        if digit not in DIGITS:
            return None
        if digit == "#":
            return self._take()
        self._digits.append(digit)
        self._last = now
        return None

    def due(self, now: float) -> str | None:
        """The entry, once the caller stopped typing for `timeout_s`."""
        if self._digits and self._last is not None and now - self._last >= self.timeout_s:
            return self._take()
        return None

    @property
    def typing(self) -> bool:
        return bool(self._digits)

    def _take(self) -> str | None:
        entry = "".join(self._digits)
        self._digits.clear()
        self._last = None
        return entry or None


def caller_line(entry: str) -> str:
    """How an entry is stored and shown to the model: plainly marked as keys, not speech."""
    return f"[keypad: {entry}]"
