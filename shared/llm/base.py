"""The language-model seam: one Protocol that streams tokens, one module per engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, overload

from shared.agent_config import LLMConfig
from shared.llm.tools import InvalidToolCall, ToolCall, ToolSpec

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation handed to the model.

    Besides text, an assistant message may carry the tools it called (`tool_calls`, its `content` then
    often empty), and a `tool` message carries one tool's result back (`tool_call_id` and `name` say
    which call it answers). Each engine renders them its own way: Ollama and OpenAI-compatible servers
    take them as they are, the embedded Qwen as `<tool_call>` and `<tool_response>` blocks.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    @classmethod
    def calling(cls, calls: Sequence[ToolCall], content: str = "") -> ChatMessage:
        """The assistant's turn that called `calls` (with whatever it said before them)."""
        return cls("assistant", content, tool_calls=tuple(calls))

    @classmethod
    def tool_result(cls, call: ToolCall, content: str) -> ChatMessage:
        """What a tool answered to `call`, for the model to speak from (JSON or plain text)."""
        return cls("tool", content, tool_call_id=call.id, name=call.name)


StreamItem = str | ToolCall | InvalidToolCall
"""What a reply streams when tools are offered: text pieces to speak, and the calls the model made."""

GenerationOptions = LLMConfig
"""What an engine is handed per request: exactly the agent's `llm` block (one model, one set of defaults)."""


class LLMError(Exception):
    """The engine failed or timed out; the caller speaks a fallback line."""


class LLM(Protocol):
    """Streams the assistant's reply token by token (text pieces, in order).

    Raises `LLMError` on failure. Cancelling the consuming task (barge-in) must stop generation.
    `avoid` holds the agent's earlier replies in the call (`shared.conversation.avoid_for`): the reply
    should not open the way any of them opens. The embedded engine masks those openings (and refusal
    wordings) while sampling; HTTP engines apply the server's repeat penalties instead.

    With `tools`, the model may call one instead of (or after) speaking: the stream then also yields
    `ToolCall`s, checked against their specs, and `InvalidToolCall`s for calls that fail the check. Call
    markup is never yielded as text. Without tools the stream is text only (the first overload).
    """

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

    def warmup(self) -> None: ...


class StructuredLLM(Protocol):
    """Answers one completion constrained to a JSON Schema (post-call analysis).

    Each engine enforces the schema its own way: llama.cpp compiles it to a grammar, Ollama takes it
    as `format`, OpenAI-compatible servers as `response_format`. The text is still validated after.
    """

    @property
    def model_name(self) -> str: ...

    async def complete_json(
        self, messages: list[ChatMessage], schema: dict[str, Any], options: GenerationOptions
    ) -> str: ...

    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]: ...
