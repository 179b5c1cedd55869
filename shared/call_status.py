"""Twilio's call lifecycle and the rule that keeps it monotonic under reordered callbacks."""

from __future__ import annotations

from typing import Final

# Twilio's CallStatus values, plus `failed` for calls Twilio refused before dialing.
TERMINAL: Final = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
ALL_STATUSES: Final = ("queued", "initiated", "ringing", "in-progress", *sorted(TERMINAL))

_RANK: Final = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3}


def rank(status: str) -> int:
    """Position in the lifecycle; every terminal status shares the last rank."""
    return 4 if status in TERMINAL else _RANK[status]


def normalize(status: str) -> str:
    """Map Twilio's spellings (CallStatus or StatusCallbackEvent) to one vocabulary."""
    value = status.strip().lower().replace("_", "-")
    aliases = {"answered": "in-progress", "in progress": "in-progress", "cancelled": "canceled"}
    value = aliases.get(value, value)
    if value not in _RANK and value not in TERMINAL:
        raise ValueError(f"unknown call status {status!r}")
    return value


def should_apply(current: str, new: str) -> bool:
    """A status event moves a call forward only: a terminal status is never overwritten.

    Twilio's callbacks can arrive out of order (separate HTTP requests); a late `ringing`
    after `completed` must not reopen the call, and a repeated event changes nothing.
    """
    if current in TERMINAL:
        return False
    return rank(new) > rank(current)
