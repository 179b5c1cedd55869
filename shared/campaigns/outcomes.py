"""What a finished call means for its campaign contact: pure rules, tested without a database.

An attempt's *result* comes from the phone network: `busy`, `no-answer`, `failed` (also Twilio's
`canceled`), or, for a call that connected, `voicemail` (answering-machine detection or the gateway's
screening said a machine answered) or `answered`. After the call, the analysis may refine an answered
call's result with its outcome (`callback_requested`, `do_not_call`, ...). The retry rules name the
results (and outcomes) worth another attempt; everything else ends the contact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.campaigns.config import RetryRules
from shared.storage.base import Call

DO_NOT_CALL = "do_not_call"
"""The analysis outcome of a caller who asked not to be called again: the number joins the list."""
_UNREACHED = frozenset({"busy", "no-answer", "failed"})


def call_result(call: Call) -> str | None:
    """The attempt's result, or None while the call is still going."""
    if call.status in ("busy", "no-answer"):
        return call.status
    if call.status in ("failed", "canceled"):
        return "failed"
    if call.status != "completed":
        return None
    if call.answered_by and (call.answered_by.startswith("machine") or call.answered_by == "fax"):
        return "voicemail"
    return "answered"


@dataclass(frozen=True)
class Verdict:
    """What becomes of the contact: its new status, when it may be called again, and what to record."""

    status: str  # pending (retry) | completed | failed
    outcome: str
    next_attempt_at: datetime | None = None


def decide(result: str, *, attempts: int, rules: RetryRules, now: datetime, active: bool) -> Verdict:
    """The contact's next state after an attempt whose result (or analysis outcome) is `result`.

    A retry needs the result named in `rules.on`, attempts left and a campaign still `active` (running
    or paused: a paused campaign resumes with its retries; a cancelled one retries nothing). A contact
    that ends without ever being reached is `failed`; one that was reached (a person or a machine) is
    `completed`, whatever the outcome.
    """
    if result == DO_NOT_CALL:
        return Verdict("completed", result)
    if active and result in rules.on and attempts < rules.max_attempts:
        return Verdict("pending", result, now + timedelta(seconds=rules.delay_s))
    return Verdict("failed" if result in _UNREACHED else "completed", result)
