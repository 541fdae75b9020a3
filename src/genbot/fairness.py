"""Fair turns at the model: when more chats wait than the model has slots, the next free slot
goes round-robin across users, then channels, not to whoever came first.

Two parts, as elsewhere in genbot: the decision is pure and the asyncio wiring is thin.

- :class:`TurnQueue` decides who goes next, without asyncio: callers wait as *tickets* tagged
  with a user and a channel; :meth:`TurnQueue.next` admits one while fewer than ``slots`` are
  running. The fair order picks, among the waiting tickets, the smallest of

  1. how many chats the ticket's *user* has running now (a user holding slots waits behind
     users holding fewer: nobody gets more than a fair share while others wait);
  2. when that user was last admitted (least recently first: round-robin across users; a user
     seen for the first time comes first);
  3. and 4. the same two for the ticket's *channel* (round-robin across a user's channels,
     and across channels of users that tie);
  5. the ticket's number (first come, first served for the rest).

  With ``fair=False`` it is plain first come, first served (the benchmark's baseline).
- :class:`FairScheduler` puts one backend :class:`~genbot.streaming.Streamer` behind a
  :class:`TurnQueue` with the backend's slot count: ``async with scheduler.stream(user=...,
  channel=...) as stream`` waits for a fair turn, then for the backend's own slot, so at most
  ``slots`` callers are inside ``backend.stream()`` at once and the backend's first-come queue
  never holds a chat the scheduler could have ordered. The turn ends as soon as the stream
  ends (the model's slot is free), or when the caller leaves the block or closes the stream.
  Cancelling a waiting caller takes its ticket out of the queue.

The ready-made :class:`~genbot.chatbot.ChatBot` asks its scheduler for a slot with the question's
author and channel, so this applies to every backend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from genbot.streaming import CallerStream, Streamer

__all__ = ["FairScheduler", "FairSlot", "FairStream", "TurnQueue", "backend_slots"]

_log = logging.getLogger(__name__)

#: Attributes that hold a backend's slot count, looked up in this order (the built-in backends,
#: a ``@genbot.streamer`` function's ``maximum``, and ``slots`` for a Streamer of your own).
SLOT_ATTRIBUTES = ("slots", "n_parallel", "max_batch", "max_concurrency", "capacity", "maximum")


def backend_slots(backend: object, default: int) -> int:
    """How many chats ``backend`` generates for at once: the first positive whole number among
    its :data:`SLOT_ATTRIBUTES`, else ``default``.

    Parameters
    ----------
    backend:
        A Streamer (or anything with one of those attributes).
    default:
        The count when none is there (the ready-made bot passes its ``parallel`` setting).
    """
    for name in SLOT_ATTRIBUTES:
        value = getattr(backend, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


#: How many users and channels the queue remembers before it forgets idle ones.
_PRUNE_MIN = 256


@dataclass
class _Ticket:
    user: Hashable
    channel: Hashable


class TurnQueue:
    """Who goes next at a model with ``slots`` slots (pure: no asyncio, no clock).

    See the module docstring for the order. Tickets are whole numbers handed out by :meth:`add`;
    a ticket is *waiting* until :meth:`next` admits it, then *running* until :meth:`finish`.
    A user or channel with nothing waiting or running is remembered (when it was last admitted)
    only while that matters: until everyone waiting or running was admitted more recently, so
    memory stays bounded by the tickets held, and someone who asks again as soon as each reply
    ends still takes turns with the others instead of jumping ahead as a newcomer.

    Parameters
    ----------
    slots:
        How many tickets may run at once (at least 1); may be changed later.
    fair:
        ``False``: first come, first served.

    Raises
    ------
    ValueError
        ``slots`` below 1.
    """

    def __init__(self, slots: int, *, fair: bool = True) -> None:
        self.slots = slots
        self.fair = fair
        self._count = 0
        self._waiting: dict[int, _Ticket] = {}  # in ticket order
        self._running: dict[int, _Ticket] = {}
        self._turn = 0  # counts admissions: the "clock" of round-robin
        # Per user and per channel: [waiting, running, turn of the last admission or -1].
        self._users: dict[Hashable, list[int]] = {}
        self._channels: dict[Hashable, list[int]] = {}
        self._prune_at = _PRUNE_MIN

    @property
    def slots(self) -> int:
        return self._slots

    @slots.setter
    def slots(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"slots must be at least 1, not {value}")
        self._slots = value

    @property
    def waiting(self) -> int:
        """How many tickets wait."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """How many tickets run."""
        return len(self._running)

    @property
    def remembered(self) -> int:
        """How many users and channels the queue keeps state for."""
        return len(self._users) + len(self._channels)

    def add(self, user: Hashable, channel: Hashable) -> int:
        """A new waiting ticket for a chat of ``user`` in ``channel``; returns its number."""
        self._count += 1
        ticket = self._count
        self._waiting[ticket] = _Ticket(user, channel)
        for table, key in ((self._users, user), (self._channels, channel)):
            table.setdefault(key, [0, 0, -1])[0] += 1
        self._maybe_prune()
        return ticket

    def cancel(self, ticket: int) -> bool:
        """Take a waiting ticket out of the queue; ``False`` (and nothing done) if it does not
        wait (admitted already, finished or unknown)."""
        held = self._waiting.pop(ticket, None)
        if held is None:
            return False
        self._change(held, waiting=-1)
        return True

    def next(self) -> int | None:
        """Admit the next waiting ticket if a slot is free; returns it, or ``None``."""
        if len(self._running) >= self._slots or not self._waiting:
            return None
        if self.fair:
            ticket = min(self._waiting, key=self._rank)
        else:
            ticket = next(iter(self._waiting))
        held = self._waiting.pop(ticket)
        self._running[ticket] = held
        self._turn += 1
        self._change(held, waiting=-1, running=1, turn=self._turn)
        self._maybe_prune()
        return ticket

    def finish(self, ticket: int) -> None:
        """A running ticket is done, freeing its slot; finishing it again does nothing.

        Raises
        ------
        ValueError
            ``ticket`` is still waiting (cancel it instead).
        """
        if ticket in self._waiting:
            raise ValueError(f"ticket {ticket} is waiting, not running: cancel it")
        held = self._running.pop(ticket, None)
        if held is not None:
            self._change(held, running=-1)

    def _rank(self, ticket: int) -> tuple[int, int, int, int, int]:
        held = self._waiting[ticket]
        _, user_running, user_turn = self._users[held.user]
        _, channel_running, channel_turn = self._channels[held.channel]
        return (user_running, user_turn, channel_running, channel_turn, ticket)

    def _change(self, held: _Ticket, waiting: int = 0, running: int = 0, turn: int = 0) -> None:
        for table, key in ((self._users, held.user), (self._channels, held.channel)):
            state = table[key]
            state[0] += waiting
            state[1] += running
            if turn:
                state[2] = turn

    def _maybe_prune(self) -> None:
        if self.remembered > self._prune_at:
            self._prune()

    def _prune(self) -> None:
        """Forget the idle users and channels whose rank a newcomer's (-1) stands for: admitted
        before everyone active that was admitted at all, or never (they then tie with the active
        that never were, and the ticket order decides). Amortised: again when the tables
        doubled."""
        for table in (self._users, self._channels):
            active = [st[2] for st in table.values() if (st[0] or st[1]) and st[2] >= 0]
            oldest = min(active, default=self._turn + 1)
            for key in [k for k, st in table.items() if not (st[0] or st[1]) and st[2] < oldest]:
                del table[key]
        self._prune_at = max(_PRUNE_MIN, 2 * self.remembered)


class FairStream:
    """The stream of a fair turn: a :class:`~genbot.streaming.CallerStream` (call it with the
    inputs, iterate over the outputs). The turn ends when the stream ends or fails (the model's
    slot is free then) or when the caller closes it, whichever comes first. It counts what it
    yields: :attr:`deltas` (non-empty text outputs) and :attr:`chars` (their characters)."""

    def __init__(self, stream: CallerStream, end_turn: Callable[[], None]) -> None:
        self._stream = stream
        self._end_turn: Callable[[], None] | None = end_turn
        self.deltas = 0
        self.chars = 0

    @property
    def closed(self) -> bool:
        return self._stream.closed

    def __call__(self, inputs: object) -> FairStream:
        """Send ``inputs``, as :meth:`genbot.streaming.CallerStream.__call__` (which raises
        :class:`~genbot.StreamError` when they cannot be sent); returns this stream."""
        self._stream(inputs)
        return self

    def __aiter__(self) -> FairStream:
        return self

    async def __anext__(self) -> Any:
        try:
            out = await self._stream.__anext__()
        except BaseException as exc:
            # Ended (or failed): the model's slot is free now, so the turn ends now, not when
            # the caller gets round to closing (after its last edits in Discord, say).
            if not isinstance(exc, asyncio.CancelledError):
                self._end()
            raise
        if isinstance(out, str) and out:
            self.deltas += 1
            self.chars += len(out)
        return out

    def close(self) -> None:
        """Close the stream (the model stops) and end the turn; idempotent."""
        try:
            self._stream.close()
        finally:
            self._end()

    def _end(self) -> None:
        end_turn, self._end_turn = self._end_turn, None
        if end_turn is not None:
            end_turn()


class FairSlot:
    """What :meth:`FairScheduler.stream` returns: enter it (once) to wait for a fair turn."""

    def __init__(self, scheduler: FairScheduler, user: Hashable, channel: Hashable) -> None:
        self._scheduler = scheduler
        self._user = user
        self._channel = channel
        self._stream: FairStream | None = None

    async def __aenter__(self) -> FairStream:
        if self._stream is not None:
            raise RuntimeError("a fair slot can be entered once; call scheduler.stream() again")
        self._stream = await self._scheduler._enter(self._user, self._channel)
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            self._stream.close()


class FairScheduler:
    """Fair turns at one backend Streamer (see the module docstring).

    Parameters
    ----------
    backend:
        The Streamer whose slots are shared out.
    slots:
        How many callers may be inside ``backend.stream()`` at once; ``None``: the backend's
        own count (:func:`backend_slots`), read at each request, so a streamer started with
        another ``maximum`` later is followed; ``default_slots`` when it has none.
    fair:
        ``False``: first come, first served (a baseline for measurements).
    default_slots:
        The slot count of a backend that names none.
    """

    def __init__(
        self,
        backend: Streamer,
        slots: int | None = None,
        *,
        fair: bool = True,
        default_slots: int = 4,
    ) -> None:
        self.backend = backend
        self._slots = slots
        self._default_slots = default_slots
        self.queue = TurnQueue(self._slot_count(), fair=fair)
        self._waiters: dict[int, asyncio.Future[None]] = {}

    def _slot_count(self) -> int:
        if self._slots is not None:
            return self._slots
        return backend_slots(self.backend, self._default_slots)

    @property
    def waiting(self) -> int:
        """How many callers wait for a turn."""
        return self.queue.waiting

    @property
    def running(self) -> int:
        """How many callers hold a turn."""
        return self.queue.running

    def stream(self, *, user: Hashable, channel: Hashable) -> FairSlot:
        """A place in the fair queue for a chat of ``user`` in ``channel``:
        ``async with scheduler.stream(user=..., channel=...) as stream:``.

        Entering it waits without a bound of its own, as ``backend.stream()`` does: bound it
        with ``asyncio.wait_for`` or cancel it (the ready-made bot gives up after
        ``queue_timeout``). It raises what ``backend.stream()`` raises
        (:class:`~genbot.StreamError` for a backend that is not started or fails meanwhile).
        """
        return FairSlot(self, user, channel)

    async def _enter(self, user: Hashable, channel: Hashable) -> FairStream:
        ticket = await self._turn(user, channel)
        try:
            stream = await self.backend.stream().__aenter__()
        except BaseException:
            self._end(ticket)
            raise
        return FairStream(stream, lambda: self._end(ticket))

    async def _turn(self, user: Hashable, channel: Hashable) -> int:
        """Wait for a turn; cancelled, the ticket leaves the queue (or its turn ends)."""
        ticket = self.queue.add(user, channel)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = waiter
        self._admit()
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # admitted, then cancelled
                self._end(ticket)
            else:
                self._waiters.pop(ticket, None)
                self.queue.cancel(ticket)
            raise
        return ticket

    def _end(self, ticket: int) -> None:
        self.queue.finish(ticket)
        self._admit()

    def _admit(self) -> None:
        """Wake the callers whose turn came (a waiter cancelled meanwhile gives its turn on)."""
        self.queue.slots = self._slot_count()
        while (ticket := self.queue.next()) is not None:
            waiter = self._waiters.pop(ticket)
            if waiter.done():  # its task was cancelled and has not run its except block yet
                self.queue.finish(ticket)
                continue
            waiter.set_result(None)
