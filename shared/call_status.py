"""Twilio's call lifecycle and the rule that keeps it monotonic under reordered callbacks."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

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


def transition(
    current: Mapping[str, Any],
    status: str,
    *,
    at: datetime,
    duration: int | None = None,
    twilio_call_sid: str | None = None,
) -> dict[str, Any]:
    """The columns a status event changes on a call row as read (empty: nothing to write).

    A stale or repeated event changes no status but may still fill in a missing duration or SID;
    `started_at` and `ended_at` are set once, by the first event that reaches those states.
    """
    changes: dict[str, Any] = {}
    if should_apply(current["status"], status):
        changes["status"] = status
        if status == "in-progress" and current["started_at"] is None:
            changes["started_at"] = at
        if status in TERMINAL and current["ended_at"] is None:
            changes["ended_at"] = at
    if duration is not None and current["duration"] is None:
        changes["duration"] = duration
    if twilio_call_sid and not current["twilio_call_sid"]:
        changes["twilio_call_sid"] = twilio_call_sid
    return changes
