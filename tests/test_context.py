"""genbot.Context end to end: visibility, /reset, the cache API, edits, deletions, REST cost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import genbot
import genbot.bot
from bot_world import FAST, World, delete, edit, read, send, world
from genbot.context import RESET_MARKER, MessageCache
from genbot.testing import DiscordServer, run_bot


class Quiet(genbot.Genbot):
    """Never answers: the tests read contexts themselves."""


async def test_newest_first_limit_and_what_is_visible() -> None:
    async with world() as w, run_bot(Quiet(**FAST), w.server) as bot:
        other_bot = w.server.create_user("otherbot", bot=True)
        w.server.add_member(w.guild, other_bot)
        s, ch = w.server, w.general
        await send(bot, s, ch, w.alice, "a1")
        await send(bot, s, ch, w.alice, "!not for the bot")
        await send(bot, s, ch, other_bot, "beep")
        ping = await s.invoke_command(ch, w.alice, "ping")
        assert (await ping.wait_response())["content"].startswith("Pong")
        await send(bot, s, ch, w.bob, "b1")
        mine = asyncio.ensure_future(
            bot.wait_for("message", check=lambda m: m.content == "mine", timeout=5)
        )
        await bot.get_channel(ch.id).send("mine")
        await mine
        assert any(m["content"].startswith("Pong") for m in s.messages(ch))  # public, but hidden
        assert await read(bot, ch.id) == ["mine", "b1", "a1"]
        assert await read(bot, ch.id, limit=2) == ["mine", "b1"]
        assert await read(bot, ch.id, limit=0) == []


async def test_other_bots_visible_with_allow_bots() -> None:
    async with world() as w, run_bot(Quiet(allow_bots=True, **FAST), w.server) as bot:
        other_bot = w.server.create_user("otherbot", bot=True)
        await send(bot, w.server, w.server.create_dm(w.alice), w.alice, "hi")
        dm = w.server.create_dm(other_bot)
        await send(bot, w.server, dm, other_bot, "beep")
        assert await read(bot, dm.id) == ["beep"]


async def test_blacklisted_users_never_appear_in_any_context() -> None:
    async with world() as w:
        s = w.server
        thread = s.create_thread(w.general, "t", owner=w.alice)
        dm_bob, dm_alice = s.create_dm(w.bob), s.create_dm(w.alice)
        bot = Quiet(users={"blacklist": [w.bob.id]}, roles={"blacklist": [w.banned.id]}, **FAST)
        async with run_bot(bot, s):
            for n in range(3):
                for channel in (w.general, thread):
                    await send(bot, s, channel, w.bob, f"bob {n}")
                    await send(bot, s, channel, w.alice, f"alice {n}")
                    await send(bot, s, channel, w.mod, f"mod {n}")
                await send(bot, s, dm_bob, w.bob, f"bob dm {n}")
                await send(bot, s, dm_alice, w.alice, f"alice dm {n}")
            for channel in (w.general, thread, dm_bob, dm_alice):
                for limit in (1, 2, 5, 16):
                    seen = await read(bot, channel.id, limit)
                    assert not any(text.startswith("bob") for text in seen), seen
            assert await read(bot, dm_bob.id) == []
            assert len(await read(bot, w.general.id)) == 6
            # a role blacklisted now hides the member's earlier messages too (GUILD_MEMBER_UPDATE)
            update = asyncio.ensure_future(bot.wait_for("member_update", timeout=5))
            await s.update_member(w.guild, w.mod, roles=[w.mods, w.banned])
            await update
            for channel in (w.general, thread):
                assert [t for t in await read(bot, channel.id) if t.startswith("mod")] == []


async def test_reset_hides_everything_before_it() -> None:
    async with world() as w, run_bot(Quiet(**FAST), w.server) as bot:
        s, ch = w.server, w.general
        await send(bot, s, ch, w.alice, "old 1")
        await send(bot, s, ch, w.bob, "old 2")
        reset = await s.invoke_command(ch, w.alice, "reset")
        response = await reset.wait_response()
        assert response["content"] == RESET_MARKER and not response["ephemeral"]
        assert any(m["content"] == RESET_MARKER for m in s.messages(ch))  # visible boundary
        await send(bot, s, ch, w.alice, "new 1")  # the marker came back through the gateway first
        assert await read(bot, ch.id) == ["new 1"]
        await s.invoke_command(ch, w.bob, "reset")
        await s.wait_for(lambda: sum(m["content"] == RESET_MARKER for m in s.messages(ch)) == 2)
        await send(bot, s, ch, w.bob, "newest")
        assert await read(bot, ch.id) == ["newest"]


async def test_reset_found_in_history_fetched_by_rest() -> None:
    async with world() as w:
        s, ch = w.server, w.general
        for n in range(3):
            await s.send_message(ch, w.alice, f"before {n}")
        s.create_message(ch, s.bot_user, {"content": RESET_MARKER})
        await s.send_message(ch, w.alice, "after")
        # someone else quoting the marker is no boundary
        await s.send_message(ch, w.bob, RESET_MARKER)
        async with run_bot(Quiet(**FAST), s) as bot:
            assert await read(bot, ch.id) == [RESET_MARKER, "after"]


async def test_cache_api_and_reiteration() -> None:
    async with world() as w, run_bot(Quiet(**FAST), w.server) as bot:
        s, ch = w.server, w.general
        for n in range(5):
            await send(bot, s, ch, w.alice, f"m{n}")
        ctx = bot.context(bot.get_channel(ch.id), limit=3)
        assert not ctx and len(ctx) == 0
        async for msg in ctx:
            assert msg.content == "m4"
            break
        assert len(ctx) == 1 and ctx[0].content == "m4"
        requests = w.history_requests()
        first = [m async for m in ctx]  # continues after the break
        assert [m.content for m in first] == ["m4", "m3", "m2"]
        again = [m async for m in ctx]
        assert [id(m) for m in again] == [id(m) for m in first]
        assert ctx and len(ctx) == 3 and ctx[-1].content == "m2"
        assert [m.content for m in ctx[0:2]] == ["m4", "m3"]
        with pytest.raises(IndexError):
            ctx[3]
        assert w.history_requests() == requests
        assert await ctx.current()
        with pytest.raises(ValueError):
            bot.context(bot.get_channel(ch.id), limit=-1)


@pytest.mark.parametrize("max_messages", [1000, None])  # with and without discord.py's cache
async def test_edits_and_deletions_show_at_once_without_rest(max_messages: int | None) -> None:
    async with world() as w, run_bot(Quiet(max_messages=max_messages, **FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        sent = [await send(bot, s, dm, w.alice, f"m{n}") for n in range(5)]
        assert await read(bot, dm.id) == ["m4", "m3", "m2", "m1", "m0"]
        requests = w.history_requests()
        await edit(bot, s, dm, sent[1], "m1 edited")
        assert await read(bot, dm.id) == ["m4", "m3", "m2", "m1 edited", "m0"]
        await delete(bot, s, dm, [sent[3]])
        assert await read(bot, dm.id) == ["m4", "m2", "m1 edited", "m0"]
        await delete(bot, s, dm, [sent[0], sent[4]])
        assert await read(bot, dm.id) == ["m2", "m1 edited"]
        await edit(bot, s, dm, sent[2], "!now ignored")
        assert await read(bot, dm.id) == ["m1 edited"]
        assert w.history_requests() == requests


async def test_warm_channel_costs_no_history_requests() -> None:
    async with world() as w:
        s, ch = w.server, w.general
        for n in range(3):
            await s.send_message(ch, w.alice, f"before {n}")  # before the bot runs: REST only
        async with run_bot(Quiet(**FAST), s) as bot:
            assert w.history_requests() == 0
            assert await read(bot, ch.id) == ["before 2", "before 1", "before 0"]
            assert w.history_requests() == 1
            for n in range(20):
                await send(bot, s, ch, w.bob, f"live {n}")
                assert (await read(bot, ch.id))[0] == f"live {n}"
            assert await read(bot, ch.id, limit=30) == [
                *(f"live {n}" for n in reversed(range(20))),
                "before 2",
                "before 1",
                "before 0",
            ]
            assert w.history_requests() == 1


async def test_history_pages_past_hidden_messages() -> None:
    async with world() as w:
        s, dm = w.server, w.server.create_dm(w.alice)
        for n in range(3):
            await s.send_message(dm, w.alice, f"old {n}")
        for n in range(130):
            await s.send_message(dm, w.alice, f"!aside {n}")
        async with run_bot(Quiet(**FAST), s) as bot:
            assert await read(bot, dm.id) == ["old 2", "old 1", "old 0"]
            assert w.history_requests() == 2  # 100 + the rest
            assert await read(bot, dm.id) == ["old 2", "old 1", "old 0"]
            assert w.history_requests() == 2


async def _drop(bot: Quiet, w: World, *, resumable: bool) -> None:
    event = "resumed" if resumable else "ready"
    back = asyncio.ensure_future(bot.wait_for(event, timeout=30))
    await w.server.drop_connections(resumable=resumable)
    await back


async def test_resume_keeps_the_cache_and_replays_missed_messages() -> None:
    async with world() as w, run_bot(Quiet(**FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        await send(bot, s, dm, w.alice, "one")
        assert await read(bot, dm.id) == ["one"]
        requests = w.history_requests()
        seen = asyncio.ensure_future(
            bot.wait_for("message", check=lambda m: m.content == "two", timeout=30)
        )
        back = asyncio.ensure_future(bot.wait_for("resumed", timeout=30))
        await s.drop_connections()
        await s.send_message(dm, w.alice, "two")  # while disconnected
        await back
        await seen
        assert await read(bot, dm.id) == ["two", "one"]
        assert w.history_requests() == requests


async def test_new_session_refills_the_cache() -> None:
    async with world() as w, run_bot(Quiet(**FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        first = await send(bot, s, dm, w.alice, "one")
        assert await read(bot, dm.id) == ["one"]
        requests = w.history_requests()
        await _drop(bot, w, resumable=False)
        # changes the bot could not see (no session replays them)
        s.update_message(s.channel(dm), int(first["id"]), {"content": "one, edited offline"})
        s.create_message(s.channel(dm), w.alice, {"content": "offline"})
        assert await read(bot, dm.id) == ["offline", "one, edited offline"]
        assert w.history_requests() == requests + 1


async def test_current_tracks_new_visible_messages() -> None:
    async with world() as w, run_bot(Quiet(**FAST), w.server) as bot:
        s, dm = w.server, w.server.create_dm(w.alice)
        await send(bot, s, dm, w.alice, "question")
        ctx = bot.context(bot.get_partial_messageable(dm.id))
        assert await ctx.current()  # reads first when it was not read
        assert [m.content for m in ctx] == ["question"]
        reply = asyncio.ensure_future(
            bot.wait_for("message", check=lambda m: m.content == "answer", timeout=5)
        )
        await bot.get_partial_messageable(dm.id).send("answer")
        await reply
        await send(bot, s, dm, w.alice, "!aside")
        assert await ctx.current()  # only the bot and an ignored message arrived
        await send(bot, s, dm, w.alice, "follow-up")
        assert not await ctx.current()
        assert [m.content for m in ctx] == ["question"]  # a context is a snapshot


class FakeHistoryChannel:
    """Just enough of a Messageable for MessageCache: ids 1..n, REST history newest first."""

    def __init__(self, channel_id: int, n: int) -> None:
        self.id = channel_id
        self.ids = list(range(1, n + 1))
        self.requests = 0
        self.gate: asyncio.Event | None = None

    def message(self, message_id: int) -> SimpleNamespace:
        return SimpleNamespace(id=message_id, channel=self, content=f"m{message_id}")

    async def history(
        self, *, limit: int, before: Any = None, after: Any = None, oldest_first: bool = False
    ) -> AsyncIterator[SimpleNamespace]:
        self.requests += 1
        if self.gate is not None:
            await self.gate.wait()
        ids = [
            i
            for i in self.ids
            if (before is None or i < before.id) and (after is None or i > after.id)
        ]
        page = ids[:limit] if oldest_first else ids[::-1][:limit]
        for message_id in page:
            yield self.message(message_id)


async def _until_requested(channel: FakeHistoryChannel) -> None:
    """Wait (bounded) until the cache has asked `channel` for a page."""

    async def requested() -> None:
        while channel.requests == 0:
            await asyncio.sleep(0)

    await asyncio.wait_for(requested(), 5)


async def _walk(cache: MessageCache, channel: Any) -> list[int]:
    ids, before = [], None
    while (message := await cache.next_older(channel, before)) is not None:
        ids.append(message.id)
        before = message.id
    return ids


async def test_cache_pages_and_stops_at_the_channel_start() -> None:
    cache, channel = MessageCache(), FakeHistoryChannel(1, 250)
    assert await _walk(cache, channel) == list(range(250, 0, -1))
    assert channel.requests == 3
    assert await _walk(cache, channel) == list(range(250, 0, -1))
    assert channel.requests == 3


async def test_cache_ignores_unread_channels_and_follows_read_ones() -> None:
    cache, channel = MessageCache(), FakeHistoryChannel(1, 2)
    cache.on_create(channel.message(3))  # not read yet: not kept
    assert cache.cached(1) == []
    channel.ids.append(3)
    assert await _walk(cache, channel) == [3, 2, 1]
    channel.ids.append(4)
    cache.on_create(channel.message(4))
    assert await _walk(cache, channel) == [4, 3, 2, 1] and channel.requests == 1
    assert cache.get(1, 4) is not None and cache.get(1, 99) is None


async def test_cache_bounds_refetch_what_they_dropped() -> None:
    cache = MessageCache(max_messages=3, max_channels=1)
    first, second = FakeHistoryChannel(1, 2), FakeHistoryChannel(2, 2)
    assert await _walk(cache, first) == [2, 1]
    for message_id in (3, 4, 5):
        first.ids.append(message_id)
        cache.on_create(first.message(message_id))
    assert [m.id for m in cache.cached(1)] == [3, 4, 5]
    assert await _walk(cache, first) == [5, 4, 3, 2, 1] and first.requests == 2
    assert await _walk(cache, second) == [2, 1]
    assert cache.cached(1) == []  # least recently used channel evicted
    assert await _walk(cache, first) == [5, 4, 3, 2, 1] and first.requests == 3


async def test_events_during_a_fetch_apply_to_its_result() -> None:
    cache, channel = MessageCache(), FakeHistoryChannel(1, 5)
    channel.gate = asyncio.Event()
    reading = asyncio.ensure_future(_walk(cache, channel))
    await _until_requested(channel)
    channel.ids.remove(2)
    cache.on_delete(1, [2])  # the page in flight may still hold it
    edited = channel.message(3)
    edited.content = "edited"
    cache.on_edit(SimpleNamespace(channel_id=1, message_id=3, message=edited, data={}))
    channel.ids.append(6)
    cache.on_create(channel.message(6))
    channel.gate.set()
    assert await asyncio.wait_for(reading, 5) == [6, 5, 4, 3, 1]
    assert cache.get(1, 3).content == "edited"


async def test_invalidation_during_a_fetch_discards_it() -> None:
    cache, channel = MessageCache(), FakeHistoryChannel(1, 5)
    channel.gate = asyncio.Event()
    reading = asyncio.ensure_future(cache.next_older(channel, None))
    await _until_requested(channel)
    cache.invalidate()
    channel.gate.set()
    newest = await asyncio.wait_for(reading, 5)
    assert newest is not None and newest.id == 5
    assert channel.requests == 2  # the stale page was dropped and fetched again


# -- who may chat, whatever the cache state -----------------------------------------------------

ROLE_COUNT, USER_COUNT = 3, 4
_role_ids = st.integers(min_value=0, max_value=ROLE_COUNT - 1)
_user_ids = st.integers(min_value=0, max_value=USER_COUNT - 1)
_lists = st.fixed_dictionaries(
    {"blacklist": st.frozensets(_role_ids, max_size=2)},
    optional={"whitelist": st.frozensets(_role_ids, max_size=2)},
)
_user_lists = st.fixed_dictionaries(
    {"blacklist": st.frozensets(_user_ids, max_size=1)},
    optional={"whitelist": st.frozensets(_user_ids, max_size=2)},
)


class Reidentifying(Quiet):
    """Identifies anew at once (discord.py waits 5 s before a new session by default)."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        pass


def _may_chat(
    users: dict[str, frozenset[int]],
    roles: dict[str, frozenset[int]],
    user: int,
    held: frozenset[int],
    member: bool,
) -> bool:
    """The README's access table, written out for a server; someone who left holds unknown
    roles: every blacklisted one and no whitelisted one."""
    if user in users["blacklist"]:
        return False
    if not member:
        held = roles["blacklist"]
    if held & roles["blacklist"]:
        return False
    if user in users.get("whitelist", ()):
        return True
    return "whitelist" not in roles or bool(held & roles["whitelist"])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=_user_lists,
    roles=_lists,
    held=st.lists(st.frozensets(_role_ids, max_size=2), min_size=USER_COUNT, max_size=USER_COUNT),
    left=st.frozensets(_user_ids, min_size=1),
    members_intent=st.booleans(),
)
def test_who_may_chat_is_seen_cold_warm_and_after_a_new_session(
    users: dict[str, frozenset[int]],
    roles: dict[str, frozenset[int]],
    held: list[frozenset[int]],
    left: frozenset[int],
    members_intent: bool,
) -> None:
    """Members post in a channel the bot has cached (warm) and in one it has not read (cold);
    some leave; every read -- cold over REST, warm from the cache, and both again over REST
    after a reconnect that could not resume -- shows exactly those who may chat. Without the
    members intent no event says that someone left: until the bot looks them up again (a new
    session, or member_ttl later) it may still show a leaver who was allowed when they posted,
    never one who was not."""
    asyncio.run(_who_may_chat(users, roles, held, left, members_intent))


async def _who_may_chat(
    users: dict[str, frozenset[int]],
    roles: dict[str, frozenset[int]],
    held: list[frozenset[int]],
    left: frozenset[int],
    members_intent: bool,
) -> None:
    async with DiscordServer() as s:
        guild = s.create_guild("Guild")
        role_objs = [s.create_role(guild, f"r{i}") for i in range(ROLE_COUNT)]
        cold, warm = s.create_channel(guild, "cold"), s.create_channel(guild, "warm")
        people = [s.create_user(f"u{i}") for i in range(USER_COUNT)]
        for person, mine in zip(people, held, strict=True):
            s.add_member(guild, person, roles=[role_objs[i] for i in sorted(mine)])

        def spec(lists: dict[str, frozenset[int]], objs: list[Any]) -> dict[str, list[int]]:
            return {key: [objs[i].id for i in ids] for key, ids in lists.items()}

        intents = genbot.bot.default_intents()
        intents.members = members_intent
        bot = Reidentifying(
            users=spec(users, people), roles=spec(roles, role_objs), intents=intents, **FAST
        )
        async with run_bot(bot, s):
            assert await read(bot, warm.id) == []  # the warm channel is cached from now on
            for i, person in enumerate(people):
                for channel in (cold, warm):
                    await send(bot, s, channel, person, f"u{i}")
            for i in sorted(left):
                removed = asyncio.ensure_future(
                    bot.wait_for(
                        "raw_member_remove",
                        check=lambda p, i=i: p.user.id == people[i].id,
                        timeout=5,
                    )
                )
                await s.remove_member(guild, people[i])
                if members_intent:
                    await removed
                else:
                    removed.cancel()

            def expected(leavers_as_members: bool = False) -> list[str]:
                return [
                    f"u{i}"
                    for i in reversed(range(USER_COUNT))
                    if _may_chat(users, roles, i, held[i], leavers_as_members or i not in left)
                ]

            for channel, where in ((cold, "cold (REST)"), (warm, "warm (cache)")):
                seen = await read(bot, channel.id)
                if members_intent:
                    assert seen == expected(), where
                else:  # the roles their messages carried, until member_ttl or a new session
                    assert set(expected()) <= set(seen) <= set(expected(True)), where
            back = asyncio.ensure_future(bot.wait_for("ready", timeout=30))
            await s.drop_connections(resumable=False)
            await back
            assert await read(bot, cold.id) == expected(), "cold after a new session"
            assert await read(bot, warm.id) == expected(), "warm after a new session"


@pytest.mark.parametrize("members_intent", [True, False])
async def test_a_member_with_a_blacklisted_role_who_left_stays_hidden(
    members_intent: bool,
) -> None:
    """The hole of the first release: hidden while the channel was cached, shown when the
    history came over REST (a first read, or a new session)."""
    async with world() as w:
        s = w.server
        eve = s.create_user("eve")
        s.add_member(w.guild, eve, roles=[w.banned])
        warm = s.create_channel(w.guild, "warm")
        intents = genbot.bot.default_intents()
        intents.members = members_intent
        bot = Reidentifying(roles={"blacklist": [w.banned.id]}, intents=intents, **FAST)
        async with run_bot(bot, s):
            assert await read(bot, warm.id) == []
            for channel in (w.general, warm):
                await send(bot, s, channel, eve, "from eve")
                await send(bot, s, channel, w.alice, "from alice")
            removed = asyncio.ensure_future(bot.wait_for("raw_member_remove", timeout=5))
            await s.remove_member(w.guild, eve)
            if members_intent:
                await removed
            else:
                removed.cancel()  # no event without the members intent
            assert await read(bot, w.general.id) == ["from alice"]  # cold: REST
            assert await read(bot, warm.id) == ["from alice"]  # warm: the cache
            back = asyncio.ensure_future(bot.wait_for("ready", timeout=30))
            await s.drop_connections(resumable=False)
            await back
            assert await read(bot, w.general.id) == ["from alice"]
            assert await read(bot, warm.id) == ["from alice"]


MEMBER = ("GET", "/guilds/{guild_id}/members/{user_id}")


async def test_member_look_ups_without_the_members_intent_are_bounded_and_cached() -> None:
    async with world() as w:
        s = w.server
        people = [s.create_user(f"p{n}") for n in range(30)]
        for person in people:
            s.add_member(w.guild, person)
            await s.send_message(w.general, person, f"hi from {person.name}")  # REST only
        intents = genbot.bot.default_intents()
        intents.members = False
        bot = Quiet(roles={"blacklist": [w.banned.id]}, intents=intents, **FAST)
        async with run_bot(bot, s):
            assert genbot.Context.max_lookups == 25
            first = await read(bot, w.general.id, limit=40)
            assert s.request_count(*MEMBER) == 25  # the rest stay hidden in this read
            assert first == [f"hi from p{n}" for n in reversed(range(5, 30))]
            assert len(await read(bot, w.general.id, limit=40)) == 30
            assert s.request_count(*MEMBER) == 30
            assert len(await read(bot, w.general.id, limit=40)) == 30
            assert s.request_count(*MEMBER) == 30  # known now: no request
            # with roles that decide nothing, nobody is looked up
            bot.access = genbot.bot.Access()
            bot.member_roles.clear()
            assert len(await read(bot, w.general.id, limit=40)) == 30
            assert s.request_count(*MEMBER) == 30
