"""Campaign rows as both services read them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from shared.campaigns.config import RetryRules, Window
from shared.storage.base import Call

CampaignStatus = Literal["draft", "running", "paused", "cancelled", "completed"]
ContactStatus = Literal["pending", "calling", "completed", "failed", "skipped", "cancelled"]
CONTACT_STATUSES: tuple[str, ...] = ("pending", "calling", "completed", "failed", "skipped", "cancelled")
FINAL_CONTACT_STATUSES = frozenset({"completed", "failed", "skipped", "cancelled"})


class Progress(BaseModel):
    """How far a campaign is: contacts per status, and how many calls it has placed."""

    total: int = 0
    pending: int = 0
    calling: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    calls_placed: int = 0


class Campaign(BaseModel):
    """A stored campaign; `progress` is filled in where it is read for a client."""

    id: str
    name: str
    agent_id: str
    from_number: str | None = None
    status: CampaignStatus
    max_concurrency: int
    calls_per_second: float
    window: Window | None = None
    timezone: str = "UTC"
    retry: RetryRules = Field(default_factory=RetryRules)
    next_dial_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    progress: Progress | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Campaign:
        """The `schedule` column holds the window ({} for none)."""
        schedule = row.get("schedule") or {}
        return cls.model_validate({**row, "window": schedule or None})

    @field_validator("retry", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        return value or {}


class Contact(BaseModel):
    """One number of a campaign, its attempts so far and what the last one came to."""

    id: str
    campaign_id: str
    row_number: int
    phone_number: str
    timezone: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    status: ContactStatus
    attempts: int = 0
    next_attempt_at: datetime
    claimed_at: datetime | None = None
    last_call_id: str | None = None
    last_outcome: str | None = None
    created_at: datetime
    updated_at: datetime


class DoNotCall(BaseModel):
    """A number no campaign may dial, and why it is listed."""

    number: str
    reason: str | None = None
    source: str = "api"
    call_id: str | None = None
    created_at: datetime


class Claim(BaseModel):
    """A contact taken for dialing: its call row (already written, `queued`) and when to dial it."""

    contact: Contact
    call: Call
    dial_at: datetime
