"""Fair turns at the model: the pure order (TurnQueue, with hypothesis), the asyncio wiring
(FairScheduler on a real Streamer) and the ready-made bot on the loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import genbot
from chat_workers import RELEASE, one_slot, scripted
from genbot.chatbot import ChatBot, make_backend
from genbot.fairness import FairScheduler, TurnQueue, backend_slots
from genbot.settings import BACKENDS, Settings
from genbot.streaming import Stream, Streamer
from genbot.testing import DiscordServer, run_bot

FAST: dict[str, Any] = {
    "guild_ready_timeout": 0.05,
    "shutdown_timeout": 2.0,
    "close_streamers": False,
}

# --- the pure order ------------------------------------------------------------------------


class Model:
    """What the order must be, from the spec: each user and channel's running count and the
    turn of its last admission (-1: never)."""

    def __init__(self) -> None:
        self.tickets: dict[int, tuple[int, int]] = {}  # ticket -> (user, channel)
        self.waiting: set[int] = set()
        self.running: set[int] = set()
        self.last: dict[tuple[str, int], int] = {}
        self.turn = 0

    def count(self, kind: int, key: int) -> int:
        return sum(1 for t in self.running if self.tickets[t][kind] == key)

    def rank(self, ticket: int) -> tuple[int, ...]:
        user, channel = self.tickets[ticket]
        return (
            self.count(0, user),
            self.last.get(("user", user), -1),
            self.count(1, channel),
            self.last.get(("channel", channel), -1),
            ticket,
        )

    def admit(self, ticket: int) -> None:
        user, channel = self.tickets[ticket]
        self.waiting.discard(ticket)
        self.running.add(ticket)
        self.turn += 1
        self.last[("user", user)] = self.last[("channel", channel)] = self.turn


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 4)),
        st.tuples(st.just("next")),
        st.tuples(st.just("finish"), st.integers(0, 50)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
    ),
    max_size=80,
)


def apply(queue: TurnQueue, model: Model, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "add":
        ticket = queue.add(op[1], op[2])
        model.tickets[ticket] = (op[1], op[2])
        model.waiting.add(ticket)
    elif kind == "next":
        expected = min(model.waiting, key=model.rank) if model.waiting else None
        if len(model.running) >= queue.slots:
            expected = None
        assert queue.next() == expected
        if expected is not None:
            model.admit(expected)
    elif kind == "finish" and model.running:
        ticket = sorted(model.running)[op[1] % len(model.running)]
        queue.finish(ticket)
        model.running.discard(ticket)
    elif kind == "cancel" and model.waiting:
        ticket = sorted(model.waiting)[op[1] % len(model.waiting)]
        assert queue.cancel(ticket)
        model.waiting.discard(ticket)


@settings(max_examples=300, deadline=None)
@given(slots=st.integers(1, 4), ops=ops)
def test_the_queue_admits_by_the_fair_rank_and_never_past_its_slots(
    slots: int, ops: list[tuple[Any, ...]]
) -> None:
    queue, model = TurnQueue(slots), Model()
    for op in ops:
        apply(queue, model, op)
        assert queue.running == len(model.running) <= slots
        assert queue.waiting == len(model.waiting)


@settings(max_examples=200, deadline=None)
@given(chats=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=40))
def test_with_one_slot_users_take_strict_turns(chats: list[tuple[int, int]]) -> None:
    """Round-robin: each chat, once done, asks again at once (as the bot's follow-up does), so
    every user always waits; between two turns of one user, every other user has one."""
    queue = TurnQueue(1)
    owner = {queue.add(u, c): (u, c) for u, c in chats}
    users = {u for u, _ in chats}
    admitted: list[int] = []
    for _ in range(3 * len(owner)):
        ticket = queue.next()
        assert ticket is not None
        admitted.append(owner[ticket][0])
        queue.finish(ticket)
        again = queue.add(*owner[ticket])
        owner[again] = owner[ticket]
    last: dict[int, int] = {}
    for i, user in enumerate(admitted):
        if user in last:
            assert set(admitted[last[user] + 1 : i]) == users - {user}, admitted
        last[user] = i


@pytest.mark.parametrize("slots", [1, 2, 4, 5])
def test_a_flood_gets_no_more_than_its_share(slots: int) -> None:
    """The benchmark's scene: one user's 50 chats in 10 channels, then 5 users ask once each.
    After the slots the flood took first, the next 5 turns are the 5 users'."""
    queue = TurnQueue(slots)
    flood = [queue.add("flood", f"channel {i % 10}") for i in range(50)]
    first = [queue.next() for _ in range(slots)]
    assert first == flood[:slots]
    others = [queue.add(f"user {i}", f"dm {i}") for i in range(5)]
    running: list[int | None] = list(first)
    after = []
    for _ in range(5):  # the oldest chat running ends, and the next turn goes out
        queue.finish(running.pop(0))  # type: ignore[arg-type]
        running.append(queue.next())
        after.append(running[-1])
    assert sorted(t for t in after if t is not None) == others


def test_first_come_without_fairness() -> None:
    queue = TurnQueue(1, fair=False)
    tickets = [queue.add(user, 0) for user in (1, 1, 1, 2, 3)]
    order = []
    while (ticket := queue.next()) is not None:
        order.append(ticket)
        queue.finish(ticket)
    assert order == tickets


def test_a_users_channels_take_turns() -> None:
    queue = TurnQueue(1)
    a1, a2, b1 = queue.add("u", "a"), queue.add("u", "a"), queue.add("u", "b")
    order = []
    while (ticket := queue.next()) is not None:
        order.append(ticket)
        queue.finish(ticket)
    assert order == [a1, b1, a2]


def test_cancel_and_finish() -> None:
    queue = TurnQueue(1)
    a, b = queue.add(1, 1), queue.add(2, 2)
    with pytest.raises(ValueError, match="waiting, not running"):
        queue.finish(a)
    assert queue.next() == a
    assert not queue.cancel(a)  # running, not waiting
    assert queue.cancel(b) and queue.waiting == 0
    queue.finish(a)
    queue.finish(a)  # again: nothing
    assert queue.running == 0 and queue.next() is None
    with pytest.raises(ValueError, match="at least 1"):
        TurnQueue(0)


def test_memory_stays_bounded_by_what_is_held() -> None:
    queue = TurnQueue(2)
    for user in range(5000):
        ticket = queue.add(user, user)
        assert queue.next() == ticket
        queue.finish(ticket)
    assert queue.remembered <= 2 * 256


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_tells_its_slot_count(backend: str) -> None:
    """The scheduler lets as many chats in as the backend generates for (not started here)."""
    if backend == "transformers":
        pytest.importorskip("torch", reason="the transformers backend needs torch")
    model = "some/model" if backend == "transformers" else ""
    assert backend_slots(make_backend(Settings(backend=backend, model=model, parallel=3)), 9) == 3


def test_backend_slots() -> None:
    class Own(Streamer):
        slots = 3

    assert backend_slots(Own(), 9) == 3
    assert backend_slots(scripted, 9) == scripted.maximum
    assert backend_slots(object(), 9) == 9


# --- the asyncio wiring ----------------------------------------------------------------------


@genbot.streamer
def echo(streams: list[Stream]) -> None:
    for stream in streams:
        stream.write(stream.data)
        stream.close()


@pytest.fixture
def echoing() -> Iterator[Streamer]:
    echo.start_thread(maximum=2)
    try:
        yield echo
    finally:
        echo.close()


async def test_the_scheduler_bounds_the_callers_inside_and_orders_the_waiters(
    echoing: Streamer,
) -> None:
    scheduler = FairScheduler(echoing)
    assert scheduler.queue.slots == 2  # the streamer's maximum
    order: list[str] = []
    inside = asyncio.Event()
    held: list[Any] = []

    async def chat(user: str, channel: str) -> None:
        async with scheduler.stream(user=user, channel=channel) as stream:
            order.append(user)
            if len(held) < 2:  # the first two keep their turn until released
                future = asyncio.get_running_loop().create_future()
                held.append(future)
                if len(held) == 2:
                    inside.set()
                await future
            assert [out async for out in stream(user)] == [user]
            assert stream.deltas == 1 and stream.chars == len(user)

    tasks = [asyncio.create_task(chat("flood", f"c{i}")) for i in range(4)]
    await asyncio.wait_for(inside.wait(), 10)
    tasks += [asyncio.create_task(chat(user, "dm")) for user in ("ann", "bea")]
    await asyncio.sleep(0)  # let them queue
    assert scheduler.running == 2 and scheduler.waiting == 4
    for future in held:
        future.set_result(None)
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["flood", "flood", "ann", "bea", "flood", "flood"]
    assert scheduler.running == scheduler.waiting == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_a_closed_stream_ends_its_turn(
    echoing: Streamer,
) -> None:
    scheduler = FairScheduler(echoing, slots=1)
    slot = scheduler.stream(user=1, channel=1)
    first = await slot.__aenter__()
    waiting = asyncio.create_task(scheduler.stream(user=2, channel=2).__aenter__())
    await asyncio.sleep(0)
    assert scheduler.waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert scheduler.waiting == 0 and scheduler.running == 1
    nxt = asyncio.create_task(scheduler.stream(user=3, channel=3).__aenter__())
    await asyncio.sleep(0)
    first.close()
    first.close()  # idempotent: the turn ends once
    stream = await asyncio.wait_for(nxt, 10)
    assert scheduler.running == 1
    assert [out async for out in stream("x")] == ["x"]
    assert scheduler.running == 0  # the stream ended: the model's slot is free, so is the turn
    stream.close()
    assert scheduler.running == 0
    with pytest.raises(RuntimeError, match="entered once"):
        await slot.__aenter__()


async def test_a_turn_admitted_to_a_cancelled_waiter_goes_on(echoing: Streamer) -> None:
    scheduler = FairScheduler(echoing, slots=1)
    first = await scheduler.stream(user=1, channel=1).__aenter__()
    doomed = asyncio.create_task(scheduler.stream(user=2, channel=2).__aenter__())
    later = asyncio.create_task(scheduler.stream(user=3, channel=3).__aenter__())
    await asyncio.sleep(0)
    doomed.cancel()  # cancelled, but its except block has not run yet
    first.close()  # its turn would go to the doomed waiter: it goes on to the next
    stream = await asyncio.wait_for(later, 10)
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert scheduler.running == 1 and scheduler.waiting == 0
    stream.close()
    assert scheduler.running == 0


async def test_a_backend_that_is_not_started_fails_and_ends_the_turn() -> None:
    scheduler = FairScheduler(echo, slots=1)
    with pytest.raises(genbot.StreamError, match="not started"):
        async with scheduler.stream(user=1, channel=1):
            pass
    assert scheduler.running == scheduler.waiting == 0


# --- the ready-made bot on the loopback server -----------------------------------------------


class Flood:
    def __init__(self, server: DiscordServer) -> None:
        self.server = server
        self.guild = server.create_guild("Guild")
        users = [server.create_user(name) for name in ("alice", "bob", "carol")]
        for user in users:
            server.add_member(self.guild, user)
        self.alice, self.bob, self.carol = users
        self.channels = [server.create_channel(self.guild, f"c{i}") for i in range(5)]

    def replies(self) -> list[dict[str, Any]]:
        return sorted(
            (m for c in self.channels for m in self.server.bot_messages(c)),
            key=lambda m: int(m["id"]),
        )


@pytest.fixture
async def flood() -> AsyncIterator[Flood]:
    async with DiscordServer() as server:
        yield Flood(server)


one_slot = pytest.fixture(one_slot, name="one_slot")


@pytest.mark.parametrize("fair", [True, False])
async def test_the_bot_gives_turns_round_robin_across_users(
    flood: Flood, one_slot: Streamer, tmp_path: Any, fair: bool
) -> None:
    """Alice holds the only slot and waits in two more channels; then Bob and Carol ask. Fair:
    Bob and Carol go before Alice's other chats; first come (the baseline): after them."""
    server = flood.server
    values = {"queue_timeout": 60.0, "edit_interval": 0.2, "data_dir": str(tmp_path)}
    bot = ChatBot(Settings().updated(values, "test"), backend=one_slot, **FAST)
    if not fair:
        bot.turns = FairScheduler(one_slot, fair=False)
    c = flood.channels
    asks = [(c[0], flood.alice, "hold"), (c[1], flood.alice, "a1"), (c[2], flood.alice, "a2")]
    asks += [(c[3], flood.bob, "b"), (c[4], flood.carol, "c")]
    async with run_bot(bot, server, timeout=30):
        await server.send_message(c[0], flood.alice, "hold", mentions_bot=True)
        await server.wait_for(lambda: [r["content"] for r in flood.replies()] == ["Let me think"])
        for channel, user, text in asks[1:]:
            await server.send_message(channel, user, text, mentions_bot=True)
            # A chat shows typing once it waits for its turn (it queued before the typing
            # request): one at a time, so the chats queue in this order.
            await server.wait_for(lambda ch=channel: server.typing_events(ch), timeout=10)
        assert bot.turns.waiting == 4
        RELEASE.set()
        await server.wait_for(lambda: len(flood.replies()) == 5, timeout=30)
    order = [r["content"] for r in flood.replies()]
    fair_order = ["Let me think done.", "answer: b", "answer: c", "answer: a1", "answer: a2"]
    first_come = ["Let me think done.", "answer: a1", "answer: a2", "answer: b", "answer: c"]
    assert order == (fair_order if fair else first_come)
