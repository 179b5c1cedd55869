"""Tools the model may call: their specs, and a model's call checked against them — pure, no engine.

An agent's tools (`shared.agent_config.AgentSettings.tools`) become `ToolSpec`s, the name, description
and JSON Schema every engine shows its model (Ollama and OpenAI-compatible servers in their `tools`
field, the embedded Qwen in its system prompt). Whatever the model then answers is parsed and validated
here, once for all engines: a call that names a known tool with arguments its schema accepts is a
`ToolCall`; anything else is an `InvalidToolCall` that says why. Neither is raised: a reply loop on a
live call handles a bad call as a value (speak a fallback, or ask again), never as an exception.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.agent_config import DtmfTool, EndCallTool, HttpTool, Tool, TransferTool

DTMF_DIGITS = r"^[0-9*#]{1,20}$"
END_CALL_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
TRANSFER_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""Hanging up and transferring take no arguments: what they say and where they go are the agent's
settings. An optional `reason` was tried: the 0.5B model filled it with its own description ("One line
for the person taking the call…"), at 15 to 20 tokens (half a second on 2 cores) before the call could
act. A whisper for the person taking a transfer is better made from the transcript."""
DTMF_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "digits": {"type": "string", "pattern": DTMF_DIGITS, "description": "The keys to press, e.g. 1 or 1234#"}
    },
    "required": ["digits"],
}
DEFAULT_DESCRIPTIONS = {
    "end_call": "Hang up. Use it only when the caller says goodbye or has nothing more to ask.",
    "transfer_call": "Put the caller through to a person. Use it when the caller asks for a real person, a human, "
    "a manager or someone else, or when you cannot help.",
    "send_dtmf": "Press keys on the phone keypad, to pick an option in an automated phone menu.",
}


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the model sees it: a name, what it does, and the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def function(self) -> dict[str, Any]:
        """The OpenAI-style function object every engine shows (`{"type": "function", "function": …}`)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)},
        }


@dataclass(frozen=True)
class ToolCall:
    """The model asked for a tool, with arguments its schema accepts; `id` ties the result back to it."""

    name: str
    arguments: dict[str, Any]
    id: str


@dataclass(frozen=True)
class InvalidToolCall:
    """The model tried to call a tool and got it wrong: JSON that does not parse, an unknown tool, or
    arguments its schema refuses. `raw` is what the model wrote (for the log), `reason` what failed."""

    name: str | None
    raw: str
    reason: str


def tool_specs(tools: Mapping[str, Tool]) -> list[ToolSpec]:
    """The specs of an agent's tools, by the names the agent gave them (in its order).

    Built-ins get fixed parameter schemas and, where the agent left the description empty, one that
    says when to use them; an HTTP tool brings its own schema.
    """
    return [_spec(name, tool) for name, tool in tools.items()]


def _spec(name: str, tool: Tool) -> ToolSpec:
    if isinstance(tool, HttpTool):
        description = tool.description or f"Ask the business's {name.replace('_', ' ')} service."
        return ToolSpec(name, description, tool.parameters)
    parameters = {
        EndCallTool: END_CALL_PARAMETERS,
        TransferTool: TRANSFER_PARAMETERS,
        DtmfTool: DTMF_PARAMETERS,
    }[type(tool)]
    return ToolSpec(name, tool.description or DEFAULT_DESCRIPTIONS[tool.kind], parameters)


def new_call_id() -> str:
    """An id for a call whose engine gave none (llama.cpp; Ollama before it had ids)."""
    return f"call_{uuid.uuid4().hex[:16]}"


def check_call(
    specs: Sequence[ToolSpec], name: object, arguments: object, *, raw: str, call_id: str | None = None
) -> ToolCall | InvalidToolCall:
    """A call as the model wrote it, checked: the tool exists and `arguments` fit its schema.

    `arguments` may be the JSON text (OpenAI sends a string) or the decoded object (Ollama); an empty
    string or null counts as no arguments (`{}`), as servers send for a tool without parameters.
    """
    import jsonschema  # here, not at the top: a process without tools never needs it

    if not isinstance(name, str) or not name:
        return InvalidToolCall(None, raw, "the call names no tool")
    spec = next((s for s in specs if s.name == name), None)
    if spec is None:
        return InvalidToolCall(name, raw, f"there is no tool named {name!r}")
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return InvalidToolCall(name, raw, f"the arguments are not JSON ({exc.msg})")
    if not isinstance(arguments, dict):
        return InvalidToolCall(name, raw, "the arguments are not a JSON object")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(spec.parameters).iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        return InvalidToolCall(name, raw, f"the arguments do not fit the schema{f' at {where}' if where else ''}: "
                                          f"{error.message}")
    return ToolCall(name, arguments, call_id or new_call_id())


def parse_call(specs: Sequence[ToolSpec], text: str, *, call_id: str | None = None) -> ToolCall | InvalidToolCall:
    """A call written as one JSON object `{"name": …, "arguments": {…}}` (the Hermes format), checked."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return InvalidToolCall(None, text, f"the call is not JSON ({exc.msg})")
    if not isinstance(data, dict):
        return InvalidToolCall(None, text, "the call is not a JSON object")
    return check_call(specs, data.get("name"), data.get("arguments"), raw=text, call_id=call_id)
