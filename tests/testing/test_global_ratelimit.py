"""The loopback server's bot-wide rate limit (Discord's global limit, about 50 requests per
second for the whole bot, whatever the route): what the bot-wide request budget (issue 9) is
tested against, so that its "no 429" can fail."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from genbot.testing import DiscordServer
from genbot.testing.limits import RequestLedger


def test_the_ledger_counts_every_route_in_one_bot_wide_window() -> None:
    ledger = RequestLedger(limit=50, window=1.0)
    assert ledger.consume_global(now=0.0) is None  # no bot-wide limit unless one is set
    ledger.global_limit = 3
    assert [ledger.consume_global(now=t) for t in (10.0, 10.1, 10.2)] == [None] * 3
    assert ledger.consume_global(now=10.5) == pytest.approx(0.5)  # until the second is over
    assert ledger.too_many_global == 1
    assert ledger.consume_global(now=11.0) is None  # a new second
    ledger.global_limit = None
    assert all(ledger.consume_global(now=11.0) is None for _ in range(10))


async def test_over_the_bot_wide_limit_is_a_global_429_except_for_interactions() -> None:
    async with DiscordServer() as server:
        guild = server.create_guild("g")
        channel = server.create_channel(guild, "general")
        with pytest.raises(ValueError, match="at least 1"):
            server.global_ratelimit = 0
        server.global_ratelimit = 2
        server.state.requests.global_window = 60.0  # (so that the test cannot outlast it)
        headers = {"Authorization": f"Bot {server.token}"}
        async with aiohttp.ClientSession(headers=headers) as http:

            async def get(path: str) -> tuple[int, dict[str, Any], Any]:
                async with http.get(server.api_url + path) as response:
                    return response.status, dict(response.headers), await response.json()

            # Two routes, two buckets: the per-route limits are far; the bot-wide one is not.
            assert (await get("/users/@me"))[0] == 200
            assert (await get(f"/channels/{channel.id}"))[0] == 200
            status, answer_headers, body = await get(f"/channels/{channel.id}")
            assert status == 429
            assert body["global"] is True and 0 < body["retry_after"] <= 60
            assert answer_headers["X-RateLimit-Global"] == "true"
            assert answer_headers["X-RateLimit-Scope"] == "global"
            assert answer_headers["Via"]  # (else discord.py takes it for a Cloudflare ban)
            # Interaction responses are outside the bot-wide limit, as on Discord.
            url = f"{server.api_url}/interactions/1/no-such-token/callback"
            async with http.post(url, json={"type": 1}) as response:
                assert response.status != 429
        assert server.global_rate_limited == 1
        assert server.rate_limited_count("GET", "/channels/{channel_id}") == 1
        assert server.rate_limited_count("GET", "/users/@me") == 0
