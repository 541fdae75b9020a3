"""The bot-wide Discord request budget: the pure scheduler, simulated, and its asyncio wiring."""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genbot.output import BUDGET, RequestBudget, Ticket, shared_budget


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def within_budget(times: list[float], rate: int, window: float) -> bool:
    """Whether no `window` of the sorted `times` holds more than `rate` of them: every
    ``rate + 1`` in a row span at least a window (less 1e-9 for the rounding of sums)."""
    return all(b - a >= window - 1e-9 for a, b in zip(times, times[rate:], strict=False))


# --- the pure bookkeeping ------------------------------------------------------------------------


def test_no_more_than_the_rate_start_within_a_window() -> None:
    clock = Clock()
    budget = RequestBudget(rate=3, window=1.0, clock=clock)
    tickets = [budget.ask() for _ in range(5)]
    assert budget.grant() == tickets[:3]
    assert budget.wait() is None  # only the end of a request can make room now
    budget.done(tickets[0])
    assert budget.grant() == []  # ended requests still count for a window
    assert budget.wait() == pytest.approx(1.0)
    clock.now += 0.5
    budget.done(tickets[1])
    clock.now += 0.5
    assert budget.grant() == [tickets[3]]
    assert budget.wait() == pytest.approx(0.5)
    clock.now += 0.5
    assert budget.grant() == [tickets[4]]
    assert budget.wait() is None


def test_a_first_write_goes_before_edits_and_then_the_least_recently_served() -> None:
    clock = Clock()
    budget = RequestBudget(rate=1, window=1.0, clock=clock)
    busy = budget.ask()
    assert budget.grant() == [busy]
    recent = budget.ask(since=99.5)
    older = budget.ask(since=98.0)
    first = budget.ask(since=None)
    order: list[Ticket] = []
    current = busy
    for _ in range(3):
        budget.done(current)
        clock.now += 1.0
        (current,) = budget.grant()
        order.append(current)
    assert order == [first, older, recent]


def test_a_withdrawn_ticket_is_skipped_and_a_withdrawn_grant_frees_its_turn_at_once() -> None:
    clock = Clock()
    budget = RequestBudget(rate=1, clock=clock)
    held, gone, next_ = budget.ask(), budget.ask(), budget.ask()
    assert budget.grant() == [held]
    budget.withdraw(gone)
    budget.withdraw(held)  # granted but never used: no request went out
    assert budget.grant() == [next_]
    budget.done(held)  # a late done of a withdrawn ticket changes nothing
    assert budget.free() == 0


def test_the_interval_grows_with_the_channels_streaming() -> None:
    budget = RequestBudget(rate=40, clock=Clock())
    assert budget.interval(1.0) == 1.0
    for channel in range(200):
        budget.open(channel)
    budget.open(7)  # a second reply in a channel does not count it twice
    assert budget.active == 200
    assert budget.interval(1.0) == pytest.approx(5.0)
    for channel in range(150):
        budget.close(channel)
    assert budget.active == 51  # channel 7 still has a reply streaming
    assert budget.interval(1.0) == pytest.approx(51 / 40)
    budget.close(7)
    assert budget.active == 50
    for channel in range(150, 200):
        budget.close(channel)
    assert budget.active == 0 and budget.interval(0.5) == 0.5


def test_bad_values_are_refused() -> None:
    for rate in (0, -5):
        with pytest.raises(ValueError, match="rate"):
            RequestBudget(rate=rate)
    with pytest.raises(ValueError, match="window"):
        RequestBudget(window=0.0)
    with pytest.raises(ValueError, match="rate"):
        shared_budget(0)


def test_the_shared_budget_takes_the_rate_it_is_given() -> None:
    old = BUDGET.rate
    try:
        assert shared_budget(12) is BUDGET and BUDGET.rate == 12
    finally:
        BUDGET.rate = old


# --- simulated: many replies, random request times -----------------------------------------------


@dataclass
class Reply:
    start: float
    latencies: list[float]  # one per request
    gaps: list[float]  # the pause after each request before the next is asked
    since: float | None = None
    asked: list[float] = field(default_factory=list)
    granted: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)


@st.composite
def replies(draw: st.DrawFn) -> list[Reply]:
    count = draw(st.integers(1, 25))
    made = []
    for _ in range(count):
        requests = draw(st.integers(1, 6))
        times = st.floats(0.0, 0.5, allow_nan=False)
        made.append(
            Reply(
                start=draw(st.floats(0.0, 3.0, allow_nan=False)),
                latencies=draw(st.lists(times, min_size=requests, max_size=requests)),
                gaps=draw(st.lists(times, min_size=requests, max_size=requests)),
            )
        )
    return made


def simulate(budget: RequestBudget, clock: Clock, made: list[Reply]) -> None:
    """Run the replies against the budget in simulated time: each asks for a turn, makes its
    request when granted, and asks again a gap after it ended."""
    events: list[tuple[float, int, str, int]] = []  # (time, order, "ask" | "end", reply)
    order = 0

    def schedule(when: float, kind: str, index: int) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, kind, index))

    for index, reply in enumerate(made):
        schedule(reply.start, "ask", index)
    holding: dict[int, Ticket] = {}
    asking: dict[Ticket, int] = {}
    while True:
        wait = budget.wait()
        if not events and wait is None:
            assert not asking, "a ticket waits with nothing to wake it"
            return
        next_event = events[0][0] if events else math.inf
        clock.now = min(next_event, math.inf if wait is None else clock.now + wait)
        while events and events[0][0] <= clock.now:
            _, _, kind, index = heapq.heappop(events)
            reply = made[index]
            if kind == "ask":
                reply.asked.append(clock.now)
                asking[budget.ask(reply.since)] = index
            else:
                budget.done(holding.pop(index))
                reply.since = clock.now
                reply.ended.append(clock.now)
                if len(reply.ended) < len(reply.latencies):
                    schedule(clock.now + reply.gaps[len(reply.ended) - 1], "ask", index)
        for ticket in budget.grant():
            index = asking.pop(ticket)
            reply = made[index]
            holding[index] = ticket
            reply.granted.append(clock.now)
            schedule(clock.now + reply.latencies[len(reply.granted) - 1], "end", index)


@settings(max_examples=150, deadline=None)
@given(made=replies(), rate=st.integers(1, 8), where=st.lists(st.floats(0, 1), min_size=1))
def test_never_more_than_the_budget_in_any_window_however_long_requests_take(
    made: list[Reply], rate: int, where: list[float]
) -> None:
    clock = Clock(0.0)
    budget = RequestBudget(rate=rate, window=1.0, clock=clock)
    simulate(budget, clock, made)
    spans = [
        (granted, ended)
        for reply in made
        for granted, ended in zip(reply.granted, reply.ended, strict=True)
    ]
    assert len(spans) == sum(len(reply.latencies) for reply in made)  # every request was made
    # The request reaches Discord anywhere between its grant and its end.
    arrivals = sorted(
        granted + where[n % len(where)] * (ended - granted)
        for n, (granted, ended) in enumerate(spans)
    )
    assert within_budget(arrivals, rate, 1.0)


@settings(max_examples=150, deadline=None)
@given(made=replies(), rate=st.integers(1, 8))
def test_every_reply_gets_its_turn_within_its_fair_share(made: list[Reply], rate: int) -> None:
    clock = Clock(0.0)
    budget = RequestBudget(rate=rate, window=1.0, clock=clock)
    simulate(budget, clock, made)
    slowest = max(max(reply.latencies) for reply in made)
    # Each other reply goes ahead of a waiting one at most once, and every turn comes back
    # within a window after its request ended.
    fair = math.ceil(len(made) / rate) * (1.0 + slowest)
    for reply in made:
        assert len(reply.granted) == len(reply.asked) == len(reply.latencies)
        for asked, granted in zip(reply.asked, reply.granted, strict=True):
            assert granted - asked <= fair + 1e-9


@settings(max_examples=100, deadline=None)
@given(edits=st.integers(0, 60), rate=st.integers(1, 8))
def test_a_first_write_waits_only_for_other_first_writes(edits: int, rate: int) -> None:
    clock = Clock(0.0)
    budget = RequestBudget(rate=rate, window=1.0, clock=clock)
    for n in range(edits):
        budget.ask(since=-float(n))  # edits of replies that wrote long ago
    first = budget.ask(since=None)
    assert first in budget.grant()


# --- the asyncio wiring ---------------------------------------------------------------------------


async def test_turns_keep_to_the_budget_on_the_real_clock() -> None:
    budget = RequestBudget(rate=4, window=0.2)
    started: list[float] = []

    async def request(since: float | None) -> None:
        async with budget.turn(since):
            started.append(time.monotonic())
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(*(request(float(n)) for n in range(20))), 10)
    assert len(started) == 20
    assert within_budget(sorted(started), 4, 0.2)


async def test_a_cancelled_wait_gives_its_place_to_the_next() -> None:
    budget = RequestBudget(rate=1, window=0.05)
    release = asyncio.Event()
    done: list[str] = []

    async def request(name: str, hold: bool = False) -> None:
        async with budget.turn():
            if hold:
                await release.wait()
            done.append(name)

    holder = asyncio.create_task(request("holder", hold=True))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(request("cancelled"))
    last = asyncio.create_task(request("last"))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, last), 5)
    assert done == ["holder", "last"]
    await asyncio.sleep(0.06)
    assert budget.free() == 1  # nothing is left holding a turn


def test_a_waiter_of_a_closed_event_loop_gives_its_turn_back() -> None:
    budget = RequestBudget(rate=1, window=0.01)
    held = budget.ask()
    assert budget.grant() == [held]

    async def request() -> None:
        async with budget.turn():
            pass

    old = asyncio.new_event_loop()
    stranded = old.create_task(request())
    old.run_until_complete(asyncio.sleep(0))  # its ticket waits behind the held turn
    assert not stranded.done()
    old.close()  # closed without cancelling it, so its ticket stays queued
    budget.done(held)
    asyncio.run(asyncio.wait_for(request(), 5))  # not blocked by the ticket left behind
    assert budget.wait() is None  # nothing is left waiting
