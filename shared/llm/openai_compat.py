"""Any OpenAI-compatible server (llama.cpp server, vLLM, LM Studio, OpenAI): /chat/completions over SSE.

Tools go in `tools` as function objects. A streamed call comes in `delta.tool_calls` fragments sharing
an `index`: its id and name first, then its arguments' JSON text in pieces, until `finish_reason`. An
earlier call is sent back with its arguments as JSON text, and a tool's result as a `tool` message
carrying the call's id.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from shared.llm.base import ChatMessage, GenerationOptions
from shared.llm.http_engine import PRESENCE_PENALTY, CallDelta, HTTPEngine, StreamLine


class OpenAICompatLLM(HTTPEngine):
    """Streams `choices[0].delta.content` from server-sent events until `data: [DONE]`."""

    label = "openai-compatible"
    model_prefix = "openai"
    path = "/chat/completions"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080/v1",
        model: str = "default",
        *,
        api_key: str | None = None,
        timeout_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(base_url, model, timeout_s=timeout_s, transport=transport, headers=headers)

    def _sampling_fields(self, options: GenerationOptions) -> dict[str, Any]:
        return {"temperature": options.temperature, "max_tokens": options.max_tokens}

    def _with_penalties(self, body: dict[str, Any]) -> dict[str, Any]:
        return body | {"presence_penalty": PRESENCE_PENALTY, "frequency_penalty": PRESENCE_PENALTY}

    def _schema_fields(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "call_analysis", "schema": schema, "strict": True},
            }
        }

    def _read_line(self, line: str) -> StreamLine | None:
        if not line.startswith("data:"):
            return None  # blank separators, comments (": ping"), event:/id: fields
        data = line[5:].strip()
        if data == "[DONE]":
            return StreamLine(last=True)
        choices = self._event(data).get("choices") or []
        if not choices:
            return StreamLine()
        delta = choices[0].get("delta") or {}
        calls = tuple(_delta(i, call) for i, call in enumerate(delta.get("tool_calls") or []))
        return StreamLine(text=delta.get("content"), calls=calls,
                          calls_done=choices[0].get("finish_reason") is not None)

    def _message(self, message: ChatMessage) -> dict[str, Any]:
        if message.tool_calls:
            calls = [
                {"id": call.id, "type": "function",
                 "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
                for call in message.tool_calls
            ]
            # content is null when the assistant only called (OpenAI's own answers read back so)
            return {"role": "assistant", "content": message.content or None, "tool_calls": calls}
        if message.role == "tool":
            return {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
        return {"role": message.role, "content": message.content}

    def _answer_text(self, answer: dict[str, Any]) -> str:
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._fail("the answer has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise self._fail("choices[0].message.content is not text")
        return content


def _delta(position: int, call: Any) -> CallDelta:
    """One fragment of a streamed call; a malformed entry becomes a fragment without a name."""
    if not isinstance(call, dict):
        return CallDelta(position)
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    index = call.get("index")
    call_id = call.get("id")
    arguments = function.get("arguments")
    return CallDelta(
        index if isinstance(index, int) else position,
        id=call_id if isinstance(call_id, str) else None,
        name=function.get("name") if isinstance(function.get("name"), str) else None,
        arguments=arguments if isinstance(arguments, str | dict) else None,
    )
