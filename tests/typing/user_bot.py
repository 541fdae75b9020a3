"""A user's bot, as a type checker sees it: checked by tests/test_typing.py with mypy --strict.

Not collected by pytest (it is not named test_*), never run. A trailing comment "E: code"
marks a line where mypy must report an error with that code, "R: type" a ``reveal_type`` that
must show that type (a comment alone on its line is about the next line); any other error
fails the test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

import genbot

if TYPE_CHECKING:
    from typing_extensions import reveal_type


class MyBot(genbot.Genbot):
    @genbot.gatekeep
    async def attend(self, channel: discord.abc.Messageable) -> None:
        handle = self.attend(channel)
        reveal_type(handle)  # R: genbot.gatekeeping.GateHandle
        reveal_type(await handle)  # R: bool
        reveal_type(self.attend.force(channel))  # R: genbot.gatekeeping.GateHandle
        await self.attend.force(channel=channel)
        self.attend("general")  # E: arg-type
        self.attend.force(channel, 2)  # E: call-arg
        self.attend(channel, force=True)  # E: call-arg
        self.attend.forse(channel)  # E: attr-defined
        handle.wait()  # E: unused-coroutine


class PlainBot(genbot.Genbot):
    async def attend(self, channel: discord.abc.Messageable) -> None:
        await channel.send("hi")


async def make() -> None:
    bot = genbot.Genbot()
    reveal_type(bot)  # R: genbot.bot.Genbot
    # On the class: the Gatekeeper, self included; on an instance: bound, without self.
    # R: genbot.gatekeeping.Gatekeeper[[self: user_bot.MyBot, channel: discord.abc.Messageable]]
    reveal_type(MyBot.attend)
    # R: genbot.gatekeeping.BoundGatekeeper[[channel: discord.abc.Messageable]]
    reveal_type(MyBot().attend)
    await PlainBot().attend(1)  # E: arg-type


@genbot.gatekeep
async def refresh(channel_id: int, *, full: bool = False) -> None:
    pass


async def module_level() -> None:
    reveal_type(refresh(1))  # R: genbot.gatekeeping.GateHandle
    await refresh.force(1, full=True).wait()
    refresh("1")  # E: arg-type
    refresh(1, True)  # E: call-arg
