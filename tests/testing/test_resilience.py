"""Rate limits, dropped connections, RESUME, and the gateway's wire format."""

from __future__ import annotations

import asyncio
import json
import zlib

import aiohttp
import discord
import pytest
from loopback_world import Recorder, World

from genbot.testing import DiscordServer, run_bot

EDIT = "/channels/{channel_id}/messages/{message_id}"


async def test_rate_limited_requests_are_retried_and_delivered(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        channel = bot.get_channel(world.channel.id)
        message = await channel.send("draft")
        server.rate_limit("PATCH", EDIT, times=2, retry_after=0.05)
        await message.edit(content="final")
        assert server.message(world.channel, message.id)["content"] == "final"
        assert server.request_count("PATCH", EDIT) == 3


async def test_rate_limit_answer_looks_like_discords(world: World) -> None:
    server = world.server
    server.rate_limit("GET", "/users/@me", times=1, retry_after=0.5)
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bot {server.token}"}
        async with session.get(f"{server.api_url}/users/@me", headers=headers) as limited:
            assert limited.status == 429
            assert limited.headers["Content-Type"] == "application/json"
            assert limited.headers["Via"] == "1.1 google"
            assert limited.headers["X-RateLimit-Remaining"] == "0"
            assert await limited.json() == {
                "message": "You are being rate limited.",
                "retry_after": 0.5,
                "global": False,
            }
        async with session.get(f"{server.api_url}/users/@me", headers=headers) as ok:
            assert ok.status == 200
            assert ok.headers["Content-Type"] == "application/json"
            assert int(ok.headers["X-RateLimit-Limit"]) > int(ok.headers["X-RateLimit-Remaining"])
            assert float(ok.headers["X-RateLimit-Reset-After"]) > 0
            assert ok.headers["X-RateLimit-Bucket"]
        async with session.get(f"{server.api_url}/users/@me") as anonymous:
            assert anonymous.status == 401


async def test_dropped_connection_resumes_and_replays_missed_events(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        resumed = asyncio.ensure_future(bot.wait_for("resumed", timeout=5))
        await server.drop_connections()
        # Posted while the bot is away: it gets them on RESUME, in order.
        await server.send_message(world.channel, world.alice, "while away 1")
        await server.send_message(world.channel, world.alice, "while away 2")
        await resumed
        assert server.resumes == 1
        await bot.received_at_least(2)
        assert bot.contents() == ["while away 1", "while away 2"]
        sent = await bot.get_channel(world.channel.id).send("back")
        assert server.message(world.channel, sent.id)["content"] == "back"


class QuickReidentify(Recorder):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before each re-IDENTIFY; a documented hook, skipped here."""


async def test_invalidated_session_identifies_again(world: World) -> None:
    server = world.server
    bot = QuickReidentify()
    async with run_bot(bot, server):
        first_session = bot.ws.session_id
        ready_again = asyncio.ensure_future(bot.wait_for("ready", timeout=30))
        await server.drop_connections(resumable=False)
        await ready_again
        assert bot.ws.session_id != first_session and server.resumes == 0
        incoming = asyncio.ensure_future(bot.next_message())
        await server.send_message(world.channel, world.alice, "after re-identify")
        assert (await incoming).content == "after re-identify"


async def _raw_identify(server: DiscordServer, query: str) -> list[dict]:
    """Connect without discord.py, IDENTIFY, and return HELLO, READY and GUILD_CREATE."""
    payloads: list[dict] = []
    inflate = zlib.decompressobj()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.gateway_url}?v=10&encoding=json{query}") as ws:
            await ws.send_json(
                {"op": 2, "d": {"token": server.token, "intents": 513, "properties": {}}}
            )
            while len(payloads) < 3:
                message = await ws.receive(timeout=5)
                if message.type is aiohttp.WSMsgType.BINARY:
                    assert "zlib" in query
                    payloads.append(json.loads(inflate.decompress(message.data)))
                else:
                    assert message.type is aiohttp.WSMsgType.TEXT and "zlib" not in query
                    payloads.append(json.loads(message.data))
    return payloads


@pytest.mark.parametrize("query", ["", "&compress=zlib-stream"])
async def test_gateway_speaks_plain_json_and_zlib_stream(world: World, query: str) -> None:
    hello, ready, guild = await _raw_identify(world.server, query)
    assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
    assert (ready["t"], ready["s"]) == ("READY", 1)
    assert ready["d"]["resume_gateway_url"] == world.server.gateway_url
    assert ready["d"]["application"]["id"] == str(world.server.application_id)
    assert (guild["t"], guild["s"], guild["d"]["id"]) == ("GUILD_CREATE", 2, str(world.guild.id))


async def test_wrong_token_fails_login(world: World) -> None:
    bot = Recorder()
    with pytest.raises(discord.LoginFailure):
        await bot.login("not the token")
    await bot.close()


async def test_server_restores_discord_endpoints() -> None:
    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordServer() as server:
        assert discord.http.Route.BASE == server.api_url
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == server.gateway_url
    assert (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == (
        base,
        gateway,
    )


async def test_a_clean_close_ends_the_session_and_a_second_bot_can_log_in(world: World) -> None:
    server = world.server
    async with run_bot(Recorder(), server):
        assert server.connected == 1
    await server.wait_for(lambda: server.connected == 0)
    with pytest.raises(TimeoutError):  # no live session is left
        await server.wait_until_ready(timeout=0.05)
    second = Recorder()
    async with run_bot(second, server):
        await server.wait_until_ready()
        incoming = asyncio.ensure_future(second.next_message())
        await server.send_message(world.channel, world.bob, "to the second bot")
        assert (await incoming).content == "to the second bot"


async def test_privileged_intents_must_be_enabled_for_the_application() -> None:
    async with DiscordServer(privileged_intents=False) as server:
        with pytest.raises(discord.PrivilegedIntentsRequired):  # run_bot re-raises the failure
            async with run_bot(Recorder(), server):  # asks for message_content and members
                pytest.fail("a bot that cannot identify is never ready")
        plain = Recorder(intents=discord.Intents.default())
        async with run_bot(plain, server):
            assert plain.is_ready()


async def test_announced_limits_are_enforced_and_discord_py_keeps_to_them() -> None:
    async with DiscordServer(ratelimit_limit=2, ratelimit_window=5.0) as server:
        headers = {"Authorization": f"Bot {server.token}"}
        async with aiohttp.ClientSession() as http:
            statuses = []
            for _ in range(3):
                async with http.get(f"{server.api_url}/users/@me", headers=headers) as response:
                    statuses.append(response.status)
            assert statuses == [200, 200, 429]
    async with DiscordServer(ratelimit_limit=2, ratelimit_window=0.2) as server:
        guild = server.create_guild()
        channel = server.create_channel(guild, "busy")
        bot = Recorder()
        async with run_bot(bot, server):
            sent = [await bot.get_channel(channel.id).send(f"n{i}") for i in range(5)]
        assert [m["content"] for m in server.bot_messages(channel)] == [m.content for m in sent]
        # discord.py waited for each window instead of running into 429s.
        assert server.request_count("POST", "/channels/{channel_id}/messages") == 5
