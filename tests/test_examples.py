"""Every script in examples/ runs: its bot answers on the loopback Discord server.

The examples are imported by name with examples/ on ``sys.path``, so that a streamer worker
started with ``spawn`` (which imports the streamer's module again in the child, with the
parent's ``sys.path``) finds them. Each test starts at most one worker and closes it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bot_world import FAST, send, world
from chat_world import Chat
from genbot.gatekeeping import running
from genbot.testing import DiscordServer, run_bot
from openai_stub import openai_stub
from test_tools_bot import reply_to, weather_model

EXAMPLES = Path(__file__).parents[1] / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py"))


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as the module ``name`` (as a spawned worker will)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    module = importlib.import_module(name)
    assert Path(module.__file__ or "").parent == EXAMPLES, f"{name} is not the example"
    return module


# -- the scripts themselves ------------------------------------------------------------------------


def test_the_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\[`(\w+)\.py`\]\((\w+)\.py\)", readme))
    assert {name for name, link in listed if name == link} == set(SCRIPTS)


@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != "chat_with_model"])
def test_a_bot_example_without_a_token_exits_with_one_line(name: str) -> None:
    """Importing an example starts nothing (the main guard); running it reads DISCORD_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(EXAMPLES.parent / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == "Set DISCORD_TOKEN to your bot's token.\n"


# -- bots without a streamer -----------------------------------------------------------------------


async def test_hello_world() -> None:
    hello_world = load("hello_world")
    async with world() as w, run_bot(hello_world.HelloBot(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "hi")
        await send(bot, w.server, w.general, w.bob, "hi there", mentions_bot=True)
        await send(bot, w.server, w.general, w.bob, "not to the bot")
        await w.server.wait_for(
            lambda: w.contents(dm) == ["Hello World!"] and w.contents(w.general) == ["Hello World!"]
        )


def test_access_lists_as_configured() -> None:
    access_lists = load("access_lists")
    bot = access_lists.HelloBot(
        users=access_lists.USERS, roles=access_lists.ROLES, admins=access_lists.ADMINS
    )
    assert bot.access.may_chat(5678987656789, None)
    assert not bot.access.may_chat(1234, None)  # DMs: the users whitelist only
    assert bot.access.may_chat(1234, [])  # servers stay open: roles has no whitelist
    assert not bot.access.may_chat(1234, [12345678987653])
    assert bot.access.is_admin(9876789656789) and not bot.access.is_admin(5678987656789)


async def test_access_lists_end_to_end() -> None:
    access_lists = load("access_lists")
    async with world() as w:
        s = w.server
        banned = s.create_user("banned")
        s.add_member(w.guild, banned, roles=[w.banned])
        lists = {"users": [w.alice.id], "roles": {"blacklist": [w.banned.id]}}
        async with run_bot(access_lists.HelloBot(**lists, admins=[w.admin.id], **FAST), s) as bot:
            alice_dm, bob_dm = s.create_dm(w.alice), s.create_dm(w.bob)
            await send(bot, s, bob_dm, w.bob, "not on the list")  # DMs: users whitelist only
            await send(bot, s, w.general, banned, "blacklisted role", mentions_bot=True)
            await send(bot, s, alice_dm, w.alice, "on the list")
            await s.wait_for(lambda: w.contents(alice_dm) == ["Hello World!"])
            await send(bot, s, w.general, w.bob, "servers are open", mentions_bot=True)
            await s.wait_for(lambda: w.contents(w.general) == ["Hello World!"])
            assert w.contents(bob_dm) == []
            refused = await s.invoke_command(w.general, w.alice, "shutdown")
            assert (await refused.wait_response())["ephemeral"]
            assert not bot.is_closed()
            await s.invoke_command(w.general, w.admin, "shutdown")
            await s.wait_for(lambda: s.connected == 0, timeout=10)
            assert bot.is_closed()


async def test_gatekeeping_answers_a_burst_once() -> None:
    gatekeeping = load("gatekeeping")

    class Controlled(gatekeeping.PatientBot):
        """The quiet period ends when the test says so, not after a time."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.waits = 0
            self.quiet = asyncio.Event()

        async def wait_until_quiet(self, channel: Any) -> None:
            self.waits += 1
            await asyncio.wait_for(self.quiet.wait(), 10)

    async with world() as w, run_bot(Controlled(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        for n in range(4):
            await send(bot, w.server, dm, w.alice, f"short message {n}")
        bot.quiet.set()
        await w.server.wait_for(lambda: w.contents(dm) == ["That was 12 words."])
        # A message that arrives while the attend still runs is absorbed by it (gatekeep's
        # contract), so the next one is sent once the first attend is over.
        runs = running(bot)
        if runs:
            await asyncio.wait(runs, timeout=5)
        await send(bot, w.server, dm, w.alice, "and one more")
        await w.server.wait_for(lambda: len(w.contents(dm)) == 2)
        assert w.contents(dm)[1] == "That was 3 words."  # only what came after its answer
        assert bot.waits == 2


async def test_gatekeeping_waits_for_the_quiet() -> None:
    gatekeeping = load("gatekeeping")
    patient = gatekeeping.PatientBot(**FAST)
    patient.quiet_seconds = 0.05
    async with world() as w, run_bot(patient, w.server) as bot:
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "one two")
        await w.server.wait_for(lambda: w.contents(dm) == ["That was 2 words."])


async def test_context_window() -> None:
    context_window = load("context_window")
    async with world() as w, run_bot(context_window.TranscriptBot(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "hello")
        await w.server.wait_for(lambda: w.contents(dm) == ["alice: hello"])
        await send(bot, w.server, dm, w.alice, "! not for the bot")  # invisible, wakes nothing
        await send(bot, w.server, dm, w.alice, "again")
        await w.server.wait_for(lambda: len(w.contents(dm)) == 2)
        assert w.contents(dm)[1] == "alice: hello\ngenbot: alice: hello\nalice: again"


async def test_slow_reply_answers_what_arrived_meanwhile_exactly_once() -> None:
    slow_reply = load("slow_reply")

    class Controlled(slow_reply.SlowBot):
        """The example's generate, with its slowness in the test's hands."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.runs = 0
            self.generating = asyncio.Event()
            self.release = asyncio.Event()

        async def generate(self, lines: list[str]) -> str:
            self.runs += 1
            self.generating.set()
            await asyncio.wait_for(self.release.wait(), 10)
            return str(await super().generate(lines))

    Controlled.thinking_seconds = 0
    async with world() as w, run_bot(Controlled(**FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        await send(bot, s, dm, w.alice, "first")
        await asyncio.wait_for(bot.generating.wait(), 5)
        await send(bot, s, dm, w.alice, "second")
        await send(bot, s, dm, w.alice, "third")
        bot.release.set()
        await s.wait_for(lambda: len(w.contents(dm)) == 2)
        while running := bot.attending():
            await asyncio.wait(running, timeout=5)
        assert bot.runs == 2
        assert w.contents(dm) == [
            "I read 1 messages.",
            "I read 4 messages.",  # first, second, third and the first answer
        ]


async def test_my_bot() -> None:
    my_bot = load("my_bot")
    async with world() as w, run_bot(my_bot.MyBot(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        await send(bot, w.server, dm, w.alice, "hello")
        await w.server.wait_for(lambda: w.contents(dm) == ["I see 1 messages."])
        await send(bot, w.server, dm, w.alice, "hello again")
        await w.server.wait_for(lambda: len(w.contents(dm)) == 2)
        assert w.contents(dm)[1] == "I see 3 messages."


# -- bots with a streamer worker in a spawned process ----------------------------------------------


async def test_streaming_echo() -> None:
    streaming_echo = load("streaming_echo")
    process = streaming_echo.echo.start_process(minimum=1, maximum=64)
    try:
        async with world() as w, run_bot(streaming_echo.MyBot(**FAST), w.server) as bot:
            dm = w.server.create_dm(w.alice)
            await send(bot, w.server, dm, w.alice, "hello")
            await w.server.wait_for(
                lambda: w.contents(dm) == ["Echo 12"], timeout=30
            )  # alice: hello
            mention = await send(bot, w.server, w.general, w.bob, "hi", mentions_bot=True)
            await w.server.wait_for(lambda: len(w.contents(w.general)) == 1, timeout=30)
            assert w.contents(w.general) == [f"Echo {len('bob: ' + mention['content'])}"]
    finally:
        streaming_echo.echo.close()
    assert not process.is_alive()


@pytest.mark.parametrize("kind", ["subclass", "function"])
async def test_pong(kind: str) -> None:
    pong = load("pong")
    streamer = pong.PongStreamer() if kind == "subclass" else pong.pong
    process = streamer.start_process()
    try:
        async with world() as w, run_bot(pong.PongBot(streamer, **FAST), w.server) as bot:
            dms = [w.server.create_dm(user) for user in (w.alice, w.bob)]
            for dm, user in zip(dms, (w.alice, w.bob), strict=True):
                await send(bot, w.server, dm, user, f"ping from {user.name}")
            await w.server.wait_for(lambda: all(w.contents(dm) for dm in dms), timeout=30)
            assert [w.contents(dm) for dm in dms] == [
                ["Pong: ping from alice"],
                ["Pong: ping from bob"],
            ]
    finally:
        streamer.close()
    assert not process.is_alive()


async def test_everything_together() -> None:
    everything = load("everything_together")
    everything.echo.start_process(minimum=1, maximum=64)
    try:
        async with world() as w, run_bot(everything.MyBot(**FAST), w.server) as bot:
            dm, general = w.server.create_dm(w.alice), w.general
            first = "alice: hello"
            await w.server.send_message(dm, w.alice, "hello")
            # A second channel at the same time: both are served by the one worker.
            await w.server.send_message(general, w.bob, "hi", mentions_bot=True)
            await w.server.wait_for(lambda: len(w.contents(dm)) >= 1, timeout=30)
            # A message arrives while the first reply is being generated: one follow-up.
            await w.server.send_message(dm, w.alice, "again")
            await w.server.wait_for(lambda: len(w.contents(dm)) == 4, timeout=30)
            while running := bot.attending():
                await asyncio.wait(running, timeout=30)
            follow_up = "\n".join([first, *(f"genbot: Echo {len(first)}",) * 2, "alice: again"])
            assert w.contents(dm) == [f"Echo {len(first)}"] * 2 + [f"Echo {len(follow_up)}"] * 2
            mention = f"bob: <@{bot.user.id}> hi"
            assert w.contents(general) == [f"Echo {len(mention)}"] * 2
    finally:
        everything.echo.close()


# -- the ready-made bot with tools, against a local OpenAI-compatible server ---------------------


async def test_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the bot's data folder
    for name in [n for n in os.environ if n.startswith("GENBOT_")]:
        monkeypatch.delenv(name)
    async with DiscordServer() as server, openai_stub() as stub:
        monkeypatch.setenv("GENBOT_BASE_URL", stub.base_url)
        sys.modules.pop("tools", None)  # the example makes its bot when imported
        tools = load("tools")
        stub.respond = weather_model
        chat = Chat(server)
        async with run_bot(tools.bot, server, timeout=30):
            ask = 'use weather(city=Paris,unit=F) use roll_dice({"count": 2, "sides": 1})'
            reply = await reply_to(chat, chat.dm, ask, "[1, 1]")
    assert reply == (
        "Let me check.\n*using `weather` …* ✓\n*using `roll_dice` …* ✓\n"
        "Answer: Sunny in Paris, 70 °F | [1, 1]"
    )
    offered = [tool["function"]["name"] for tool in stub.requests[0]["tools"]]
    assert sorted(offered) == ["roll_dice", "weather"]  # server_load: admins' chats only


# -- a model from a script -------------------------------------------------------------------------


def test_chat_with_model(capsys: pytest.CaptureFixture[str]) -> None:
    chat_with_model = load("chat_with_model")
    answer = chat_with_model.main("Hi! What is Discord?", max_new_tokens=16)
    assert answer.strip()
    assert capsys.readouterr().out == answer + "\n"  # streamed to the terminal as it came
