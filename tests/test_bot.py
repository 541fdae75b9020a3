"""Genbot end to end: construction, which messages wake attend, errors, safe mentions, run()."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Awaitable
from typing import Any

import discord
import pytest

import genbot
from bot_world import FAST, World, send, world
from genbot.output import SAFE_MENTIONS
from genbot.testing import DiscordServer, run_bot


class Recorder(genbot.Genbot):
    """Records, as dispatch decides it, every channel that woke it; answers nothing."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.woken: list[int] = []

    def attend(self, channel: Any) -> Awaitable[None]:  # type: ignore[override]
        self.woken.append(channel.id)
        return asyncio.sleep(0)


def test_defaults_and_client_kwargs() -> None:
    bot = genbot.Genbot(activity=discord.Game("chess"))
    assert bot.intents.message_content and bot.intents.members and bot.intents.guild_messages
    assert bot.allowed_mentions is SAFE_MENTIONS
    assert bot.activity is not None and bot.activity.name == "chess"
    assert not bot.access.is_admin(1)
    custom = genbot.Genbot(
        intents=discord.Intents.none(), allowed_mentions=discord.AllowedMentions.none()
    )
    assert not custom.intents.message_content
    assert custom.allowed_mentions is not None and not custom.allowed_mentions.users


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"shutdown_timeout": -1.0}, ValueError),
        ({"shutdown_timeout": float("nan")}, ValueError),
        ({"member_ttl": 0}, ValueError),
        ({"member_ttl": float("inf")}, ValueError),
        ({"users": "123"}, TypeError),
        ({"roles": ["x"]}, ValueError),
        ({"admins": {"whitelist": [1.0]}}, TypeError),
        ({"channels": {"allow": [1]}}, ValueError),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        genbot.Genbot(**kwargs)


async def _sentinel(bot: Recorder, w: World) -> None:
    """A message that surely wakes the bot; everything sent before it has been decided."""
    dm = w.server.create_dm(w.admin)
    await send(bot, w.server, dm, w.admin, "sentinel")
    assert bot.woken[-1] == dm.id
    bot.woken.pop()


async def test_default_wake_rules() -> None:
    async with world() as w, run_bot(Recorder(**FAST), w.server) as bot:
        s, ch = w.server, w.general
        other_bot = s.create_user("otherbot", bot=True)
        s.add_member(w.guild, other_bot)
        dm = s.create_dm(w.alice)

        await send(bot, s, dm, w.alice, "hello")  # DMs wake
        assert bot.woken == [dm.id]
        await send(bot, s, dm, w.alice, "!aside")  # ignored prefix
        await send(bot, s, ch, w.alice, "chatter")  # server channel, no mention
        await send(bot, s, s.create_dm(other_bot), other_bot, "beep")  # other bots
        plain = await send(bot, s, ch, w.bob, "plain")
        await send(bot, s, ch, w.alice, "reply to bob", reply_to=plain)  # reply to a non-bot
        await _sentinel(bot, w)
        assert bot.woken == [dm.id]

        await send(bot, s, ch, w.alice, "hey bot", mentions_bot=True)
        assert bot.woken[-1] == ch.id
        done = asyncio.ensure_future(
            bot.wait_for("message", check=lambda m: m.content == "mine", timeout=5)
        )
        await bot.get_channel(ch.id).send("mine")  # the bot's own message never wakes it
        mine = await done
        await _sentinel(bot, w)
        assert bot.woken == [dm.id, ch.id]
        await send(bot, s, ch, w.bob, "a reply", reply_to=mine.id)
        assert bot.woken[-1] == ch.id and len(bot.woken) == 3


async def test_threads_wake_when_the_bot_owns_or_joined_them() -> None:
    async with world() as w:
        s = w.server
        own = s.create_thread(w.general, "bot's", owner=s.bot_user)
        joined = s.create_thread(w.general, "joined", owner=w.alice, members=[s.bot_user])
        other = s.create_thread(w.general, "other", owner=w.alice)
        async with run_bot(Recorder(**FAST), s) as bot:
            await send(bot, s, own, w.bob, "in own")
            await send(bot, s, joined, w.bob, "in joined")
            await send(bot, s, other, w.bob, "in other")
            await _sentinel(bot, w)
            assert bot.woken == [own.id, joined.id]
            await send(bot, s, other, w.bob, "in other, mentioned", mentions_bot=True)
            assert bot.woken[-1] == other.id
            update = asyncio.ensure_future(bot.wait_for("thread_join", timeout=5))
            await s.add_thread_members(other, [s.bot_user])
            await update
            await send(bot, s, other, w.bob, "in other, now joined")
            assert bot.woken == [own.id, joined.id, other.id, other.id]


async def test_access_and_options_gate_waking() -> None:
    async with world() as w:
        s = w.server
        other_bot = s.create_user("otherbot", bot=True)
        quiet = s.create_channel(w.guild, "quiet")
        bot = Recorder(
            users={"blacklist": [w.bob.id]},
            roles=[w.mods.id],
            allow_bots=True,
            channels={"whitelist": [w.general.id], "blacklist": [quiet.id]},
            ignore_prefix="//",
            **FAST,
        )
        async with run_bot(bot, s):
            await send(bot, s, s.create_dm(w.bob), w.bob, "blacklisted")
            await send(bot, s, quiet, w.mod, "blocked channel", mentions_bot=True)
            await send(bot, s, w.general, w.alice, "no role")  # roles=[mods] in servers
            await send(bot, s, s.create_dm(w.alice), w.alice, "// ignored")
            await _sentinel(bot, w)
            assert bot.woken == []
            await send(bot, s, w.general, w.mod, "listed channel, no mention")
            await send(bot, s, s.create_dm(other_bot), other_bot, "bots allowed")
            await send(bot, s, s.create_dm(w.alice), w.alice, "!no longer ignored")
            assert bot.woken == [w.general.id, s.create_dm(other_bot).id, s.create_dm(w.alice).id]
            assert bot.may_chat(
                bot.get_guild(w.guild.id).get_member(w.mod.id), bot.get_channel(w.general.id)
            )
            assert not bot.may_chat(
                bot.get_guild(w.guild.id).get_member(w.alice.id), bot.get_channel(w.general.id)
            )


class Flaky(genbot.Genbot):
    """Fails on "boom", answers anything else; records what on_error saw."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.errors: list[tuple[str, type[BaseException] | None]] = []

    async def answer(self, channel: Any) -> None:
        async for msg in self.context(channel, limit=1):
            if msg.content == "boom":
                raise RuntimeError("attend exploded")
            await channel.send(f"re: {msg.content}")

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        self.errors.append((event_method, sys.exc_info()[0]))
        await super().on_error(event_method, *args, **kwargs)


class FlakyPlain(Flaky):
    async def attend(self, channel: Any) -> None:
        await self.answer(channel)


class FlakyGated(Flaky):
    @genbot.gatekeep
    async def attend(self, channel: Any) -> None:
        await self.answer(channel)


@pytest.mark.parametrize("cls", [FlakyPlain, FlakyGated])
async def test_errors_in_attend_are_logged_and_the_channel_still_attended(
    cls: type[Flaky], caplog: pytest.LogCaptureFixture
) -> None:
    async with world() as w, run_bot(cls(**FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        with caplog.at_level(logging.ERROR, logger="discord.client"):
            await send(bot, s, dm, w.alice, "boom")
            await s.wait_for(lambda: bot.errors, timeout=5)
        assert bot.errors == [("attend", RuntimeError)]
        assert any("attend" in r.getMessage() and r.exc_info for r in caplog.records)
        await send(bot, s, dm, w.alice, "still there?")
        await s.wait_for(lambda: w.contents(dm) == ["re: still there?"], timeout=5)
        assert not bot.is_closed()


class Fragile(genbot.Genbot):
    """Its access check fails while `broken`; answers otherwise."""

    broken = True

    def may_chat(self, user: Any, channel: Any) -> bool:
        if self.broken:
            raise RuntimeError("access lookup failed")
        return super().may_chat(user, channel)

    async def attend(self, channel: Any) -> None:
        await channel.send("here")


async def test_an_error_while_deciding_to_wake_does_not_stop_the_bot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with world() as w, run_bot(Fragile(**FAST), w.server) as bot:
        dm = w.server.create_dm(w.alice)
        with caplog.at_level(logging.ERROR, logger="genbot.bot"):
            await send(bot, w.server, dm, w.alice, "one")  # on_message still sees it
        assert any(
            r.exc_info and "access lookup failed" in str(r.exc_info[1]) for r in caplog.records
        )
        bot.broken = False
        await send(bot, w.server, dm, w.alice, "two")
        await w.server.wait_for(lambda: w.contents(dm) == ["here"], timeout=5)
        assert not bot.is_closed()


class Shouter(genbot.Genbot):
    def __init__(self, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = text

    async def attend(self, channel: Any) -> None:
        await channel.send(self.text)


async def test_messages_cannot_mass_ping() -> None:
    async with world() as w:
        text = f"@everyone @here <@&{w.mods.id}> <@{w.bob.id}> look!"
        async with run_bot(Shouter(text, **FAST), w.server) as bot:
            await send(bot, w.server, w.general, w.alice, "shout", mentions_bot=True)
            await w.server.wait_for(lambda: w.server.bot_messages(w.general), timeout=5)
            [message] = w.server.bot_messages(w.general)
            assert message["mention_everyone"] is False
            assert message["mention_roles"] == []
            assert [u["id"] for u in message["mentions"]] == [str(w.bob.id)]


def test_run_returns_after_admin_shutdown() -> None:
    """`bot.run(token)` (blocking, its own event loop) returns once an admin runs /shutdown."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_server(coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    server = DiscordServer()
    on_server(server.__aenter__())
    try:
        admin = server.create_user("admin")
        dm = server.create_dm(admin)
        bot = genbot.Genbot(admins=[admin.id], **FAST)

        async def shut_down() -> dict[str, Any]:
            await server.wait_until_ready(timeout=10)
            await server.wait_for(lambda: server.commands(), timeout=10)
            interaction = await server.invoke_command(dm, admin, "shutdown")
            return await interaction.wait_response(timeout=10)

        response = asyncio.run_coroutine_threadsafe(shut_down(), loop)
        guard_fired = threading.Event()

        def guard_close() -> None:  # only so that a failing test cannot hang: it fails instead
            guard_fired.set()
            asyncio.run_coroutine_threadsafe(bot.close(), bot.loop)

        guard = threading.Timer(30, guard_close)
        guard.start()
        try:
            bot.run(server.token, log_handler=None)
        finally:
            guard.cancel()
        assert not guard_fired.is_set(), "run() returned only because the test closed the bot"
        assert response.result(5)["ephemeral"]
        assert bot.is_closed()
    finally:
        on_server(server.__aexit__(None, None, None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class Echo(genbot.Streamer):
    """A thread worker that echoes each stream's data."""

    def worker(self) -> None:
        while True:
            for stream in self.consume(minimum=1, maximum=8):
                stream.write(stream.data)
                stream.close()


class StuckOnClose(Echo):
    """Its close() hangs until `release` is set (a worker that does not stop)."""

    def __init__(self) -> None:
        self.closing = threading.Event()
        self.release = threading.Event()

    def close(self, timeout: float = 5.0) -> None:
        self.closing.set()
        self.release.wait()
        super().close(timeout)


async def _echo(streamer: genbot.Streamer, text: str) -> list[Any]:
    async with streamer.stream() as stream:
        return [out async for out in stream(text)]


async def test_each_bot_closes_only_the_streamers_it_owns() -> None:
    mine, theirs, kept = Echo(), Echo(), Echo()
    for streamer in (mine, theirs, kept):
        streamer.start_thread()
    try:
        first = genbot.Genbot(streamers=[mine], **FAST)
        second = genbot.Genbot(**FAST)
        assert second.own(theirs) is theirs and second.own(theirs) is theirs
        assert first.streamers == (mine,) and second.streamers == (theirs,)
        keeper = genbot.Genbot(streamers=[kept], close_streamers=False, **FAST)
        await first.close()
        assert not mine.running
        assert theirs.running and await _echo(theirs, "still here") == ["still here"]
        await keeper.close()
        assert kept.running and await _echo(kept, "kept") == ["kept"]
        await second.close()
        assert not theirs.running
    finally:
        for streamer in (mine, theirs, kept):
            streamer.close()


async def test_close_returns_while_an_owned_streamer_hangs_on_close() -> None:
    stuck = StuckOnClose()
    stuck.start_thread()
    try:
        bot = genbot.Genbot(streamers=[stuck], shutdown_timeout=0.05)
        await asyncio.wait_for(bot.close(), 30)
        assert stuck.closing.is_set() and stuck.running and bot.is_closed()
    finally:
        stuck.release.set()
        stuck.close()


def test_the_loop_ends_while_an_owned_streamer_hangs_on_close() -> None:
    """What ``run()`` does after ``/shutdown``: ``asyncio.run`` returns, rather than waiting for
    the hung close in its executor forever."""
    stuck = StuckOnClose()
    stuck.start_thread()

    async def main() -> None:
        await genbot.Genbot(streamers=[stuck], shutdown_timeout=0.05).close()

    runner = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    try:
        runner.start()
        runner.join(30)  # a bound, not a timing: a hang fails here instead of hanging the tests
        assert stuck.closing.is_set() and not runner.is_alive()
    finally:
        stuck.release.set()
        runner.join(30)
        stuck.close()
