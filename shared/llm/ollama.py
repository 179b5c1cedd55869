"""Ollama's native chat API: POST /api/chat, answered as NDJSON (one JSON object per line)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from shared.llm._http import make_client, to_llm_error, wire_messages
from shared.llm.base import ChatMessage, GenerationOptions, LLMError


class OllamaLLM:
    """Streams from a local or remote Ollama server."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        model: str = "llama3:8b",
        *,
        timeout_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model = model
        self.model_name = f"ollama:{model}"
        self._client = make_client(base_url, timeout_s, transport)

    def warmup(self) -> None:
        """Nothing to load here: the server owns the model (it loads it on the first request)."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        """Yield each line's `message.content`; stop at `done`; an `error` line raises LLMError."""
        body = {
            "model": options.model or self.model,
            "messages": wire_messages(messages),
            "stream": True,
            "options": {"temperature": options.temperature, "num_predict": options.max_tokens},
        }
        try:
            async with self._client.stream("POST", "/api/chat", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if "error" in event:
                        raise LLMError(f"ollama: {event['error']}")
                    piece = (event.get("message") or {}).get("content")
                    if piece:
                        yield piece
                    if event.get("done"):
                        return
        except LLMError:
            raise
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise to_llm_error("ollama", exc) from exc

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], options: GenerationOptions
    ) -> str:
        """One non-streamed answer whose shape Ollama constrains with the schema passed as `format`."""
        body = {
            "model": options.model or self.model,
            "messages": wire_messages(messages),
            "stream": False,
            "format": schema,
            "options": {"temperature": options.temperature, "num_predict": options.max_tokens},
        }
        try:
            response = await self._client.post("/api/chat", json=body)
            response.raise_for_status()
            event = response.json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise to_llm_error("ollama", exc) from exc
        if not isinstance(event, dict):
            raise LLMError("ollama: the answer is not a JSON object")
        if "error" in event:
            raise LLMError(f"ollama: {event['error']}")
        content = (event.get("message") or {}).get("content")
        if not isinstance(content, str):
            raise LLMError("ollama: the answer has no message.content")
        return content
