"""What a campaign is told, validated before anything is written.

The limits are the ones an operator reasons in: at most `max_concurrency` calls at once, at most
`calls_per_second` dials, only inside a calling window (days of the week and a local start/end time in
the campaign's or the contact's time zone), and retries on named results (`busy`, `no-answer`,
`failed`, `voicemail`, or an analysis outcome such as `callback_requested`).
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from shared.phone import PHONE_NUMBER, e164

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CALL_RESULTS = ("busy", "no-answer", "failed", "voicemail")
"""What the phone network (and answering-machine detection) says of an attempt; `answered` never retries."""
HH_MM = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
_OUTCOME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_CONTACTS = 10_000
MAX_VARIABLE_CHARS = 500
RESERVED_COLUMNS = ("phone_number", "timezone")
"""CSV columns with a meaning of their own; every other column is a variable."""


def zone(name: str) -> str:
    """`name` if it is an IANA time zone (Europe/Berlin, America/New_York, UTC), else a ValueError."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as America/New_York)") from None
    return name


class Window(BaseModel):
    """When calls may be placed: on `days`, from `start` to `end` local time (start before end)."""

    model_config = ConfigDict(extra="forbid")

    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1)
    start: str = Field(
        default="09:00", pattern=HH_MM, description="Local time HH:MM (24 h), in the contact's zone"
    )
    end: str = Field(default="17:00", pattern=HH_MM, description="Local time HH:MM (24 h), after start")

    @property
    def opens(self) -> time:
        return time.fromisoformat(self.start)

    @property
    def closes(self) -> time:
        return time.fromisoformat(self.end)

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start >= self.end:
            raise ValueError("window.start must be before window.end (same day, local time)")
        return self


class RetryRules(BaseModel):
    """How often a contact may be called, how long to wait between attempts, and after which results."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: StrictInt = Field(default=3, ge=1, le=20)
    delay_s: float = Field(default=3600.0, ge=0, le=7 * 86400, strict=True)
    on: list[str] = Field(default_factory=lambda: ["busy", "no-answer", "failed"])

    @field_validator("on")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in CALL_RESULTS and not _OUTCOME.match(item):
                raise ValueError(
                    f"retry.on: {item!r} is neither a call result ({', '.join(CALL_RESULTS)}) "
                    "nor an analysis outcome label (snake_case)"
                )
        return list(dict.fromkeys(value))


VariableValue = (
    Annotated[str, Field(strict=True, max_length=MAX_VARIABLE_CHARS)] | StrictInt | StrictFloat | StrictBool
)
"""Strict: a number in a string stays text (and a too-long string is refused, never read as a number)."""


class ContactIn(BaseModel):
    """One number to call, its own time zone (else the campaign's), and its prompt variables."""

    model_config = ConfigDict(extra="forbid")

    phone_number: str = Field(
        json_schema_extra={"pattern": PHONE_NUMBER},
        description="E.164; spaces, dots, dashes and parentheses are allowed",
    )
    timezone: str | None = Field(default=None, description="IANA time zone; unset: the campaign's")
    variables: dict[str, VariableValue] = Field(
        default_factory=dict,
        json_schema_extra={"propertyNames": {"pattern": VARIABLE_NAME.pattern}},
        description="The agent's {placeholders} for this contact",
    )

    @field_validator("phone_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return e164(value, "phone_number")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value in (None, "") else zone(str(value))

    @field_validator("variables")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not VARIABLE_NAME.match(name):
                raise ValueError(f"variable name {name!r} must be letters, digits and _ (not first a digit)")
            if name in RESERVED_COLUMNS:
                raise ValueError(f"{name!r} is a contact field, not a variable")
        return value


class CampaignSettings(BaseModel):
    """Everything of a campaign but its contacts (a CSV upload sends these as its `config` field)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    agent_id: str
    from_number: str | None = None
    max_concurrency: StrictInt = Field(default=3, ge=1, le=100)
    calls_per_second: float = Field(default=1.0, gt=0, le=20, strict=True)
    window: Window | None = Field(default=None, description="None: calls at any time")
    timezone: str = "UTC"
    retry: RetryRules = Field(default_factory=RetryRules)
    start: StrictBool = Field(
        default=False, description="Start dispatching at once (else the campaign is a draft)"
    )

    @field_validator("from_number")
    @classmethod
    def _from(cls, value: str | None) -> str | None:
        return None if value is None else e164(value, "from_number")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return zone(value)


class CampaignIn(CampaignSettings):
    """A campaign with its contacts, as JSON."""

    contacts: list[ContactIn] = Field(min_length=1, max_length=MAX_CONTACTS)
