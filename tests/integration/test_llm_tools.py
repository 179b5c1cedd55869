"""The embedded Qwen model with tools: every reply is words or one well-formed call, never markup spoken.

Real model. Which tool the model picks for a line is model output, and may differ between CPUs (int8
kernels): these tests assert what holds for any choice — the stream never raises, speech carries no
call markup, a call is whole, checked and last, and the engine's bookkeeping (the KV cache after a
routed reply, a cancelled routed reply) stays right. The choice itself is measured, not asserted
(figures in the module docstring of `shared.llm.tool_route` and the LLM engineer's report).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from shared.agent_config import AgentSettings
from shared.llm import tool_route
from shared.llm.base import ChatMessage, GenerationOptions, StreamItem
from shared.llm.llama_batch import BatchedLlama
from shared.llm.llama_cpp import LlamaCppLLM, ensure_model_file
from shared.llm.tools import InvalidToolCall, ToolCall, tool_specs
from shared.urgency import ComputeGate, Fixed

pytestmark = pytest.mark.models

SYSTEM = ChatMessage(
    "system",
    "Your name is Ava and you work for Bright Smile Dental. We are open Monday to Friday, 8 am to 5 pm. "
    "A cleaning costs 90 dollars. Reply with one or two short spoken sentences.",
)
GREETING = ChatMessage("assistant", "Hello, Bright Smile Dental, this is Ava. How can I help?")
TOOLS = tool_specs(AgentSettings.model_validate({"tools": {
    "end_call": {"kind": "end_call"},
    "transfer_call": {"kind": "transfer_call", "to": "+15551234567"},
    "check_availability": {
        "kind": "http", "url": "https://example.com/availability",
        "description": "Check which appointment times are free on a given day.",
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
    },
}}).tools)
LINES = [
    "Can I speak to a real person please?",
    "Do you have anything free on Tuesday?",
    "That's all, thanks, bye.",
    "What are your opening hours?",
]
MARKUP = ("<tool_call>", "</tool_call>", "<tool", "{", "}")
WAIT_S = 120


@pytest.fixture(scope="module")
def llm(llm: LlamaCppLLM) -> LlamaCppLLM:
    """The session's engine (same batched server), with a first-token budget for a slow CPU: the first
    turn with tools evaluates the tool section too, and these tests are not about latency."""
    return LlamaCppLLM(cache_dir=llm.cache_dir, n_ctx=llm.n_ctx, threads=llm.threads, slots=llm.slots,
                       first_token_timeout_s=WAIT_S)


def _assert_well_formed(items: list[StreamItem]) -> None:
    """Words, then at most one call, last; no markup in the words."""
    assert items, "the reply was empty"
    calls = [i for i in items if not isinstance(i, str)]
    text = "".join(i for i in items if isinstance(i, str))
    assert not any(mark in text for mark in MARKUP), text
    assert len(calls) <= 1, calls
    if calls:
        assert items[-1] is calls[0]
        call = calls[0]
        assert isinstance(call, ToolCall | InvalidToolCall)
        if isinstance(call, ToolCall):
            assert call.name in {t.name for t in TOOLS} and call.id
        else:
            assert call.reason
    else:
        assert text.strip()


@pytest.mark.parametrize("line", LINES)
async def test_a_reply_with_tools_is_words_or_one_checked_call(llm: LlamaCppLLM, line: str) -> None:
    messages = [SYSTEM, GREETING, ChatMessage("user", line)]
    items = [i async for i in llm.stream(messages, GenerationOptions(max_tokens=40), tools=TOOLS)]
    _assert_well_formed(items)


async def test_a_tools_result_fed_back_is_answered_in_words(llm: LlamaCppLLM) -> None:
    call = ToolCall("check_availability", {"day": "Tuesday"}, "call_1")
    messages = [
        SYSTEM, GREETING, ChatMessage("user", "Do you have anything free on Tuesday?"),
        ChatMessage.calling([call]), ChatMessage.tool_result(call, "Tuesday: 9:00 and 16:00 are free."),
    ]
    items = [i async for i in llm.stream(messages, GenerationOptions(max_tokens=40), tools=TOOLS)]
    # A turn that answers a tool's result is speech: no call, no JSON, no code (masked while sampling).
    assert items and all(isinstance(i, str) for i in items)
    text = "".join(i for i in items if isinstance(i, str))
    assert text.strip() and not any(ch in text for ch in "{}[]<>`"), text


async def test_without_tools_the_stream_is_text_only(llm: LlamaCppLLM) -> None:
    messages = [SYSTEM, GREETING, ChatMessage("user", "That's all, thanks, bye.")]
    pieces = [p async for p in llm.stream(messages, GenerationOptions(max_tokens=20))]
    assert pieces and all(isinstance(p, str) for p in pieces)


# --- the batched engine's routing ---------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.error: Exception | None = None
        self.done = threading.Event()

    def __call__(self, piece: str | None, error: Exception | None) -> None:
        if piece is not None:
            self.pieces.append(piece)
        else:
            self.error = error
            self.done.set()


@pytest.fixture(scope="module")
def server(llm: LlamaCppLLM) -> Iterator[BatchedLlama]:  # a private one: its slot is looked at
    engine = BatchedLlama(str(ensure_model_file(llm.cache_dir)), slots=1, ctx_per_slot=1024, threads=2,
                          gate=ComputeGate(1))
    yield engine
    engine.close()


@pytest.mark.parametrize("line", ["What are your opening hours?", "That's all, thanks, bye."])
def test_a_routed_reply_leaves_the_cache_holding_its_plain_prompt(server: BatchedLlama, line: str) -> None:
    out = _Collector()
    request = server.submit([SYSTEM, GREETING, ChatMessage("user", line)], GenerationOptions(max_tokens=30),
                            Fixed(0.0), out, tools=TOOLS)
    assert out.done.wait(WAIT_S) and out.error is None
    assert request.route_at is not None  # the prompt ended in the routing prefix
    text = "".join(out.pieces)
    slot = server.slots[0]
    if text.startswith(tool_route.PREFIX):  # a call: it is all there, prefix included, and closed
        assert text.endswith("</tool_call>")
        assert slot.tokens[: len(request.prompt)] == request.prompt
    else:  # words: the prefix and the name were taken back; the next turn finds the plain prompt
        assert "{" not in text and "<" not in text
        assert len(request.prompt) == request.route_at
        assert slot.tokens[: request.route_at] == request.prompt
        assert server._call_open not in slot.tokens[request.route_at:]


def test_a_routed_reply_cancelled_at_once_frees_its_slot(server: BatchedLlama) -> None:
    out = _Collector()
    request = server.submit([SYSTEM, GREETING, ChatMessage("user", "Put me through to the manager.")],
                            GenerationOptions(max_tokens=30), Fixed(0.0), out, tools=TOOLS)
    request.cancel()
    server.wake()
    assert out.done.wait(WAIT_S) and out.error is None
    again = _Collector()
    server.submit([SYSTEM, ChatMessage("user", "Hi")], GenerationOptions(max_tokens=4), Fixed(0.0), again)
    assert again.done.wait(WAIT_S) and again.error is None and again.pieces


async def test_replies_with_and_without_tools_run_side_by_side(llm: LlamaCppLLM) -> None:
    with_tools = [SYSTEM, GREETING, ChatMessage("user", "Do you have anything free on Tuesday?")]
    plain = [SYSTEM, GREETING, ChatMessage("user", "How much is a cleaning?")]

    async def collect(messages: list[ChatMessage], tools: bool) -> list[StreamItem]:
        if tools:
            return [i async for i in llm.stream(messages, GenerationOptions(max_tokens=30), tools=TOOLS)]
        return [p async for p in llm.stream(messages, GenerationOptions(max_tokens=30))]

    a, b = await asyncio.gather(collect(with_tools, True), collect(plain, False))
    _assert_well_formed(a)
    assert b and all(isinstance(p, str) for p in b)


def test_a_one_token_prefill_with_tools_ends_without_a_word(server: BatchedLlama) -> None:
    # The gateway warms a call's prompt with a one-token request: with tools, it must not run on into
    # a whole call, and it says nothing (or one word) either way.
    out = _Collector()
    server.submit([SYSTEM, GREETING, ChatMessage("user", "Hello?")], GenerationOptions(max_tokens=1),
                  Fixed(0.0), out, tools=TOOLS)
    assert out.done.wait(WAIT_S) and out.error is None
    assert len(out.pieces) <= 1 and not any("<tool_call>" in p for p in out.pieces)
