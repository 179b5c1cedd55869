"""The embedded engine's first decision on a turn with tools: speak, or call which tool — pure, no model.

Why not let the model open its reply with `<tool_call>` when it wants to: measured on the bundled
Qwen2.5-Coder-0.5B with a phone agent's prompt, the probability of opening a call is below 1 % even for
"Can I speak to a real person please?" once the conversation holds one spoken assistant turn (the
greeting): the model copies the form of its earlier turns. Asked to write a call, though, it names the
right tool. So the reply is started as a call: the prompt ends with `<tool_call>\\n{"name": "`, and a
grammar lets the model write only one of the tools' names, or `reply`, a pseudo-tool listed first
("Reply in words."). `reply` is taken back at once and the reply is sampled as words from the plain
prompt; any other name goes on, under the same grammar, into arguments that fit the tool's schema and
`</tool_call>`. The model thus picks among the tools and speech by the likelihood of each name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from shared.llm.hermes import CLOSE, OPEN
from shared.llm.tools import ToolSpec

log = logging.getLogger(__name__)

REPLY = ToolSpec("reply", "Reply in words.", {"type": "object", "properties": {}})
"""The pseudo-tool that stands for speaking. Listed first: measured, listed last it lost to end_call on
plain questions; first, with this short description, it won every one."""
PREFIX = f'{OPEN}\n{{"name": "'
"""Written for the model after the assistant's turn opens: what follows can only be a name."""


def routable(specs: Sequence[ToolSpec]) -> bool:
    """A turn with these tools can be routed: there are some, and none is called `reply` already."""
    return bool(specs) and all(spec.name != REPLY.name for spec in specs)


def listed(specs: Sequence[ToolSpec]) -> tuple[ToolSpec, ...]:
    """The tools as the routed prompt lists them: `reply` first."""
    return (REPLY, *specs)


def choice(text: str) -> str | None:
    """The name the model wrote after `PREFIX`, once its closing quote came; None until then."""
    end = text.find('"')
    return text[:end] if end >= 0 else None


def grammar(specs: Sequence[ToolSpec]) -> str | None:
    """The GBNF of what may follow `PREFIX`: `reply"`, or a tool's name, its arguments and the close tag.

    Each tool's arguments are compiled from its JSON Schema by llama-cpp-python's converter (the one
    `response_format` uses), under a rule prefix of their own. None when a schema cannot be compiled
    (a construct the converter does not know): the turn is then generated freely, and the call is
    still checked against its schema after.
    """
    try:
        from llama_cpp.llama_grammar import SchemaConverter

        converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        branches = [_literal(f'{REPLY.name}"')]
        for i, spec in enumerate(specs):
            arguments = converter.visit(dict(spec.parameters), f"arguments-{i}")
            branches.append(
                f'{_literal(spec.name + chr(34))} space "," space {_literal(chr(34) + "arguments" + chr(34))} '
                f'space ":" space {arguments} "}}" space "\\n"? {_literal(CLOSE)}'
            )
        converter._add_rule("root", " | ".join(f"( {b} )" for b in branches))
        return str(converter.format_grammar())
    except Exception:  # the converter raises what it likes on schemas it does not support
        log.warning("tool schemas could not be compiled to a grammar: the turn is not routed", exc_info=True)
        return None


def _literal(text: str) -> str:
    """A GBNF string literal (JSON string escaping is GBNF's)."""
    return json.dumps(text)
