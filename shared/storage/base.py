"""The storage seam: row models and the async `Storage` Protocol both services use."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, get_args

from pydantic import BaseModel, Field, field_validator

from shared.agent_config import AgentSettings, LLMConfig, known_keys_only
from shared.errors import NotFound

Speaker = Literal["agent", "caller", "tool"]
Direction = Literal["outbound", "inbound"]
AnsweredBy = Literal[
    "human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"
]
"""Twilio's answering-machine detection results (`AnsweredBy` of the AsyncAmdStatusCallback)."""
ANSWERED_BY: Final[tuple[str, ...]] = get_args(AnsweredBy)
# Which database is behind the seam: the job queue needs to know (procrastinate runs on PostgreSQL only).
StorageKind = Literal["sqlite", "postgres", "supabase"]


def new_id() -> str:
    """Row ids are UUIDs so that rows can be created by any process without coordination."""
    return str(uuid.uuid4())


def parse_id(value: object) -> uuid.UUID:
    """Ids are UUIDs; a malformed one names no row, so it reads as not found."""
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"row with id {value!r}") from None


def utcnow() -> datetime:
    """Timestamps are always timezone-aware UTC."""
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """A stored timestamp as UTC-aware: SQLite gives naive datetimes back, PostgreSQL aware ones."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Agent(BaseModel):
    """A stored phone agent: its prompt, voice and typed configuration (`shared.agent_config`)."""

    id: str
    name: str
    prompt: str
    greeting: str | None = None
    voice: str | None = None
    language: str = "en"
    llm: LLMConfig = Field(default_factory=LLMConfig)
    settings: AgentSettings = Field(default_factory=AgentSettings)
    created_at: datetime
    updated_at: datetime

    @field_validator("llm", mode="before")
    @classmethod
    def _stored_llm(cls, value: Any) -> Any:
        return known_keys_only(LLMConfig, value, "llm")

    @field_validator("settings", mode="before")
    @classmethod
    def _stored_settings(cls, value: Any) -> Any:
        return known_keys_only(AgentSettings, value, "settings")


class Call(BaseModel):
    """One phone call of an agent: placed by it (outbound) or answered by it (inbound)."""

    id: str
    agent_id: str
    to_number: str
    from_number: str | None = None
    status: str
    direction: str = Field(default="outbound", description="`outbound` (placed by RelayX) or `inbound`")
    duration: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    twilio_call_sid: str | None = None
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    # Free text in the database: the AMD callback stores only Twilio's values (`ANSWERED_BY`), but a row
    # must stay readable whatever a future detector writes.
    answered_by: str | None = Field(
        default=None, description="Twilio's answering-machine detection result (human, machine_end_beep, ...)"
    )
    transferred_to: str | None = Field(default=None, description="Where the agent transferred the call")
    transferred_at: datetime | None = None
    campaign_id: str | None = Field(default=None, description="The campaign that placed the call")
    contact_id: str | None = Field(default=None, description="The campaign contact the call was placed to")


class PhoneNumber(BaseModel):
    """A number callers dial: its inbound calls are answered by `agent_id` while `inbound_enabled`."""

    id: str
    number: str
    agent_id: str
    inbound_enabled: bool = True
    created_at: datetime
    updated_at: datetime


class TranscriptLine(BaseModel):
    """One turn of speech, stored as it happens."""

    id: str
    call_id: str
    speaker: Speaker
    text: str
    timestamp: datetime
    metrics: dict[str, Any] = Field(default_factory=dict)


class CallAnalysis(BaseModel):
    """The post-call analysis of one call (at most one row per call)."""

    id: str
    call_id: str
    status: str = "completed"
    summary: str | None = None
    key_points: list[str] = Field(default_factory=list)
    sentiment: str | None = None
    outcome: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    model: str | None = None
    condensed: bool = False
    attempts: int = 0
    created_at: datetime
    updated_at: datetime


class WebhookAttempt(BaseModel):
    """One try at delivering a webhook event: the receiver's status code, or why it failed."""

    attempt: int
    status_code: int | None = None
    error: str | None = None
    duration_ms: int | None = None
    created_at: datetime


class WebhookEvent(BaseModel):
    """An event for one call, its signed JSON body's content, and its delivery state."""

    id: str
    call_id: str
    type: str
    url: str
    payload: dict[str, Any]
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None = None
    attempt_log: list[WebhookAttempt] = Field(default_factory=list)


class Job(BaseModel):
    """A row of the embedded job queue (SQLite); PostgreSQL keeps jobs in procrastinate's tables."""

    id: str
    task: str
    args: dict[str, Any] = Field(default_factory=dict)
    dedupe_key: str | None = None
    status: str
    attempts: int = 0
    run_at: datetime
    last_error: str | None = None


# Columns a caller may change through `update_call`; everything else is owned by storage.
CALL_MUTABLE_FIELDS = frozenset(
    {"status", "duration", "metadata", "twilio_call_sid", "error", "started_at", "ended_at", "from_number",
     "answered_by", "transferred_to", "transferred_at"}
)
AGENT_MUTABLE_FIELDS = frozenset({"name", "prompt", "greeting", "voice", "language", "llm", "settings"})
PHONE_NUMBER_MUTABLE_FIELDS = frozenset({"number", "agent_id", "inbound_enabled"})


class Storage(Protocol):
    """Async access to agents, phone numbers, calls, transcripts and analyses, whatever the database."""

    @property
    def kind(self) -> StorageKind:
        """Which database this is."""
        ...

    @property
    def dsn(self) -> str | None:
        """The PostgreSQL connection string (procrastinate's job queue connects with it); None elsewhere."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def migrate(self) -> list[str]: ...

    # agents
    async def create_agent(self, data: dict[str, Any]) -> Agent: ...

    async def get_agent(self, agent_id: str) -> Agent: ...

    async def list_agents(self, *, limit: int = 100, offset: int = 0) -> list[Agent]: ...

    async def update_agent(self, agent_id: str, changes: dict[str, Any]) -> Agent: ...

    async def delete_agent(self, agent_id: str) -> None: ...

    # phone numbers (numbers are unique: a duplicate is refused with `StorageError`)
    async def create_phone_number(self, data: dict[str, Any]) -> PhoneNumber: ...

    async def get_phone_number(self, number_id: str) -> PhoneNumber: ...

    async def find_phone_number(self, number: str) -> PhoneNumber | None:
        """The row of an E.164 `number`, or None."""
        ...

    async def list_phone_numbers(
        self, *, agent_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[PhoneNumber]: ...

    async def update_phone_number(self, number_id: str, changes: dict[str, Any]) -> PhoneNumber: ...

    async def delete_phone_number(self, number_id: str) -> None: ...

    # calls
    async def create_call(
        self,
        *,
        agent_id: str,
        to_number: str,
        from_number: str | None,
        metadata: dict[str, Any],
        direction: Direction = "outbound",
        twilio_call_sid: str | None = None,
    ) -> Call:
        """A new row: `queued` when RelayX places it, `ringing` when it is an inbound call already ringing."""
        ...

    async def get_call(self, call_id: str) -> Call: ...

    async def find_call_by_sid(self, twilio_call_sid: str) -> Call | None:
        """The call Twilio knows by this SID, or None (a repeated inbound webhook finds its first row)."""
        ...

    async def list_calls(
        self,
        *,
        agent_id: str | None = None,
        status: str | None = None,
        outcome: str | None = None,
        sentiment: str | None = None,
        campaign_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Call]: ...

    async def update_call(self, call_id: str, changes: dict[str, Any]) -> Call: ...

    async def apply_call_status(
        self,
        call_id: str,
        status: str,
        *,
        duration: int | None = None,
        twilio_call_sid: str | None = None,
        at: datetime | None = None,
    ) -> Call: ...

    # transcripts
    async def add_transcript(
        self,
        call_id: str,
        speaker: Speaker,
        text: str,
        *,
        timestamp: datetime | None = None,
        metrics: dict[str, Any] | None = None,
        line_id: str | None = None,
    ) -> TranscriptLine: ...

    async def list_transcripts(self, call_id: str) -> list[TranscriptLine]: ...

    # analysis
    async def upsert_analysis(self, call_id: str, values: dict[str, Any]) -> CallAnalysis: ...

    async def get_analysis(self, call_id: str) -> CallAnalysis: ...

    # webhook events
    async def create_webhook_event(
        self, *, call_id: str, type: str, url: str, payload: dict[str, Any], dedupe_key: str
    ) -> WebhookEvent: ...

    async def get_webhook_event(self, event_id: str) -> WebhookEvent: ...

    async def record_webhook_attempt(
        self,
        event_id: str,
        attempt: int,
        *,
        status_code: int | None,
        error: str | None,
        duration_ms: int | None,
        outcome: Literal["pending", "delivered", "failed"],
    ) -> WebhookEvent: ...

    async def list_webhook_events(self, call_id: str) -> list[WebhookEvent]: ...

    # the embedded job queue
    async def enqueue_job(
        self, task: str, args: dict[str, Any], *, dedupe_key: str | None = None, run_at: datetime | None = None
    ) -> bool: ...

    async def claim_job(self) -> Job | None: ...

    async def finish_job(self, job_id: str, *, error: str | None = None) -> None: ...

    async def requeue_running_jobs(self) -> int: ...
