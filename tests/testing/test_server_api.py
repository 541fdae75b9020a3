"""The test-facing API on its own: snowflakes, wait_for, and raw interaction callbacks."""

from __future__ import annotations

import time

import aiohttp
import pytest
from loopback_world import World

from genbot.testing.models import Snowflakes, snowflake_time

CALLBACK = "/interactions/{interaction_id}/{interaction_token}/callback"


def test_snowflakes_are_time_based_and_increasing() -> None:
    snowflakes = Snowflakes()
    before = time.time()
    ids = [snowflakes.next() for _ in range(1000)]
    after = time.time()
    assert ids == sorted(set(ids))
    assert before - 0.001 <= snowflake_time(ids[0]) <= snowflake_time(ids[-1]) <= after + 1


async def test_wait_for_wakes_on_changes_and_is_bounded(world: World) -> None:
    server = world.server
    with pytest.raises(TimeoutError):
        await server.wait_for(lambda: server.messages(world.channel), timeout=0.05)
    await server.send_message(world.channel, world.alice, "now")
    await server.wait_for(lambda: server.messages(world.channel), timeout=0.05)


async def test_posting_as_a_non_member_is_a_test_mistake(world: World) -> None:
    stranger = world.server.create_user("stranger")
    with pytest.raises(ValueError, match="not a member"):
        await world.server.send_message(world.channel, stranger, "hi")
    with pytest.raises(ValueError, match="not in this DM"):
        await world.server.send_message(world.server.create_dm(world.alice), stranger, "hi")


async def test_update_callbacks_and_unknown_interactions(world: World) -> None:
    server = world.server
    api = server.api_url
    auth = {"Authorization": f"Bot {server.token}"}
    async with aiohttp.ClientSession() as http:
        command = [{"name": "tap", "description": "tap", "type": 1}]
        url = f"{api}/applications/{server.application_id}/commands"
        async with http.put(url, json=command, headers=auth) as response:
            assert response.status == 200
        first = await server.invoke_command(world.channel, world.alice, "tap")
        second = await server.invoke_command(world.channel, world.alice, "tap")

        async def callback(interaction_id: int, token: str, kind: int) -> tuple[int, dict]:
            url = f"{api}/interactions/{interaction_id}/{token}/callback"
            async with http.post(url, json={"type": kind, "data": {"content": "x"}}) as response:
                return response.status, (await response.json() if response.status != 204 else {})

        assert await callback(first.id, first.token, 6) == (204, {})
        assert await callback(second.id, second.token, 7) == (204, {})
        status, body = await callback(first.id, first.token, 4)
        assert (status, body["code"]) == (400, 40060)
        status, body = await callback(first.id, "bad-token", 4)
        assert (status, body["code"]) == (404, 10062)
        assert [r["type"] for r in first.responses + second.responses] == [6, 7]
        assert server.request_count("POST", CALLBACK) == 4
        assert server.unhandled_requests == []
