"""The loopback server shards like Discord: /gateway/bot, IDENTIFY's shard, per-shard READY and
routing, the identify rate limit per bucket, and guilds placed on a chosen shard."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from loopback_world import all_intents

from genbot.testing import DiscordServer, FakeGuild, run_bot


class ShardRecorder(discord.AutoShardedClient):
    """Records the messages and interactions each shard of this client gets."""

    def __init__(self, shard_ids: list[int], shard_count: int) -> None:
        super().__init__(
            intents=all_intents(),
            shard_ids=shard_ids,
            shard_count=shard_count,
            guild_ready_timeout=0.05,
        )
        self.got: list[tuple[str, int]] = []  # (content or command name, channel id)
        self.arrived = asyncio.Event()

    async def on_message(self, message: discord.Message) -> None:
        self.got.append((message.content, message.channel.id))
        self.arrived.set()

    async def on_interaction(self, interaction: discord.Interaction[Any]) -> None:
        assert interaction.channel_id is not None
        self.got.append(
            (f"/{interaction.data and interaction.data.get('name')}", interaction.channel_id)
        )
        self.arrived.set()


async def received(count: int, *clients: ShardRecorder, timeout: float = 30) -> None:
    """Wait (bounded) until `clients` together got `count` events: their ``arrived`` events wake
    it (the server's ``wait_for`` would not: a client records an event after the server's last
    change)."""

    async def enough() -> None:
        while True:
            for client in clients:
                client.arrived.clear()
            if sum(len(client.got) for client in clients) >= count:
                return
            waits = {asyncio.ensure_future(client.arrived.wait()) for client in clients}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    await asyncio.wait_for(enough(), timeout)


class RawGateway:
    """One websocket to the server's gateway, spoken by hand."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def receive(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.receive(), 5)
        if message.type is not aiohttp.WSMsgType.TEXT:
            return {"closed": self.ws.close_code}
        payload: dict[str, Any] = json.loads(message.data)
        return payload

    async def identify(self, token: str, shard: object) -> dict[str, Any]:
        """Send IDENTIFY; the server's answer: READY's data, op 9, or the close code."""
        data = {"token": token, "intents": int(all_intents().value), "properties": {}}
        if shard is not None:
            data["shard"] = shard
        await self.ws.send_json({"op": 2, "d": data})
        return await self.receive()


@pytest.fixture
async def gateway_of() -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as http:

        async def connect(server: DiscordServer) -> RawGateway:
            ws = await http.ws_connect(f"{server.gateway_url}?v=10&encoding=json")
            gateway = RawGateway(ws)
            assert (await gateway.receive())["op"] == 10  # HELLO
            return gateway

        yield connect


async def bot_gateway(server: DiscordServer) -> dict[str, Any]:
    headers = {"Authorization": f"Bot {server.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.api_url}/gateway/bot", headers=headers) as response:
            data: dict[str, Any] = await response.json()
            return data


def test_guilds_placed_on_chosen_shards() -> None:
    server = DiscordServer(shard_count=3)
    guilds = [server.create_guild(f"g{k}", shard=k) for k in (0, 1, 2, 2, 1, 0)]
    assert [(g.id >> 22) % 3 for g in guilds] == [0, 1, 2, 2, 1, 0]
    assert [server.shard_of(g) for g in guilds] == [0, 1, 2, 2, 1, 0]
    assert len({g.id for g in guilds}) == len(guilds)
    assert server.shard_of(None) == 0
    with pytest.raises(ValueError, match="shard 3"):
        server.create_guild("nowhere", shard=3)


async def test_gateway_bot_reports_shards_and_counts_session_starts_down(
    gateway_of: Any,
) -> None:
    async with DiscordServer(shard_count=4, max_concurrency=2, session_start_total=50) as server:
        before = await bot_gateway(server)
        assert before["shards"] == 4
        assert before["session_start_limit"] == {
            "total": 50,
            "remaining": 50,
            "reset_after": 0,
            "max_concurrency": 2,
        }
        gateway = await gateway_of(server)
        assert (await gateway.identify(server.token, [1, 4]))["t"] == "READY"
        after = (await bot_gateway(server))["session_start_limit"]
        assert after["remaining"] == 49
        assert 0 < after["reset_after"] <= 86_400_000


async def test_second_identify_in_a_bucket_within_5_s_is_refused(gateway_of: Any) -> None:
    async with DiscordServer(shard_count=3, max_concurrency=2) as server:
        first, second, third = [await gateway_of(server) for _ in range(3)]
        ready = await first.identify(server.token, [0, 3])
        assert ready["t"] == "READY" and ready["d"]["shard"] == [0, 3]
        # Shard 1 is in the other bucket (1 % 2): accepted at once.
        assert (await second.identify(server.token, [1, 3]))["t"] == "READY"
        # Shard 2 is in shard 0's bucket (2 % 2 == 0): Invalid Session, not resumable.
        assert await third.identify(server.token, [2, 3]) == {"op": 9, "d": False}
        assert server.refused_identifies == [(2, 3)]
        assert (await bot_gateway(server))["session_start_limit"]["remaining"] == 998


async def test_identify_refusals_as_discord_closes(gateway_of: Any) -> None:
    async with DiscordServer(session_start_total=1, identify_interval=0) as server:
        for bad_shard in ([2, 2], [0], [-1, 1], "0,1"):
            gateway = await gateway_of(server)
            assert await gateway.identify(server.token, bad_shard) == {"closed": 4010}
        gateway = await gateway_of(server)
        await gateway.ws.send_json({"op": 2, "d": {"token": server.token, "intents": 1 << 40}})
        assert await gateway.receive() == {"closed": 4013}
        assert (await (await gateway_of(server)).identify(server.token, None))["t"] == "READY"
        # The only session start is used: Discord resets the token, so authentication fails.
        assert await (await gateway_of(server)).identify(server.token, None) == {"closed": 4004}
        assert server.refused_identifies == [None]


def place_world(server: DiscordServer) -> tuple[list[FakeGuild], Any]:
    alice = server.create_user("alice")
    guilds = [server.create_guild(f"g{k}", shard=k) for k in range(server.shard_count)]
    for guild in guilds:
        server.add_member(guild, alice)
        server.create_channel(guild, "general")
    return guilds, alice


async def test_ready_and_events_go_to_the_guilds_shard(gateway_of: Any) -> None:
    # Two buckets, so both clients identify at once.
    async with DiscordServer(shard_count=2, max_concurrency=2) as server:
        (g0, g1), alice = place_world(server)
        server.state.set_commands(None, [{"id": "1", "name": "hello", "type": 1, "options": []}])
        one, two = ShardRecorder([0], 2), ShardRecorder([1], 2)
        async with run_bot(one, server), run_bot(two, server):
            assert [g.id for g in one.guilds] == [g0.id]
            assert [g.id for g in two.guilds] == [g1.id]
            assert server.ready_shards() == [(0, 2), (1, 2)]
            places = [g0.channels[0], g1.channels[0], server.create_dm(alice)]
            for place in places:
                await server.send_message(place, alice, f"hi {place.id}")
                await server.invoke_command(place, alice, "hello")
            await received(6, one, two)
            dm = places[2]
            assert sorted(one.got) == sorted(
                [(f"hi {c.id}", c.id) for c in (places[0], dm)]
                + [("/hello", c.id) for c in (places[0], dm)]
            )
            assert sorted(two.got) == [
                ("/hello", places[1].id),
                (f"hi {places[1].id}", places[1].id),
            ]
        assert server.refused_identifies == []


async def test_a_new_guild_reaches_only_its_shard() -> None:
    async with DiscordServer(shard_count=2, max_concurrency=2) as server:
        place_world(server)
        one, two = ShardRecorder([0], 2), ShardRecorder([1], 2)
        async with run_bot(one, server), run_bot(two, server):
            joined = asyncio.ensure_future(two.wait_for("guild_join"))
            guild = server.create_guild("late", shard=1)
            assert (await asyncio.wait_for(joined, 5)).id == guild.id
            assert two.get_guild(guild.id) is not None
            assert one.get_guild(guild.id) is None


async def test_discord_py_identifies_again_after_a_refusal() -> None:
    # One bucket: the second client's shard is refused, and discord.py retries 5 s later.
    async with DiscordServer(shard_count=2) as server:
        place_world(server)
        one, two = ShardRecorder([0], 2), ShardRecorder([1], 2)
        async with run_bot(one, server), run_bot(two, server, timeout=20):
            assert server.refused_identifies == [(1, 2)]
            assert server.ready_shards() == [(0, 2), (1, 2)]
