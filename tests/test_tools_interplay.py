"""Where the tool loop meets the other parts of a reply: Stop, reasoning, memory, MCP servers
and admin-only tools, end to end on the loopback Discord with the OpenAI backend against
tests/openai_stub.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chat_world import Chat, chat_bot, scene, settle
from genbot.chatbot import ChatBot
from genbot.controls import REGENERATE, STOP, Control
from genbot.models.openai import OpenAIStreamer
from genbot.testing import run_bot
from openai_stub import OpenAIStub, Reply, openai_stub

chat = pytest.fixture(scene(Chat), name="chat")


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with openai_stub() as stub:
        yield stub


def make_bot(stub: OpenAIStub, tmp_path: Path, parallel: int = 1, **values: Any) -> ChatBot:
    backend = OpenAIStreamer(base_url=stub.base_url, model="stub", max_concurrency=parallel)
    openai = {"backend": "openai", "base_url": stub.base_url, "model": "stub"}
    values = {**openai, "parallel": parallel, "data_dir": str(tmp_path), **values}
    # no queued note: the reply is one message
    return chat_bot(backend, values, close_streamers=True, queued_after=30.0)


async def press_regenerate(chat: Chat, question: dict[str, Any]) -> dict[str, Any]:
    """Press Regenerate on the bot's one reply in the DM, to alice's `question`, once it shows
    the button; the reply."""
    server = chat.server
    [reply] = server.bot_messages(chat.dm)
    await server.wait_for(lambda: server.buttons(chat.dm, reply["id"]) == ["Regenerate"])
    again = Control(REGENERATE, int(question["id"]), chat.alice.id).custom_id
    await server.press(chat.dm, reply["id"], again, chat.alice)
    return reply


def quiet(caplog: pytest.LogCaptureFixture) -> bool:
    """Nothing of genbot's was logged as failing (the reply's deltas closed cleanly)."""
    failed = [r for r in caplog.records if r.name.startswith("genbot") and r.levelno >= 30]
    return not failed


# -- Stop while a tool runs -----------------------------------------------------------------------


async def test_stop_while_a_tool_runs_ends_the_reply_and_cancels_the_tool(
    chat: Chat, stub: OpenAIStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stub.script = [Reply("Let me check.", [("hold", {})])]
    bot = make_bot(stub, tmp_path)
    running, cancelled = asyncio.Event(), asyncio.Event()

    @bot.tool
    async def hold() -> str:
        """Waits until cancelled."""
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    server = chat.server
    async with run_bot(bot, server):
        question = await server.send_message(chat.dm, chat.alice, "hold on")
        await asyncio.wait_for(running.wait(), 15)
        await server.wait_for(lambda: any("using" in r for r in chat.replies(chat.dm)), timeout=15)
        [reply] = server.bot_messages(chat.dm)
        stop = Control(STOP, int(question["id"]), chat.alice.id).custom_id
        await server.press(chat.dm, reply["id"], stop, chat.alice)
        await asyncio.wait_for(cancelled.wait(), 15)
        await server.wait_for(
            lambda: server.buttons(chat.dm, reply["id"]) == ["Regenerate"], timeout=15
        )
        await settle(bot)
        # the one model slot is free: the next question is answered
        await server.send_message(chat.dm, chat.alice, "next")
        await chat.wait_for_reply(chat.dm, "echo: next")
    [stopped, _] = chat.replies(chat.dm)
    assert stopped.startswith("Let me check.\n*using `hold` …*")
    assert stopped.endswith("*Stopped.*")
    assert not bot.controls.running
    assert quiet(caplog)
    assert len(stub.requests) == 2  # no step after the stop
    assert quiet(caplog)


# -- reasoning models -----------------------------------------------------------------------------


async def test_thinking_in_tool_steps_is_never_posted(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    stub.script = [
        Reply("<think>The user wants weather.</think>Let me check.", [("weather", {})]),
        Reply("<think>It is sunny.</think>Sunny."),
    ]
    bot = make_bot(stub, tmp_path)

    @bot.tool
    def weather() -> str:
        """The weather."""
        return "sunny"

    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "weather?")
        await chat.server.wait_for(lambda: any(r.endswith("Sunny.") for r in chat.replies(chat.dm)))
        await settle(bot)
    [reply] = chat.replies(chat.dm)
    assert reply == "Let me check.\n*using `weather` …* ✓\nSunny."


async def test_a_regenerated_reply_of_a_reasoning_model_shows_only_its_answer(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    stub.script = [
        Reply("<think>first thoughts</think>First."),
        Reply("<think>more</think>Second."),
    ]
    bot = make_bot(stub, tmp_path)
    server = chat.server
    async with run_bot(bot, server):
        question = await server.send_message(chat.dm, chat.alice, "hello")
        await chat.wait_for_reply(chat.dm, "First.")
        reply = await press_regenerate(chat, question)
        await server.wait_for(lambda: len(stub.requests) == 2, timeout=15)
        await server.wait_for(
            lambda: (
                server.buttons(chat.dm, reply["id"]) == ["Regenerate"]
                and server.message(chat.dm, reply["id"])["content"] != "First."
            ),
            timeout=15,
        )
        await settle(bot)
    assert chat.replies(chat.dm) == ["Second."]


# -- memory ---------------------------------------------------------------------------------------


async def test_a_reasoning_models_thinking_is_not_stored_in_the_summary(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    from genbot.memory import SUMMARY_INSTRUCTION

    def model(body: dict[str, Any]) -> Reply:
        if body["messages"][0]["content"] == SUMMARY_INSTRUCTION:
            return Reply("<think>private musing</think>alice talks about snakes.")
        said = body["messages"][-1]["content"].splitlines()[-1]
        return Reply(f"echo: {said.split(': ', 1)[-1]}")

    stub.respond = model
    bot = make_bot(stub, tmp_path, memory=True, context_chars=60)
    async with run_bot(bot, chat.server):
        for n in range(4):
            await chat.server.send_message(chat.dm, chat.alice, f"snakes number {n}")
            await chat.wait_for_reply(chat.dm, f"echo: snakes number {n}")
            await settle(bot)
            await bot.memory.idle(timeout=30)
        stored = await bot.memory.rows.summary(chat.dm.id)
    assert stored is not None
    assert stored.text == "alice talks about snakes."


async def test_stop_during_a_later_step_ends_the_reply_and_frees_the_slot(
    chat: Chat, stub: OpenAIStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    never = asyncio.Event()  # the second step streams one word, then nothing
    stub.script = [Reply("Let me check.", [("weather", {})]), Reply("It is sunny.", hold=never)]
    bot = make_bot(stub, tmp_path)

    @bot.tool
    def weather() -> str:
        """The weather."""
        return "sunny"

    server = chat.server
    async with run_bot(bot, server):
        question = await server.send_message(chat.dm, chat.alice, "weather?")
        await server.wait_for(lambda: any("✓\nIt" in r for r in chat.replies(chat.dm)), timeout=15)
        [reply] = server.bot_messages(chat.dm)
        stop = Control(STOP, int(question["id"]), chat.alice.id).custom_id
        await server.press(chat.dm, reply["id"], stop, chat.alice)
        await server.wait_for(
            lambda: server.buttons(chat.dm, reply["id"]) == ["Regenerate"], timeout=15
        )
        await settle(bot)
        await server.send_message(chat.dm, chat.alice, "next")
        await chat.wait_for_reply(chat.dm, "echo: next")
        await asyncio.wait_for(stub.idle.wait(), 30)  # the held one ended
    stopped = chat.replies(chat.dm)[0]
    assert stopped.startswith("Let me check.\n*using `weather` …* ✓\nIt")
    assert "sunny" not in stopped
    assert stopped.endswith("*Stopped.*")
    assert not bot.controls.running
    assert quiet(caplog)


# -- MCP tools in a reply -------------------------------------------------------------------------


async def test_an_mcp_call_that_fails_is_a_failed_line_and_an_error_the_model_reads(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    import sys

    server_script = Path(__file__).parent / "mcp_servers" / "tools_server.py"
    marker = tmp_path / "starts"
    command = {"command": sys.executable, "args": [str(server_script), str(marker)]}
    mcp = {"t": {**command, "start_timeout": 120, "timeout": 60}}
    stub.script = [Reply("", [("t__fail", {})]), Reply("", [("t__crash", {})]), Reply("Sorry.")]
    bot = make_bot(stub, tmp_path, parallel=2, mcp=mcp)
    async with run_bot(bot, chat.server, timeout=120):
        await chat.server.send_message(chat.dm, chat.alice, "break things")
        await chat.server.wait_for(
            lambda: any(r.endswith("Sorry.") for r in chat.replies(chat.dm)), timeout=60
        )
        await settle(bot)
    [reply] = chat.replies(chat.dm)
    lines = reply.splitlines()
    assert lines[0].startswith("*using `t__fail` …* *failed: ")
    assert "the tool broke on purpose" in lines[0]
    assert lines[1].startswith("*using `t__crash` …* *failed: ")
    assert "stopped during the call" in lines[1]
    results = [m["content"] for m in stub.requests[2]["messages"] if m["role"] == "tool"]
    assert results[0].startswith("error: ") and "the tool broke on purpose" in results[0]
    assert results[1].startswith("error: the MCP server 't' stopped during the call of 'crash'")
    for name in ("t__fail", "t__crash"):
        sample = bot.metrics.registry.get_sample_value(
            "genbot_tool_calls_total", {"tool": name, "outcome": "error"}
        )
        assert sample == 1


async def test_an_admin_only_mcp_server_is_neither_offered_to_nor_run_for_others(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    import sys

    server_script = Path(__file__).parent / "mcp_servers" / "tools_server.py"
    command = {"command": sys.executable, "args": [str(server_script)]}
    mcp = {"t": {**command, "start_timeout": 120, "admin_only": True}}
    admin = chat.server.create_user("admin")
    admin_dm = chat.server.create_dm(admin)
    # the model calls the server's tool whether or not it was offered
    stub.script = [
        Reply("", [("t__echo", {"text": "alice"})]),
        Reply("", [("t__echo", {"text": "admin"})]),
        Reply("Done for admin."),
    ]
    bot = make_bot(stub, tmp_path, mcp=mcp, admins=[admin.id])
    async with run_bot(bot, chat.server, timeout=120):
        await chat.server.send_message(chat.dm, chat.alice, "echo")
        await chat.server.wait_for(lambda: chat.replies(chat.dm), timeout=30)
        await settle(bot)
        await chat.server.send_message(admin_dm, admin, "echo")
        await chat.wait_for_reply(admin_dm, "*using `t__echo` …* ✓\nDone for admin.", timeout=30)
        await settle(bot)
    for_alice, for_admin, answered = stub.requests
    assert "tools" not in for_alice
    # a call of a tool not offered is never run (the backend drops it: the reply is empty)
    assert chat.replies(chat.dm) == ["*The model gave an empty reply. Try asking in other words.*"]
    assert "t__echo" in {t["function"]["name"] for t in for_admin["tools"]}
    assert answered["messages"][-1]["content"] == "echo: admin"


async def test_regenerate_offers_the_tools_again(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    def model(body: dict[str, Any]) -> Reply:
        """Calls ``weather`` when it may, answers with its result; without tools, guesses."""
        last = body["messages"][-1]
        if last["role"] == "tool":
            return Reply(f"It is {last['content']}.")
        if body.get("tools"):
            return Reply("", [("weather", {})])
        return Reply("I cannot look it up.")

    stub.respond = model
    bot = make_bot(stub, tmp_path)
    results = iter(["sunny", "rainy"])

    @bot.tool
    def weather() -> str:
        """The weather."""
        return next(results)

    server = chat.server
    async with run_bot(bot, server):
        question = await server.send_message(chat.dm, chat.alice, "weather?")
        await chat.wait_for_reply(chat.dm, "*using `weather` …* ✓\nIt is sunny.")
        reply = await press_regenerate(chat, question)
        await server.wait_for(lambda: len(stub.requests) >= 3, timeout=15)
        await server.wait_for(
            lambda: (
                server.buttons(chat.dm, reply["id"]) == ["Regenerate"]
                and "sunny" not in server.message(chat.dm, reply["id"])["content"]
            ),
            timeout=15,
        )
        await settle(bot)
    assert chat.replies(chat.dm) == ["*using `weather` …* ✓\nIt is rainy."]


async def test_regenerate_sees_the_memory_as_the_first_reply_did(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    bot = make_bot(stub, tmp_path, memory=True)
    server = chat.server
    async with run_bot(bot, server):
        question = await server.send_message(chat.dm, chat.alice, "remember that I like tea")
        await chat.wait_for_reply(chat.dm, "echo: remember that I like tea")
        reply = await press_regenerate(chat, question)
        await server.wait_for(lambda: len(stub.requests) == 2, timeout=15)
        await server.wait_for(
            lambda: server.buttons(chat.dm, reply["id"]) == ["Regenerate"], timeout=15
        )
        await settle(bot)
    first, regenerated = (r["messages"][0]["content"] for r in stub.requests)
    assert "Facts alice asked you to remember:\n- I like tea" in first
    assert regenerated == first


async def test_a_reasoning_spoiler_is_not_fed_back_to_the_model(
    chat: Chat, stub: OpenAIStub, tmp_path: Path
) -> None:
    stub.script = [Reply("<think>secret plan</think>First.")]
    bot = make_bot(stub, tmp_path, reasoning="spoiler")
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "one")
        await chat.wait_for_reply(chat.dm, "||secret plan||\n\nFirst.")
        await settle(bot)
        await chat.server.send_message(chat.dm, chat.alice, "two")
        await chat.wait_for_reply(chat.dm, "echo: two")
        await settle(bot)
    second = stub.requests[1]["messages"]
    assert [m["content"] for m in second if m["role"] == "assistant"] == ["First."]
