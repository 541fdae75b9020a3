"""Injected REST failures (`DiscordServer.fail_requests`) and what discord.py makes of them."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager

import aiohttp
import discord
import pytest
from loopback_world import Recorder, World

from genbot.testing import run_bot
from genbot.testing.faults import FaultPlan, make_fault

POST = ("POST", "/channels/{channel_id}/messages")


async def test_failing_requests_get_discords_error_and_still_count(world: World) -> None:
    server = world.server
    server.fail_requests("GET", "/users/@me", status=503, times=2)
    headers = {"Authorization": f"Bot {server.token}"}
    statuses = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{server.api_url}/users/@me", headers=headers) as response:
                statuses.append(response.status)
                if response.status == 503:
                    assert response.headers["Content-Type"] == "application/json"
                    body = await response.json()
                    assert body == {"message": "503: Service Unavailable", "code": 0}
    assert statuses == [503, 503, 200]
    assert server.request_count("GET", "/users/@me") == 3


async def test_discord_py_raises_a_503_at_once_and_nothing_is_posted(world: World) -> None:
    server = world.server
    async with run_recorder(world) as bot:
        channel = bot.get_channel(world.channel.id)
        server.fail_requests(*POST, status=503, times=1)
        with pytest.raises(discord.DiscordServerError):
            await channel.send("lost")
        assert server.messages(world.channel) == []
        assert server.request_count(*POST) == 1
        sent = await channel.send("after the outage")
        assert [m["content"] for m in server.messages(world.channel)] == [sent.content]


async def test_discord_py_retries_a_502_and_gets_through(world: World) -> None:
    server = world.server
    async with run_recorder(world) as bot:
        server.fail_requests(*POST, times=1)  # 502 by default
        sent = await bot.get_channel(world.channel.id).send("second try")
        assert [m["id"] for m in server.messages(world.channel)] == [str(sent.id)]
        assert server.request_count(*POST) == 2


async def test_after_effect_creates_and_dispatches_then_fails(world: World) -> None:
    server = world.server
    async with run_recorder(world) as bot:
        seen = asyncio.ensure_future(bot.next_message())
        server.fail_requests(*POST, status=503, times=1, after_effect=True)
        with pytest.raises(discord.DiscordServerError) as raised:
            await bot.get_channel(world.channel.id).send("made anyway")
        assert raised.value.status == 503
        assert [m["content"] for m in server.messages(world.channel)] == ["made anyway"]
        assert (await seen).content == "made anyway"  # it went out on the gateway too


async def test_discord_py_retries_after_the_effect_without_a_duplicate(world: World) -> None:
    """discord.py sends each message with a random nonce and ``enforce_nonce``; its own retry
    reuses it, so Discord (and this server) returns the message made by the failed attempt."""
    server = world.server
    async with run_recorder(world) as bot:
        server.fail_requests(*POST, times=1, after_effect=True)  # 502: retried
        sent = await bot.get_channel(world.channel.id).send("once")
        assert [m["id"] for m in server.messages(world.channel)] == [str(sent.id)]
        assert server.request_count(*POST) == 2


async def test_sending_again_after_the_effect_duplicates(world: World) -> None:
    """An application that retries a failed send itself makes a new nonce: a second message."""
    server = world.server
    async with run_recorder(world) as bot:
        channel = bot.get_channel(world.channel.id)
        server.fail_requests(*POST, status=503, times=1, after_effect=True)
        with pytest.raises(discord.DiscordServerError):
            await channel.send("twice")
        await channel.send("twice")
        assert [m["content"] for m in server.messages(world.channel)] == ["twice", "twice"]
        same_nonce = {"content": "raw", "nonce": "42", "enforce_nonce": True}
        unenforced = {"content": "raw", "nonce": "42"}
        url = f"{server.api_url}/channels/{world.channel.id}/messages"
        headers = {"Authorization": f"Bot {server.token}"}
        ids = []
        async with aiohttp.ClientSession() as http:
            for body in (same_nonce, same_nonce, unenforced):
                async with http.post(url, json=body, headers=headers) as response:
                    assert response.status == 200
                    ids.append((await response.json())["id"])
        assert ids[0] == ids[1] != ids[2]
        assert [m["content"] for m in server.messages(world.channel)][2:] == ["raw", "raw"]


async def test_failing_for_a_while_and_clearing(world: World) -> None:
    server = world.server
    async with run_recorder(world) as bot:
        channel = bot.get_channel(world.channel.id)
        server.fail_requests(*POST, status=500, seconds=600)
        server.fail_requests("GET", "/channels/{channel_id}", status=404, times=5)
        server.fail_requests(*POST, status=503, seconds=600)  # replaces the 500s
        for _ in range(2):
            with pytest.raises(discord.DiscordServerError):
                await channel.send("down")
        server.fail_requests(*POST, times=0)
        await channel.send("up")
        with pytest.raises(discord.NotFound):
            await bot.fetch_channel(world.channel.id)
        server.clear_failures()
        assert (await bot.fetch_channel(world.channel.id)).id == world.channel.id
        assert [m["content"] for m in server.messages(world.channel)] == ["up"]
        assert server.request_count(*POST) == 3


def test_a_timed_failure_ends_when_its_time_is_up() -> None:
    plan = FaultPlan()
    key = POST
    plan.set(key, make_fault(502, None, 2.0, False, now=100.0))
    assert plan.take(key, now=100.0) is not None
    assert plan.take(key, now=101.9) is not None
    assert plan.take(key, now=102.0) is None
    assert plan.take(key, now=100.5) is None  # spent and forgotten
    plan.set(key, make_fault(500, 2, None, True, now=0.0))
    taken = [plan.take(key, now=0.0) for _ in range(3)]
    assert [f is not None and (f.status, f.after_effect) for f in taken] == [
        (500, True),
        (500, True),
        False,
    ]


@pytest.mark.parametrize(
    ("route", "kwargs", "message"),
    [
        (POST[1], {}, "exactly one"),
        (POST[1], {"times": 1, "seconds": 1.0}, "exactly one"),
        (POST[1], {"times": -1}, "times must be"),
        (POST[1], {"seconds": -1.0}, "seconds must be"),
        (POST[1], {"times": 1, "status": 200}, "error status"),
        (POST[1], {"times": 1, "status": 429}, "rate_limit"),
        ("/channels/{id}/messages", {"times": 1}, "serves no route"),
    ],
)
def test_bad_failure_plans_are_refused(
    world: World, route: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        world.server.fail_requests("POST", route, **kwargs)  # type: ignore[arg-type]


def run_recorder(world: World) -> AbstractAsyncContextManager[Recorder]:
    return run_bot(Recorder(), world.server)
