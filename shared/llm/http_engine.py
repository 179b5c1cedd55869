"""What the two HTTP engines share: the client, the request loop and the mapping of failures to LLMError.

Ollama and OpenAI-compatible servers differ only in their wire format (the path, how sampling and the
schema are spelled, how a streamed line and a whole answer carry the text); a subclass writes just that.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from shared import urgency
from shared.llm.base import ChatMessage, GenerationOptions, LLMError

SPECULATIVE_POLL_S = 0.05
"""How often a held speculative request looks again (its turn may be confirmed meanwhile)."""
REPEAT_PENALTY = 1.1
"""Ollama's repeat penalty on a reply that has earlier replies to avoid (the embedded engine's value)."""
PRESENCE_PENALTY = 0.3
"""Presence (and, for OpenAI, frequency) penalty then: mild, as a reply repeats the caller's words on purpose."""


@dataclass(frozen=True)
class StreamLine:
    """What one line of a streamed answer carried: a text piece (maybe none) and whether it was the last."""

    text: str | None = None
    last: bool = False


class HTTPEngine(ABC):
    """A model behind an HTTP server: streams a reply, answers one JSON-constrained completion.

    The server owns the model, so there is nothing to load or warm here; this class holds the connection
    pool and turns every transport, status or decoding failure into an `LLMError` naming the engine.
    """

    label: ClassVar[str]
    """How errors name the engine ("ollama", "openai-compatible")."""
    model_prefix: ClassVar[str]
    """Prefix of `model_name`, as stored with each analysis ("ollama", "openai")."""
    path: ClassVar[str]
    """The chat route, relative to the base URL."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.model_name = f"{self.model_prefix}:{model}"
        # timeout_s bounds each wait for bytes: on a call it is the first-token budget, and a stream that
        # stalls after starting trips it too. Connecting gets at most 5 s of it.
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            transport=transport,
            headers=headers,
        )
        self._firm_in_flight = 0

    def warmup(self) -> None:
        """Nothing to load here: the server owns the model (Ollama loads it on the first request)."""

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]:
        """Yield text pieces as they arrive; an error event or a non-200 answer raises LLMError.

        With earlier replies to `avoid`, the server's repeat penalties are asked for: a server cannot be
        told which openings to mask, and its tokenizer is not ours to build a logit bias from. What still
        repeats is caught after the fact (`shared.conversation.is_repeat`).

        The embedded engine's rule holds for a remote server too (`shared.urgency`): a speculative
        reply is not sent while this process has a confirmed one in flight to the server, which would
        otherwise share the server's capacity with a guess. It is sent once the server is free of
        confirmed work, or at once when its turn is confirmed meanwhile.
        """
        handle = urgency.current()
        while urgency.is_speculative(handle) and self._firm_in_flight > 0:
            await asyncio.sleep(SPECULATIVE_POLL_S)
        firm = not urgency.is_speculative(handle)
        self._firm_in_flight += firm
        try:
            async for piece in self._stream(messages, options, penalize=bool(avoid)):
                yield piece
        finally:
            self._firm_in_flight -= firm

    async def _stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, penalize: bool = False
    ) -> AsyncIterator[str]:
        body = self._body(messages, options, stream=True)
        if penalize:
            body = self._with_penalties(body)
        try:
            async with self._client.stream("POST", self.path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()  # so the HTTPStatusError carries the server's explanation
                    response.raise_for_status()
                async for raw in response.aiter_lines():
                    line = self._read_line(raw)
                    if line is None:
                        continue
                    if line.text:
                        yield line.text
                    if line.last:
                        return
        except LLMError:
            raise
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise self._error(exc) from exc

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], options: GenerationOptions
    ) -> str:
        """One non-streamed answer whose shape the server constrains with `schema`."""
        body = self._body(messages, options, stream=False) | self._schema_fields(schema)
        try:
            response = await self._client.post(self.path, json=body)
            response.raise_for_status()
            answer = response.json()
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            raise self._error(exc) from exc
        return self._answer_text(self._checked(answer))

    # --- the wire format: what a subclass writes ----------------------------------------------------

    @abstractmethod
    def _sampling_fields(self, options: GenerationOptions) -> dict[str, Any]:
        """Temperature and token limit, spelled the server's way."""

    @abstractmethod
    def _with_penalties(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request body with the server's repeat penalties added (a new dict)."""

    @abstractmethod
    def _schema_fields(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The fields that constrain a non-streamed answer to `schema`."""

    @abstractmethod
    def _read_line(self, line: str) -> StreamLine | None:
        """One line of the streamed body; None for a line that carries no event (blank, comment)."""

    @abstractmethod
    def _answer_text(self, answer: dict[str, Any]) -> str:
        """The text of a whole (non-streamed) answer; LLMError when it has none."""

    # --- helpers for subclasses ---------------------------------------------------------------------

    def _event(self, data: str) -> dict[str, Any]:
        """Decode one streamed JSON event; an `error` in it raises LLMError."""
        return self._checked(json.loads(data))

    def _checked(self, event: Any) -> dict[str, Any]:
        """The event as an object, unless it is not one or the server reported an error in it."""
        if not isinstance(event, dict):
            raise self._fail("the answer is not a JSON object")
        if "error" in event:
            raise self._fail(str(event["error"]))
        return event

    def _fail(self, reason: str) -> LLMError:
        return LLMError(f"{self.label}: {reason}")

    def _body(
        self, messages: list[ChatMessage], options: GenerationOptions, *, stream: bool
    ) -> dict[str, Any]:
        return {
            "model": options.model or self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": stream,
        } | self._sampling_fields(options)

    def _error(self, exc: Exception) -> LLMError:
        """Name the failure so the session's log says which engine and why."""
        if isinstance(exc, httpx.TimeoutException):
            return self._fail(f"timed out ({type(exc).__name__})")
        if isinstance(exc, httpx.HTTPStatusError):
            return self._fail(f"HTTP {exc.response.status_code}")
        return self._fail(f"{type(exc).__name__}: {exc}")
