"""Ollama and OpenAI-compatible engines against a local fake server speaking each documented wire format."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.errors import ConfigurationError
from shared.llm import build_analysis_llm, build_llm
from shared.llm.base import ChatMessage, GenerationOptions, LLMError
from shared.llm.llama_cpp import LlamaCppLLM
from shared.llm.ollama import OllamaLLM
from shared.llm.openai_compat import OpenAICompatLLM
from shared.llm.tools import InvalidToolCall, ToolCall, ToolSpec
from shared.settings import Settings

Handler = Callable[[dict, asyncio.StreamWriter], Awaitable[None]]
T = TypeVar("T")
MESSAGES = [ChatMessage("system", "You are Ava of Bright Smile Dental."), ChatMessage("user", "Hi")]


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _start(writer: asyncio.StreamWriter, status: str = "200 OK", ctype: str = "text/plain") -> None:
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()


async def _end(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


class FakeServer:
    """A one-route HTTP/1.1 server: records each request and answers with a streaming handler."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[tuple[str, dict, dict[str, str]]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        request_line, *header_lines = head.strip().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        self.requests.append((request_line.split()[1], body, headers))
        await self.handler(body, writer)

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()


def _one_chunk(payload: bytes, *, status: str = "200 OK", ctype: str = "application/json") -> Handler:
    """A handler that answers every request with `payload` as the whole body."""

    async def handler(body: dict, writer: asyncio.StreamWriter) -> None:
        await _start(writer, status=status, ctype=ctype)
        await _chunk(writer, payload)
        await _end(writer)

    return handler


async def _collect(stream: AsyncIterator[T]) -> list[T]:
    return [piece async for piece in stream]


async def _ollama_ndjson(body: dict, writer: asyncio.StreamWriter) -> None:
    await _start(writer, ctype="application/x-ndjson")
    for word in ["Hello", "! How", " can I help?"]:
        line = {"model": body["model"], "message": {"role": "assistant", "content": word}, "done": False}
        await _chunk(writer, json.dumps(line).encode() + b"\n")
    final = {
        "model": body["model"],
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "eval_count": 3,
    }
    await _chunk(writer, json.dumps(final).encode() + b"\n")
    await _end(writer)


async def test_ollama_wire_fake_server_streams_tokens() -> None:
    server = FakeServer(_ollama_ndjson)
    async with server as url:
        llm = OllamaLLM(url, "qwen2.5:0.5b")
        pieces = await _collect(llm.stream(MESSAGES, GenerationOptions(temperature=0.3, max_tokens=50)))
        await llm.aclose()
    assert pieces == ["Hello", "! How", " can I help?"]
    path, body, _ = server.requests[0]
    assert path == "/api/chat"
    assert body["stream"] is True and body["model"] == "qwen2.5:0.5b"
    assert body["options"] == {"temperature": 0.3, "num_predict": 50}
    assert body["messages"][0] == {"role": "system", "content": "You are Ava of Bright Smile Dental."}


async def _openai_sse(body: dict, writer: asyncio.StreamWriter) -> None:
    await _start(writer, ctype="text/event-stream")
    await _chunk(writer, b": keep-alive\n\n")
    first = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}],
    }
    await _chunk(writer, b"data: " + json.dumps(first).encode() + b"\n\n")
    for word in ["Sure", ", we open", " at 8."]:
        event = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
        }
        await _chunk(writer, b"data: " + json.dumps(event).encode() + b"\n\n")
    last = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    await _chunk(writer, b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")
    await _end(writer)


async def test_openai_wire_fake_server_streams_sse_deltas() -> None:
    server = FakeServer(_openai_sse)
    async with server as url:
        llm = OpenAICompatLLM(url + "/v1", "qwen", api_key="sk-test")
        pieces = await _collect(llm.stream(MESSAGES, GenerationOptions(temperature=0.1, max_tokens=20)))
        await llm.aclose()
    assert pieces == ["Sure", ", we open", " at 8."]
    path, body, headers = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test"
    assert body["stream"] is True and body["max_tokens"] == 20 and body["temperature"] == 0.1


_SSE_ERROR = b'data: {"error": {"message": "context length exceeded"}}\n\n'


@pytest.mark.parametrize(
    ("engine", "handler", "match"),
    [
        (
            OllamaLLM,
            _one_chunk(b'{"error":"model \\"nope\\" not found"}\n', ctype="application/x-ndjson"),
            "^ollama: .*not found",
        ),
        (OllamaLLM, _one_chunk(b"<html>proxy error</html>\n", ctype="text/html"), "^ollama: JSONDecodeError"),
        (
            OpenAICompatLLM,
            _one_chunk(b'{"error":{"message":"boom"}}', status="500 Internal Server Error"),
            "^openai-compatible: HTTP 500",
        ),
        (
            OpenAICompatLLM,
            _one_chunk(_SSE_ERROR, ctype="text/event-stream"),
            "^openai-compatible: .*context length exceeded",
        ),
    ],
    ids=["ollama-error-line", "ollama-not-json", "openai-http-500", "openai-error-event"],
)
async def test_a_failed_stream_raises_llm_error_naming_engine_and_cause(
    engine: type[OllamaLLM | OpenAICompatLLM], handler: Handler, match: str
) -> None:
    async with FakeServer(handler) as url:
        llm = engine(url, "nope")
        with pytest.raises(LLMError, match=match):
            await _collect(llm.stream(MESSAGES, GenerationOptions()))
        await llm.aclose()


async def test_a_server_that_never_sends_a_token_times_out_as_llm_error() -> None:
    release = asyncio.Event()

    async def handler(body: dict, writer: asyncio.StreamWriter) -> None:
        await _start(writer, ctype="application/x-ndjson")
        await release.wait()
        writer.close()

    async with FakeServer(handler) as url:
        llm = OllamaLLM(url, "slow", timeout_s=0.2)
        with pytest.raises(LLMError, match="timed out"):
            await _collect(llm.stream(MESSAGES, GenerationOptions()))
        release.set()
        await llm.aclose()


async def test_nothing_listening_raises_llm_error() -> None:
    llm = OpenAICompatLLM("http://127.0.0.1:9", "x", timeout_s=1.0)
    with pytest.raises(LLMError):
        await _collect(llm.stream(MESSAGES, GenerationOptions()))
    await llm.aclose()


SCHEMA = {"type": "object", "properties": {"outcome": {"type": "string"}}, "required": ["outcome"]}
ANSWER = '{"outcome": "booked"}'


async def test_ollama_complete_json_passes_the_schema_as_format() -> None:
    reply = {"model": "qwen2.5:0.5b", "message": {"role": "assistant", "content": ANSWER}, "done": True}
    server = FakeServer(_one_chunk(json.dumps(reply).encode()))
    async with server as url:
        llm = OllamaLLM(url, "qwen2.5:0.5b")
        text = await llm.complete_json(MESSAGES, SCHEMA, GenerationOptions(temperature=0.0, max_tokens=200))
        await llm.aclose()
    assert text == ANSWER
    assert llm.model_name == "ollama:qwen2.5:0.5b"
    path, body, _ = server.requests[0]
    assert path == "/api/chat"
    assert body["stream"] is False and body["format"] == SCHEMA
    assert body["options"] == {"temperature": 0.0, "num_predict": 200}


async def test_openai_complete_json_passes_a_strict_json_schema_response_format() -> None:
    reply = {"id": "c2", "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}}]}
    server = FakeServer(_one_chunk(json.dumps(reply).encode()))
    async with server as url:
        llm = OpenAICompatLLM(url + "/v1", "qwen", api_key="sk-test")
        text = await llm.complete_json(MESSAGES, SCHEMA, GenerationOptions(temperature=0.0, max_tokens=200))
        await llm.aclose()
    assert text == ANSWER
    assert llm.model_name == "openai:qwen"
    path, body, headers = server.requests[0]
    assert path == "/v1/chat/completions" and headers["authorization"] == "Bearer sk-test"
    assert body["stream"] is False and body["temperature"] == 0.0 and body["max_tokens"] == 200
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "call_analysis", "schema": SCHEMA, "strict": True},
    }


@pytest.mark.parametrize(
    ("engine", "payload", "match"),
    [
        (OllamaLLM, b'{"error": "model not found"}', "^ollama: model not found"),
        (OllamaLLM, b'{"done": true}', "^ollama: the answer has no message.content"),
        (OllamaLLM, b"[1, 2]", "^ollama: the answer is not a JSON object"),
        (OpenAICompatLLM, b'{"choices": []}', r"^openai-compatible: the answer has no choices\[0\]"),
        (OpenAICompatLLM, b'{"choices": [{"message": {"content": null}}]}', "is not text"),
        (OpenAICompatLLM, b"not json", "^openai-compatible: JSONDecodeError"),
    ],
)
async def test_complete_json_an_answer_without_text_raises_llm_error(
    engine: type[OllamaLLM | OpenAICompatLLM], payload: bytes, match: str
) -> None:
    async with FakeServer(_one_chunk(payload)) as url:
        llm = engine(url, "m")
        with pytest.raises(LLMError, match=match):
            await llm.complete_json(MESSAGES, SCHEMA, GenerationOptions())
        await llm.aclose()


async def test_calls_and_analysis_pick_their_engine_by_the_same_rule() -> None:
    settings = Settings(
        _env_file=None,
        LLM_ENGINE="ollama",
        LLM_MODEL="qwen2.5:0.5b",
        LLM_TIMEOUT_S=3.0,
        ANALYSIS_LLM_ENGINE="openai",
        ANALYSIS_LLM_MODEL="big",
        ANALYSIS_LLM_TIMEOUT_S=90.0,
        OPENAI_API_KEY="sk-test",
    )
    calls, analysis = build_llm(settings), build_analysis_llm(settings)
    assert isinstance(calls, OllamaLLM) and calls.model_name == "ollama:qwen2.5:0.5b"
    assert isinstance(analysis, OpenAICompatLLM) and analysis.model_name == "openai:big"
    assert calls._client.timeout.read == 3.0 and analysis._client.timeout.read == 90.0
    assert analysis._client.headers["authorization"] == "Bearer sk-test"
    await calls.aclose()
    await analysis.aclose()


def test_analysis_falls_back_to_the_call_engine_with_its_own_context_and_timeout() -> None:
    settings = Settings(_env_file=None, LLM_ENGINE="llama-cpp", ANALYSIS_LLM_TIMEOUT_S=120.0)
    analysis = build_analysis_llm(settings)
    assert isinstance(analysis, LlamaCppLLM)
    assert analysis.n_ctx == settings.analysis_llm_context_tokens
    assert analysis.first_token_timeout_s == 120.0


async def test_a_speculative_reply_waits_while_a_confirmed_one_is_in_flight() -> None:
    from shared import urgency

    release = asyncio.Event()

    async def handler(body: dict, writer: asyncio.StreamWriter) -> None:
        if body["messages"][-1]["content"] == "confirmed":
            await release.wait()
        await _ollama_ndjson(body, writer)

    server = FakeServer(handler)
    async with server as url:
        llm = OllamaLLM(url, "qwen2.5:0.5b")
        firm_messages = [*MESSAGES[:1], ChatMessage("user", "confirmed")]
        guess_messages = [*MESSAGES[:1], ChatMessage("user", "guess")]
        with urgency.working_for(urgency.Fixed(0.0)):
            firm = asyncio.create_task(_collect(llm.stream(firm_messages, GenerationOptions())))
        with urgency.working_for(urgency.BACKGROUND):
            guess = asyncio.create_task(_collect(llm.stream(guess_messages, GenerationOptions())))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(server.requests) < 1:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        for _ in range(20):  # the guess is held while the confirmed reply streams
            await asyncio.sleep(0.01)
            assert [r[1]["messages"][-1]["content"] for r in server.requests] == ["confirmed"]
        release.set()
        assert await firm == ["Hello", "! How", " can I help?"]
        assert await guess == ["Hello", "! How", " can I help?"]
        await llm.aclose()
    assert [r[1]["messages"][-1]["content"] for r in server.requests] == ["confirmed", "guess"]


async def test_earlier_replies_to_avoid_ask_each_server_for_its_repeat_penalties() -> None:
    ollama_server, openai_server = FakeServer(_ollama_ndjson), FakeServer(_openai_sse)
    avoid = ["Sure, I'll do that. What's her name?"]
    async with ollama_server as url:
        ollama = OllamaLLM(url, "m")
        await _collect(ollama.stream(MESSAGES, GenerationOptions(temperature=0.3, max_tokens=50), avoid=avoid))
        await ollama.aclose()
    async with openai_server as url:
        openai = OpenAICompatLLM(url, "m")
        await _collect(openai.stream(MESSAGES, GenerationOptions(), avoid=avoid))
        await openai.aclose()
    options = ollama_server.requests[0][1]["options"]
    assert options["temperature"] == 0.3 and options["num_predict"] == 50
    assert options["repeat_penalty"] > 1.0 and options["presence_penalty"] > 0.0
    body = openai_server.requests[0][1]
    assert body["presence_penalty"] > 0.0 and body["frequency_penalty"] > 0.0
    # The JSON answers of analysis never carry them (a penalty on `"` and `:` would break the JSON);
    # nor does a first reply, with nothing said yet (the bodies checked above, without `avoid`).


def test_the_optional_15b_model_is_chosen_by_name_from_the_model_cache(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, LLM_ENGINE="llama-cpp", LLM_MODEL="qwen2.5-coder-1.5b",
                        MODEL_CACHE_DIR=str(tmp_path))
    llm = build_llm(settings)
    assert isinstance(llm, LlamaCppLLM)
    assert llm.model_name == "llama-cpp:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    with pytest.raises(ConfigurationError, match="get_llm_1_5b.sh"):
        llm._path()  # not fetched into this cache: the error says how to get it
    # Any other name is an HTTP engine's; the embedded engine keeps its bundled model.
    default = build_llm(Settings(_env_file=None, LLM_ENGINE="llama-cpp", LLM_MODEL="llama3:8b"))
    assert isinstance(default, LlamaCppLLM) and default.model_name.endswith("0.5b-instruct-q4_k_m.gguf")
    explicit = build_llm(Settings(_env_file=None, LLM_ENGINE="llama-cpp", LLM_MODEL="qwen2.5-coder-1.5b",
                                  LLM_MODEL_PATH=str(tmp_path / "mine.gguf")))
    assert isinstance(explicit, LlamaCppLLM) and explicit.model_name == "llama-cpp:mine.gguf"


# --- tools ------------------------------------------------------------------------------------------

TOOLS = [
    ToolSpec("end_call", "Hang up.", {"type": "object", "properties": {"reason": {"type": "string"}}}),
    ToolSpec("check_availability", "Free times on a day.",
             {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]}),
]
EARLIER_CALL = ToolCall("check_availability", {"day": "Monday"}, "call_0")
HISTORY = [
    *MESSAGES,
    ChatMessage.calling([EARLIER_CALL]),
    ChatMessage.tool_result(EARLIER_CALL, '{"free": []}'),
    ChatMessage("user", "And Tuesday? Then I'm done, bye."),
]


def _ollama_tool_calls(calls: list[Any]) -> Handler:
    """Ollama ≥ 0.8 streaming with tools: words, then one line whose message carries whole calls."""

    async def handler(body: dict, writer: asyncio.StreamWriter) -> None:
        await _start(writer, ctype="application/x-ndjson")
        line = {"model": body["model"], "message": {"role": "assistant", "content": "Let me check."}, "done": False}
        await _chunk(writer, json.dumps(line).encode() + b"\n")
        line = {"model": body["model"], "message": {"role": "assistant", "content": "", "tool_calls": calls},
                "done": False}
        await _chunk(writer, json.dumps(line).encode() + b"\n")
        final = {"model": body["model"], "message": {"role": "assistant", "content": ""}, "done": True,
                 "done_reason": "stop"}
        await _chunk(writer, json.dumps(final).encode() + b"\n")
        await _end(writer)

    return handler


async def test_ollama_sends_tools_and_yields_the_calls_it_streams() -> None:
    calls = [
        {"function": {"name": "check_availability", "arguments": {"day": "Tuesday"}}},
        {"id": "call_x", "function": {"index": 1, "name": "end_call", "arguments": {}}},
    ]
    server = FakeServer(_ollama_tool_calls(calls))
    async with server as url:
        llm = OllamaLLM(url, "qwen3")
        items = await _collect(llm.stream(HISTORY, GenerationOptions(), tools=TOOLS))
        await llm.aclose()
    assert items[0] == "Let me check."
    first, second = items[1:]
    assert isinstance(first, ToolCall) and first.name == "check_availability"
    assert first.arguments == {"day": "Tuesday"} and first.id.startswith("call_")  # an id made for it
    assert second == ToolCall("end_call", {}, "call_x")
    _, body, _ = server.requests[0]
    assert body["tools"] == [spec.function() for spec in TOOLS]
    assert body["tools"][1]["function"]["parameters"]["required"] == ["day"]
    assert body["messages"][2] == {
        "role": "assistant", "content": "",
        "tool_calls": [{"id": "call_0", "function": {"name": "check_availability", "arguments": {"day": "Monday"}}}],
    }
    assert body["messages"][3] == {"role": "tool", "content": '{"free": []}', "tool_name": "check_availability",
                                   "tool_call_id": "call_0"}


async def test_ollama_a_call_that_fails_its_schema_is_yielded_as_invalid() -> None:
    calls = [{"function": {"name": "check_availability", "arguments": {"date": "Tuesday"}}},
             {"function": {"name": "book_flight", "arguments": {}}}, "not a call"]
    async with FakeServer(_ollama_tool_calls(calls)) as url:
        llm = OllamaLLM(url, "qwen3")
        items = await _collect(llm.stream(MESSAGES, GenerationOptions(), tools=TOOLS))
        await llm.aclose()
    bad = items[1:]
    assert [type(i) for i in bad] == [InvalidToolCall] * 3
    assert isinstance(bad[0], InvalidToolCall) and "'day' is a required property" in bad[0].reason
    assert isinstance(bad[1], InvalidToolCall) and bad[1].name == "book_flight"
    assert isinstance(bad[2], InvalidToolCall) and bad[2].name is None


def _openai_tool_sse(*, finish: str | None = "tool_calls", done: bool = True) -> Handler:
    """OpenAI's streamed calls: fragments by index (id and name first, arguments in pieces), two calls
    interleaved, then finish_reason "tool_calls"."""

    async def handler(body: dict, writer: asyncio.StreamWriter) -> None:
        await _start(writer, ctype="text/event-stream")

        async def event(delta: dict, finish_reason: str | None = None) -> None:
            data = {"id": "c3", "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
            await _chunk(writer, b"data: " + json.dumps(data).encode() + b"\n\n")

        await event({"role": "assistant", "content": "One moment."})
        await event({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                     "function": {"name": "check_availability", "arguments": ""}}]})
        await event({"tool_calls": [{"index": 0, "function": {"arguments": '{"da'}}]})
        await event({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                     "function": {"name": "end_call", "arguments": "{}"}}]})
        await event({"tool_calls": [{"index": 0, "function": {"arguments": 'y": "Tues'}}]})
        await event({"tool_calls": [{"index": 0, "function": {"arguments": 'day"}'}}]})
        if finish is not None:
            await event({}, finish)
        if done:
            await _chunk(writer, b"data: [DONE]\n\n")
        await _end(writer)

    return handler


@pytest.mark.parametrize(("finish", "done"), [("tool_calls", True), (None, True), (None, False)],
                         ids=["finish-reason", "done-only", "stream-end-only"])
async def test_openai_gathers_call_fragments_by_index_until_the_calls_are_complete(
    finish: str | None, done: bool
) -> None:
    server = FakeServer(_openai_tool_sse(finish=finish, done=done))
    async with server as url:
        llm = OpenAICompatLLM(url + "/v1", "gpt")
        items = await _collect(llm.stream(HISTORY, GenerationOptions(), tools=TOOLS))
        await llm.aclose()
    assert items == [
        "One moment.",
        ToolCall("check_availability", {"day": "Tuesday"}, "call_a"),
        ToolCall("end_call", {}, "call_b"),
    ]
    _, body, _ = server.requests[0]
    assert body["tools"] == [spec.function() for spec in TOOLS]
    assert body["messages"][2] == {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_0", "type": "function",
                        "function": {"name": "check_availability", "arguments": '{"day": "Monday"}'}}],
    }
    assert body["messages"][3] == {"role": "tool", "content": '{"free": []}', "tool_call_id": "call_0"}


async def test_openai_arguments_that_are_not_json_are_an_invalid_call() -> None:
    async def handler(body: dict, writer: asyncio.StreamWriter) -> None:
        await _start(writer, ctype="text/event-stream")
        delta = {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "end_call", "arguments": "{oops"}}]}
        data = {"choices": [{"index": 0, "delta": delta, "finish_reason": "tool_calls"}]}
        await _chunk(writer, b"data: " + json.dumps(data).encode() + b"\n\ndata: [DONE]\n\n")
        await _end(writer)

    async with FakeServer(handler) as url:
        llm = OpenAICompatLLM(url, "gpt")
        (item,) = await _collect(llm.stream(MESSAGES, GenerationOptions(), tools=TOOLS))
        await llm.aclose()
    assert isinstance(item, InvalidToolCall) and item.name == "end_call" and "not JSON" in item.reason


@pytest.mark.parametrize(("engine", "handler"), [(OllamaLLM, _ollama_tool_calls(
    [{"function": {"name": "end_call", "arguments": {}}}])), (OpenAICompatLLM, _openai_tool_sse())],
    ids=["ollama", "openai"])
async def test_without_tools_the_request_and_the_stream_are_as_before(
    engine: type[OllamaLLM | OpenAICompatLLM], handler: Handler
) -> None:
    server = FakeServer(handler)
    async with server as url:
        llm = engine(url, "m")
        items = await _collect(llm.stream(MESSAGES, GenerationOptions()))
        await llm.aclose()
    assert all(isinstance(i, str) for i in items)  # a server's stray call is not acted on
    assert "tools" not in server.requests[0][1]
