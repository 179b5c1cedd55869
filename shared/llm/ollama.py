"""Ollama's native chat API: POST /api/chat, answered as NDJSON (one JSON object per line)."""

from __future__ import annotations

from typing import Any

import httpx

from shared.llm.base import GenerationOptions
from shared.llm.http_engine import PRESENCE_PENALTY, REPEAT_PENALTY, HTTPEngine, StreamLine


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

    def _read_line(self, line: str) -> StreamLine | None:
        if not line.strip():
            return None
        event = self._event(line)
        return StreamLine(text=(event.get("message") or {}).get("content"), last=bool(event.get("done")))

    def _answer_text(self, answer: dict[str, Any]) -> str:
        content = (answer.get("message") or {}).get("content")
        if not isinstance(content, str):
            raise self._fail("the answer has no message.content")
        return content
