"""What the two HTTP engines share: the client, the request loop and the mapping of failures to LLMError.

Ollama and OpenAI-compatible servers differ only in their wire format (the path, how sampling and the
schema are spelled, how a message with tool calls is written, how a streamed line and a whole answer
carry the text and the calls); a subclass writes just that. Both take tools as OpenAI-style function
objects; the calls they stream are gathered here and checked against the specs (`shared.llm.tools`).
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, overload

import httpx

from shared import urgency
from shared.llm.base import ChatMessage, GenerationOptions, LLMError, StreamItem
from shared.llm.tools import InvalidToolCall, ToolCall, ToolSpec, check_call

SPECULATIVE_POLL_S = 0.05
"""How often a held speculative request looks again (its turn may be confirmed meanwhile)."""
REPEAT_PENALTY = 1.1
"""Ollama's repeat penalty on a reply that has earlier replies to avoid (the embedded engine's value)."""
PRESENCE_PENALTY = 0.3
"""Presence (and, for OpenAI, frequency) penalty then: mild, as a reply repeats the caller's words on purpose."""


@dataclass(frozen=True)
class CallDelta:
    """One tool call, or a fragment of one, as a streamed line carried it.

    OpenAI-compatible servers stream a call in fragments sharing an `index` (the id and name first, then
    the arguments' JSON text in pieces); Ollama sends each call whole, its arguments already an object.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | dict[str, Any] | None = None


@dataclass(frozen=True)
class StreamLine:
    """What one line of a streamed answer carried: a text piece (maybe none), tool calls or fragments of
    them, whether the calls gathered so far are complete, and whether it was the last line."""

    text: str | None = None
    last: bool = False
    calls: tuple[CallDelta, ...] = ()
    calls_done: bool = False


class _Calls:
    """The tool calls of one streamed answer, gathered by index until the server says they are complete."""

    def __init__(self) -> None:
        self._parts: dict[int, list[Any]] = {}  # index → [id, name, arguments text or object]

    def add(self, deltas: tuple[CallDelta, ...]) -> None:
        for delta in deltas:
            part = self._parts.setdefault(delta.index, [None, None, None])
            part[0] = part[0] or delta.id
            part[1] = part[1] or delta.name
            if isinstance(delta.arguments, str) and (part[2] is None or isinstance(part[2], str)):
                part[2] = (part[2] or "") + delta.arguments
            elif delta.arguments is not None:
                part[2] = delta.arguments

    def finish(self, specs: Sequence[ToolSpec]) -> list[ToolCall | InvalidToolCall]:
        """The calls gathered so far, checked, in index order; forgotten once returned."""
        out = []
        for _, (call_id, name, arguments) in sorted(self._parts.items()):
            raw = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
            out.append(check_call(specs, name, arguments, raw=raw, call_id=call_id))
        self._parts.clear()
        return out


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

    @overload
    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]: ...

    @overload
    def stream(
        self,
        messages: list[ChatMessage],
        options: GenerationOptions,
        *,
        avoid: Sequence[str] = (),
        tools: Sequence[ToolSpec],
    ) -> AsyncIterator[StreamItem]: ...

    async def stream(
        self,
        messages: list[ChatMessage],
        options: GenerationOptions,
        *,
        avoid: Sequence[str] = (),
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamItem]:
        """Yield text pieces as they arrive; an error event or a non-200 answer raises LLMError.

        With `tools`, they go in the request and the calls the server streams are yielded once each is
        complete (Ollama: at once; OpenAI-compatible: at `finish_reason` or the end of the stream),
        checked against their specs. Text before or between calls streams as usual.

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
            async for piece in self._stream(messages, options, penalize=bool(avoid), tools=tools):
                yield piece
        finally:
            self._firm_in_flight -= firm

    async def _stream(
        self,
        messages: list[ChatMessage],
        options: GenerationOptions,
        *,
        penalize: bool = False,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamItem]:
        body = self._body(messages, options, stream=True)
        if penalize:
            body = self._with_penalties(body)
        if tools:
            body["tools"] = [spec.function() for spec in tools]
        calls = _Calls()
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
                    if tools:  # without tools, a server's stray call is not ours to act on
                        calls.add(line.calls)
                        if line.calls_done or line.last:
                            for call in calls.finish(tools):
                                yield call
                    if line.last:
                        return
                for call in calls.finish(tools) if tools else ():  # a stream that ended without its last line
                    yield call
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
    def _message(self, message: ChatMessage) -> dict[str, Any]:
        """One message, spelled the server's way (an assistant's tool calls and a tool's result differ)."""

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
            "messages": [self._message(m) for m in messages],
            "stream": stream,
        } | self._sampling_fields(options)

    def _error(self, exc: Exception) -> LLMError:
        """Name the failure so the session's log says which engine and why."""
        if isinstance(exc, httpx.TimeoutException):
            return self._fail(f"timed out ({type(exc).__name__})")
        if isinstance(exc, httpx.HTTPStatusError):
            return self._fail(f"HTTP {exc.response.status_code}")
        return self._fail(f"{type(exc).__name__}: {exc}")
