"""New rows and row changes, built in one place for every implementation.

SQL and Supabase's REST API differ in how a row reaches the database (a statement, a request), not
in what the row holds: its id, timestamps, defaults and which columns a caller may set are decided
here, so the two cannot drift apart. Ids are passed in already checked (`parse_id`) where the caller
names a row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.storage.base import (
    AGENT_MUTABLE_FIELDS,
    CALL_MUTABLE_FIELDS,
    PHONE_NUMBER_MUTABLE_FIELDS,
    Direction,
    Speaker,
    new_id,
    utcnow,
)

# The analysis columns a job may write; id, call_id and the timestamps are storage's.
ANALYSIS_FIELDS = (
    "status", "summary", "key_points", "sentiment", "outcome", "data", "error", "model", "condensed",
    "attempts",
)


def _stamped(values: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """A new row's values with both timestamps at `now`."""
    now = now or utcnow()
    return {**values, "created_at": now, "updated_at": now}


def new_agent(data: dict[str, Any]) -> dict[str, Any]:
    """An agent from what the API was given: unset JSON columns are empty, the language English."""
    values = {key: data[key] for key in AGENT_MUTABLE_FIELDS if key in data and data[key] is not None}
    return _stamped({"id": new_id(), "llm": {}, "settings": {}, "language": "en", **values})


def agent_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The columns of `changes` a caller may set on an agent, and the new `updated_at`."""
    return {**{k: v for k, v in changes.items() if k in AGENT_MUTABLE_FIELDS}, "updated_at": utcnow()}


def new_phone_number(data: dict[str, Any]) -> dict[str, Any]:
    """A number from what the API was given (`agent_id` already checked); inbound calls on by default."""
    values = {key: data[key] for key in PHONE_NUMBER_MUTABLE_FIELDS if key in data and data[key] is not None}
    return _stamped({"id": new_id(), "inbound_enabled": True, **values})


def phone_number_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The columns of `changes` a caller may set on a phone number, and the new `updated_at`."""
    return {**{k: v for k, v in changes.items() if k in PHONE_NUMBER_MUTABLE_FIELDS}, "updated_at": utcnow()}


def new_call(
    agent_id: str, to_number: str, from_number: str | None, metadata: dict[str, Any],
    direction: Direction = "outbound", twilio_call_sid: str | None = None,
) -> dict[str, Any]:
    """A call of an agent. One RelayX places starts `queued`; an inbound one is written when Twilio asks
    what to do with it, and it is already ringing then."""
    return _stamped({"id": new_id(), "agent_id": agent_id, "to_number": to_number, "from_number": from_number,
                     "direction": direction, "status": "ringing" if direction == "inbound" else "queued",
                     "twilio_call_sid": twilio_call_sid, "metadata": metadata})


def call_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """The columns of `changes` a caller may set on a call, and the new `updated_at`."""
    return {**{k: v for k, v in changes.items() if k in CALL_MUTABLE_FIELDS}, "updated_at": utcnow()}


def new_transcript_line(
    call_id: str, speaker: Speaker, text: str, at: datetime | None, metrics: dict[str, Any] | None,
    line_id: str | None,
) -> dict[str, Any]:
    """One line; a caller-chosen `line_id` makes a retried write land on the same row."""
    return {"id": line_id or new_id(), "call_id": call_id, "speaker": speaker, "text": text,
            "timestamp": at or utcnow(), "metrics": metrics or {}}


def analysis_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The analysis columns present in `values` (anything else a job passes is not stored)."""
    return {k: values[k] for k in ANALYSIS_FIELDS if k in values}


def new_webhook_event(
    call_id: str, type: str, url: str, payload: dict[str, Any], dedupe_key: str
) -> dict[str, Any]:
    """A pending event; its payload carries the event's own id, which receivers deduplicate on."""
    event_id = new_id()
    return _stamped({"id": event_id, "call_id": call_id, "type": type, "dedupe_key": dedupe_key, "url": url,
                     "payload": {**payload, "id": event_id}, "status": "pending", "attempts": 0})


def new_webhook_attempt(
    event_id: str, attempt: int, status_code: int | None, error: str | None, duration_ms: int | None,
    at: datetime,
) -> dict[str, Any]:
    """The log row of one delivery attempt."""
    return {"id": new_id(), "event_id": event_id, "attempt": attempt, "status_code": status_code,
            "error": error, "duration_ms": duration_ms, "created_at": at}


def attempt_outcome(outcome: str, attempt: int, error: str | None, at: datetime) -> dict[str, Any]:
    """What an attempt changes on its event: its status, attempt count, last error, delivery time."""
    return {"status": outcome, "attempts": attempt, "last_error": error, "updated_at": at,
            "delivered_at": at if outcome == "delivered" else None}


def new_job(
    task: str, args: dict[str, Any], dedupe_key: str | None, run_at: datetime | None
) -> dict[str, Any]:
    """A pending job of the embedded queue, due at `run_at` (now when not given)."""
    now = utcnow()
    return _stamped({"id": new_id(), "task": task, "args": args, "dedupe_key": dedupe_key,
                     "status": "pending", "attempts": 0, "run_at": run_at or now}, now)
