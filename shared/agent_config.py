"""One typed agent configuration, with one set of defaults, for every process.

The REST API validates an agent against these models (unknown keys are a 422 naming them), storage
keeps them as JSON, and the gateway, the turn detector, the engines and the post-call jobs read the
typed fields, never `dict.get("key", default)`. New agent features (voicemail, tools, transfer,
campaign variables) add a field or a sub-model here, and nowhere else.

Rows stored by an older RelayX may hold keys this version no longer knows: reading a stored agent
drops them with a warning (`Agent` in `shared.storage.base`) instead of refusing the whole call.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

log = logging.getLogger(__name__)

# Text that is stored must not hold NUL: PostgreSQL's text and jsonb cannot (SQLite would, unevenly).
NUL_FREE = r"^[^\x00]*$"
# What `shared.webhooks.check_url_syntax` accepts, as a pattern the OpenAPI can publish: http(s), a
# host without credentials; the host may not hold what urlsplit refuses (brackets, characters that
# NFKC-normalise to / ? # @ :). "" means no URL.
WEBHOOK_URL = (
    r"^(?:[Hh][Tt][Tt][Pp][Ss]?://[^\x00-\x20\x7f/?#@:\[\]\\\u2047-\u2049\u2100\u2101\u2105\u2106\u2a74"
    r"\ufe13\ufe16\ufe55\ufe56\ufe5f\ufe6b\uff03\uff0f\uff1a\uff1f\uff20]+(?::[0-9]*)?(?:[/?#][^\x00]*)?)?$"
)

# The agent's own fields, as types: POST /agents and PATCH /agents share them.
AgentName = Annotated[str, Field(min_length=1, max_length=200, pattern=NUL_FREE)]
Prompt = Annotated[str, Field(min_length=1, max_length=20_000, pattern=NUL_FREE)]
Greeting = Annotated[str, Field(max_length=1000, pattern=NUL_FREE, description="Spoken as soon as the call connects")]
Voice = Annotated[
    str,
    Field(max_length=200, pattern=NUL_FREE, description="A speaker of a multi-speaker TTS model; empty = its default speaker"),
]
Language = Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")]


class _Strict(BaseModel):
    """Refuses unknown keys: a misspelt setting must fail loudly at the API, not be ignored."""

    model_config = ConfigDict(extra="forbid")


class LLMConfig(_Strict):
    """How the agent's replies are generated (the agent's `llm` block; also what an engine is handed)."""

    model: str | None = Field(
        default=None, pattern=NUL_FREE, description="Engine-specific model name; empty = the engine's default"
    )
    temperature: float = Field(default=0.6, ge=0.0, le=2.0)
    max_tokens: int = Field(default=80, ge=1, le=4096, description="A phone reply is short: 80 tokens ≈ 3 sentences")
    max_words: int | None = Field(
        default=40, ge=5, le=2000,
        description="A spoken reply ends at the first sentence end past this many words (null: only max_tokens)",
    )


class AnalysisConfig(_Strict):
    """Post-call analysis: the outcome labels and the JSON Schema of the data to extract.

    Normalised when validated (labels to a {label: description} map, the schema shorthand
    {"name": "type"} to a full object schema), so every stored spec is one the engines can enforce.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    outcomes: dict[str, str] = Field(
        description="Outcome labels (a list, or a map of label to description); the default set when absent"
    )
    data_schema: dict[str, Any] = Field(
        alias="schema", description='JSON Schema (or the shorthand {"field": "type"}) of the data to extract'
    )

    @model_validator(mode="before")
    @classmethod
    def _normalize(cls, value: Any) -> Any:
        from shared import analysis  # lazy: jsonschema is only needed where agents are validated

        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - {"outcomes", "schema", "data_schema"})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} (expected outcomes, schema)")
        outcomes, schema = value.get("outcomes"), value.get("schema", value.get("data_schema"))
        # A stored spec is read back through here, so the normalised form must normalise to itself: the
        # default "no data" schema has no properties, and `no_conversation` is added beyond the 30 labels.
        if schema == analysis.AnalysisSpec().data_schema:
            schema = None
        extra: dict[str, Any] = {}
        if isinstance(outcomes, dict) and len(outcomes) > 1 and analysis.NO_CONVERSATION in outcomes:
            outcomes = dict(outcomes)
            extra[analysis.NO_CONVERSATION] = outcomes.pop(analysis.NO_CONVERSATION)
        try:
            normalized = {
                "outcomes": {**analysis.normalize_outcomes(outcomes), **extra},
                "schema": analysis.normalize_data_schema(schema),
            }
        except analysis.SchemaProblem as exc:
            raise ValueError(str(exc)) from None
        if _unstorable(normalized):  # what is stored: labels, descriptions, enum values
            raise ValueError("analysis: text must be UTF-8 without NUL (\\x00) characters")
        return normalized

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Stored and returned under its public name `schema` (`BaseModel.schema` is taken)."""
        data: dict[str, Any] = handler(self)
        if "data_schema" in data:  # not there when dumped by_alias
            data["schema"] = data.pop("data_schema")
        return data


class SmartTurnConfig(_Strict):
    """Bands that turn Smart Turn's P(turn complete), scored at the caller's first pause, into a wait.

    The ranges do not overlap, so any values the schema allows are in order (done ≥ not done, and
    done silence ≤ not-done silence ≤ cap) and a client can check them without asking. `false` is not
    0 ms (JSON Schema's numbers exclude booleans; 3000.0 is an integer to it, and here). Defaults measured on 8 kHz μ-law speech (`scripts/measure_smart_turn.py`; see
    `shared.turn.bands`): the phone line pushes fragments' scores up, so only the top means "done".
    """

    done_threshold: float = Field(
        default=0.98, ge=0.5, le=1.0, description="P(complete) at or above which the caller is done"
    )
    not_done_threshold: float = Field(
        default=0.10, ge=0.0, le=0.5,
        description="P(complete) at or below which the caller is mid-thought",
    )
    done_silence_ms: int = Field(
        default=200, ge=0, le=500, description="Silence that ends a turn the model calls done"
    )
    not_done_silence_ms: int = Field(
        default=1500, ge=500, le=3000, description="Silence that ends a turn the model calls unfinished"
    )
    max_silence_ms: int = Field(
        default=3000, ge=3000, le=10_000,
        description="Hard cap: no turn waits longer than this for more speech",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("expected a number, not true/false")  # noqa: TRY004 - pydantic reports ValueError as a 422
        return value


E164 = r"^\+[1-9][0-9]{6,14}$"
TRANSFER_TARGET = r"^(\+[1-9][0-9]{6,14}|sips?:[^\s\x00]{3,250})$"
TOOL_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
Line = Annotated[str, Field(min_length=1, max_length=500, pattern=NUL_FREE)]


class VoicemailConfig(_Strict):
    """Answering machines on outbound calls: how the agent finds out, and what it does then.

    On an outbound call the agent first listens: the callee speaks first ("Hello?"). A long opening
    monologue, voicemail wording ("leave a message", "after the tone") or a beep mark a machine; the
    agent then waits for the beep (or the end of the greeting), leaves `message` or not, and hangs up.
    Twilio's answering-machine detection (`AnsweredBy`) leads to the same action where it runs.
    """

    detect: bool = Field(default=True, description="Listen for an answering machine before greeting (outbound)")
    action: Literal["hangup", "leave_message"] = Field(
        default="hangup", description="At a machine: hang up, or speak `message` after the beep then hang up"
    )
    message: str | None = Field(
        default=None, max_length=1000, pattern=NUL_FREE,
        description="What to leave on the machine (action leave_message); the greeting when empty",
    )
    wait_for_callee_ms: int = Field(
        default=2500, ge=0, le=10_000,
        description="Outbound: how long the agent waits for the callee to speak first before it greets",
    )
    machine_speech_ms: int = Field(
        default=3500, ge=1000, le=20_000,
        description="An opening longer than this, without a pause for the agent, is a recorded greeting",
    )


class _Tool(_Strict):
    description: str = Field(default="", max_length=1000, pattern=NUL_FREE, description="What the model reads")
    confirm: bool | None = Field(
        default=None, description="Ask the caller before acting; default: yes for end_call and transfer_call"
    )

    @property
    def needs_confirmation(self) -> bool:
        return self.confirm if self.confirm is not None else self.kind in ("end_call", "transfer_call")  # type: ignore[attr-defined]


class EndCallTool(_Tool):
    """The agent says `line` and hangs up."""

    kind: Literal["end_call"]
    line: Line = "Thank you for calling. Goodbye!"


class TransferTool(_Tool):
    """A cold transfer: after `line` has played, the call is redirected to `to` and the agent leaves."""

    kind: Literal["transfer_call"]
    to: str = Field(pattern=TRANSFER_TARGET, description="E.164 number or SIP URI of the person to reach")
    whisper: bool = Field(default=False, description="Tell the person a one-line summary before connecting them")
    line: Line = Field(default="Of course, I'm putting you through now. Please hold.", description="Said first")


class DtmfTool(_Tool):
    """The agent presses keys (an IVR's menu): standard DTMF tones in its audio."""

    kind: Literal["send_dtmf"]


class HttpTool(_Tool):
    """An endpoint of the business's own, called with the model's arguments (JSON-Schema-validated).

    Signed like RelayX's webhooks (`X-RelayX-Signature` with WEBHOOK_SECRET); header values may name
    secrets as `${RELAYX_TOOL_…}`, read from the environment when called, never stored.
    """

    kind: Literal["http"]
    url: str = Field(min_length=1, max_length=2000, json_schema_extra={"pattern": WEBHOOK_URL})
    method: Literal["GET", "POST"] = "POST"
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema (type object) of the arguments",
    )
    headers: dict[str, Annotated[str, Field(max_length=2000, pattern=NUL_FREE)]] = Field(default_factory=dict)
    timeout_s: float = Field(default=5.0, gt=0, le=30)
    wait_line: str | None = Field(default=None, max_length=500, pattern=NUL_FREE,
                                  description="Said while the tool runs (e.g. 'Let me check that.')")
    fallback_line: Line = Field(default="Sorry, I couldn't do that just now.",
                                description="Said when the tool fails or times out")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from shared import webhooks

        try:
            webhooks.check_url_syntax(value)
        except webhooks.WebhookURLError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, value: dict[str, Any]) -> dict[str, Any]:
        import jsonschema

        if value.get("type", "object") != "object":
            raise ValueError("parameters must be a JSON Schema of type object")
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"parameters: {exc.message}") from None
        return {"type": "object", "properties": {}, **value}


Tool = Annotated[EndCallTool | TransferTool | DtmfTool | HttpTool, Field(discriminator="kind")]
ToolName = Annotated[str, Field(pattern=TOOL_NAME)]


class CallLimits(_Strict):
    """Call hygiene: a silent caller is asked, then left; no call runs forever."""

    idle_reprompt_s: float = Field(default=8.0, ge=2, le=120, description="Caller silence before the agent asks")
    idle_reprompt_line: Line = "Are you still there?"
    idle_hangups_after: int = Field(default=2, ge=0, le=10, description="Re-prompts without an answer before hanging up")
    idle_goodbye_line: Line = "I'll let you go now. Goodbye!"
    max_duration_s: int = Field(default=900, ge=30, le=14_400, description="The agent ends the call after this long")
    max_duration_line: Line = "I'm sorry, we've reached the time limit for this call. Goodbye!"
    dtmf_timeout_ms: int = Field(default=1500, ge=300, le=10_000,
                                 description="Keypad digits are collected until # or this long without one")


class AgentSettings(_Strict):
    """Per-agent knobs, grouped by what reads them. The defaults here are the only defaults."""

    # --- turn-taking (voice_gateway.turns, voice_gateway.session) --------------------------------
    end_of_turn_silence_ms: int = Field(
        default=280, ge=100, le=5000,
        description="Silence after the caller's speech that ends their turn (with smart turn detection: "
        "when the model is unsure)",
    )
    turn_detection: Literal["smart", "silence"] = Field(
        default="smart",
        description="smart: an end-of-turn model (Smart Turn v3) listens at the first pause and shortens or "
        "lengthens the wait; silence: every turn ends after end_of_turn_silence_ms",
    )
    smart_turn: SmartTurnConfig = Field(default_factory=SmartTurnConfig)
    min_speech_ms: int = Field(
        default=150, ge=20, le=3000, description="Voiced audio needed before a turn starts (clicks are ignored)"
    )
    barge_in_min_ms: int = Field(
        default=400, ge=100, le=3000,
        description="Speech over the agent interrupts it after this long; shorter is a backchannel",
    )
    # --- context for the models (voice_gateway.prompts) -------------------------------------------
    business: str | None = Field(
        default=None, max_length=200, pattern=NUL_FREE, description="Business name, given to STT and the LLM"
    )
    expected_answers: list[Annotated[str, Field(pattern=NUL_FREE)]] = Field(
        default_factory=list, max_length=100, description="Words STT should expect (names, products)"
    )
    # --- after the call (shared.webhooks, shared.jobs, voice_gateway.recorder) -------------------
    webhook_url: str | None = Field(
        default=None, max_length=2000, json_schema_extra={"pattern": WEBHOOK_URL},
        description="Where this agent's call events go (else WEBHOOK_URL); private hosts need WEBHOOK_ALLOW_PRIVATE",
    )
    recording: bool = Field(default=True, description="Record calls as two-channel WAV (caller left, agent right)")
    analysis: AnalysisConfig | None = Field(
        default=None,
        description='Post-call analysis: {"outcomes": [labels], "schema": JSON Schema of the data to extract}',
    )
    # --- acting on the call (voice_gateway.actions, voice_gateway.voicemail) ----------------------
    voicemail: VoicemailConfig = Field(default_factory=VoicemailConfig)
    tools: dict[ToolName, Tool] = Field(
        default_factory=dict, max_length=32,
        description="Tools the agent may call, by name: built-ins (kind end_call, transfer_call, send_dtmf) "
        "and HTTP endpoints (kind http)",
    )
    limits: CallLimits = Field(default_factory=CallLimits)

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        from shared import webhooks  # lazy: keeps the gateway's import of this module light

        if value is None or value == "":
            return None
        try:
            webhooks.check_url_syntax(value)
        except webhooks.WebhookURLError as exc:
            raise ValueError(str(exc)) from None
        if not re.fullmatch(WEBHOOK_URL, value) or _unstorable(value):  # what urlsplit lets through but no host can hold
            raise ValueError("webhook URL is malformed: a space, control or bracket in the host, a port that is "
                             "not a number, or a NUL")
        return value


class AgentConfig(_Strict):
    """Everything that defines an agent (the body of POST /agents; a stored agent adds id and times)."""

    name: AgentName
    prompt: Prompt
    greeting: Greeting | None = None
    voice: Voice | None = None
    language: Language = "en"
    llm: LLMConfig = Field(default_factory=LLMConfig)
    settings: AgentSettings = Field(default_factory=AgentSettings)


def _unstorable(value: Any) -> bool:
    """Text no database keeps as given: a NUL, or a lone surrogate (not UTF-8) anywhere in `value`."""
    if isinstance(value, str):
        return "\x00" in value or (not value.isascii() and _not_utf8(value))
    if isinstance(value, dict):
        return any(_unstorable(k) or _unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_unstorable(item) for item in value)
    return False


def _not_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def known_keys_only(model: type[BaseModel], value: Any, where: str) -> Any:
    """Drop (and log) keys `model` does not know from a stored dict, so that an agent saved by another
    RelayX version still loads; the API refuses such keys on the way in."""
    if not isinstance(value, dict):
        return value
    fields = set(model.model_fields) | {info.alias for info in model.model_fields.values() if info.alias}
    unknown = sorted(set(value) - fields)
    if not unknown:
        return value
    log.warning("stored agent %s: ignoring unknown key(s) %s", where, ", ".join(unknown))
    return {k: v for k, v in value.items() if k in fields}
