"""The tool-call parser of the local backends (pure): formats, deltas split anywhere, malformed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genbot.models.base import ToolCall
from genbot.models.toolcalls import (
    ToolCallParser,
    fallback_messages,
    openai_messages,
    parse_tool_calls,
    tool_names,
)


def ids(n: int) -> str:
    return f"call_{n}"


WEATHER = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
TIME = ToolCall("call_1", "get_time", '{"zone": "UTC"}')

# (model output, names offered, text shown, calls)
CASES = [
    ("Plain answer, no tools.", None, "Plain answer, no tools.", []),
    (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        None,
        "",
        [WEATHER],
    ),
    (  # Hermes / Qwen: several blocks, text around them
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"zone": "UTC"}}</tool_call>',
        None,
        "Let me check.\n\n",
        [WEATHER, TIME],
    ),
    (  # SmolLM2: a list in one block
        '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"zone": "UTC"}}]</tool_call>',
        None,
        "",
        [WEATHER, TIME],
    ),
    (  # Llama 3.x: a bare object with "parameters"
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        {"get_weather"},
        "",
        [WEATHER],
    ),
    (  # Llama 3.x with the python tag
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        {"get_weather"},
        "",
        [WEATHER],
    ),
    (  # a bare list
        ' [{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        {"get_weather"},
        "",
        [WEATHER],
    ),
    (  # a JSON answer that names no offered tool is text
        '{"name": "Ada", "parameters": {"born": 1815}}',
        {"get_weather"},
        '{"name": "Ada", "parameters": {"born": 1815}}',
        [],
    ),
    ("[1, 2, 3] are numbers.", {"get_weather"}, "[1, 2, 3] are numbers.", []),
    ("[link](https://x.y) {not json}", None, "[link](https://x.y) {not json}", []),
    (  # Mistral
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        None,
        "",
        [WEATHER],
    ),
    (  # arguments given as JSON text
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}</tool_call>',
        None,
        "",
        [WEATHER],
    ),
    (  # OpenAI-style nesting
        '<tool_call>{"type": "function", "function": {"name": "get_weather", '
        '"arguments": {"city": "Paris"}}}</tool_call>',
        None,
        "",
        [WEATHER],
    ),
    (  # unclosed at the end of the reply: still a call
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}',
        None,
        "",
        [WEATHER],
    ),
    (  # malformed JSON naming a tool: a call with the raw text, for the loop to reject
        '<tool_call>{"name": "get_weather", "arguments": {"city": Paris}}</tool_call>',
        None,
        "",
        [
            ToolCall(
                "call_0", "get_weather", '{"name": "get_weather", "arguments": {"city": Paris}}'
            )
        ],
    ),
    (  # malformed without a name: shown as text
        "<tool_call>I would call a tool here</tool_call> done",
        None,
        "<tool_call>I would call a tool here</tool_call> done",
        [],
    ),
    ("Tags like <tool are text", None, "Tags like <tool are text", []),
    ("ends with a prefix <tool_c", None, "ends with a prefix <tool_c", []),
    ("   ", None, "   ", []),
    ("", None, "", []),
]


@pytest.mark.parametrize(("output", "names", "text", "calls"), CASES)
def test_whole_reply(output: str, names: set[str] | None, text: str, calls: list[ToolCall]) -> None:
    assert parse_tool_calls(output, names, ids) == (text, calls)


@given(data=st.data())
@pytest.mark.parametrize(("output", "names", "text", "calls"), CASES)
def test_split_into_deltas_anywhere(
    data: st.DataObject, output: str, names: set[str] | None, text: str, calls: list[ToolCall]
) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(output)), max_size=12)))
    deltas = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
    parser = ToolCallParser(names, ids)
    shown = [parser.feed(delta) for delta in deltas]
    rest, got = parser.finish()
    assert "".join(shown) + rest == text
    assert got == calls


@pytest.mark.parametrize("output", [c[0] for c in CASES if c[3]])
def test_no_tool_call_text_is_streamed_before_the_end(output: str) -> None:
    # Fed one character at a time, no part of a call is ever released as text.
    parser = ToolCallParser({"get_weather", "get_time"}, ids)
    shown = "".join(parser.feed(char) for char in output)
    assert "{" not in shown
    assert "<tool_call" not in shown
    assert "TOOL_CALLS" not in shown


def test_text_before_a_call_streams_as_it_comes() -> None:
    parser = ToolCallParser(None, ids)
    assert parser.feed("Let me look that up. ") == "Let me look that up. "
    assert parser.feed("<tool") == ""
    assert parser.feed('_call>{"name": "get_weather", "arguments": {"city": "Paris"}}') == ""
    assert parser.feed("</tool_call>") == ""
    assert parser.finish() == ("", [WEATHER])


def test_a_held_prefix_is_released_once_it_is_not_a_call() -> None:
    parser = ToolCallParser(None, ids)
    assert parser.feed("a <tool") == "a "
    assert parser.feed("box>") == "<toolbox>"
    assert parser.feed(" {") == " {"
    assert parser.finish() == ("", [])


def test_a_leading_brace_that_is_not_a_call_is_released_early() -> None:
    parser = ToolCallParser({"get_weather"}, ids)
    assert parser.feed("  {") == ""
    assert parser.feed("x") == "  {x"  # not {"...: not a call, shown without waiting for the end


def test_default_ids_are_unique_per_reply() -> None:
    _, first = parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call>')
    _, second = parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}</tool_call>')
    assert first[0].id != second[0].id
    assert first[0].id.startswith("call_")


def test_a_finished_parser_refuses_more() -> None:
    parser = ToolCallParser()
    parser.finish()
    with pytest.raises(RuntimeError, match="finished"):
        parser.feed("x")


def test_tool_names() -> None:
    tools = [{"type": "function", "function": {"name": "a"}}, {"type": "other"}, "junk"]
    assert tool_names(tools) == {"a"}  # type: ignore[arg-type]


HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "c2", "content": "noon"},
    {"role": "tool", "tool_call_id": "c3", "content": "dry"},
]
SCHEMA = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now", "parameters": {}},
}


def test_fallback_messages_describe_the_tools_and_show_calls_and_results_as_text() -> None:
    out = fallback_messages(HISTORY, [SCHEMA])  # type: ignore[arg-type]
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n")
    assert '"name": "get_weather"' in out[0]["content"]
    assert out[2]["content"] == (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    )
    assert out[3]["content"] == (
        "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nnoon\n</tool_response>\n"
        "<tool_response>\ndry\n</tool_response>"
    )
    assert all(set(m) == {"role", "content"} for m in out)
    # What the model writes back in that format is what the parser reads.
    assert parse_tool_calls(out[2]["content"], None, ids)[1] == [
        ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    ]


def test_fallback_without_tools_adds_no_system_message() -> None:
    out = fallback_messages(HISTORY[1:], [])  # type: ignore[arg-type]
    assert out[0] == {"role": "user", "content": "Weather in Paris?"}


def test_openai_messages() -> None:
    out = openai_messages(HISTORY)  # type: ignore[arg-type]
    assert out[2]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    assert out[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    objects = openai_messages(HISTORY, object_arguments=True)  # type: ignore[arg-type]
    assert objects[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert json.dumps(out[1]) == json.dumps(HISTORY[1])
