"""The offline playground: scripted (stdin not a terminal) and interactive (a pseudo-terminal)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from typing import Any

import pytest

import genbot
from genbot.playground import EchoBot, run_playground
from genbot.testing import DiscordServer, run_bot
from terminal import terminal


def test_scripted_chat_with_the_echo_bot() -> None:
    out = io.StringIO()
    script = "hello\n\n!not for the bot\n/ping\nhow are you\n/reset\n/nosuchcommand\n"
    assert run_playground(stdin=io.StringIO(script), stdout=out, user_name="tester") == 0
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["tester: hello", "genbot: echo: hello", "tester: !not for the bot"]
    assert lines[3] == "tester: /ping" and lines[4].startswith("genbot: Pong!")
    assert lines[5:] == [
        "tester: how are you",
        "genbot: echo: how are you",
        "tester: /reset",
        "genbot: \u2014 context reset \u2014",
        "tester: /nosuchcommand",
        "genbot: echo: /nosuchcommand",
    ]


async def test_echo_bot_answers_messages_that_arrive_while_it_answers() -> None:
    async with DiscordServer() as server:
        user = server.create_user("you")
        dm = server.create_dm(user)
        post = ("POST", "/channels/{channel_id}/messages")
        async with run_bot(EchoBot(guild_ready_timeout=0.05), server) as bot:
            server.rate_limit(*post, retry_after=1.0)  # holds the first echo back a while
            await server.send_message(dm, user, "first")
            await server.wait_for(lambda: server.request_count(*post) == 1)
            for text in ("second", "third"):
                seen = asyncio.ensure_future(
                    bot.wait_for("message", check=lambda m, text=text: m.content == text, timeout=5)
                )
                await server.send_message(dm, user, text)
                await seen
            await server.wait_for(lambda: len(server.bot_messages(dm)) == 3)
            await asyncio.wait_for(asyncio.gather(*bot.attending()), 5)
        assert [m["content"] for m in server.bot_messages(dm)] == [
            "echo: first",
            "echo: second",
            "echo: third",
        ]


async def test_echo_bot_echoes_a_message_deleted_before_the_echo() -> None:
    async with DiscordServer() as server:
        user = server.create_user("you")
        dm = server.create_dm(user)
        post = ("POST", "/channels/{channel_id}/messages")
        async with run_bot(EchoBot(guild_ready_timeout=0.05), server) as bot:
            server.rate_limit(*post, retry_after=0.5)
            doomed = await server.send_message(dm, user, "doomed")
            await server.wait_for(lambda: server.request_count(*post) == 1)
            await server.delete_message(dm, doomed)
            await server.wait_for(lambda: server.bot_messages(dm))
            await asyncio.wait_for(asyncio.gather(*bot.attending()), 5)
        [echo] = server.bot_messages(dm)
        assert echo["content"] == "echo: doomed" and "message_reference" not in echo


class Editor(genbot.Genbot):
    """Posts a placeholder, then edits it into the answer; refuses /shutdown to the user."""

    async def attend(self, channel: Any) -> None:
        async for msg in self.context(channel, limit=1):
            placeholder = await channel.send("thinking...")
            await placeholder.edit(content=f"answer to {msg.content}")


def test_custom_bot_final_text_is_printed_once() -> None:
    out = io.StringIO()
    assert run_playground(Editor, stdin=io.StringIO("question\n/shutdown\n"), stdout=out) == 0
    assert out.getvalue().splitlines() == [
        "you: question",
        "genbot: answer to question",
        "you: /shutdown",
        "genbot (only you can see this): Only the bot's admins can shut it down.",
    ]


def test_echo_hello_piped_into_the_module_exits_0() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "genbot.playground"],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "genbot: echo: hello" in done.stdout.splitlines()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_interactive_terminal_shows_typing_and_replies() -> None:
    with terminal([sys.executable, "-m", "genbot.playground"]) as term:  # the playground
        term.read_until(b"you> ")
        term.write(b"hi there\n")
        term.read_until(b"genbot: echo: hi there")
        assert b"(genbot is typing...)" in term.seen
        assert term.end() == 0
