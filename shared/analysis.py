"""Post-call analysis: the agent's analysis spec, the prompt, the output schema and its validation.

Everything here is pure except `analyze`, which takes the model as an argument (any `StructuredLLM`),
so the rules can be tested without loading one. The model's answer is constrained to the output
schema by the engine and validated again here: a constrained decoder can still stop mid-object
(max tokens), and remote servers may ignore the constraint.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from shared.agent_config import AgentSettings
from shared.llm.base import ChatMessage, GenerationOptions, LLMError, StructuredLLM
from shared.outcome_cues import DO_NOT_CALL, Cue, caller_cue
from shared.storage.base import TranscriptLine

log = logging.getLogger(__name__)

SENTIMENTS = ("positive", "neutral", "negative")
NO_CONVERSATION = "no_conversation"
# `DO_NOT_CALL` ("do_not_call", from shared.outcome_cues) is the outcome on which a campaign puts the
# number on its do-not-call list; `not_interested` is a refusal that leaves the number callable.
DEFAULT_OUTCOMES: dict[str, str] = {
    "goal_achieved": "the caller agreed to what the call was for: booked, confirmed, rescheduled or answered",
    "callback_requested": "the caller asked to be called back later or at another time",
    "not_interested": "the caller declined (no thanks, not now, went elsewhere) without asking to stop the calls",
    DO_NOT_CALL: "the caller asked not to be called again (remove me from your list, stop calling)",
    "wrong_person": "the person who answered is not the one the call was for, or the number is wrong",
    "voicemail": "an answering machine, voicemail greeting or carrier message answered (leave a message, "
                 "the mailbox is full)",
    NO_CONVERSATION: "nobody really spoke: silence, noise, only hello, or an immediate hang-up",
}
_TYPES = ("string", "number", "integer", "boolean", "array", "object")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_OUTCOME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_PROPERTIES = 30
SUMMARY_MAX_CHARS = 1200
EVIDENCE_MAX_CHARS = 600
KEY_POINTS_MAX = 5
# Tokens reserved for the instructions and schema, and for the answer; the rest is transcript.
PROMPT_RESERVE_TOKENS = 700
ANSWER_TOKENS = 400  # a full answer is ~150-250 tokens; this bounds a runaway string
CONDENSE_NOTE_TOKENS = 220
MAX_CONDENSE_ROUNDS = 3


class SchemaProblem(ValueError):
    """An agent's analysis settings are unusable; the message names the field and the reason."""


class InvalidAnalysis(ValueError):
    """The model's answer is not valid JSON for the output schema; the message says why."""


# --- the agent's spec ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisSpec:
    """What to extract from one agent's calls: its outcome labels and its data schema."""

    outcomes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OUTCOMES))
    data_schema: dict[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}, "additionalProperties": False}
    )


def normalize_outcomes(raw: Any, where: str = "analysis.outcomes") -> dict[str, str]:
    """A list of snake_case labels (or a {label: description} map); `no_conversation` is always allowed."""
    if raw is None:
        return dict(DEFAULT_OUTCOMES)
    if isinstance(raw, list):
        items = {label: DEFAULT_OUTCOMES.get(label, "") for label in raw} if all(
            isinstance(x, str) for x in raw) else None
        if items is None:
            raise SchemaProblem(f"{where}: every outcome must be a string")
        if len(items) != len(raw):
            raise SchemaProblem(f"{where}: outcomes must be unique")
    elif isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        items = dict(raw)
    else:
        raise SchemaProblem(f"{where}: expected a list of outcome names (or a map of name to description)")
    if not 1 <= len(items) <= 30:
        raise SchemaProblem(f"{where}: give between 1 and 30 outcomes, got {len(items)}")
    for label in items:
        if not _OUTCOME.match(label):
            raise SchemaProblem(f"{where}: {label!r} is not a snake_case name (a-z, 0-9, _; at most 64)")
    items.setdefault(NO_CONVERSATION, DEFAULT_OUTCOMES[NO_CONVERSATION])
    return items


def normalize_data_schema(raw: Any, where: str = "analysis.schema") -> dict[str, Any]:
    """The agent's extraction schema as a JSON Schema object; the shorthand {name: "type"} is accepted.

    Only the part of JSON Schema that every engine can turn into a constraint is allowed: typed
    properties (string, number, integer, boolean, array, object), enum, description, items, required.
    """
    if raw is None:
        return AnalysisSpec().data_schema
    if not isinstance(raw, dict):
        raise SchemaProblem(f"{where}: expected a JSON Schema object, got {type(raw).__name__}")
    if "type" not in raw and "properties" not in raw:
        raw = {"type": "object", "properties": raw}  # shorthand: {"new_day": "string", ...}
    if raw.get("type") != "object":
        raise SchemaProblem(f"{where}.type: the top level must be \"object\"")
    schema = _normalize_node(raw, where)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise SchemaProblem(f"{where}{'.' + path if path else ''}: {exc.message}") from None
    return schema


def _normalize_node(node: Any, where: str) -> dict[str, Any]:
    if isinstance(node, str):
        node = {"type": node}
    if not isinstance(node, dict):
        raise SchemaProblem(f"{where}: expected a type name or a schema object")
    allowed = {"type", "description", "enum", "items", "properties", "required", "additionalProperties", "title"}
    unknown = sorted(set(node) - allowed)
    if unknown:
        raise SchemaProblem(f"{where}: unsupported keyword(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    kind = node.get("type")
    if "enum" in node and kind is None:
        kind = "string"
    if kind not in _TYPES:
        raise SchemaProblem(f"{where}.type: {kind!r} is not one of {', '.join(_TYPES)}")
    out: dict[str, Any] = {"type": kind}
    if "description" in node:
        if not isinstance(node["description"], str):
            raise SchemaProblem(f"{where}.description: must be a string")
        out["description"] = node["description"][:500]
    if "enum" in node:
        values = node["enum"]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise SchemaProblem(f"{where}.enum: must be a non-empty list of strings")
        if kind != "string":
            raise SchemaProblem(f"{where}.enum: only string enums are supported")
        out["enum"] = list(dict.fromkeys(values))
    if kind == "array":
        if "items" not in node:
            raise SchemaProblem(f"{where}.items: an array needs an items schema")
        out["items"] = _normalize_node(node["items"], f"{where}.items")
    if kind == "object":
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            raise SchemaProblem(f"{where}.properties: an object needs at least one property")
        if len(props) > MAX_PROPERTIES:
            raise SchemaProblem(f"{where}.properties: at most {MAX_PROPERTIES} properties, got {len(props)}")
        for name in props:
            if not isinstance(name, str) or not _NAME.match(name):
                raise SchemaProblem(f"{where}.properties: {name!r} is not a valid field name")
        out["properties"] = {name: _normalize_node(sub, f"{where}.properties.{name}") for name, sub in props.items()}
        # Every field is asked for (a value or an explicit empty one): constrained decoders and
        # OpenAI's strict mode both need the full list, and a missing key is worse than an empty value.
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


def spec_from_settings(agent_settings: AgentSettings) -> AnalysisSpec:
    """The spec of an agent (normalised when its settings were validated); the defaults without one."""
    config = agent_settings.analysis
    if config is None:
        return AnalysisSpec()
    return AnalysisSpec(outcomes=dict(config.outcomes), data_schema=dict(config.data_schema))


def output_schema(spec: AnalysisSpec) -> dict[str, Any]:
    """The JSON Schema the model's whole answer must satisfy.

    The keys are generated in this order: the model first quotes what the caller said that decides
    the call (`evidence`) and gives the verdict while that quote is fresh, then summarises, and fills
    the fields last, from the facts it has just written out (measured: `relayx bench analysis`).
    """
    return {
        "type": "object",
        "properties": {
            "evidence": {"type": "string", "maxLength": EVIDENCE_MAX_CHARS},
            "outcome": {"type": "string", "enum": list(dict.fromkeys([*outcome_choices(spec), *spec.outcomes]))},
            "summary": {"type": "string", "minLength": 1, "maxLength": SUMMARY_MAX_CHARS},
            "key_points": {
                "type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 300},
                "maxItems": KEY_POINTS_MAX,
            },
            "data": spec.data_schema,
            "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
        },
        "required": ["evidence", "outcome", "summary", "key_points", "data", "sentiment"],
        "additionalProperties": False,
    }


def outcome_choices(spec: AnalysisSpec) -> dict[str, str]:
    """What the model writes for each outcome (its description, else its label) → the label.

    A small model matches the caller's words to a description ("the caller asked to be called back
    later") far better than to a snake_case name: with the labels themselves, the 0.5B answered the
    first label for almost every call. Where any description is missing, shared or another label's
    name, all are chosen by label (a mix of names and sentences reads as two kinds of answer).
    """
    choices = {desc.strip(): label for label, desc in spec.outcomes.items()}
    # A description that is a label (its own, when outcomes are given as a list) is no description.
    if len(choices) != len(spec.outcomes) or any(not text or text in spec.outcomes for text in choices):
        return {label: label for label in spec.outcomes}
    return choices


def generation_schema(spec: AnalysisSpec, outcome: str | None = None) -> dict[str, Any]:
    """The schema handed to the engine: the output schema without string lengths, and with the
    outcome written as one of `outcome_choices` (the stored answer holds the label), or as the one
    `outcome` the caller's words settled (`shared.outcome_cues`).

    llama.cpp unrolls `maxLength: n` into n nested optional rules (a grammar of megabytes that
    crashes its sampler); lengths are checked after generation instead.
    """
    schema = _strip_lengths(output_schema(spec))
    choices = outcome_choices(spec)
    schema["properties"]["outcome"]["enum"] = [text for text, label in choices.items()
                                               if outcome is None or label == outcome]
    return schema


def _strip_lengths(node: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if k not in ("minLength", "maxLength", "description")}
    if "properties" in out:
        out["properties"] = {name: _strip_lengths(sub) for name, sub in out["properties"].items()}
    if "items" in out:
        out["items"] = _strip_lengths(out["items"])
    return out


# --- the prompt ------------------------------------------------------------------------------------


def transcript_text(lines: Sequence[TranscriptLine]) -> str:
    """One `SPEAKER: text` line per turn, as the model reads it."""
    names = {"caller": "CALLER", "agent": "AGENT", "tool": "AGENT ACTION"}
    return "\n".join(f"{names.get(line.speaker, 'AGENT')}: {line.text}" for line in lines)


def has_caller_speech(lines: Sequence[TranscriptLine]) -> bool:
    return any(line.speaker == "caller" and line.text.strip() for line in lines)


def estimate_tokens(text: str) -> int:
    """A conservative count (≈3 characters a token for English) that needs no tokenizer."""
    return len(text) // 3 + 1


def _field_line(name: str, sub: dict[str, Any]) -> str:
    kind = sub["type"] + (", one of " + "/".join(sub["enum"]) if "enum" in sub else "")
    return f"- {name} ({kind})" + (f": {sub['description']}" if sub.get("description") else "")


def messages_for(transcript: str, spec: AnalysisSpec, *, agent_prompt: str = "", condensed: bool = False,
                 correction: str | None = None, cue: Cue | None = None) -> list[ChatMessage]:
    """The instructions, the agent's purpose, the outcome labels and the transcript (and what the
    caller's words already settle: the outcome and its evidence)."""
    outcomes = "\n".join(f"- {choice}" for choice in outcome_choices(spec))
    properties = spec.data_schema.get("properties", {})
    fields = "\n".join(_field_line(name, sub) for name, sub in properties.items())
    system = (
        "You analyse a finished phone call between an AI phone agent (AGENT) and a person (CALLER). "
        "Judge the call by what the CALLER said, not by what the agent said or hoped for. "
        "Answer with one JSON object only, with these keys in this order:\n"
        "evidence: a short quote of the CALLER's own words (from CALLER lines only) that shows how the "
        "call ended.\n"
        f"outcome: the one of these that fits the evidence, copied exactly:\n{outcomes}\n"
        "summary: 1 to 3 plain sentences on what happened in the call.\n"
        f"key_points: up to {KEY_POINTS_MAX} short facts the caller gave or agreed to.\n"
        + (f"data: the fields below. Fill each one only with what its description asks for (yes is true, "
           f"no is false), never with another value from the call; when the call does not give it, an "
           f"empty string, 0, false or an empty list:\n{fields}\n"
           if fields else "data: an empty object.\n")
        + "sentiment: the caller's overall mood: positive, neutral or negative.\n"
        "Use only what is in the transcript."
    )
    if agent_prompt:
        system += f"\n\nThe agent's instructions (the purpose of the call):\n{agent_prompt[:800]}"
    kind = "Condensed notes of a long call" if condensed else "Transcript"
    user = f"{kind}:\n{transcript}\n\n"
    if cue is not None:
        choice = next(text for text, label in outcome_choices(spec).items() if label == cue.outcome)
        user += f'The caller said "{cue.phrase}": the outcome is "{choice}".\n'
    user += "Answer with the JSON object."
    if correction:
        user += f"\nYour previous answer was rejected ({correction}). Follow the keys and labels exactly."
    return [ChatMessage("system", system), ChatMessage("user", user)]


# --- validation ------------------------------------------------------------------------------------


def parse_answer(text: str, spec: AnalysisSpec) -> dict[str, Any]:
    """The model's answer as stored values, or `InvalidAnalysis` naming the first problem."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        snippet = (text or "")[:80].replace("\n", " ")
        raise InvalidAnalysis(f"not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}): {snippet!r}") from None
    validator = jsonschema.Draft202012Validator(output_schema(spec))
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise InvalidAnalysis(f"schema violation at {path}: {first.message[:200]}")
    summary = value["summary"].strip()
    if not summary:
        raise InvalidAnalysis("summary is empty")
    return {
        "summary": summary,
        "key_points": [p.strip() for p in value["key_points"] if p.strip()],
        "sentiment": value["sentiment"],
        "outcome": outcome_choices(spec).get(value["outcome"], value["outcome"]),
        "data": _without_placeholders(value["data"]),
    }


_PLACEHOLDERS = frozenset({
    "not specified", "unspecified", "not mentioned", "not given", "not provided", "not stated", "unknown",
    "none", "n/a", "na", "null", "not applicable", "not available", "-",
})
"""What models write in a text field the call does not answer, instead of the empty string asked for."""


def _without_placeholders(value: Any) -> Any:
    """The extracted data with placeholder text ("not specified", "N/A"…) as the empty string: a
    consumer of `data` must not read "not specified" as a callback time."""
    if isinstance(value, str):
        return "" if value.strip().strip(".").lower() in _PLACEHOLDERS else value
    if isinstance(value, dict):
        return {key: _without_placeholders(item) for key, item in value.items()}
    if isinstance(value, list):
        return [item for item in (_without_placeholders(v) for v in value) if item != ""]
    return value


def no_conversation_values() -> dict[str, Any]:
    """The analysis of a call in which the caller never spoke: decided without a model."""
    return {
        "status": "completed",
        "summary": "The call connected but the caller did not say anything.",
        "key_points": [],
        "sentiment": "neutral",
        "outcome": NO_CONVERSATION,
        "data": {},
        "error": None,
        "model": None,
        "condensed": False,
        "attempts": 0,
    }


VOICEMAIL = "voicemail"


def voicemail_values(answered_by: str, lines: Sequence[TranscriptLine], spec: AnalysisSpec) -> dict[str, Any]:
    """The analysis of a call an answering machine took (Twilio's AMD or the gateway's own screening
    said so): decided without a model, which would read the machine's greeting as a conversation.
    The outcome is `voicemail` where the agent's outcomes have it (the default set does)."""
    left = any(line.speaker == "agent" and line.metrics.get("voicemail") for line in lines)
    outcome = VOICEMAIL if VOICEMAIL in spec.outcomes else NO_CONVERSATION
    return {
        "status": "completed",
        "summary": ("An answering machine answered; the agent left its message." if left
                    else "An answering machine answered; the agent hung up without a message."),
        "key_points": [f"answered by: {answered_by}"],
        "sentiment": "neutral",
        "outcome": outcome,
        "data": {},
        "error": None,
        "model": None,
        "condensed": False,
        "attempts": 0,
    }


def answered_by_machine(answered_by: str | None) -> bool:
    return bool(answered_by) and (str(answered_by).startswith("machine") or answered_by == "fax")


# --- running it ------------------------------------------------------------------------------------


async def _complete_text(llm: StructuredLLM, messages: list[ChatMessage], max_tokens: int) -> str:
    pieces = [p async for p in llm.stream(messages, GenerationOptions(temperature=0.1, max_tokens=max_tokens))]
    return "".join(pieces).strip()


def _chunks(lines: list[str], budget_tokens: int) -> list[str]:
    """Group transcript lines into pieces of at most `budget_tokens` (a very long line is split)."""
    limit = budget_tokens * 3
    pieces: list[str] = []
    current = ""
    for line in lines:
        while len(line) > limit:
            pieces.append(line[:limit])
            line = line[limit:]
        if current and len(current) + len(line) + 1 > limit:
            pieces.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(current)
    return pieces


async def condense(llm: StructuredLLM, transcript: str, budget_tokens: int, context_tokens: int) -> str:
    """Shrink a transcript that does not fit into notes that do, part by part (map, then join).

    Nothing is cut silently: every part of the call is read by the model once per round; the result
    is marked as condensed in the stored analysis.
    """
    text = transcript
    chunk_budget = max(200, context_tokens - PROMPT_RESERVE_TOKENS // 2 - CONDENSE_NOTE_TOKENS)
    for _ in range(MAX_CONDENSE_ROUNDS):
        notes = []
        parts = _chunks(text.splitlines(), chunk_budget)
        for index, part in enumerate(parts, start=1):
            messages = [
                ChatMessage("system", "You condense part of a phone call transcript into short notes. Keep "
                                      "who said what, names, numbers, dates, answers and commitments."),
                ChatMessage("user", f"Part {index} of {len(parts)}:\n{part}\n\nNotes:"),
            ]
            notes.append(f"Part {index}: {await _complete_text(llm, messages, CONDENSE_NOTE_TOKENS)}")
        text = "\n".join(notes)
        if estimate_tokens(text) <= budget_tokens:
            return text
    raise InvalidAnalysis(f"the transcript is still about {estimate_tokens(text)} tokens after condensing")


async def analyze(
    llm: StructuredLLM,
    lines: Sequence[TranscriptLine],
    spec: AnalysisSpec,
    *,
    context_tokens: int,
    agent_prompt: str = "",
) -> dict[str, Any]:
    """Analyse one transcript; returns the values of the call_analysis row (completed or failed).

    A call without caller speech needs no model. An invalid answer (or an engine error) is retried
    once with the reason attached; a second failure is returned as `failed` with that reason.
    """
    if not has_caller_speech(lines):
        return no_conversation_values()
    base = {"model": getattr(llm, "model_name", None), "condensed": False}
    transcript = transcript_text(lines)
    budget = context_tokens - PROMPT_RESERVE_TOKENS - ANSWER_TOKENS
    if estimate_tokens(transcript) > budget:
        try:
            transcript = await condense(llm, transcript, budget, context_tokens)
        except (LLMError, InvalidAnalysis) as exc:
            return {**base, "status": "failed", "error": f"condensing failed: {exc}", "attempts": 0}
        base["condensed"] = True
    cue = caller_cue(lines, spec.outcomes)
    schema = generation_schema(spec, cue.outcome if cue else None)
    reason: str | None = None
    for attempt in (1, 2):
        messages = messages_for(transcript, spec, agent_prompt=agent_prompt, condensed=bool(base["condensed"]),
                                correction=reason, cue=cue)
        options = GenerationOptions(temperature=0.2 if attempt == 1 else 0.0, max_tokens=ANSWER_TOKENS)
        try:
            answer = await llm.complete_json(messages, schema, options)
            values = parse_answer(answer, spec)
        except (LLMError, InvalidAnalysis) as exc:
            reason = str(exc)
            log.warning("analysis attempt %d failed: %s", attempt, reason)
            continue
        return {**base, **values, "status": "completed", "error": None, "attempts": attempt}
    return {
        **base, "status": "failed", "error": f"no valid analysis after 2 attempts: {reason}", "attempts": 2,
        "summary": None, "key_points": [], "sentiment": None, "outcome": None, "data": {},
    }
