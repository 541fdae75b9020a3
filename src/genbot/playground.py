"""The offline playground: chat with a bot in the terminal, with no Discord at all.

:func:`run_playground` starts the loopback server (:mod:`genbot.testing`) with a guild, its
``#general`` channel and a user, runs the bot against it, and lets you talk to the bot in a DM as
that user. Typed lines are sent as messages; ``/name [text]`` invokes the bot's slash command
``name`` (``text`` fills its first option, e.g. ``/thread my topic``). A reply's buttons show
under it (``[Stop]``, ``[Regenerate]``); ``/stop`` and ``/regenerate`` press them on the latest
reply (``/stop`` also while the reply is being written). ``/attach FILE`` attaches a file to
the next message (``attach=`` to the first one), served by the loopback server's CDN.

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
from dataclasses import dataclass
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


_Snapshot = tuple[int, tuple[tuple[str, str, tuple[str, ...]], ...]]


class _Printer:
    """Prints what changed in the bot's side of the chat since the last call."""

    def __init__(self, server: DiscordServer, channel: FakeChannel, out: TextIO) -> None:
        self.server, self.channel, self.out = server, channel, out
        self.name = server.bot_user.name
        self.shown: dict[str, str] = {}  # message id -> content printed
        self.buttons: dict[str, list[str]] = {}  # message id -> button labels printed
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
        posted = self._show_buttons() or posted
        if not live:
            self.end_line()
        elif new_typing and not posted:
            self.say(f"({self.name} is typing...)")

    def _show_buttons(self) -> bool:
        """Print the buttons of each message whose buttons changed, on a line of their own."""
        shown = False
        for message in self.server.bot_messages(self.channel):
            labels = self.server.buttons(self.channel, message)
            if labels == self.buttons.get(message["id"], []):
                continue
            self.buttons[message["id"]] = labels
            if labels:
                self.say("    " + " ".join(f"[{label}]" for label in labels))
                shown = True
        return shown

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def end_line(self) -> None:
        """End the line of the message being shown (a later edit starts a new line)."""
        if self.open is not None:
            self.write("\n")
            self.open = None

    def snapshot(self) -> _Snapshot:
        messages = self.server.bot_messages(self.channel)
        return (
            len(self.server.typing_events(self.channel)),
            tuple(
                (m["id"], m["content"], tuple(self.server.buttons(self.channel, m)))
                for m in messages
            ),
        )

    def changed_since(self, last: _Snapshot) -> bool:
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
    if line.strip() in PRESSES:
        await _press(server, bot, dm, user, PRESSES[line.strip()], printer, timeout)
        return
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


# -- buttons: /stop and /regenerate press the latest reply's (issue 8) -------------------------

#: The typed lines that press a button, and the label of the button each presses.
PRESSES = {"/stop": "Stop", "/regenerate": "Regenerate"}


def latest_button(
    server: DiscordServer, channel: FakeChannel, label: str
) -> tuple[int, str] | None:
    """(message id, custom_id) of the bot's newest message in `channel` showing a button
    labelled `label`, or ``None``."""
    for message in reversed(server.bot_messages(channel)):
        for row in message.get("components") or []:
            for button in row.get("components") or []:
                if button.get("label") == label and button.get("custom_id"):
                    return int(message["id"]), str(button["custom_id"])
    return None


async def _press(
    server: DiscordServer,
    bot: Genbot,
    dm: FakeChannel,
    user: FakeUser,
    label: str,
    printer: _Printer,
    timeout: float,
) -> None:
    """Press the latest reply's button `label` as `user`; print an ephemeral answer, and for
    Regenerate wait (bounded) until the reply shows its new text."""
    found = latest_button(server, dm, label)
    if found is None:
        printer.say(f"(no reply shows a {label} button)")
        return
    message_id, custom_id = found
    before = server.message(dm, message_id).get("edited_timestamp")
    interaction = await server.press(dm, message_id, custom_id, user)
    response = await interaction.wait_response(timeout=timeout)
    if response["ephemeral"]:
        printer.say(f"{printer.name} (only you can see this): {response['content']}")
        return
    if label == "Regenerate":
        message = server.message(dm, message_id)
        await server.wait_for(
            lambda: (
                message.get("edited_timestamp") != before
                and server.buttons(dm, message_id) == ["Regenerate"]
            ),
            timeout=timeout,
        )
    await _settle(bot, asyncio.sleep(0), timeout)


async def _stop_now(
    server: DiscordServer,
    dm: FakeChannel,
    user: FakeUser,
    printer: _Printer,
    sending: asyncio.Future[None],
    interactive: bool,
    timeout: float,
) -> None:
    """``/stop`` typed while the bot answers: press the Stop button of the reply being
    written, once it shows one (bounded; not at all if the answer ends first)."""
    if not interactive:
        printer.say(f"{user.name}: /stop")
    try:
        await server.wait_for(
            lambda: sending.done() or latest_button(server, dm, "Stop") is not None,
            timeout=timeout,
        )
    except (TimeoutError, asyncio.TimeoutError):
        pass
    found = latest_button(server, dm, "Stop")
    if found is None:
        printer.say("(no reply is being written)")
        return
    interaction = await server.press(dm, found[0], found[1], user)
    response = await interaction.wait_response(timeout=timeout)
    if response["ephemeral"]:
        printer.say(f"{printer.name} (only you can see this): {response['content']}")


class _Lines:
    """The input lines, read one ahead in a thread, so that a line typed while the bot
    answers (``/stop``) is seen at once."""

    def __init__(self, stdin: TextIO) -> None:
        self.stdin = stdin
        self.ended = False
        self._next: asyncio.Future[str] | None = None

    def pending(self) -> asyncio.Future[str]:
        """The next line, being read."""
        if self._next is None:
            self._next = asyncio.ensure_future(asyncio.to_thread(self.stdin.readline))
        return self._next

    async def take(self) -> str:
        """The next line (``""`` at the end of the input)."""
        line = await self.pending()
        self._next = None
        self.ended = self.ended or not line
        return line


async def _while_sending(
    sending: asyncio.Future[None],
    lines: _Lines,
    stop: Callable[[], Awaitable[None]],
    held: list[str],
) -> None:
    """Read lines while a line is being answered, keeping them in `held` for later; a
    ``/stop`` right after the line being answered presses Stop at once."""
    stopped = False
    while not sending.done():
        if not stopped and held and held[0].strip() == "/stop":
            held.pop(0)
            stopped = True
            await stop()
            continue
        if lines.ended:
            await asyncio.wait([sending])
            break
        reading = lines.pending()
        both: list[asyncio.Future[Any]] = [sending, reading]
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            break
        line = await lines.take()
        if line:
            held.append(line)
    sending.result()


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


@dataclass
class _Talk:
    """Who talks where in the playground, and how long a reply may take."""

    server: DiscordServer
    bot: Genbot
    dm: FakeChannel
    user: FakeUser
    printer: _Printer
    interactive: bool
    reply_timeout: float


async def _converse(
    talk: _Talk, runner: asyncio.Task[None], lines: _Lines, files: list[Upload], out: TextIO
) -> None:
    """Send the typed lines one by one, each once the previous one is answered, until the
    input ends or the bot stops."""
    server, dm, user, printer = talk.server, talk.dm, talk.user, talk.printer
    held: list[str] = []  # lines read while the bot answered
    while not runner.done():
        if not held:
            if lines.ended:
                break
            if talk.interactive:
                out.write(f"{user.name}> ")
                out.flush()
            held.append(await lines.take())
        line = held.pop(0).rstrip("\n")
        if not line.strip():
            continue
        if not talk.interactive:
            printer.say(f"{user.name}: {line}")
        if _attach_line(line, files, printer):  # media: /attach FILE
            continue
        sending = asyncio.ensure_future(
            _send_line(server, talk.bot, dm, user, line, printer, talk.reply_timeout, files)
        )
        stop = functools.partial(
            _stop_now, server, dm, user, printer, sending, talk.interactive, talk.reply_timeout
        )
        await _while_sending(sending, lines, stop, held)
        printer.flush(live=talk.interactive)
        printer.end_line()


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
            await _converse(
                _Talk(server, bot, dm, user, printer, interactive, reply_timeout),
                runner,
                _Lines(stdin),
                files,
                out,
            )
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
