"""Request and response bodies of the REST API (validated at the edge, before any write)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.agent_config import (
    AgentConfig,
    AgentName,
    AgentSettings,
    Greeting,
    Language,
    LLMConfig,
    Prompt,
    Voice,
)
from shared.storage.base import Agent, Call

E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class AgentCreate(AgentConfig):
    """Body of POST /agents: the whole typed agent configuration (`shared.agent_config`)."""


class AgentUpdate(BaseModel):
    """Body of PATCH /agents/{id}: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    name: AgentName | None = None
    prompt: Prompt | None = None
    greeting: Greeting | None = None
    voice: Voice | None = None
    language: Language | None = None
    llm: LLMConfig | None = None
    settings: AgentSettings | None = None


class AgentOut(Agent):
    """An agent as the API returns it: the stored row."""


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


class CallOut(Call):
    """A call as the API returns it: the stored row."""


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
