"""The offline playground: chat with a bot in the terminal, with no Discord at all.

:func:`run_playground` starts the loopback server (:mod:`genbot.testing`) with a guild, its
``#general`` channel and a user, runs the bot against it, and lets you talk to the bot in a DM as
that user. Typed lines are sent as messages; ``/name [text]`` invokes the bot's slash command
``name`` (``text`` fills its first option, e.g. ``/thread my topic``); ``/attach FILE`` attaches a
file to the next message (``attach=`` to the first one), served by the loopback server's CDN.

- On a terminal it is a live chat: the bot's messages, edits and typing show as they happen.
- Otherwise (``echo hello | genbot playground``) it sends each input line, waits until the bot
  has finished answering it (at most ``reply_timeout`` seconds), prints the final state of what
  the bot posted, and exits at the end of input.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import mimetypes
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import discord

from genbot.bot import Genbot
from genbot.gatekeeping import gatekeep
from genbot.testing import DiscordServer, FakeChannel, FakeUser
from genbot.testing.models import Upload

__all__ = ["EchoBot", "playground", "read_attachments", "run_playground"]

_log = logging.getLogger(__name__)


class EchoBot(Genbot):
    """The built-in bot: answers every message with ``echo: <its text>``, as a reply to it."""

    @gatekeep
    async def attend(self, channel: discord.abc.Messageable) -> None:
        assert self.user is not None
        # Not "everything since the bot last spoke": messages that arrived while it was
        # answering come before that answer. The echoes reply to what they echo.
        answered: set[int] = set()
        unanswered: list[discord.Message] = []
        async for msg in (ctx := self.context(channel, limit=16)):
            if msg.author.id == self.user.id:
                if msg.reference is not None and msg.reference.message_id is not None:
                    answered.add(msg.reference.message_id)
            elif msg.id in answered:
                break
            else:
                unanswered.append(msg)
        for msg in reversed(unanswered):
            async with channel.typing():
                reference = msg.to_reference(fail_if_not_exists=False)  # it may be deleted
                await channel.send(f"echo: {msg.content}", reference=reference)
        if not await ctx.current():
            self.attend.force(channel)


class _Printer:
    """Prints what changed in the bot's side of the chat since the last call."""

    def __init__(self, server: DiscordServer, channel: FakeChannel, out: TextIO) -> None:
        self.server, self.channel, self.out = server, channel, out
        self.name = server.bot_user.name
        self.shown: dict[str, str] = {}  # message id -> content printed
        self.typing = len(server.typing_events(channel))
        self.open: str | None = None  # id of the message whose line is still open

    def say(self, line: str) -> None:
        self.end_line()
        self.write(line + "\n")

    def flush(self, *, live: bool) -> None:
        """Print what changed. ``live`` (terminal mode): typing shows, and an edit that only
        extends the text (a streamed reply) prints just the new text on the same line."""
        typing = len(self.server.typing_events(self.channel))
        new_typing, self.typing = typing > self.typing, typing
        posted = False
        for message in self.server.bot_messages(self.channel):
            before, content = self.shown.get(message["id"]), message["content"]
            if before == content:
                continue
            if (
                live
                and before is not None
                and self.open == message["id"]
                and content.startswith(before)
            ):
                self.write(content[len(before) :])
            else:
                self.end_line()
                edited = " (edited)" if before is not None else ""
                self.write(f"{self.name}{edited}: {content}")
                self.open = message["id"]
            self.shown[message["id"]] = content
            posted = True
        if not live:
            self.end_line()
        elif new_typing and not posted:
            self.say(f"({self.name} is typing...)")

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def end_line(self) -> None:
        """End the line of the message being shown (a later edit starts a new line)."""
        if self.open is not None:
            self.write("\n")
            self.open = None

    def snapshot(self) -> tuple[int, tuple[tuple[str, str], ...]]:
        messages = self.server.bot_messages(self.channel)
        return (
            len(self.server.typing_events(self.channel)),
            tuple((m["id"], m["content"]) for m in messages),
        )

    def changed_since(self, last: tuple[int, tuple[tuple[str, str], ...]]) -> bool:
        return self.snapshot() != last

    async def follow(self) -> None:
        """Print live (terminal mode) until cancelled."""
        while True:
            changed = functools.partial(self.changed_since, self.snapshot())
            try:
                await self.server.wait_for(changed, timeout=3600)
            except (TimeoutError, asyncio.TimeoutError):  # distinct classes on Python 3.10
                continue
            self.flush(live=True)


async def _settle(bot: Genbot, processed: Awaitable[Any], timeout: float) -> None:
    """Wait until the bot has seen the input and every attend it started is over."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.wait_for(processed, timeout)
    while tasks := bot.attending():
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"the bot was still answering after {timeout} s")
        await asyncio.wait(tasks, timeout=remaining)


async def _send_line(
    server: DiscordServer,
    bot: Genbot,
    dm: FakeChannel,
    user: FakeUser,
    line: str,
    printer: _Printer,
    timeout: float,
    files: list[Upload],
) -> None:
    name, _, text = line[1:].partition(" ")
    commands = server.commands() if line.startswith("/") else []
    command = next((c for c in commands if c["name"] == name), None)
    if command is not None:
        options = command.get("options") or []
        values = {options[0]["name"]: text} if options and text else {}
        interaction = await server.invoke_command(dm, user, name, values)
        response = await interaction.wait_response(timeout=timeout)
        if response["ephemeral"]:
            printer.say(f"{printer.name} (only you can see this): {response['content']}")
        await _settle(bot, asyncio.sleep(0), timeout)
        return
    processed = asyncio.ensure_future(
        bot.wait_for("message", check=lambda m: m.author.id == user.id and m.channel.id == dm.id)
    )
    await _post(server, dm, user, line, files)
    await _settle(bot, processed, timeout)


# -- attachments (--attach FILE): the media part of issue 8 ------------------------------------


def read_attachments(paths: Iterable[str | os.PathLike[str]]) -> list[Upload]:
    """The files to attach to the next message, read now, with their content types guessed
    from their names (``application/octet-stream`` when unknown).

    Parameters
    ----------
    paths:
        The files.

    Raises
    ------
    ValueError
        A file that cannot be read (it names the file and why).
    """
    uploads = []
    for number, path in enumerate(paths):
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise ValueError(f"cannot attach {path}: {error.strerror or error}") from error
        name = Path(path).name
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        uploads.append(Upload(number, name, content_type, data))
    return uploads


async def _post(
    server: DiscordServer, dm: FakeChannel, user: FakeUser, line: str, files: list[Upload]
) -> None:
    """Send `line` as `user`, with `files` attached (served by the loopback CDN); empties
    `files`, which go with this message only."""
    if not files:
        await server.send_message(dm, user, line)
        return
    attachments = [server.state.store_file(dm, upload, upload.filename) for upload in files]
    files.clear()
    message = server.create_message(dm, user, {"content": line}, attachments=attachments)
    await server.dispatch_message("MESSAGE_CREATE", message)


def _attach_line(line: str, files: list[Upload], printer: _Printer) -> bool:
    """``/attach FILE`` typed: queue the file for the next message. Whether it was that."""
    if not line.startswith("/attach "):
        return False
    try:
        files.extend(read_attachments([line[len("/attach ") :].strip()]))
    except ValueError as error:
        printer.say(f"({error})")
    else:
        printer.say(f"(attached {files[-1].filename} to your next message)")
    return True


# -- end of the attachments part -----------------------------------------------------------------


async def playground(
    bot_factory: Callable[[], Genbot] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    user_name: str = "you",
    reply_timeout: float = 120.0,
    attach: Iterable[str | os.PathLike[str]] = (),
) -> int:
    """The coroutine behind :func:`run_playground`."""
    files = read_attachments(attach)  # media: sent with the first message
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    interactive = stdin.isatty()
    async with DiscordServer() as server:
        user = server.create_user(user_name)
        guild = server.create_guild("Playground", owner=user)
        server.create_channel(guild, "general")
        dm = server.create_dm(user)
        bot = (bot_factory or EchoBot)()
        runner = asyncio.create_task(bot.start(server.token), name="genbot playground bot")
        printer = _Printer(server, dm, out)
        follower = asyncio.create_task(printer.follow()) if interactive else None
        try:
            ready = asyncio.create_task(server.wait_until_ready(timeout=30))
            await asyncio.wait({ready, runner}, return_when=asyncio.FIRST_COMPLETED)
            if runner.done():
                ready.cancel()
                runner.result()
                return 1
            ready.result()
            if interactive:
                printer.say(
                    f"Chatting with {printer.name} in a DM as {user_name}. "
                    "Ctrl-D quits; /reset, /ping and the bot's other commands work."
                )
            while not runner.done():
                if interactive:
                    out.write(f"{user_name}> ")
                    out.flush()
                line = await asyncio.to_thread(stdin.readline)
                if not line:
                    break
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if not interactive:
                    printer.say(f"{user_name}: {line}")
                if _attach_line(line, files, printer):  # media: /attach FILE
                    continue
                await _send_line(server, bot, dm, user, line, printer, reply_timeout, files)
                printer.flush(live=interactive)
                printer.end_line()
        finally:
            if follower is not None:
                follower.cancel()
            await bot.close()
            await asyncio.wait_for(runner, reply_timeout)
        printer.flush(live=False)
    return 0


def run_playground(
    bot_factory: Callable[[], Genbot] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    user_name: str = "you",
    reply_timeout: float = 120.0,
    attach: Iterable[str | os.PathLike[str]] = (),
) -> int:
    """Chat with ``bot_factory()`` (default: :class:`EchoBot`) offline; returns the exit status.

    ``bot_factory`` is any zero-argument callable returning a :class:`Genbot`, e.g. the class.
    ``attach``: files sent with the first message (``/attach FILE`` typed attaches one to the
    next message).

    Raises
    ------
    ValueError
        A file of ``attach`` cannot be read.
    """
    return asyncio.run(
        playground(
            bot_factory,
            stdin=stdin,
            stdout=stdout,
            user_name=user_name,
            reply_timeout=reply_timeout,
            attach=attach,
        )
    )


if __name__ == "__main__":
    raise SystemExit(run_playground())
