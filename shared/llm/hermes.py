"""Tool calls in the Hermes format, which Qwen2.5 is trained on — pure text in, typed calls out.

The embedded engine has no server to parse calls for it, so this module does both halves:

- the prompt: the tools listed as JSON function signatures inside `<tools></tools>` at the end of the
  system prompt, with the instruction to answer `<tool_call>{"name": …, "arguments": {…}}</tool_call>`;
  an assistant's earlier calls rendered as those blocks, and tool results as a user turn of
  `<tool_response>` blocks. This is what Qwen's own chat template writes (the Jinja in the GGUF); the
  C API's `llama_chat_apply_template` only knows plain roles, so the messages are rewritten here first.
- the reply: `ToolCallStream` splits streamed text into speech and calls. Text that may begin a
  `<tool_call>` is held back (never yielded as speech) until the call closes, then parsed and checked
  (`shared.llm.tools`); everything else streams on at once. Qwen2.5-Coder-0.5B often writes the call's
  JSON bare, without the tags (measured: `{"name": "check_availability", …}` as the whole reply), so
  a reply that opens with `{` is held back too, until its object closes, and taken as a call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from shared.llm.base import ChatMessage, StreamItem
from shared.llm.tools import ToolSpec, parse_call

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
"""What Qwen's template puts first when tools come without a system prompt."""

_TOOLS_HEAD = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>"
)
TOOL_GUIDANCE = (
    "\n\nCall a function only when the caller asks for what it does; otherwise answer in words. "
    "Never say that you are calling a function."
)
"""Said after Qwen's own tool section: a phone agent mostly talks. Measured on the 0.5B model with the
embedded engine's routing (`shared.llm.tool_route`), it moved one line of 28 to the right side; other
wordings did no better."""


def tool_section(specs: Sequence[ToolSpec]) -> str:
    """The text appended to the system prompt: Qwen's tool section, then RelayX's guidance."""
    lines = "".join("\n" + json.dumps(spec.function(), ensure_ascii=False) for spec in specs)
    return _TOOLS_HEAD + lines + _TOOLS_TAIL + TOOL_GUIDANCE


def call_block(name: str, arguments: object) -> str:
    """One call as the model writes it (and as an earlier call is shown back to it)."""
    return f'{OPEN}\n{{"name": "{name}", "arguments": {json.dumps(arguments, ensure_ascii=False)}}}\n{CLOSE}'


def render(messages: Sequence[ChatMessage], specs: Sequence[ToolSpec] = ()) -> list[tuple[str, str]]:
    """(role, content) pairs with plain roles only, as Qwen's template would lay the messages out.

    With `specs`, the tool section ends the system prompt. An assistant's calls follow its text as
    `<tool_call>` blocks; consecutive tool results become one user turn of `<tool_response>` blocks.
    Without tools and tool messages, the messages come back as they are.
    """
    out: list[tuple[str, str]] = []
    items = list(messages)
    if specs:
        if items and items[0].role == "system":
            out.append(("system", items[0].content + tool_section(specs)))
            items = items[1:]
        else:
            out.append(("system", DEFAULT_SYSTEM + tool_section(specs)))
    previous = None
    for message in items:
        if message.role == "tool":
            block = f"<tool_response>\n{message.content}\n</tool_response>"
            if previous == "tool":  # results of calls made together answer in one user turn
                out[-1] = ("user", out[-1][1] + "\n" + block)
            else:
                out.append(("user", block))
        elif message.role == "assistant" and message.tool_calls:
            blocks = [call_block(call.name, call.arguments) for call in message.tool_calls]
            out.append(("assistant", "\n".join([message.content, *blocks] if message.content else blocks)))
        else:
            out.append((message.role, message.content))
        previous = message.role
    return out


class ToolCallStream:
    """Splits a streamed reply into speech and tool calls, holding back only what may be markup.

    Feed it the pieces in order; each `feed` returns what can be passed on now, `close` the rest. A
    call cut off before `</tool_call>` (the token budget ran out) is parsed as far as it got, which
    usually makes it an `InvalidToolCall`. Whitespace between a call and what follows is dropped, and
    a stray `</tool_call>` outside a call is never spoken.
    """

    def __init__(self, specs: Sequence[ToolSpec]) -> None:
        self._specs = tuple(specs)
        self._buffer = ""
        self._in_call = False
        self._after_call = False
        self._started = False
        """Some words were passed on: a `{` from here on is part of speech, not a bare call."""
        self.calls = 0
        """Calls seen so far (valid or not)."""

    def feed(self, piece: str) -> list[StreamItem]:
        """The text and calls this piece completes."""
        self._buffer += piece
        out: list[StreamItem] = []
        while True:
            if not self._started and not self._in_call:
                if not self._buffer.strip():
                    return out  # only whitespace yet: what it opens is not known
                if self._buffer.lstrip().startswith("{"):
                    bare = self._bare_call()
                    if bare is None:
                        return out  # the object is still open: wait for more
                    out.append(bare)
                    continue
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    return out
                out.append(parse_call(self._specs, self._buffer[:end].strip()))
                self.calls += 1
                self._buffer = self._buffer[end + len(CLOSE):]
                self._in_call = False
                self._after_call = True
                continue
            start, marker = _first_marker(self._buffer)
            if start < 0:
                keep = _partial_marker(self._buffer)
                self._text(self._buffer[: len(self._buffer) - keep], out)
                self._buffer = self._buffer[len(self._buffer) - keep:]
                return out
            self._text(self._buffer[:start], out)
            self._buffer = self._buffer[start + len(marker):]
            self._in_call = marker == OPEN  # a stray CLOSE is dropped

    def close(self) -> list[StreamItem]:
        """The end of the reply: a held-back tail that was not markup after all, or an unclosed call."""
        out: list[StreamItem] = []
        if self._in_call or (not self._started and self._buffer.lstrip().startswith("{")):
            out.append(parse_call(self._specs, self._buffer.strip()))
            self.calls += 1
        else:
            self._text(self._buffer, out)
        self._buffer = ""
        self._in_call = False
        return out

    def _bare_call(self) -> StreamItem | None:
        """The reply opened with `{`: once the object closes, the call it was (a brace never opens
        speech, so an object that names no tool, or does not parse, is an invalid call, not words);
        None while it is still open."""
        text = self._buffer.lstrip()
        end = _object_end(text)
        if end is None:
            return None
        self._buffer = text[end:]
        self._after_call = True
        self.calls += 1
        return parse_call(self._specs, text[:end])

    def _text(self, text: str, out: list[StreamItem]) -> None:
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            self._started = True
            out.append(text)


def _object_end(text: str) -> int | None:
    """Where the JSON object that `text` opens with closes (just past its `}`); None while it is open.

    Counts braces outside strings, so it also ends an object that is not valid JSON (`{name: x}`).
    """
    depth = 0
    in_string = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif in_string:
            escaped = ch == "\\"
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _first_marker(text: str) -> tuple[int, str]:
    """Where the first `<tool_call>` or `</tool_call>` starts in `text` (-1 when neither does)."""
    found = [(i, m) for m in (OPEN, CLOSE) if (i := text.find(m)) >= 0]
    return min(found) if found else (-1, "")


def _partial_marker(text: str) -> int:
    """The length of the longest tail of `text` that a marker could still grow from ("<", "</tool")."""
    for size in range(min(len(text), len(CLOSE) - 1), 0, -1):
        tail = text[-size:]
        if OPEN.startswith(tail) or CLOSE.startswith(tail):
            return size
    return 0
