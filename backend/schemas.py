"""Request and response bodies of the REST API (validated at the edge, before any write)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared import analysis, webhooks

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class LLMConfig(BaseModel):
    """How the agent's replies are generated."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Engine-specific model name; empty = the engine's default")
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    max_tokens: int = Field(default=80, ge=1, le=4096, description="A phone reply is short: 80 tokens ≈ 3 sentences")


class AgentSettings(BaseModel):
    """Turn-taking and context knobs; unknown keys are kept for later features."""

    model_config = ConfigDict(extra="allow")

    end_of_turn_silence_ms: int = Field(default=500, ge=100, le=5000)
    barge_in_min_ms: int = Field(
        default=400, ge=100, le=3000,
        description="Speech over the agent interrupts it after this long; shorter is a backchannel",
    )
    min_speech_ms: int = Field(default=150, ge=20, le=3000)
    business: str | None = Field(default=None, description="Business name, given to STT and the LLM")
    expected_answers: list[str] = Field(default_factory=list, description="Words STT should expect")
    webhook_url: str | None = Field(
        default=None, max_length=2000, description="Where this agent's call events go (else WEBHOOK_URL)"
    )
    recording: bool = Field(default=True, description="Record calls as two-channel WAV (caller left, agent right)")
    analysis: dict[str, Any] | None = Field(
        default=None,
        description='Post-call analysis: {"outcomes": [labels], "schema": JSON Schema of the data to extract}',
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            return webhooks.check_url_syntax(value)
        except webhooks.WebhookURLError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("analysis")
    @classmethod
    def _analysis(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        """Checked and normalised once here, so every stored spec is one the engines can enforce."""
        if value is None:
            return None
        unknown = sorted(set(value) - {"outcomes", "schema"})
        if unknown:
            raise ValueError(f"analysis: unknown key(s) {', '.join(unknown)} (expected outcomes, schema)")
        try:
            return {
                "outcomes": analysis.normalize_outcomes(value.get("outcomes")),
                "schema": analysis.normalize_data_schema(value.get("schema")),
            }
        except analysis.SchemaProblem as exc:
            raise ValueError(str(exc)) from None


class AgentCreate(BaseModel):
    """Body of POST /agents."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    prompt: str = Field(min_length=1, max_length=20_000)
    greeting: str | None = Field(default=None, max_length=1000)
    voice: str | None = Field(default=None, max_length=200)
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    llm: LLMConfig = Field(default_factory=LLMConfig)
    settings: AgentSettings = Field(default_factory=AgentSettings)


class AgentUpdate(BaseModel):
    """Body of PATCH /agents/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    greeting: str | None = Field(default=None, max_length=1000)
    voice: str | None = Field(default=None, max_length=200)
    language: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    llm: LLMConfig | None = None
    settings: AgentSettings | None = None


class AgentOut(BaseModel):
    """An agent as the API returns it."""

    id: str
    name: str
    prompt: str
    greeting: str | None
    voice: str | None
    language: str
    llm: dict[str, Any]
    settings: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class OutboundCallRequest(BaseModel):
    """Body of POST /calls/outbound."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1)
    to_number: str = Field(description="E.164, e.g. +14155550100")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("to_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        compact = re.sub(r"[\s().-]", "", value)
        if not E164.match(compact):
            raise ValueError("to_number must be an E.164 number such as +14155550100")
        return compact


class CallOut(BaseModel):
    """A call as the API returns it."""

    id: str
    agent_id: str
    to_number: str
    from_number: str | None
    direction: str
    status: str
    duration: int | None
    metadata: dict[str, Any]
    twilio_call_sid: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


class CallPage(BaseModel):
    """One page of calls, newest first."""

    data: list[CallOut]
    limit: int
    offset: int
    has_more: bool


class TranscriptOut(BaseModel):
    """One stored line of a call's transcript."""

    id: str
    speaker: str
    text: str
    timestamp: datetime
    metrics: dict[str, Any]


class AnalysisOut(BaseModel):
    """A call's post-call analysis (completed, or failed with the reason)."""

    call_id: str
    status: str
    summary: str | None
    key_points: list[str]
    sentiment: str | None
    outcome: str | None
    data: dict[str, Any]
    error: str | None
    model: str | None
    condensed: bool
    attempts: int
    created_at: datetime
    updated_at: datetime


class AnalysisRequested(BaseModel):
    """Answer of POST /calls/{id}/analysis: the re-run is queued."""

    call_id: str
    request: str
    status: str = "queued"


class WebhookAttemptOut(BaseModel):
    """One delivery attempt of an event."""

    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int | None
    created_at: datetime


class WebhookEventOut(BaseModel):
    """An event of a call with every delivery attempt."""

    id: str
    type: str
    url: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[WebhookAttemptOut]
