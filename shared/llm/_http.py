"""What the two HTTP engines share: the client, timeouts and error mapping."""

from __future__ import annotations

import httpx

from shared.llm.base import ChatMessage, LLMError


def make_client(
    base_url: str, timeout_s: float, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """A client whose read timeout is the first-token budget (a stalled stream also trips it)."""
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        transport=transport,
    )


def wire_messages(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """Both wire formats take the same role/content objects."""
    return [{"role": m.role, "content": m.content} for m in messages]


def to_llm_error(engine: str, exc: Exception) -> LLMError:
    """Name the failure so the session's log says which engine and why."""
    if isinstance(exc, httpx.TimeoutException):
        return LLMError(f"{engine}: timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.HTTPStatusError):
        return LLMError(f"{engine}: HTTP {exc.response.status_code}")
    return LLMError(f"{engine}: {type(exc).__name__}: {exc}")
