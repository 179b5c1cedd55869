"""Request and response bodies of the REST API (validated at the edge, before any write)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from typing_extensions import TypeAliasType

from backend.analysis_input import AnalysisSpecInput
from shared.agent_config import (
    NUL_FREE,
    WEBHOOK_URL,
    AgentConfig,
    AgentName,
    AgentSettings,
    AnalysisConfig,
    CallLimits,
    DtmfTool,
    EndCallTool,
    Greeting,
    HttpTool,
    Language,
    LLMConfig,
    Prompt,
    SmartTurnConfig,
    ToolName,
    TransferTool,
    Voice,
    VoicemailConfig,
)
from shared.phone import PHONE_NUMBER, e164
from shared.storage.base import Agent, Call, PhoneNumber

CallStatusName = Literal[
    "queued", "initiated", "ringing", "in-progress", "busy", "canceled", "completed", "failed", "no-answer"
]
"""`shared.call_status.ALL_STATUSES` as a type the OpenAPI can publish (a test keeps the two equal)."""
MAX_OFFSET = 2**31 - 1
"""The largest `offset` a list accepts: any real page, and far inside what both databases can bind."""


def _keys_without_nul(value: dict[str, Any]) -> dict[str, Any]:
    if any("\x00" in key for key in value):
        raise ValueError("keys must not contain NUL (\\x00) characters")
    return value


# Free-form JSON the API stores (call metadata): anything JSON can say, but what PostgreSQL's jsonb
# refuses, refused here first with a 422: NUL characters in text or keys, NaN and infinities.
_Text = Annotated[str, Field(pattern=NUL_FREE)]
_Number = Annotated[float, Field(allow_inf_nan=False)]
_KEYS_CHECKED = AfterValidator(_keys_without_nul)
_KEYS_DOCUMENTED = Field(json_schema_extra={"propertyNames": {"pattern": NUL_FREE}})
JSONValue = TypeAliasType("JSONValue", "_Text | int | _Number | bool | None | list[JSONValue] | JSONObject")
JSONObject = TypeAliasType("JSONObject", "Annotated[dict[str, JSONValue], _KEYS_CHECKED, _KEYS_DOCUMENTED]")


# Numbers and booleans as JSON writes them: "500" for a number, 1 for true, are refused (pydantic's lax
# mode would take them while the published schema says they are wrong). Stored rows are read with the
# lenient shared models; only what clients send is held to this.
_AS_JSON = ConfigDict(extra="forbid", strict=True)


def _whole_number(value: Any) -> Any:
    """500.0 is an integer in JSON Schema; strict mode would refuse it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _as_sent(value: Any) -> Any:
    return value


class LLMConfigInput(LLMConfig):
    """`LLMConfig` as a client sends it (JSON types)."""

    model_config = _AS_JSON

    _max_tokens = field_validator("max_tokens", mode="before")(_whole_number)


class SmartTurnConfigInput(SmartTurnConfig):
    """`SmartTurnConfig` as a client sends it (JSON types)."""

    model_config = _AS_JSON

    _whole_ms = field_validator("done_silence_ms", "not_done_silence_ms", "max_silence_ms", mode="before")(
        _whole_number
    )


class VoicemailConfigInput(VoicemailConfig):
    """`VoicemailConfig` as a client sends it (JSON types)."""

    model_config = _AS_JSON

    _whole_ms = field_validator("wait_for_callee_ms", "machine_speech_ms", mode="before")(_whole_number)


class CallLimitsInput(CallLimits):
    """`CallLimits` as a client sends it (JSON types)."""

    model_config = _AS_JSON

    _whole = field_validator("idle_hangups_after", "max_duration_s", "dtmf_timeout_ms", mode="before")(
        _whole_number
    )


class EndCallToolInput(EndCallTool):
    model_config = _AS_JSON


class TransferToolInput(TransferTool):
    model_config = _AS_JSON


class DtmfToolInput(DtmfTool):
    model_config = _AS_JSON


class HttpToolInput(HttpTool):
    model_config = _AS_JSON

    # The shared pattern also matches "" (no URL, which is right for a webhook_url); a tool needs one.
    url: str = Field(min_length=1, max_length=2000, json_schema_extra={"pattern": WEBHOOK_URL})

    @field_validator("url")
    @classmethod
    def _as_published(cls, value: str) -> str:
        """What urlsplit accepts but the published pattern does not (a space in the host) is refused too."""
        if not re.fullmatch(WEBHOOK_URL, value):
            raise ValueError("url is malformed: a space, control or bracket in the host, or a port that is not a number")
        return value


ToolInput = Annotated[
    EndCallToolInput | TransferToolInput | DtmfToolInput | HttpToolInput, Field(discriminator="kind")
]


class AgentSettingsInput(AgentSettings):
    """`AgentSettings` as a client sends it: the same fields and rules, JSON types; `analysis` is published
    in the forms it is accepted in (`backend.analysis_input`), not in its stored, normalised form."""

    model_config = _AS_JSON

    analysis: Annotated[
        AnalysisConfig | None, BeforeValidator(_as_sent, json_schema_input_type=AnalysisSpecInput | None)
    ] = Field(
        default=None,
        description='Post-call analysis: {"outcomes": [labels], "schema": JSON Schema of the data to extract}',
    )

    # The nested blocks as a client sends them too: JSON types all the way down (false is not 0).
    smart_turn: SmartTurnConfigInput = Field(default_factory=SmartTurnConfigInput)
    voicemail: VoicemailConfigInput = Field(default_factory=VoicemailConfigInput)
    limits: CallLimitsInput = Field(default_factory=CallLimitsInput)
    tools: dict[ToolName, ToolInput] = Field(  # type: ignore[assignment]  # dict is invariant; subclasses
        default_factory=dict, max_length=32, description=AgentSettings.model_fields["tools"].description,
        json_schema_extra={"additionalProperties": False},  # a name outside the pattern is refused, and says so
    )

    _whole_ms = field_validator("end_of_turn_silence_ms", "min_speech_ms", "barge_in_min_ms", mode="before")(
        _whole_number
    )


class AgentCreate(AgentConfig):
    """Body of POST /agents: the whole typed agent configuration (`shared.agent_config`)."""

    model_config = _AS_JSON

    llm: LLMConfigInput = Field(default_factory=LLMConfigInput)
    settings: AgentSettingsInput = Field(default_factory=AgentSettingsInput)


def _never_null(schema: dict[str, Any]) -> None:
    """Publish a PATCH field without `null` (and without a default): omitting it keeps the value."""
    schema.pop("default", None)
    variants = [v for v in schema.pop("anyOf", []) if v.get("type") != "null"]
    if len(variants) == 1:
        schema.update(variants[0])
    elif variants:
        schema["anyOf"] = variants


class AgentUpdate(BaseModel):
    """Body of PATCH /agents/{id}: only the fields given change; only `greeting` and `voice` take null."""

    model_config = _AS_JSON

    name: AgentName | None = Field(default=None, json_schema_extra=_never_null)
    prompt: Prompt | None = Field(default=None, json_schema_extra=_never_null)
    greeting: Greeting | None = None
    voice: Voice | None = None
    language: Language | None = Field(default=None, json_schema_extra=_never_null)
    llm: LLMConfigInput | None = Field(default=None, json_schema_extra=_never_null)
    settings: AgentSettingsInput | None = Field(default=None, json_schema_extra=_never_null)

    @field_validator("name", "prompt", "language", "llm", "settings", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep its value")
        return value


class AgentOut(Agent):
    """An agent as the API returns it: the stored row."""


class OutboundCallRequest(BaseModel):
    """Body of POST /calls/outbound."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(min_length=1)
    to_number: str = Field(
        description="E.164, e.g. +14155550100 (spaces, dots, dashes, parentheses ignored)",
        json_schema_extra={"pattern": PHONE_NUMBER},  # checked below, with a message that says E.164
    )
    metadata: JSONObject = Field(default_factory=dict, description="Yours: stored with the call, returned as given")

    @field_validator("to_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return e164(value, "to_number")


_NUMBER_DESCRIPTION = "E.164, e.g. +14155550100 (spaces, dots, dashes, parentheses ignored); stored compact"
# Published as PHONE_NUMBER, checked by `e164` (with a message that says E.164).
_NUMBER_PATTERN: dict[str, Any] = {"pattern": PHONE_NUMBER}


def _optional_number(schema: dict[str, Any]) -> None:
    _never_null(schema)
    schema.update(_NUMBER_PATTERN)


class PhoneNumberCreate(BaseModel):
    """Body of POST /phone-numbers: a number callers dial, and the agent that answers it."""

    model_config = _AS_JSON

    number: str = Field(description=_NUMBER_DESCRIPTION, json_schema_extra=_NUMBER_PATTERN)
    agent_id: str = Field(min_length=1)
    inbound_enabled: bool = Field(default=True, description="Answer calls to this number (false: reject them)")

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return e164(value, "number")


class PhoneNumberUpdate(BaseModel):
    """Body of PATCH /phone-numbers/{id}: only the fields given change; none takes null."""

    model_config = _AS_JSON

    number: str | None = Field(default=None, description=_NUMBER_DESCRIPTION, json_schema_extra=_optional_number)
    agent_id: str | None = Field(default=None, min_length=1, json_schema_extra=_never_null)
    inbound_enabled: bool | None = Field(default=None, json_schema_extra=_never_null)

    @field_validator("number", "agent_id", "inbound_enabled", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null: leave the field out to keep its value")
        return value

    @field_validator("number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        return None if value is None else e164(value, "number")


class PhoneNumberOut(PhoneNumber):
    """A phone number as the API returns it: the stored row."""


_LineText = Annotated[str, Field(min_length=1, max_length=1000, pattern=NUL_FREE)]


class SimulatedInboundRequest(BaseModel):
    """Body of POST /phone-numbers/{id}/simulate-inbound (TELEPHONY_PROVIDER=simulator)."""

    model_config = _AS_JSON

    from_number: str = Field(
        default="+15005550006", description=f"The caller: {_NUMBER_DESCRIPTION}", json_schema_extra=_NUMBER_PATTERN
    )
    simulate: list[_LineText | dict[str, Any]] | None = Field(
        default=None, min_length=1, max_length=50,
        description="What the caller does, line by line: the lines `metadata.simulate` of an outbound call takes "
        '(text, or {"text" | "wav", ...}; see backend.telephony.simulator.parse_script); the demo script if null',
    )  # checked by parse_script (a 422 naming the line), never stored

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        return e164(value, "from_number")


class SimulatedInboundCall(BaseModel):
    """Answer of POST /phone-numbers/{id}/simulate-inbound: the call the number's agent answered."""

    call_id: str
    twilio_call_sid: str
    to_number: str
    from_number: str


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
