"""genbot.tools and the tool loop without Discord: schemas from type hints and docstrings,
names, the toolbox, checked and bounded calls, the OpenAI backend's tool-call assembly, and
the loop's bounds."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal, Optional

import pytest

from genbot.models.base import ChatRequest, ToolCall
from genbot.models.openai import EventReader, ToolCallParts, decode_events
from genbot.toolloop import NO_STEP_NOTE, STEPS_NOTE, NoStep, ToolLimits, tool_loop
from genbot.tools import Tool, Toolbox, check_name, function_schema, run_call, select_tools, tool
from openai_stub import Reply, reply_events

INTEGER = {"type": "integer"}


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


NO_DEFAULT = object()


def one(hint: Any, default: Any = NO_DEFAULT) -> dict[str, Any]:
    """The schema of a one-parameter function whose parameter has `hint` (and `default`)."""
    if default is NO_DEFAULT:

        def fn(x):  # type: ignore[no-untyped-def]
            """F."""

    else:

        def fn(x=default):  # type: ignore[no-untyped-def]
            """F."""

    fn.__annotations__ = {"x": hint}
    _, schema = function_schema(fn)
    return schema


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        (str, {"type": "string"}),
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (bool, {"type": "boolean"}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, 2], {"type": "integer", "enum": [1, 2]}),
        (Literal["a", 1], {"enum": ["a", 1]}),
        (Color, {"type": "string", "enum": ["red", "blue"]}),
        (list[str], {"type": "array", "items": {"type": "string"}}),
        (list[list[int]], {"type": "array", "items": {"type": "array", "items": INTEGER}}),
        (list, {"type": "array"}),
        (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045
        (int | None, {"type": ["integer", "null"]}),
        (Literal["a"] | None, {"type": ["string", "null"], "enum": ["a", None]}),
    ],
)
def test_schema_of_each_supported_hint(hint: Any, expected: dict[str, Any]) -> None:
    schema = one(hint)
    assert schema == {
        "type": "object",
        "properties": {"x": expected},
        "required": ["x"],
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("default", "shown"), [(3, 3), (None, None), (Color.RED, "red"), ("s", "s")]
)
def test_a_parameter_with_a_default_is_not_required(default: Any, shown: Any) -> None:
    schema = one(str | None if default is None else type(default), default)
    assert "required" not in schema
    assert schema["properties"]["x"]["default"] == shown


@pytest.mark.parametrize(
    ("hint", "says"),
    [
        (dict, "type <class 'dict'> is not supported"),
        (int | str, "only X | None unions"),
        (tuple[int, int], "is not supported"),
        (Literal[object()], "choices must be strings or numbers"),  # type: ignore[valid-type]
    ],
)
def test_an_unsupported_hint_is_a_clear_type_error_at_registration(hint: Any, says: str) -> None:
    with pytest.raises(TypeError, match="tool 'fn', parameter 'x'") as raised:
        one(hint)
    assert says in str(raised.value)


def test_a_parameter_without_a_hint_or_a_star_parameter_is_refused() -> None:
    def bare(x):  # type: ignore[no-untyped-def]
        """B."""

    def star(*args: int) -> None:
        """S."""

    with pytest.raises(TypeError, match="needs a type hint"):
        tool(bare)
    with pytest.raises(TypeError, match=r"\*args and \*\*kwargs"):
        tool(star)


def test_descriptions_come_from_numpy_and_google_docstrings() -> None:
    def numpy_style(city: str, days: int = 1) -> str:
        """The weather in a city.

        Over several days.

        Parameters
        ----------
        city : str
            The city's name,
            in English.
        days:
            How many days.

        Returns
        -------
        str
            Not a parameter.
        """
        return city

    def google_style(city: str, days: int = 1) -> str:
        """The weather.

        Args:
            city (str): The city's name,
                in English.
            days: How many days.

        Returns:
            Not a parameter.
        """
        return city

    numpy_tool, google_tool = tool(numpy_style), tool(google_style)
    assert numpy_tool.description == "The weather in a city.\n\nOver several days."
    assert google_tool.description == "The weather."
    for made in (numpy_tool, google_tool):
        properties = made.parameters["properties"]
        assert properties["city"]["description"] == "The city's name, in English."
        assert properties["days"]["description"] == "How many days."


@pytest.mark.parametrize("name", ["weather", "get-weather_2", "a" * 64])
def test_names_the_openai_api_accepts(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 65, "get weather", "wetter.heute", "café"])
def test_names_the_openai_api_refuses(name: str) -> None:
    with pytest.raises(ValueError, match="must be 1 to 64 letters"):
        check_name(name)
    with pytest.raises(ValueError, match="must be 1 to 64 letters"):
        tool(name=name)(lambda: "x")


def test_a_toolbox_refuses_a_second_tool_of_a_name_and_a_bad_schema() -> None:
    box = Toolbox()

    @box.tool
    def weather(city: str) -> str:
        """W."""
        return city

    assert weather("Paris") == "Paris"  # the decorator returns the function
    assert box.names() == ["weather"]
    with pytest.raises(ValueError, match="already registered"):
        box.tool(weather)
    bad = Tool("bad", "B.", {"type": "object", "properties": 3}, weather_run)
    with pytest.raises(ValueError, match="bad parameter schema"):
        box.add(bad)
    with pytest.raises(ValueError, match="must be an object's"):
        box.add(Tool("arr", "A.", {"type": "array"}, weather_run))


async def weather_run(arguments: dict[str, Any]) -> str:
    return "sunny"


def test_select_tools_by_setting_and_admin() -> None:
    free = Tool("free", "", {"type": "object"}, weather_run)
    coded = Tool("coded", "", {"type": "object"}, weather_run, admin_only=True)
    named = Tool("named", "", {"type": "object"}, weather_run)
    every = [free, coded, named]

    def names(enabled: list[str], admin: bool) -> list[str]:
        return [t.name for t in select_tools(every, enabled, ["named"], admin)]

    assert names(["*"], admin=True) == ["free", "coded", "named"]
    assert names(["*"], admin=False) == ["free"]
    assert names(["named", "free"], admin=True) == ["free", "named"]
    assert names([], admin=True) == []


# -- running a call ---------------------------------------------------------------------------


async def test_a_call_is_checked_run_and_capped() -> None:
    @tool
    async def echo(text: str, times: int = 1, color: Color = Color.RED) -> str:
        """Echo."""
        return f"{color.name}:" + text * times

    tools = {"echo": echo}
    asked = '{"text": "ab", "times": 3, "color": "blue"}'
    ok = await run_call(ToolCall("1", "echo", asked), tools, 5, 1000)
    assert (ok.kind, ok.text) == ("ok", "BLUE:ababab")
    long = await run_call(ToolCall("2", "echo", '{"text": "x", "times": 500}'), tools, 5, 100)
    assert long.kind == "ok" and len(long.text) == 100
    assert long.text.endswith("… [cut: 504 characters in all]")
    wrong = await run_call(ToolCall("3", "echo", '{"text": "x", "color": "green"}'), tools, 5, 1000)
    assert wrong.kind == "invalid"
    assert wrong.reason == "invalid arguments: color: 'green' is not one of ['red', 'blue']"
    extra = await run_call(ToolCall("4", "echo", '{"text": "x", "loud": true}'), tools, 5, 1000)
    assert extra.kind == "invalid" and "'loud' was unexpected" in extra.reason
    array = await run_call(ToolCall("5", "echo", "[1]"), tools, 5, 1000)
    assert array.reason == "invalid arguments: the arguments must be a JSON object"
    unknown = await run_call(ToolCall("6", "nope", "{}"), tools, 5, 1000)
    assert (unknown.kind, unknown.label) == ("unknown", "(unknown)")


async def test_a_sync_tool_runs_in_a_thread_and_non_text_results_are_json() -> None:
    import threading

    @tool
    def where() -> dict[str, Any]:
        """Where it runs."""
        return {"thread": threading.current_thread().name}

    outcome = await run_call(ToolCall("1", "where", ""), {"where": where}, 5, 1000)
    assert json.loads(outcome.text)["thread"].startswith("genbot-tool")


# -- the OpenAI backend's tool calls ----------------------------------------------------------


@pytest.mark.parametrize("style", ["openai", "vllm"])
def test_streamed_tool_call_fragments_become_tool_calls(style: Any) -> None:
    reply = Reply(
        "Checking.",
        [("weather", {"city": "Paris", "days": 2}), ("time", '{"zone": "Europe/Paris"}')],
        style=style,
    )
    reader, parts, text, finished = EventReader(), ToolCallParts(), "", False
    for event in reply_events(reply):
        _, more, finish, _ = decode_events(reader, event, parts)
        text += more
        finished = finished or finish
    assert text == "Checking." and finished
    calls = parts.calls()
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("weather", {"city": "Paris", "days": 2}),
        ("time", {"zone": "Europe/Paris"}),
    ]
    assert all(c.id.startswith("call_") for c in calls)
    assert len({c.id for c in calls}) == 2


def test_whole_tool_calls_without_index_are_taken_as_they_come() -> None:
    parts = ToolCallParts()
    parts.add(
        [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"id": "b1", "function": {"name": "b", "arguments": "{}"}},
        ]
    )
    assert parts.calls() == [ToolCall("call_0", "a", '{"x": 1}'), ToolCall("b1", "b", "{}")]


def test_tool_call_fragments_are_ignored_when_no_tools_were_sent() -> None:
    reader = EventReader()
    events = b"".join(reply_events(Reply("", [("a", {})])))
    assert decode_events(reader, events) == (4, "", True, False)


# -- the loop's bounds ------------------------------------------------------------------------


async def outputs(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def collect(stream: AsyncIterator[Any]) -> str:
    return "".join([out async for out in stream if isinstance(out, str)])


async def test_a_backend_that_calls_tools_when_not_offered_them_ends_with_a_note() -> None:
    asked: list[ChatRequest] = []

    @contextlib.asynccontextmanager
    async def again(request: ChatRequest) -> AsyncIterator[AsyncIterator[Any]]:
        asked.append(request)
        yield outputs("Again", ToolCall("2", "count", "{}"))

    count = tool(name="count")(lambda: "1")
    request = ChatRequest([{"role": "user", "content": "hi"}], tools=[count.schema()])
    first = outputs("Hm", ToolCall("1", "count", "{}"))
    text = await collect(tool_loop(first, request, [count], again, ToolLimits(max_steps=1)))
    assert text == f"Hm\n*using `count` …* ✓\nAgain\n{STEPS_NOTE}"
    assert [r.tools for r in asked] == [[]]
    assert [m["role"] for m in asked[0].messages] == ["user", "assistant", "tool"]


async def test_a_step_that_gets_no_model_slot_ends_the_reply_with_a_note() -> None:
    @contextlib.asynccontextmanager
    async def busy(request: ChatRequest) -> AsyncIterator[AsyncIterator[Any]]:
        raise NoStep("no slot")
        yield outputs()

    count = tool(name="count")(lambda: "1")
    request = ChatRequest([{"role": "user", "content": "hi"}], tools=[count.schema()])
    text = await collect(tool_loop(outputs(ToolCall("1", "count", "{}")), request, [count], busy))
    assert text == f"*using `count` …* ✓\n{NO_STEP_NOTE}"


async def test_closing_the_reply_cancels_the_running_calls() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    @tool
    async def hang() -> str:
        """Hang."""
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return ""

    @contextlib.asynccontextmanager
    async def never(request: ChatRequest) -> AsyncIterator[AsyncIterator[Any]]:
        yield outputs()

    request = ChatRequest([{"role": "user", "content": "hi"}], tools=[hang.schema()])
    loop = tool_loop(outputs(ToolCall("1", "hang", "{}")), request, [hang], never)
    assert await loop.__anext__() == "*using `hang` …*"
    waiting = asyncio.ensure_future(loop.__anext__())
    await asyncio.wait_for(started.wait(), 5)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await loop.aclose()
    assert cancelled.is_set()


def test_status_lines_cannot_ping_or_format() -> None:
    from genbot.toolloop import outcome_mark, status_line
    from genbot.tools import Outcome

    assert status_line("weather") == "*using `weather` …*"
    assert "@everyone" not in status_line("@everyone`")
    role = "<@&123456789012345678>"
    failed = Outcome(ToolCall("1", "x", "{}"), "error", "", f"ValueError: @everyone *bold* {role}")
    mark = outcome_mark(failed)
    assert "@everyone" not in mark and role not in mark and "\\*bold\\*" in mark


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"GENBOT_TOOLS": "weather, get time"}, "must be tool names"),
        ({"GENBOT_ADMIN_TOOLS": '["a.b"]'}, "must be tool names"),
        ({"GENBOT_MAX_TOOL_STEPS": "0"}, "must be from 1 to 32"),
        ({"GENBOT_TOOL_TIMEOUT": "0"}, "must be in (0, 3600]"),
        ({"GENBOT_TOOL_OUTPUT_CHARS": "10"}, "must be from 100 to 1e+06"),
    ],
)
def test_tool_settings_are_checked_at_load(environ: dict[str, str], says: str) -> None:
    from genbot.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match=re.escape(says)):
        Settings.load(environ=environ)


def test_tool_settings_defaults() -> None:
    from genbot.settings import Settings

    loaded = Settings.load(environ={"GENBOT_TOOLS": "weather,time", "GENBOT_TOOL_TIMEOUT": "5"})
    assert (loaded.tools, loaded.tool_timeout) == (["weather", "time"], 5.0)
    assert Settings().tools == ["*"] and Settings().max_tool_steps == 4
