"""Any OpenAI-compatible server (llama.cpp server, vLLM, LM Studio, OpenAI): /chat/completions over SSE."""

from __future__ import annotations

from typing import Any

import httpx

from shared.llm.base import GenerationOptions
from shared.llm.http_engine import PRESENCE_PENALTY, HTTPEngine, StreamLine


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
        return StreamLine(text=(choices[0].get("delta") or {}).get("content") if choices else None)

    def _answer_text(self, answer: dict[str, Any]) -> str:
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._fail("the answer has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise self._fail("choices[0].message.content is not text")
        return content
