"""Any OpenAI-compatible server (llama.cpp server, vLLM, LM Studio, OpenAI): /chat/completions over SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from shared.llm._http import make_client, to_llm_error, wire_messages
from shared.llm.base import ChatMessage, GenerationOptions, LLMError


class OpenAICompatLLM:
    """Streams `choices[0].delta.content` from server-sent events until `data: [DONE]`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080/v1",
        model: str = "default",
        *,
        api_key: str | None = None,
        timeout_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model = model
        self.model_name = f"openai:{model}"
        self._client = make_client(base_url, timeout_s, transport)
        if api_key:
            self._client.headers["Authorization"] = f"Bearer {api_key}"

    def warmup(self) -> None:
        """Nothing to load: the server owns the model."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def stream(self, messages: list[ChatMessage], options: GenerationOptions) -> AsyncIterator[str]:
        """Yield content deltas as they arrive; an `error` event or a non-200 answer raises LLMError."""
        body = {
            "model": options.model or self.model,
            "messages": wire_messages(messages),
            "stream": True,
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
        }
        try:
            async with self._client.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments (": ping"), event:/id: fields
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise LLMError(f"openai-compatible: {event['error']}")
                    choices = event.get("choices") or []
                    piece = (choices[0].get("delta") or {}).get("content") if choices else None
                    if piece:
                        yield piece
        except LLMError:
            raise
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise to_llm_error("openai-compatible", exc) from exc

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], options: GenerationOptions
    ) -> str:
        """One non-streamed answer constrained by `response_format: json_schema` (strict)."""
        body = {
            "model": options.model or self.model,
            "messages": wire_messages(messages),
            "stream": False,
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "call_analysis", "schema": schema, "strict": True},
            },
        }
        try:
            response = await self._client.post("/chat/completions", json=body)
            response.raise_for_status()
            event = response.json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise to_llm_error("openai-compatible", exc) from exc
        if not isinstance(event, dict):
            raise LLMError("openai-compatible: the answer is not a JSON object")
        if "error" in event:
            raise LLMError(f"openai-compatible: {event['error']}")
        try:
            content = event["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("openai-compatible: the answer has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise LLMError("openai-compatible: choices[0].message.content is not text")
        return content
