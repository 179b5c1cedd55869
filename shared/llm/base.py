"""The language-model seam: one Protocol that streams tokens, one module per engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from shared.agent_config import LLMConfig


@dataclass(frozen=True)
class ChatMessage:
    """One message of the conversation handed to the model."""

    role: Literal["system", "user", "assistant"]
    content: str


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
    """

    def stream(
        self, messages: list[ChatMessage], options: GenerationOptions, *, avoid: Sequence[str] = ()
    ) -> AsyncIterator[str]: ...

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
