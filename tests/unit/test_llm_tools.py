"""Tools for the model: specs from an agent's tools, calls checked against them, and the Hermes-format
stream parser the embedded engine uses — pure, scripted streams, no model."""

from __future__ import annotations

import json

import pytest

from shared.agent_config import AgentSettings
from shared.llm import tool_route
from shared.llm.base import ChatMessage, StreamItem
from shared.llm.hermes import CLOSE, OPEN, ToolCallStream, render, tool_section
from shared.llm.tools import (
    DEFAULT_DESCRIPTIONS,
    InvalidToolCall,
    ToolCall,
    ToolSpec,
    check_call,
    parse_call,
    tool_specs,
)

AGENT_TOOLS = AgentSettings.model_validate({"tools": {
    "hang_up": {"kind": "end_call"},
    "transfer_call": {"kind": "transfer_call", "to": "+15551234567", "description": "Reach the front desk."},
    "press": {"kind": "send_dtmf"},
    "check_availability": {
        "kind": "http", "url": "https://example.com/availability", "description": "Free times on a day.",
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}, "required": ["day"]},
    },
}}).tools
SPECS = tool_specs(AGENT_TOOLS)


def _by_name(name: str) -> ToolSpec:
    return next(s for s in SPECS if s.name == name)


# --- specs ----------------------------------------------------------------------------------------


def test_specs_keep_the_agents_names_and_order() -> None:
    assert [s.name for s in SPECS] == ["hang_up", "transfer_call", "press", "check_availability"]


def test_builtins_get_fixed_schemas_and_a_default_description_when_theirs_is_empty() -> None:
    assert _by_name("hang_up").description == DEFAULT_DESCRIPTIONS["end_call"]
    assert _by_name("transfer_call").description == "Reach the front desk."  # the agent's own wins
    assert _by_name("press").parameters["required"] == ["digits"]
    assert _by_name("hang_up").parameters == {"type": "object", "properties": {}}
    assert _by_name("transfer_call").parameters == {"type": "object", "properties": {}}


def test_an_http_tool_brings_its_own_schema_and_description() -> None:
    spec = _by_name("check_availability")
    assert spec.description == "Free times on a day."
    assert spec.parameters["required"] == ["day"]
    assert spec.function() == {
        "type": "function",
        "function": {"name": "check_availability", "description": "Free times on a day.",
                     "parameters": dict(spec.parameters)},
    }


def test_an_http_tool_without_description_still_says_something() -> None:
    tools = AgentSettings.model_validate({"tools": {"lookup_order": {"kind": "http", "url": "https://x.example/o"}}})
    (spec,) = tool_specs(tools.tools)
    assert spec.description and "lookup order" in spec.description


# --- checking a call ------------------------------------------------------------------------------


def test_a_call_that_fits_its_schema_is_a_tool_call() -> None:
    call = check_call(SPECS, "check_availability", '{"day": "Tuesday"}', raw="…", call_id="call_1")
    assert call == ToolCall("check_availability", {"day": "Tuesday"}, "call_1")


def test_a_call_without_an_id_gets_one() -> None:
    call = check_call(SPECS, "hang_up", {}, raw="…")
    assert isinstance(call, ToolCall) and call.id.startswith("call_")


@pytest.mark.parametrize("arguments", [None, "", "  ", {}])
def test_no_arguments_count_as_an_empty_object(arguments: object) -> None:
    assert isinstance(check_call(SPECS, "hang_up", arguments, raw=""), ToolCall)


@pytest.mark.parametrize(
    ("name", "arguments", "reason"),
    [
        ("book_flight", {}, "no tool named 'book_flight'"),
        (None, {}, "names no tool"),
        (42, {}, "names no tool"),
        ("check_availability", '{"day": ', "not JSON"),
        ("check_availability", "[1, 2]", "not a JSON object"),
        ("check_availability", {}, "'day' is a required property"),
        ("check_availability", {"day": 2}, "at day: 2 is not of type 'string'"),
        ("press", {"digits": "12a"}, "does not match"),
        ("press", {"digits": "1" * 21}, "does not match"),
    ],
)
def test_a_call_that_fails_is_an_invalid_call_saying_why(name: object, arguments: object, reason: str) -> None:
    call = check_call(SPECS, name, arguments, raw="raw text")
    assert isinstance(call, InvalidToolCall)
    assert reason in call.reason
    assert call.raw == "raw text"
    assert call.name == (name if isinstance(name, str) else None)


def test_dtmf_digits_take_star_and_hash() -> None:
    assert isinstance(check_call(SPECS, "press", {"digits": "12*#"}, raw=""), ToolCall)


@pytest.mark.parametrize("text", ['{"name": "hang_up"', '"hang_up"', "", '{"arguments": {}}'])
def test_parse_call_never_raises_on_bad_text(text: str) -> None:
    assert isinstance(parse_call(SPECS, text), InvalidToolCall)


# --- the Hermes prompt ----------------------------------------------------------------------------


def test_without_tools_the_messages_render_as_they_are() -> None:
    messages = [ChatMessage("system", "Be kind."), ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello!")]
    assert render(messages) == [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!")]


def test_tools_end_the_system_prompt_as_json_function_signatures() -> None:
    (_, system), *_ = render([ChatMessage("system", "Be kind."), ChatMessage("user", "Hi")], SPECS)
    assert system.startswith("Be kind.\n\n# Tools")
    listed = system.split(":\n<tools>")[1].split("</tools>")[0].strip().splitlines()
    assert [json.loads(line) for line in listed] == [spec.function() for spec in SPECS]
    assert f'{OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{CLOSE}' in system
    assert system.endswith(tool_section(SPECS))


def test_tools_without_a_system_prompt_get_qwens_default_one() -> None:
    (role, system), _ = render([ChatMessage("user", "Hi")], SPECS)
    assert role == "system" and system.startswith("You are Qwen") and "<tools>" in system


def test_a_call_and_its_results_render_as_qwens_template_writes_them() -> None:
    a = ToolCall("check_availability", {"day": "Tuesday"}, "call_a")
    b = ToolCall("hang_up", {}, "call_b")
    messages = [
        ChatMessage("system", "Be kind."),
        ChatMessage("user", "Anything on Tuesday?"),
        ChatMessage.calling([a, b], "Let me look."),
        ChatMessage.tool_result(a, '{"free": ["10:00"]}'),
        ChatMessage.tool_result(b, "ok"),
        ChatMessage("user", "Great"),
    ]
    out = render(messages)
    assert out[2] == ("assistant", ('Let me look.\n<tool_call>\n{"name": "check_availability", "arguments": '
                                   '{"day": "Tuesday"}}\n</tool_call>\n<tool_call>\n{"name": "hang_up", '
                                   '"arguments": {}}\n</tool_call>'))
    # Results of calls made together share one user turn, as in Qwen's Jinja template.
    assert out[3] == ("user", ('<tool_response>\n{"free": ["10:00"]}\n</tool_response>\n'
                              "<tool_response>\nok\n</tool_response>"))
    assert out[4] == ("user", "Great")


def test_a_call_without_words_renders_as_the_call_alone() -> None:
    call = ToolCall("hang_up", {}, "c")
    assert render([ChatMessage.calling([call])]) == [
        ("assistant", '<tool_call>\n{"name": "hang_up", "arguments": {}}\n</tool_call>')
    ]


# --- the streaming parser -------------------------------------------------------------------------


def _run(pieces: list[str]) -> list[StreamItem]:
    stream = ToolCallStream(SPECS)
    out: list[StreamItem] = []
    for piece in pieces:
        out.extend(stream.feed(piece))
    out.extend(stream.close())
    return out


def _text(items: list[StreamItem]) -> str:
    return "".join(i for i in items if isinstance(i, str))


def _calls(items: list[StreamItem]) -> list[ToolCall | InvalidToolCall]:
    return [i for i in items if not isinstance(i, str)]


CALL = '<tool_call>\n{"name": "check_availability", "arguments": {"day": "Tuesday"}}\n</tool_call>'


def _cuts(text: str) -> list[list[str]]:
    """The same text streamed in pieces of every size from 1 to 7 characters."""
    return [[text[i : i + size] for i in range(0, len(text), size)] for size in range(1, 8)]


@pytest.mark.parametrize("pieces", _cuts("Sure, we open at 8. See you!"))
def test_plain_text_streams_through_unchanged(pieces: list[str]) -> None:
    assert _text(_run(pieces)) == "Sure, we open at 8. See you!"


def test_plain_text_is_passed_on_at_once_not_at_the_end() -> None:
    stream = ToolCallStream(SPECS)
    assert stream.feed("Sure, ") == ["Sure, "]
    assert stream.feed("we open at 8.") == ["we open at 8."]


@pytest.mark.parametrize("pieces", _cuts("Let me check. " + CALL))
def test_a_call_after_words_is_held_back_then_yielded_whole(pieces: list[str]) -> None:
    items = _run(pieces)
    assert _text(items) == "Let me check. "
    assert [(c.name, getattr(c, "arguments", None)) for c in _calls(items)] == [
        ("check_availability", {"day": "Tuesday"})
    ]
    assert isinstance(items[-1], ToolCall)


@pytest.mark.parametrize("pieces", _cuts(CALL + "\n\nOne moment please."))
def test_markup_is_never_spoken_and_whitespace_after_a_call_is_dropped(pieces: list[str]) -> None:
    items = _run(pieces)
    assert all("<" not in i and ">" not in i for i in items if isinstance(i, str))
    assert _text(items) == "One moment please."
    assert len(_calls(items)) == 1


def test_the_model_cutting_markup_in_odd_places_never_leaks_it() -> None:
    pieces = ["<", "tool", "_call", ">\n", '{"name": "hang_', 'up", "arguments": {}}', "\n</", "tool_call", ">"]
    items = _run(pieces)
    assert items and all(not isinstance(i, str) for i in items)
    assert isinstance(items[0], ToolCall) and items[0].name == "hang_up"


def test_a_held_back_tail_that_was_not_markup_is_spoken_at_the_end() -> None:
    stream = ToolCallStream(SPECS)
    assert stream.feed("Press 1 <") == ["Press 1 "]
    assert stream.close() == ["<"]


def test_a_call_cut_off_by_the_token_budget_is_an_invalid_call() -> None:
    items = _run(["<tool_call>\n", '{"name": "check_availability", "arguments": {"da'])
    (call,) = _calls(items)
    assert isinstance(call, InvalidToolCall) and "not JSON" in call.reason
    assert _text(items) == ""


def test_a_call_whose_close_tag_never_came_is_still_parsed() -> None:
    (call,) = _run(['<tool_call>\n{"name": "hang_up", "arguments": {}}'])
    assert isinstance(call, ToolCall) and call.name == "hang_up"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"name": "fly", "arguments": {}}', "no tool named"),
        ('{"name": "check_availability", "arguments": {}}', "required"),
        ("not json at all", "not JSON"),
    ],
)
def test_a_bad_call_is_an_invalid_call_never_an_exception(body: str, reason: str) -> None:
    (call,) = _run([f"{OPEN}\n{body}\n{CLOSE}"])
    assert isinstance(call, InvalidToolCall) and reason in call.reason and call.raw == body


def test_two_calls_in_one_reply_are_both_yielded_in_order() -> None:
    items = _run([f'{OPEN}{{"name": "hang_up"}}{CLOSE}', f'\n{OPEN}{{"name": "press", "arguments": {{"digits": "1"}}}}{CLOSE}'])
    assert [c.name for c in _calls(items)] == ["hang_up", "press"]


def test_a_stray_close_tag_is_not_spoken() -> None:
    assert _text(_run(["Okay.</tool_call> Bye."])) == "Okay. Bye."


def test_the_stream_counts_the_calls_it_saw() -> None:
    stream = ToolCallStream(SPECS)
    stream.feed(CALL)
    stream.close()
    assert stream.calls == 1


@pytest.mark.parametrize("pieces", _cuts('\n{"name": "check_availability", "arguments": {"day": "Tuesday"}}'))
def test_a_bare_json_call_opening_the_reply_is_a_call(pieces: list[str]) -> None:
    # Qwen2.5-Coder-0.5B often writes the call without its tags: never spoken, parsed all the same.
    items = _run(pieces)
    assert _text(items) == ""
    (call,) = _calls(items)
    assert isinstance(call, ToolCall) and call.arguments == {"day": "Tuesday"}


def test_a_bare_object_that_is_no_call_is_an_invalid_call_not_speech() -> None:
    (call,) = _run(['{name: hang_up}', "\nBye!"])[:1]
    assert isinstance(call, InvalidToolCall)
    assert _text(_run(['{"day": "Tuesday"} ', "Okay."])) == "Okay."


def test_an_unfinished_bare_object_is_an_invalid_call_at_the_end() -> None:
    (call,) = _run(['{"name": "check_availability", "argu'])
    assert isinstance(call, InvalidToolCall)


def test_a_brace_inside_speech_is_just_speech() -> None:
    assert _text(_run(["Use the code ", "{1234}", " at the door."])) == "Use the code {1234} at the door."


# --- routing (the embedded engine's first choice) ----------------------------------------------------


def test_routing_lists_reply_first_and_steps_aside_for_an_agents_own_reply_tool() -> None:
    assert [s.name for s in tool_route.listed(SPECS)][:2] == ["reply", "hang_up"]
    assert tool_route.routable(SPECS)
    assert not tool_route.routable([ToolSpec("reply", "Mine.")])
    assert not tool_route.routable([])


def test_the_routing_grammar_offers_reply_and_every_tool_with_its_arguments() -> None:
    grammar = tool_route.grammar(SPECS)
    assert grammar is not None
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root.count("|") == len(SPECS)  # reply, then one branch per tool
    for spec in SPECS:
        assert json.dumps(spec.name + '"') in root
    assert root.count(json.dumps(CLOSE)) == len(SPECS)  # every call closes; `reply` ends at its name
    assert '"\\"digits\\""' in grammar  # a tool's arguments come from its schema


def test_a_schema_the_converter_cannot_compile_leaves_the_turn_unrouted() -> None:
    odd = ToolSpec("odd", "?", {"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}})
    assert tool_route.grammar([odd]) is None


@pytest.mark.parametrize(("text", "name"), [("re", None), ("reply", None), ('reply"', "reply"),
                                            ('end_call"', "end_call")])
def test_the_choice_is_known_once_the_name_closes(text: str, name: str | None) -> None:
    assert tool_route.choice(text) == name
