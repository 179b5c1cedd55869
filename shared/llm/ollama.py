"""Ollama's native chat API: POST /api/chat, answered as NDJSON (one JSON object per line).

Tools go in `tools` as function objects; a streamed line's `message.tool_calls` holds whole calls (their
`arguments` an object). An earlier call is sent back the same way, and a tool's result as a `tool`
message naming the tool (`tool_name`) and, for servers that read it, the call's id.
"""

from __future__ import annotations

from typing import Any

import httpx

from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.http_engine import PRESENCE_PENALTY, REPEAT_PENALTY, CallDelta, HTTPEngine, StreamLine


class OllamaLLM(HTTPEngine):
    """Streams from a local or remote Ollama server; each line's `message.content` until `done`."""

    label = "ollama"
    model_prefix = "ollama"
    path = "/api/chat"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        model: str = "llama3:8b",
        *,
        timeout_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, model, timeout_s=timeout_s, transport=transport)

    def _sampling_fields(self, options: GenerationOptions) -> dict[str, Any]:
        return {"options": {"temperature": options.temperature, "num_predict": options.max_tokens}}

    def _with_penalties(self, body: dict[str, Any]) -> dict[str, Any]:
        options = body["options"] | {"repeat_penalty": REPEAT_PENALTY, "presence_penalty": PRESENCE_PENALTY}
        return body | {"options": options}

    def _schema_fields(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {"format": schema}  # Ollama constrains the answer to a JSON Schema passed as `format`

    def _message(self, message: ChatMessage) -> dict[str, Any]:
        out: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            out["tool_calls"] = [
                {"id": call.id, "function": {"name": call.name, "arguments": call.arguments}}
                for call in message.tool_calls
            ]
        if message.role == "tool":
            out |= {k: v for k, v in (("tool_name", message.name), ("tool_call_id", message.tool_call_id)) if v}
        return out

    def _read_line(self, line: str) -> StreamLine | None:
        if not line.strip():
            return None
        event = self._event(line)
        message = event.get("message") or {}
        calls = tuple(_delta(i, call) for i, call in enumerate(message.get("tool_calls") or []))
        return StreamLine(text=message.get("content"), last=bool(event.get("done")), calls=calls, calls_done=True)

    def _answer_text(self, answer: dict[str, Any]) -> str:
        content = (answer.get("message") or {}).get("content")
        if not isinstance(content, str):
            raise self._fail("the answer has no message.content")
        return content


def _delta(index: int, call: Any) -> CallDelta:
    """One whole call of a line; a malformed entry becomes a call without a name (checked as invalid)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return CallDelta(index)
    call_id = call.get("id")
    return CallDelta(index, id=call_id if isinstance(call_id, str) else None, name=function.get("name"),
                     arguments=function.get("arguments"))
