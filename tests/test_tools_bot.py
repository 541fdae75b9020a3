"""The tool loop end to end: the ready-made bot on the loopback Discord, the OpenAI backend
against a local server that streams ``tool_calls`` as OpenAI and vLLM do (tests/openai_stub.py)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat_world import Chat, scene
from genbot.chatbot import ChatBot
from genbot.models.openai import OpenAIStreamer
from genbot.settings import Settings
from genbot.testing import FakeChannel, run_bot
from genbot.tools import Toolbox, tool
from openai_stub import OpenAIStub, Reply, openai_stub

FAST: dict[str, Any] = {"guild_ready_timeout": 0.05, "shutdown_timeout": 2.0}


chat = pytest.fixture(scene(Chat), name="chat")


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with openai_stub() as stub:
        stub.respond = weather_model
        yield stub


def weather_model(body: dict[str, Any]) -> Reply:
    """A model that calls the tools the user names ("use weather(city=Paris) and ..."), and
    once tool results are in, answers with them."""
    messages = body["messages"]
    if messages[-1]["role"] == "tool":
        results = [m["content"] for m in messages if m["role"] == "tool"]
        return Reply("Answer: " + " | ".join(results), style=_style(body))
    said = messages[-1]["content"]
    calls: list[tuple[str, dict[str, Any] | str]] = []
    for name, args in re.findall(r"use (\w+)\((.*?)\)", said):
        if args.startswith("{") or args.startswith("!"):  # raw arguments text
            calls.append((name, args.lstrip("!")))
        else:
            calls.append((name, dict(kv.split("=") for kv in args.split(",") if kv)))
    if not calls:
        return Reply(f"echo: {said.split(': ', 1)[-1]}")
    return Reply("Let me check.", calls, style=_style(body))


def _style(body: dict[str, Any]) -> Any:
    first = body["messages"][-1]["content"] if body["messages"] else ""
    said = next((m["content"] for m in body["messages"] if m["role"] == "user"), first)
    return "vllm" if "vllm" in said else "openai"


def make_bot(
    stub: OpenAIStub, parallel: int = 4, toolbox: Toolbox | None = None, **values: Any
) -> ChatBot:
    settings = Settings().updated(
        {
            "backend": "openai",
            "base_url": stub.base_url,
            "model": "stub",
            "parallel": parallel,
            "edit_interval": 0.2,
            "stall_timeout": 30.0,
            "queue_timeout": 30.0,
            **values,
        },
        "test",
    )
    backend = OpenAIStreamer(base_url=stub.base_url, model="stub", max_concurrency=parallel)
    return ChatBot(settings, backend=backend, toolbox=toolbox, **FAST)


def tool_calls(bot: ChatBot, tool: str, outcome: str) -> float:
    value = bot.metrics.registry.get_sample_value(
        "genbot_tool_calls_total", {"tool": tool, "outcome": outcome}
    )
    return value or 0.0


async def reply_to(chat: Chat, channel: FakeChannel, text: str, ending: str) -> str:
    """Alice says `text`; the bot's reply once it ends with `ending`."""
    await chat.server.send_message(channel, chat.alice, text)
    await chat.server.wait_for(
        lambda: any(r.endswith(ending) for r in chat.replies(channel)), timeout=30
    )
    return next(r for r in chat.replies(channel) if r.endswith(ending))


# -- a round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["openai", "vllm"])
async def test_a_tool_round_trip_is_one_streamed_reply(
    chat: Chat, stub: OpenAIStub, style: str
) -> None:
    bot = make_bot(stub)

    @bot.tool
    def weather(city: str, units: str = "C") -> str:
        """The weather in a city.

        Parameters
        ----------
        city:
            The city's name.
        """
        return f"sunny in {city}, 21 {units}"

    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, f"use weather(city=Paris) ({style})", "21 C")
    assert reply == "Let me check.\n*using `weather` …* ✓\nAnswer: sunny in Paris, 21 C"
    assert len(chat.server.bot_messages(chat.dm)) == 1
    first, second = stub.requests
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "The city's name."},
                        "units": {"type": "string", "default": "C"},
                    },
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    called, result = second["messages"][-2:]
    assert called["role"] == "assistant" and called["content"] == "Let me check."
    [call] = called["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert result == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "sunny in Paris, 21 C",
    }
    assert tool_calls(bot, "weather", "ok") == 1


# -- calls that run together, fail, hang or are wrong -------------------------------------------


async def test_two_calls_of_one_step_run_concurrently(chat: Chat, stub: OpenAIStub) -> None:
    bot = make_bot(stub, tool_timeout=10.0)
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    async def meet(me: str, other: str) -> str:
        started[me].set()
        await started[other].wait()  # run one after the other, this would time out
        return f"{me} met {other}"

    @bot.tool
    async def a() -> str:
        """A."""
        return await meet("a", "b")

    @bot.tool
    async def b() -> str:
        """B."""
        return await meet("b", "a")

    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "use a() and use b() (vllm)", "b met a")
    assert reply == ("Let me check.\n*using `a` …* ✓\n*using `b` …* ✓\nAnswer: a met b | b met a")


async def test_a_tool_that_raises_is_a_line_and_an_error_the_model_reads(
    chat: Chat, stub: OpenAIStub
) -> None:
    bot = make_bot(stub)

    @bot.tool
    def lookup(city: str) -> str:
        """Look a city up."""
        raise ValueError(f"no such city: {city}")

    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "use lookup(city=Atlantis)", "Atlantis")
    assert reply == (
        "Let me check.\n*using `lookup` …* *failed: ValueError: no such city: Atlantis*\n"
        "Answer: error: ValueError: no such city: Atlantis"
    )
    assert (
        stub.requests[-1]["messages"][-1]["content"] == "error: ValueError: no such city: Atlantis"
    )
    assert tool_calls(bot, "lookup", "error") == 1


async def test_a_tool_that_hangs_times_out(chat: Chat, stub: OpenAIStub) -> None:
    bot = make_bot(stub, tool_timeout=0.5)
    never = asyncio.Event()

    @bot.tool
    async def slow() -> str:
        """Never answers."""
        await never.wait()
        return "too late"

    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "use slow()", "s")
    assert reply == (
        "Let me check.\n*using `slow` …* *failed: timed out after 0.5 s*\n"
        "Answer: error: the tool timed out after 0.5 s"
    )
    assert tool_calls(bot, "slow", "timeout") == 1


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ('{"town":"Paris"}', "invalid arguments: "),
        ('{"city":3}', "invalid arguments: city: 3 is not of type 'string'"),
        ("!{oops", "invalid arguments: the arguments are not JSON"),
    ],
)
async def test_invalid_arguments_are_refused_before_the_tool_runs(
    chat: Chat, stub: OpenAIStub, arguments: str, reason: str
) -> None:
    bot = make_bot(stub)
    ran: list[str] = []

    @bot.tool
    def weather(city: str) -> str:
        """Weather."""
        ran.append(city)
        return "sunny"

    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, f"use weather({arguments})", "")
        await chat.server.wait_for(lambda: "Answer: error: " in chat.replies(chat.dm)[-1])
        reply = chat.replies(chat.dm)[-1]
    assert ran == []
    assert f"*using `weather` …* *failed: {reason}" in reply.replace("\\", "")
    assert tool_calls(bot, "weather", "invalid") == 1


# -- bounds and access ------------------------------------------------------------------------


async def test_max_tool_steps_then_the_model_answers_without_tools(
    chat: Chat, stub: OpenAIStub
) -> None:
    bot = make_bot(stub, max_tool_steps=2)
    counted: list[int] = []

    @bot.tool
    def count() -> str:
        """Count once more."""
        counted.append(1)
        return str(len(counted))

    def greedy(body: dict[str, Any]) -> Reply:
        if "tools" in body:
            return Reply("", [("count", {})])
        return Reply("Done counting.")

    stub.respond = greedy
    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "count", "Done counting.")
    assert reply == "*using `count` …* ✓\n*using `count` …* ✓\nDone counting."
    assert ["tools" in body for body in stub.requests] == [True, True, False]
    assert len(counted) == 2


async def test_tool_calls_a_server_sends_when_no_tool_was_offered_are_ignored(
    chat: Chat, stub: OpenAIStub
) -> None:
    bot = make_bot(stub, max_tool_steps=1)
    counted: list[int] = []

    @bot.tool
    def count() -> str:
        """Count."""
        counted.append(1)
        return "1"

    stub.respond = lambda body: Reply("Again.", [("count", {})])
    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "count", "✓\nAgain.")
    assert reply == "Again.\n*using `count` …* ✓\nAgain."
    assert ["tools" in body for body in stub.requests] == [True, False]
    assert counted == [1]


async def test_admin_only_tools_are_offered_to_admins_only(chat: Chat, stub: OpenAIStub) -> None:
    server = chat.server
    boss = server.create_user("boss")
    boss_dm = server.create_dm(boss)
    bot = make_bot(stub, admins=[boss.id], admin_tools=["weather"])
    ran: list[str] = []

    @bot.tool(admin_only=True)
    def shutdown() -> str:
        """Stop the server."""
        ran.append("shutdown")
        return "stopped"

    @bot.tool
    def weather(city: str) -> str:
        """Weather."""
        return "sunny"

    @bot.tool
    def ping() -> str:
        """Ping."""
        return "pong"

    async with run_bot(bot, server):
        reply = await reply_to(chat, chat.dm, "use shutdown()", "(offered: ping)")
        await server.send_message(boss_dm, boss, "use ping()")
        await server.wait_for(
            lambda: any(m["content"].endswith("pong") for m in server.bot_messages(boss_dm)),
            timeout=30,
        )
    alice_asked, boss_asked = stub.requests[0], stub.requests[-2]
    assert [t["function"]["name"] for t in alice_asked["tools"]] == ["ping"]
    assert [t["function"]["name"] for t in boss_asked["tools"]] == ["shutdown", "weather", "ping"]
    # alice's model asked for it anyway: not run
    assert "failed: no tool named 'shutdown' (offered: ping)" in reply.replace("\\", "")
    assert ran == []
    assert tool_calls(bot, "(unknown)", "unknown") == 1


async def test_tool_output_never_pings(chat: Chat, stub: OpenAIStub) -> None:
    server = chat.server
    bot = make_bot(stub)

    @bot.tool
    def shout() -> str:
        """Shout."""
        return "@everyone @here look"

    @bot.tool
    def fail() -> str:
        """Fail."""
        raise RuntimeError("@everyone @here broke")

    async with run_bot(bot, server):
        await server.send_message(chat.dm, chat.alice, "use shout() and use fail()")
        await server.wait_for(
            lambda: any("Answer: @everyone" in r for r in chat.replies(chat.dm)), timeout=30
        )
    [message] = server.bot_messages(chat.dm)
    assert "@everyone @here look" in message["content"]
    assert message["mention_everyone"] is False
    assert message["mention_roles"] == []


# -- batching ---------------------------------------------------------------------------------


async def test_two_chats_use_tools_while_a_third_streams_with_one_model_slot(
    chat: Chat, stub: OpenAIStub
) -> None:
    """One model slot: both tool chats free it while their tools run (the tools wait until
    the third chat's plain reply is there), and no step ever holds more than the slot."""
    server = chat.server
    bob, carol = server.create_user("bob"), server.create_user("carol")
    bob_dm, carol_dm = server.create_dm(bob), server.create_dm(carol)
    bot = make_bot(stub, parallel=1, tool_timeout=25.0)
    waiting: list[str] = []
    both_waiting = asyncio.Event()

    @bot.tool
    async def wait_for_carol(who: str) -> str:
        """Wait until carol got her reply."""
        waiting.append(who)
        if len(waiting) == 2:
            both_waiting.set()
        await server.wait_for(lambda: "echo: plain" in chat.replies(carol_dm), timeout=20)
        return f"{who} saw carol answered"

    async with run_bot(bot, server):
        await server.send_message(chat.dm, chat.alice, "use wait_for_carol(who=alice)")
        await server.send_message(bob_dm, bob, "use wait_for_carol(who=bob)")
        await asyncio.wait_for(both_waiting.wait(), 20)
        await server.send_message(carol_dm, carol, "plain")
        await server.wait_for(
            lambda: all(
                any(r.endswith("saw carol answered") for r in chat.replies(dm))
                for dm in (chat.dm, bob_dm)
            ),
            timeout=30,
        )
    assert chat.replies(carol_dm) == ["echo: plain"]
    assert chat.replies(chat.dm) == [
        "Let me check.\n*using `wait_for_carol` …* ✓\nAnswer: alice saw carol answered"
    ]
    assert stub.most_in_flight == 1
    assert len(stub.requests) == 5


async def test_a_toolbox_passed_in_and_the_tools_setting(chat: Chat, stub: OpenAIStub) -> None:
    @tool
    def weather(city: str) -> str:
        """Weather."""
        return f"rain in {city}"

    @tool
    def clock() -> str:
        """The time."""
        return "noon"

    toolbox = Toolbox([weather, clock])
    bot = make_bot(stub, toolbox=toolbox, tools=["weather"])
    assert bot.toolbox is toolbox
    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "use weather(city=Oslo)", "rain in Oslo")
    assert reply == "Let me check.\n*using `weather` …* ✓\nAnswer: rain in Oslo"
    assert [t["function"]["name"] for t in stub.requests[0]["tools"]] == ["weather"]


async def test_no_tools_setting_sends_no_tools(chat: Chat, stub: OpenAIStub) -> None:
    bot = make_bot(stub, tools=[])

    @bot.tool
    def clock() -> str:
        """The time."""
        return "noon"

    async with run_bot(bot, chat.server):
        reply = await reply_to(chat, chat.dm, "hello", "hello")
    assert reply == "echo: hello"
    assert "tools" not in stub.requests[0]


# -- a Python tool and an MCP tool in one reply ---------------------------------------------------


async def test_a_python_tool_and_an_mcp_tool_in_one_reply(chat: Chat, stub: OpenAIStub) -> None:
    import sys
    from pathlib import Path

    server_script = Path(__file__).parent / "mcp_servers" / "tools_server.py"
    mcp = {"t": {"command": sys.executable, "args": [str(server_script)], "start_timeout": 120}}
    bot = make_bot(stub, mcp=mcp)

    @bot.tool
    def weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    async with run_bot(bot, chat.server, timeout=120):
        reply = await reply_to(
            chat, chat.dm, "use weather(city=Oslo) and use t__echo(text=hi)", "echo: hi"
        )
        offered = {t["function"]["name"] for t in stub.requests[0]["tools"]}
    assert {"weather", "t__echo", "t__add"} <= offered  # the bot's own tools and the server's
    assert "Answer: sunny in Oslo | echo: hi" in reply
    assert reply.count("using") == 2  # one status line per call
    assert tool_calls(bot, "weather", "ok") == 1
    assert tool_calls(bot, "t__echo", "ok") == 1
