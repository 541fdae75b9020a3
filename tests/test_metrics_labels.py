"""The metrics' labels stay bounded: after chats of several users in several channels, DMs and
a thread, no label of any series holds a user, channel, server or message id, and the number
of series does not grow with the users and channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from chat_workers import RELEASE, scripted
from genbot.streaming import Streamer
from genbot.testing import DiscordServer, run_bot
from test_metrics import make_bot, scrape, settle


@pytest.fixture
def backend() -> Iterator[Streamer]:
    RELEASE.set()  # nothing holds
    scripted.start_thread(maximum=2)
    try:
        yield scripted
    finally:
        scripted.close()
        RELEASE.clear()


@pytest.fixture
async def server() -> AsyncIterator[DiscordServer]:
    async with DiscordServer() as made:
        yield made


async def test_no_label_holds_an_id_and_the_series_do_not_grow_with_users(
    server: DiscordServer, backend: Streamer
) -> None:
    guild = server.create_guild("Guild")
    channels = [server.create_channel(guild, f"c{i}") for i in range(3)]
    users = [server.create_user(f"u{i}") for i in range(4)]
    for user in users:
        server.add_member(guild, user)
    ids = {str(guild.id), *(str(c.id) for c in channels), *(str(u.id) for u in users)}
    bot = make_bot(backend)
    series: list[set[tuple[str, frozenset[tuple[str, str]]]]] = []
    async with run_bot(bot, server):
        rounds = [[(0, 0), (1, 1)], [(2, 1), (3, 2)]]  # (user, channel): the second, others
        for round_, pairs in enumerate(rounds):
            asked = []
            for user, channel in ((users[u], channels[c]) for u, c in pairs):
                for where in (channel, server.create_dm(user)):
                    message = await server.send_message(
                        where, user, f"hi {round_}", mentions_bot=where is channel
                    )
                    ids.update({str(where.id), str(message["id"])})
                    asked.append(where)
            answer = f"answer: hi {round_}"
            for where in asked:
                await server.wait_for(
                    lambda w=where, a=answer: any(
                        m["content"] == a for m in server.bot_messages(w)
                    ),
                    timeout=30,
                )
            await settle(bot)
            samples = await scrape(bot)
            # the series apart from the REST routes (a round may be the first to use a route,
            # e.g. a retried edit: templates, bounded, and checked for ids below)
            series.append({key for key in samples if "route" not in dict(key[1])})
    ids.update(str(m["id"]) for c in channels for m in server.bot_messages(c))
    assert series[1] - series[0] == set(), "new users and channels made new series"
    labels = {value for (_name, pairs) in samples for _key, value in pairs}
    assert not [v for v in labels if any(i in v for i in ids)], sorted(labels)
