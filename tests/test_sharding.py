"""Sharded bots: Genbot(shard_count=, shard_ids=) as discord.py's AutoShardedClient against the
loopback server's shards, per-shard cache invalidation, command sync only on shard 0, /ping
per shard, the Redis identify lock, and two bot processes splitting the shards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import genbot
from genbot.bot import ShardedGenbot
from genbot.chatbot import ChatBot
from genbot.cluster import (
    RedisIdentifyLock,
    check_shards,
    identify_in_turn,
    shard_of,
    syncs_commands,
)
from genbot.settings import Settings
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot
from genbot.testing.launch import command
from sharded_echo_bot import EchoBot

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
SYNC = "/applications/{application_id}/commands"


# -- pure decisions ----------------------------------------------------------------------------


def test_shard_settings_are_checked() -> None:
    assert check_shards(None, None) is None
    assert check_shards(3, None) is None
    assert check_shards(3, [2, 0]) == [0, 2]
    for count, ids, problem in [
        (0, None, "at least 1"),
        (None, [0], "needs shard_count"),
        (2, [2], "in 0..1"),
        (2, [-1], "in 0..1"),
        (2, [], "at least one"),
        (3, [1, 1], "repeats"),
    ]:
        with pytest.raises(ValueError, match=problem):
            check_shards(count, ids)
    with pytest.raises(ValueError, match="needs shard_count"):
        genbot.Genbot(shard_ids=[0])


def test_routing_and_command_sync_decisions() -> None:
    assert shard_of(None, 4) == 0
    assert [shard_of(k << 22, 3) for k in range(6)] == [0, 1, 2, 0, 1, 2]
    assert syncs_commands(None) and syncs_commands([0, 2])
    assert not syncs_commands([1, 2])


def test_asking_for_shards_makes_any_subclass_auto_sharded() -> None:
    plain = EchoBot()
    assert not isinstance(plain, ShardedGenbot)
    bot = EchoBot(shard_count=3, shard_ids=[2])
    assert isinstance(bot, EchoBot) and isinstance(bot, ShardedGenbot)
    assert (bot.shard_count, bot.shard_ids) == (3, [2])
    assert type(EchoBot(shard_count=2)) is type(bot)  # one class per subclass
    assert type(genbot.Genbot(shard_count=2)) is ShardedGenbot


def test_the_settings_of_genbot_run_make_a_sharded_bot() -> None:
    from genbot.chatbot import shard_options
    from genbot.cli import _chat_bot

    assert shard_options(Settings(backend="openai")) == {}
    url = "redis://127.0.0.1:1/0"
    overrides = {"backend": "openai", "shard_count": "3", "shard_ids": "2,0", "cluster_redis": url}
    settings = Settings.load(None, overrides=overrides)
    assert shard_options(settings) == {"shard_count": 3, "shard_ids": [2, 0], "cluster_redis": url}
    bot = _chat_bot(settings)
    assert isinstance(bot, ShardedGenbot) and isinstance(bot, ChatBot)
    assert (bot.shard_count, bot.shard_ids) == (3, [0, 2])
    assert bot.identify_lock is not None and bot.identify_lock.url == url
    every = _chat_bot(Settings.load(None, overrides={"backend": "openai", "shard_count": "2"}))
    assert isinstance(every, ShardedGenbot) and every.shard_ids is None


def test_a_chat_bot_made_in_python_follows_its_sharding_settings() -> None:
    settings = Settings.load(None, overrides={"backend": "openai", "shard_count": "2"})
    bot = ChatBot(settings)
    assert isinstance(bot, ShardedGenbot) and isinstance(bot, ChatBot)
    assert bot.shard_count == 2
    one = ChatBot(settings, shard_ids=[1])  # an argument wins over the settings
    assert (one.shard_count, one.shard_ids) == (2, [1])
    assert not isinstance(ChatBot(Settings(backend="openai")), ShardedGenbot)


# -- in one process ----------------------------------------------------------------------------


async def echoed(server: DiscordServer, channel: FakeChannel, user: FakeUser, text: str) -> None:
    """Post (mentioning the bot, which wakes it in a server) and wait for the one reply."""
    sent = await server.send_message(channel, user, text, mentions_bot=channel.guild_id is not None)

    def replies() -> list[dict[str, Any]]:
        return [
            m
            for m in server.bot_messages(channel)
            if m.get("message_reference", {}).get("message_id") == sent["id"]
        ]

    await server.wait_for(lambda: replies(), timeout=10)
    assert [m["content"] for m in replies()] == [f"echo: {sent['content']}"]


def sharded_world(server: DiscordServer) -> tuple[list[FakeChannel], FakeUser]:
    """A guild with a channel on every shard, a user in all of them, and her DM."""
    alice = server.create_user("alice")
    channels = []
    for k in range(server.shard_count):
        guild = server.create_guild(f"g{k}", shard=k)
        server.add_member(guild, alice)
        channels.append(server.create_channel(guild, "general"))
    return [*channels, server.create_dm(alice)], alice


async def test_one_process_runs_every_shard_and_a_shards_reconnect_clears_only_its_cache() -> None:
    async with DiscordServer(shard_count=2, heartbeat_interval=2.0) as server:
        (on0, on1, dm), alice = sharded_world(server)
        server.delay_heartbeat_acks((1, 2), 1.0)  # shard 1 is on a slow link
        bot = EchoBot(shard_count=2)
        async with run_bot(bot, server, timeout=20):
            assert sorted(bot.shards) == [0, 1]
            assert server.ready_shards() == [(0, 2), (1, 2)]
            assert server.refused_identifies == []  # discord.py spaced its own two IDENTIFYs
            assert {c["name"] for c in server.commands()} >= {"ping", "reset", "shutdown"}
            # /ping tells the latency of the shard it came on (not the average over shards).
            await server.wait_for(lambda: server.heartbeat_acks((1, 2)) >= 1, timeout=15)
            pinged = await server.invoke_command(on1, alice, "ping")
            answer = (await pinged.wait_response())["content"]
            assert answer.startswith("Pong! (") and float(answer[7:].split()[0]) >= 1000, answer
            for channel in (on0, on1, dm):
                await echoed(server, channel, alice, f"hi {channel.name or 'dm'}")
            cached = {c.id: {m.id for m in bot.message_cache.cached(c.id)} for c in (on0, on1, dm)}
            assert all(cached.values()), cached
            # Shard 1 loses its session: only its guild's channel is forgotten.
            reconnected = asyncio.ensure_future(
                bot.wait_for("shard_connect", check=lambda shard_id: shard_id == 1, timeout=20)
            )
            await server.drop_connections(resumable=False, shard=(1, 2))
            await reconnected
            assert bot.message_cache.cached(on1.id) == []
            for kept in (on0, dm):  # (the echo's own MESSAGE_CREATE may have come meanwhile)
                assert cached[kept.id] <= {m.id for m in bot.message_cache.cached(kept.id)}
            await echoed(server, on1, alice, "still there?")


async def test_only_the_process_holding_shard_0_syncs_commands_and_ping_is_per_shard() -> None:
    # Two buckets: both processes' first IDENTIFY goes through at once.
    async with DiscordServer(shard_count=2, max_concurrency=2) as server:
        (on0, on1, dm), alice = sharded_world(server)
        second = EchoBot(shard_count=2, shard_ids=[1])
        async with run_bot(second, server):
            assert server.commands() == []  # shard 1's process does not sync
            first = EchoBot(shard_count=2, shard_ids=[0])
            async with run_bot(first, server):
                assert {c["name"] for c in server.commands()} >= {"ping", "shutdown"}
                for channel, bot, shard in ((on0, first, 0), (on1, second, 1), (dm, first, 0)):
                    shard_info = bot.get_shard(shard)
                    assert shard_info is not None
                    assert bot.latency_of(server.channel(channel).guild_id) == shard_info.latency
                    pinged = await server.invoke_command(channel, alice, "ping")
                    assert (await pinged.wait_response())["content"].startswith("Pong! (")
                assert first.get_shard(1) is None and second.get_shard(0) is None


# -- the Redis identify lock -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A real redis-server on a free loopback port, without persistence."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (scripts/system-deps installs it)")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        while b"Ready to accept connections" not in await asyncio.wait_for(
            process.stdout.readline(), 10
        ):
            pass
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def test_the_lock_spaces_identifies_of_a_bucket(redis_url: str) -> None:
    one, two = RedisIdentifyLock(redis_url), RedisIdentifyLock(redis_url)
    try:
        await one.acquire("token", 0)
        await two.acquire("token", 1)  # another bucket: at once
        await two.acquire("other bot", 0)  # another bot: at once
        waited = asyncio.ensure_future(two.acquire("token", 0))
        done, _ = await asyncio.wait({waited}, timeout=1)
        assert not done, "a second lease of bucket 0 within the window"
        await asyncio.wait_for(waited, 10)
    finally:
        await one.close()
        await two.close()


async def test_an_unreachable_redis_falls_back_to_discord_py_spacing() -> None:
    lock = RedisIdentifyLock(f"redis://127.0.0.1:{free_port()}/0")
    fell_back = asyncio.Event()

    async def concurrency() -> int:  # /gateway/bot failing too: counted as 1 bucket
        raise RuntimeError("no gateway")

    async def fallback() -> None:
        fell_back.set()

    try:
        await identify_in_turn(lock, "token", 0, concurrency, fallback)
    finally:
        await lock.close()
    assert fell_back.is_set()


async def test_two_bots_with_the_lock_start_without_a_refused_identify(redis_url: str) -> None:
    async with DiscordServer(shard_count=2) as server:
        (on0, on1, dm), alice = sharded_world(server)
        first = EchoBot(shard_count=2, shard_ids=[0], cluster_redis=redis_url)
        second = EchoBot(shard_count=2, shard_ids=[1], cluster_redis=redis_url)
        async with run_bot(first, server, timeout=20), run_bot(second, server, timeout=20):
            assert server.refused_identifies == []
            assert server.ready_shards() == [(0, 2), (1, 2)]
            for channel in (on0, on1, dm):
                await echoed(server, channel, alice, "hello")


def test_the_launcher_refuses_what_is_not_a_loopback_server() -> None:
    from genbot.testing import launch

    with pytest.raises(SystemExit, match="usage"):
        launch.main([], {})
    with pytest.raises(SystemExit, match="set LOOPBACK_DISCORD_API and LOOPBACK_DISCORD_GATEWAY"):
        launch.main(["genbot"], {})
    remote = {
        "LOOPBACK_DISCORD_API": "https://discord.com/api/v10",
        "LOOPBACK_DISCORD_GATEWAY": "ws://127.0.0.1:1/gateway",
    }
    with pytest.raises(SystemExit, match=r"discord\.com/api/v10 is not a loopback address"):
        launch.main(["genbot"], remote)


# -- bot processes -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bot_process(server: DiscordServer, *args: str) -> AsyncIterator[None]:
    """`sharded_echo_bot` as a process of its own, pointed at `server`; stopped with SIGINT."""
    env = {**os.environ, **server.env}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(TESTS), env.get("PYTHONPATH", "")])
    process = await asyncio.create_subprocess_exec(
        *command("sharded_echo_bot", *args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(process.communicate(), 20)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert b"Traceback" not in err, err.decode()[-3000:]


async def chat(server: DiscordServer, channel: FakeChannel, user: FakeUser, turns: int) -> None:
    for turn in range(turns):
        await echoed(server, channel, user, f"{user.name} says {turn}")


async def two_processes_chat(*redis: str) -> None:
    """Processes with shards [0, 1] and [2] of 3 (with the Redis lock when given); a user in a
    guild on each shard and three in DMs chat at once; every message gets exactly one reply."""
    async with DiscordServer(shard_count=3) as server:
        users = [server.create_user(f"user{k}") for k in range(6)]
        places: list[tuple[FakeChannel, FakeUser]] = []
        for k, user in enumerate(users[:3]):  # a guild per shard, a user chatting in each
            guild = server.create_guild(f"g{k}", shard=k)
            server.add_member(guild, user)
            places.append((server.create_channel(guild, "general"), user))
        places += [(server.create_dm(user), user) for user in users[3:]]  # and DMs
        async with (
            bot_process(server, "3", "0,1", *redis),
            bot_process(server, "3", "2", *redis),
        ):
            all_shards = [(0, 3), (1, 3), (2, 3)]
            await server.wait_for(lambda: server.ready_shards() == all_shards, timeout=40)
            if redis:  # (without it, whether one is refused depends on when each starts)
                assert server.refused_identifies == []
            await server.wait_for(lambda: server.commands(), timeout=10)
            await asyncio.gather(*(chat(server, c, u, 3) for c, u in places))
            for channel, user in places:
                texts = [m["content"] for m in server.bot_messages(channel)]
                author = str(user.id)
                asked = [
                    m["content"] for m in server.messages(channel) if m["author"]["id"] == author
                ]
                assert texts == [f"echo: {text}" for text in asked] and len(asked) == 3
            # Synced once, by the process holding shard 0.
            assert server.request_count("PUT", SYNC) == 1


async def test_two_bot_processes_split_the_shards_and_answer_every_message_once() -> None:
    await two_processes_chat()


async def test_two_bot_processes_with_the_redis_lock_have_no_identify_refused(
    redis_url: str,
) -> None:
    await two_processes_chat(redis_url)
