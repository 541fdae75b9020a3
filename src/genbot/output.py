"""Discord output: what the bot's messages may ping, message splitting and streamed replies.

A streamed reply is one message edited in place as text arrives, continued in new messages past
Discord's 2000 characters. The pieces are plain and testable without Discord: :func:`split_message`
decides the messages, :func:`plan_writes` the requests that bring the shown messages up to date,
:class:`ChannelPacer` when a channel may be edited next, :class:`RequestBudget` when a request
may go within the bot-wide budget of Discord requests, :class:`RetryBudget` when a failing write
is tried again, :func:`is_visible` whether a text shows anything, and :func:`final_text` what a
reply finally shows for each outcome. :func:`stream_reply` puts them together.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import math
import re
import secrets
import time
import unicodedata
from collections import Counter, deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord

from genbot.streaming.errors import FirstTokenTimeout, StallTimeout

__all__ = [
    "BUDGET",
    "DEFAULT_EMPTY_TEXT",
    "DEFAULT_ERROR_TEXT",
    "DEFAULT_REQUESTS_PER_SECOND",
    "DEFAULT_SLOW_TEXT",
    "DEFAULT_STALL_TEXT",
    "MESSAGE_LIMIT",
    "SAFE_MENTIONS",
    "ChannelPacer",
    "ReplyButtons",
    "RequestBudget",
    "RetryBudget",
    "Ticket",
    "Write",
    "failure_note",
    "final_text",
    "is_visible",
    "keep_typing",
    "plan_writes",
    "shared_budget",
    "split_message",
    "stream_reply",
]

_log = logging.getLogger(__name__)

#: A model's text must never mass-ping a server: users may be pinged, @everyone/@here and roles not.
SAFE_MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True)

#: Discord's limit on the characters of one message.
MESSAGE_LIMIT = 2000

#: The note appended (in italics) to a reply whose generation failed.
DEFAULT_ERROR_TEXT = "Sorry, something went wrong while generating this reply."

#: The note appended (in italics) to a reply whose model sent no text for too long.
DEFAULT_STALL_TEXT = "The model stopped responding, so this reply ends here. Please try again."

#: The note appended (in italics) to a reply whose backend got no first token in time.
DEFAULT_SLOW_TEXT = "The model took too long to start answering. Please try again."

#: The note shown (in italics) for a reply whose model output had nothing visible in it.
DEFAULT_EMPTY_TEXT = "The model gave an empty reply. Try asking in other words."

# --------------------------------------------------------------------------------------------
# Splitting

_FENCE = "```"
_CLOSE = "\n```"
# Discord takes the word right after an opening fence as its language when a newline follows.
# Longer words than 16 characters are not treated as a language, which bounds the fence headers
# and so guarantees progress for any limit >= _MIN_LIMIT.
_HEADER = re.compile(r"```([A-Za-z0-9_+\-.#]{0,16})\n")
_MIN_LIMIT = 64
# Preference of cut points, best first; each cut goes right after the separator.
_PARAGRAPH, _LINE, _CODE_LINE, _SENTENCE, _SPACE, _ANY = range(6)


class _Fences:
    """Where the code fences of a text are: every ``` (counted without overlap) toggles code."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [m.start() for m in re.finditer(_FENCE, text)]
        # For each opening fence: its language and where its header (``` + language + \n) ends.
        self.langs: dict[int, str] = {}
        self.header_ends: dict[int, int] = {}
        for index in range(0, len(self.starts), 2):
            start = self.starts[index]
            header = _HEADER.match(text, start)
            self.langs[index] = header[1] if header else ""
            self.header_ends[index] = header.end() if header else start + len(_FENCE)

    def opening_before(self, pos: int) -> int | None:
        """Index of the fence whose code block contains `pos`, or None outside code."""
        count = bisect.bisect_right(self.starts, pos - len(_FENCE))
        return count - 1 if count % 2 else None

    def inside(self, pos: int) -> bool:
        return self.opening_before(pos) is not None

    def lang_at(self, pos: int) -> str:
        index = self.opening_before(pos)
        return "" if index is None else self.langs[index]

    def block_at(self, pos: int) -> tuple[int, int] | None:
        """Start and end of the code block containing `pos` (an unclosed one ends the text)."""
        index = self.opening_before(pos)
        if index is None:
            return None
        closing = index + 1
        end = self.starts[closing] + len(_FENCE) if closing < len(self.starts) else len(self.text)
        return self.starts[index], end

    def cuttable(self, pos: int) -> bool:
        """Whether a cut at `pos` keeps fences whole and each opening fence with its header."""
        index = bisect.bisect_left(self.starts, pos) - 1
        if index < 0:
            return True
        end = self.header_ends[index] if index % 2 == 0 else self.starts[index] + len(_FENCE) - 1
        return pos > end


def _tier(text: str, pos: int, inside: bool) -> int:
    before = text[pos - 1]
    if before == "\n":
        if inside:
            return _CODE_LINE
        return _PARAGRAPH if text[pos - 2 : pos] == "\n\n" else _LINE
    if before.isspace():
        end = pos - 1
        while end > 0 and text[end - 1].isspace():
            end -= 1
        if not inside and end > 0 and text[end - 1] in ".!?":
            return _SENTENCE
        return _SPACE
    return _ANY


def _reopen(lang: str) -> str:
    return f"{_FENCE}{lang}\n"


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Split `text` into messages of at most `limit` characters.

    Cuts prefer, in this order: paragraph breaks, line breaks, line breaks inside a code block,
    sentence ends, any whitespace, and a hard cut only for a word longer than a message; the
    most preferred kind among the cuts that keep the message at least three quarters full. A
    code block that would be split is moved whole to the next message when it fits there. A cut
    never falls inside a ``` fence or between an opening fence and its language line. A code
    block longer than a message is closed with a fence at the end of one message and reopened
    with a fence and its language at the start of the next.
    Whitespace at a cut stays at the end of the earlier message, so removing the added fences
    and joining the messages gives back `text` exactly. A message is whitespace only just where
    `text` has more whitespace in a row than fits in one (or at its end).

    Returns ``[]`` for an empty text. Appending to `text` never changes how many messages came
    before the last one, nor lowers their number, which is what a streamed reply relies on.
    """
    if limit < _MIN_LIMIT:
        raise ValueError(f"limit must be at least {_MIN_LIMIT}, got {limit}")
    if not text:
        return []
    fences = _Fences(text)
    chunks: list[str] = []
    pos = 0
    prefix = ""
    while len(prefix) + len(text) - pos > limit:
        cut = _best_cut(text, fences, pos, limit - len(prefix), limit, bool(prefix))
        inside = fences.inside(cut)
        chunks.append(prefix + text[pos:cut] + (_CLOSE if inside else ""))
        prefix = _reopen(fences.lang_at(cut)) if inside else ""
        pos = cut
    chunks.append(prefix + text[pos:])
    return chunks


def _best_cut(text: str, fences: _Fences, pos: int, room: int, limit: int, reopened: bool) -> int:
    """The best cut in ``text[pos:]`` for a chunk with `room` characters for its own text."""
    cutter = _Cutter(text, fences, pos, room, reopened)
    end = pos + room
    block = fences.block_at(end)
    if block is not None:  # the window ends in a code block: cut before it if it then fits
        start, close = block
        if pos < start and close - start <= limit:
            cut, _ = cutter.pick(max(pos, close - limit), start)
            if cut is not None:
                return cut
    cut, fallback = cutter.pick(pos, end)
    if cut is not None:
        return cut
    if fallback is None:  # cannot happen for limit >= _MIN_LIMIT; kept as a loud guard
        raise AssertionError("no cut point found")
    return fallback  # only whitespace fits: a blank chunk


class _Cutter:
    """Candidate cuts for the chunk starting at `pos`."""

    def __init__(self, text: str, fences: _Fences, pos: int, room: int, reopened: bool) -> None:
        self.text, self.fences, self.pos, self.room = text, fences, pos, room
        # A chunk must show something: no cut before its first visible character.
        self.blank_until = pos if reopened else len(text) - len(text[pos:].lstrip())

    def pick(self, low: int, high: int) -> tuple[int | None, int | None]:
        """The best cut in ``(low, high]``, and the last valid one even if it leaves a blank chunk.

        The best is the last cut of the most preferred kind in the top quarter of the range, so
        messages stay nearly full, else in the whole range; a hard cut inside a word only when
        the range has no boundary at all.
        """
        near: dict[int, int] = {}
        anywhere: dict[int, int] = {}
        fallback = None
        zone = high - (high - low) // 4
        for cut in range(high, low, -1):
            inside = self.fences.inside(cut)
            if inside and cut - self.pos > self.room - len(_CLOSE):
                continue
            if not self.fences.cuttable(cut):
                continue
            if fallback is None:
                fallback = cut
            if cut <= self.blank_until:
                break
            tier = _tier(self.text, cut, inside)
            anywhere.setdefault(tier, cut)
            if cut >= zone and tier != _ANY:
                near.setdefault(tier, cut)
        best = near or anywhere
        return (best[min(best)] if best else None), fallback


def _unclosed(chunk: str) -> bool:
    return chunk.count(_FENCE) % 2 == 1


# --------------------------------------------------------------------------------------------
# Visible text

# Characters that take no visible form on their own: spaces and separators, control and format
# characters (zero-width space/joiners, word joiner, BOM, bidi marks, tags), and combining marks
# with nothing to combine with.
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
# Letters and symbols that render as blanks: Hangul fillers and the blank Braille pattern.
_BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_visible(text: str) -> bool:
    """Whether `text` shows anything in a Discord message.

    Whitespace, zero-width and other format characters (U+200B..U+200F, U+2060, U+FEFF, ...),
    control characters, combining marks alone and blank-rendering letters (Hangul fillers, the
    blank Braille pattern) show nothing; any other character does.
    """
    return any(
        char not in _BLANK_CHARACTERS and unicodedata.category(char) not in _INVISIBLE_CATEGORIES
        for char in text
    )


# --------------------------------------------------------------------------------------------
# Planning writes and pacing them


@dataclass(frozen=True)
class ReplyButtons:
    """The buttons a reply's last message carries (opt-in, see :func:`stream_reply`): the
    `streaming` view while the text still grows, the `done` view once the final text is shown
    (``None``: no buttons then). Earlier messages of a long reply carry none."""

    streaming: discord.ui.View | None
    done: discord.ui.View | None


# The view of a message that the writer did not send itself: unknown, so it is always set.
_UNKNOWN_VIEW = object()


def view_index(count: int) -> int:
    """The index of the message of a reply of `count` messages that carries its buttons."""
    return count - 1


@dataclass(frozen=True)
class Write:
    """One request that updates a reply: edit message `index` to `content`, send a new one
    (`new`), or delete message `index` (`delete`; `content` is then empty)."""

    index: int
    content: str
    new: bool
    delete: bool = False


def plan_writes(
    text: str, shown: Sequence[str], *, final: bool, limit: int = MESSAGE_LIMIT
) -> list[Write]:
    """The writes that make the messages showing `shown` display `text`.

    Messages that would show nothing (see :func:`is_visible`: whitespace only, which Discord
    refuses, or zero-width characters) are skipped. While not `final`,
    a last message that ends inside a code block gets a closing fence (when it fits) so the code
    renders as it streams; the final state is exactly :func:`split_message` of `text`. `text` is
    expected only to grow between calls; the messages still shrink in number when the final
    text splits into fewer of them than a prefix did (deletes, last message first).
    """
    chunks = [chunk for chunk in split_message(text, limit) if is_visible(chunk)]
    if chunks and not final and _unclosed(chunks[-1]) and len(chunks[-1]) + len(_CLOSE) <= limit:
        chunks[-1] += _CLOSE
    writes = [
        Write(index, chunk, index >= len(shown))
        for index, chunk in enumerate(chunks)
        if index >= len(shown) or shown[index] != chunk
    ]
    if final:
        # A prefix of the text can split into more messages than the whole text does (a code
        # block closed and reopened elsewhere): the extra messages go, the last one first.
        extra = range(len(shown) - 1, len(chunks) - 1, -1)
        writes += [Write(index, "", new=False, delete=True) for index in extra]
    return writes


class ChannelPacer:
    """Spaces the updates of each channel (by id) at least `interval` seconds apart.

    Replies streaming into the same channel share its turns, so together they edit at most once
    per interval; other channels are not held up. Pure bookkeeping, no waiting: callers sleep the
    delay :meth:`reserve` returns.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next: dict[int, float] = {}

    def reserve(self, channel_id: int, interval: float) -> float:
        """Take the channel's next turn; returns the seconds to wait for it (0.0 if it is now)."""
        now = self._clock()
        turn = max(now, self._next.get(channel_id, now))
        self._next[channel_id] = turn + interval
        if len(self._next) > 1024:  # forget channels whose turns have passed
            self._next = {key: when for key, when in self._next.items() if when > now}
        return turn - now


#: The pacer shared by every streamed reply of the process.
PACER = ChannelPacer()


# --------------------------------------------------------------------------------------------
# The bot-wide request budget

#: Discord's global limit is about 50 requests per second for a bot; the default keeps room for
#: the requests that do not go through the budget (reading history, typing, commands).
DEFAULT_REQUESTS_PER_SECOND = 40


@dataclass(eq=False)
class Ticket:
    """One request waiting for, or holding, a turn of a :class:`RequestBudget`.

    `rank` orders the waiting tickets (lower first): the time the reply last wrote, or minus
    infinity for a reply's first write. `seq` keeps the order of asking among equal ranks.
    """

    rank: float
    seq: int
    granted: bool = False
    withdrawn: bool = False


class RequestBudget:
    """One budget of Discord requests for the whole process, shared fairly by streamed replies.

    At most `rate` requests are under way or finished less than `window` seconds ago: a turn is
    taken when its request starts and given back `window` seconds after it ends. However long a
    request travels, so Discord never sees more than `rate` of them in any `window`; only a
    retry that discord.py makes inside one call (after a 429 or a 5xx) is an extra request
    within the same turn.

    Waiting tickets are granted least recently served first: a reply's first write (which shows
    the user that an answer is coming) before every edit, then the reply that has waited longest
    since its previous write. A waiting ticket is passed at most once by each other reply, so
    with `n` replies it is granted within ``ceil(n / rate) * (window + the longest request)``
    seconds: nobody starves. The channels streaming at once (:meth:`open`, :meth:`close`) set
    the pace (:meth:`interval`): each edits at most once every ``active / rate * window``
    seconds, so together they ask for no more than the budget.

    The bookkeeping (:meth:`ask`, :meth:`grant`, :meth:`wait`, :meth:`done`, :meth:`withdraw`) is
    pure over `clock`; :meth:`turn` is the asyncio wiring around it.

    Parameters
    ----------
    rate: requests per `window`, at least 1.
    window: seconds, more than 0.
    clock: the time in seconds (default :func:`time.monotonic`).

    Raises
    ------
    ValueError: a `rate` below 1 or a `window` not above 0.
    """

    def __init__(
        self,
        rate: int = DEFAULT_REQUESTS_PER_SECOND,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0:
            raise ValueError(f"window must be more than 0 seconds, got {window}")
        self.window = window
        self.rate = rate  # checked by the setter
        self._clock = clock
        self._waiting: list[tuple[float, int, Ticket]] = []
        self._seq = 0
        self._busy = 0
        self._cooling: deque[float] = deque()  # when given-back turns free, oldest first
        self._channels: Counter[int] = Counter()
        self._futures: dict[Ticket, asyncio.Future[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    @property
    def rate(self) -> int:
        """Requests per window; may be changed at any time (:func:`shared_budget`)."""
        return self._rate

    @rate.setter
    def rate(self, rate: int) -> None:
        if not isinstance(rate, int) or rate < 1:
            raise ValueError(f"rate must be a whole number of requests of at least 1, got {rate}")
        self._rate = rate

    def now(self) -> float:
        return self._clock()

    # -- the channels streaming ----------------------------------------------------------------

    def open(self, channel_id: int) -> None:
        """A reply starts streaming in the channel."""
        self._channels[channel_id] += 1

    def close(self, channel_id: int) -> None:
        """A reply in the channel is done (every :meth:`open` gets one)."""
        self._channels[channel_id] -= 1
        if self._channels[channel_id] <= 0:
            del self._channels[channel_id]

    @property
    def active(self) -> int:
        """How many channels have a reply streaming."""
        return len(self._channels)

    def interval(self, least: float) -> float:
        """Seconds between two edits of a channel: `least`, or more when the channels streaming
        would together ask for more than the budget."""
        return max(least, self.active * self.window / self._rate)

    # -- turns: pure bookkeeping ---------------------------------------------------------------

    def ask(self, since: float | None = None) -> Ticket:
        """Queue a request of a reply that last wrote at `since` (``None``: its first write)."""
        self._seq += 1
        ticket = Ticket(-math.inf if since is None else since, self._seq)
        heapq.heappush(self._waiting, (ticket.rank, ticket.seq, ticket))
        return ticket

    def withdraw(self, ticket: Ticket) -> None:
        """Take back a ticket that is no longer wanted: out of the queue if it waits, its turn
        given back at once (it was not used) if it was granted."""
        if ticket.withdrawn:
            return
        ticket.withdrawn = True
        if ticket.granted:
            self._busy -= 1

    def done(self, ticket: Ticket) -> None:
        """The request of a granted ticket has ended; its turn frees `window` seconds from now."""
        if ticket.withdrawn or not ticket.granted:
            return
        ticket.withdrawn = True
        self._busy -= 1
        self._cooling.append(self._clock() + self.window)

    def spare(self) -> bool:
        """Whether a request may start now without making any waiting ticket wait longer."""
        return not self._pending() and self.free() > 0

    def _pending(self) -> bool:
        """Whether tickets wait (dropping the withdrawn ones at the head of the queue)."""
        while self._waiting and self._waiting[0][2].withdrawn:
            heapq.heappop(self._waiting)
        return bool(self._waiting)

    def free(self) -> int:
        """How many requests may start now."""
        now = self._clock()
        while self._cooling and self._cooling[0] <= now:
            self._cooling.popleft()
        return self._rate - self._busy - len(self._cooling)

    def grant(self) -> list[Ticket]:
        """Grant waiting tickets, best first, while the budget has room now; returns them."""
        granted: list[Ticket] = []
        free = self.free()
        while free > 0 and self._waiting:
            _, _, ticket = heapq.heappop(self._waiting)
            if ticket.withdrawn:
                continue
            ticket.granted = True
            self._busy += 1
            free -= 1
            granted.append(ticket)
        return granted

    def wait(self) -> float | None:
        """Seconds until a waiting ticket can be granted: ``None`` when none waits or only the
        end of a request under way (:meth:`done`) can make room."""
        if not self._pending():
            return None
        if self.free() > 0:
            return 0.0
        excess = self._busy + len(self._cooling) - self._rate  # turns to free beyond one
        if excess >= len(self._cooling):
            return None
        return max(0.0, self._cooling[excess] - self._clock())

    # -- turns: the asyncio wiring -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def turn(self, since: float | None = None) -> AsyncIterator[None]:
        """Wait for a turn for one request, made inside the ``async with``.

        Parameters
        ----------
        since: when the reply last wrote (``None``: this is its first write).
        """
        ticket = self.ask(since)
        self._pump()
        if not ticket.granted:
            future = asyncio.get_running_loop().create_future()
            self._futures[ticket] = future
            try:
                await future
            except BaseException:  # cancelled while waiting (or just after the grant)
                self._futures.pop(ticket, None)
                self.withdraw(ticket)
                self._pump()
                raise
        try:
            yield
        finally:
            self.done(ticket)
            self._pump()

    def _pump(self) -> None:
        """Wake the tickets that may go now, and set a timer for when the next may."""
        granted = self.grant()
        while granted:
            for ticket in granted:
                future = self._futures.pop(ticket, None)
                if future is None:  # granted in turn() itself, which goes on at once
                    continue
                if future.done() or future.get_loop().is_closed():  # its waiter is gone
                    self.withdraw(ticket)
                else:
                    future.set_result(None)
            granted = self.grant()  # turns a gone waiter gave back
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        delay = self.wait()
        if delay is not None:
            self._timer = asyncio.get_running_loop().call_later(delay, self._pump)


#: The budget shared by every streamed reply of the process.
BUDGET = RequestBudget()


def shared_budget(rate: int) -> RequestBudget:
    """The process's budget (:data:`BUDGET`), set to `rate` requests per second.

    Parameters
    ----------
    rate: requests per second, at least 1.

    Raises
    ------
    ValueError: a `rate` below 1.
    """
    if BUDGET.rate != rate:
        _log.info("Discord request budget: %d requests per second", rate)
        BUDGET.rate = rate
    return BUDGET


# --------------------------------------------------------------------------------------------
# Retrying writes


class RetryBudget:
    """When a failing Discord write is tried again: by time, not by count.

    The waits between tries start at `first` seconds and double up to `cap`; once the writes
    have failed for `budget` seconds in a row, :meth:`failed` says to give up. A success
    (:meth:`succeeded`) starts the next failure streak afresh. Pure bookkeeping over `clock`.
    """

    def __init__(
        self,
        budget: float,
        first: float,
        cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget < 0 or first <= 0 or cap <= 0:
            raise ValueError(f"need budget >= 0, first > 0, cap > 0; got {budget}, {first}, {cap}")
        self.budget, self.first, self.cap = budget, first, cap
        self._clock = clock
        self._since: float | None = None
        self._tries = 0

    @property
    def failing(self) -> bool:
        """Whether the last write failed."""
        return self._since is not None

    def elapsed(self) -> float:
        """Seconds since the current failure streak began (0.0 when not failing)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def remaining(self) -> float:
        """Seconds left of the budget (all of it when not failing)."""
        return self.budget - self.elapsed()

    def failed(self) -> float | None:
        """Record a failure; the seconds to wait before the next try, or ``None`` to give up."""
        now = self._clock()
        if self._since is None:
            self._since = now
        left = self._since + self.budget - now
        if left <= 0:
            return None
        delay = min(self.cap, self.first * 2.0**self._tries)
        self._tries += 1
        return min(delay, left)

    def succeeded(self) -> None:
        """Record a success: the next failure starts a new streak, with the whole budget."""
        self._since = None
        self._tries = 0


# --------------------------------------------------------------------------------------------
# Streaming a reply

#: Bound on one Discord request, including discord.py's own waiting out of 429s and retrying of
#: 5xx. A send that times out after Discord took it is found again by its nonce and the history
#: check, so it is not sent twice.
_REQUEST_TIMEOUT = 30.0
#: The least time a retried request gets, even when the retry budget is nearly spent.
_MIN_REQUEST_TIMEOUT = 5.0
#: Bound on closing the deltas' async generator (its cleanup frees the model's slot).
_CLOSE_TIMEOUT = 10.0
#: How many messages after the previous one the history check reads for a lost create.
_LOOKBACK = 25
#: The longest wait between two tries of a failing write.
_BACKOFF_CAP = 10.0


def _transient(exc: BaseException) -> bool:
    """Whether a failed request is worth another try."""
    if isinstance(exc, discord.HTTPException):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, (asyncio.TimeoutError, aiohttp.ClientError, OSError))


def _describe(channel: object) -> str:
    """The channel of a reply, for logs."""
    channel = getattr(channel, "channel", channel)  # a commands.Context
    if isinstance(channel, discord.DMChannel):
        return f"DM channel {channel.id}"
    name = getattr(channel, "name", None)
    return f"#{name} ({getattr(channel, 'id', '?')})" if name else repr(channel)


def _me(channel: object) -> discord.abc.Snowflake | None:
    """The bot's own user or member where `channel` tells it (DMs, contexts, guild channels)."""
    me = getattr(channel, "me", None)
    if me is None:
        me = getattr(getattr(channel, "guild", None), "me", None)
    return me if isinstance(getattr(me, "id", None), int) else None


class _ReplyWriter:
    """Writes the newest text of one reply at the channel's turns, until the final text is shown."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        reference: discord.Message | None,
        placeholder: discord.Message | None,
        interval: float,
        pacer: ChannelPacer,
        retry_budget: float,
        budget: RequestBudget,
        buttons: ReplyButtons | None = None,
    ) -> None:
        self._channel = channel
        self._buttons = buttons
        # The view each message shows (buttons only), and how many messages the text needs.
        self._views: list[object] = [] if placeholder is None else [_UNKNOWN_VIEW]
        self._count = len(self._views)
        self._reference = reference
        self._interval = interval
        self._pacer = pacer
        self._budget = budget
        self._retry = RetryBudget(retry_budget, first=interval, cap=_BACKOFF_CAP)
        # Key the pacer by the channel (a commands.Context is Messageable through its channel).
        self._key = getattr(getattr(channel, "channel", channel), "id", id(channel))
        self._text = ""
        self._final = False
        self._wrote = False
        self._served: float | None = None  # when the reply last wrote: its rank in the budget
        self._streaming = False
        self._backoff = 0.0
        self._wake = asyncio.Event()
        self.messages: list[discord.Message] = [] if placeholder is None else [placeholder]
        self.shown: list[str] = [] if placeholder is None else [placeholder.content]
        # The message being created: its nonce, and the contents sent in failed tries.
        self._nonce = secrets.randbits(63)
        self._tried: list[str] = []
        self.task = asyncio.create_task(self._run())

    def update(self, text: str, *, final: bool = False) -> None:
        if not self._streaming:  # the channel counts as streaming from the first text on
            self._streaming = True
            self._budget.open(self._key)
        self._text = text
        self._final = final
        self._wake.set()

    def close(self) -> None:
        """The reply is over: its channel no longer counts as streaming for it."""
        if self._streaming:
            self._streaming = False
            self._budget.close(self._key)

    @property
    def text(self) -> str:
        return self._text

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._planned():
                if self._final:
                    return
                continue
            delay = self._pacer.reserve(self._key, self._budget.interval(self._interval))
            if self._wrote or self._retry.failing:  # the first write goes at once
                await asyncio.sleep(max(delay, self._backoff))
            try:
                await self._flush()
                self._retry.succeeded()
                self._backoff = 0.0
            except Exception as exc:
                backoff = self._retry.failed() if _transient(exc) else None
                if backoff is None:
                    if _transient(exc):
                        self._give_up(exc)
                    raise
                self._backoff = backoff
                _log.warning(
                    "updating a reply in %s failed (%r); trying again in %.1f s",
                    _describe(self._channel),
                    exc,
                    backoff,
                )
            self._wake.set()  # check again: retry a failure, or see that the final text is shown

    def _give_up(self, exc: BaseException) -> None:
        missing = len(self._text) - sum(len(shown) for shown in self.shown)
        _log.error(
            "DISCORD OUTAGE: a reply of %d characters in %s could not be written for %.0f s "
            "(last error: %r); about %d characters of it are not shown and are lost",
            len(self._text),
            _describe(self._channel),
            self._retry.elapsed(),
            exc,
            max(missing, 0),
        )

    async def _flush(self) -> None:
        """Bring the messages up to the newest text: each request in its own turn of the budget.

        The writes are planned once the turn is granted, so everything that arrived while
        waiting is written at once: that is the coalescing. A flush makes at most the writes
        planned when it began; what is needed past those waits for the channel's next turn.
        """
        since = self._served
        for _ in range(len(self._planned())):
            if self._tried:  # a create failed: did Discord carry it out after all?
                async with self._budget.turn(since):
                    await asyncio.wait_for(self._recover_send(), self._timeout())
            if not self._planned():
                break  # the lost create was found and shows the text
            async with self._budget.turn(since):
                writes = self._planned()
                if not writes:
                    break
                await asyncio.wait_for(self._apply(writes[0]), self._timeout())
        self._served = self._budget.now()

    def _planned(self) -> list[Write]:
        """The writes that bring the messages up to the newest text (:func:`plan_writes`)
        and, with buttons, an edit of each message whose view is not the one it should show."""
        writes = plan_writes(self._text, self.shown, final=self._final)
        if self._buttons is None:
            return writes
        self._count = len(self.shown) + sum(w.new for w in writes) - sum(w.delete for w in writes)
        planned = {w.index: w for w in writes}
        for index, view in enumerate(self._views):
            if view is not self._view_for(index) and index not in planned:
                planned[index] = Write(index, self.shown[index], False)
        return [planned[index] for index in sorted(planned)]

    def _view_for(self, index: int) -> discord.ui.View | None:
        """The view message `index` should show: the reply's buttons on its last message."""
        if self._buttons is None or index != view_index(self._count):
            return None
        return self._buttons.done if self._final else self._buttons.streaming

    def _timeout(self) -> float:
        """The bound on one request: shorter while failing, so the retry budget holds."""
        if not self._retry.failing:
            return _REQUEST_TIMEOUT
        return min(_REQUEST_TIMEOUT, max(self._retry.remaining(), _MIN_REQUEST_TIMEOUT))

    async def _recover_send(self) -> None:
        """Continue the message a failed create made after all, if the channel shows it."""
        message = await self._find_lost_send()
        if message is not None:
            self._add(message)

    def _add(self, message: discord.Message, view: object = _UNKNOWN_VIEW) -> None:
        self.messages.append(message)
        self.shown.append(message.content)
        self._views.append(view)
        self._nonce, self._tried = secrets.randbits(63), []

    async def _apply(self, write: Write) -> None:
        """Make one request: create message `write.index`, edit it, or delete it."""
        self._wrote = True
        if write.delete:
            await self.messages[write.index].delete()
            del self.messages[write.index], self.shown[write.index], self._views[write.index]
            return
        if write.new:
            view = self._view_for(write.index)
            self._add(await self._send(write.content, view), view)
            return
        if self._buttons is None:
            message = await self.messages[write.index].edit(
                content=write.content, allowed_mentions=SAFE_MENTIONS
            )
        else:
            view = self._view_for(write.index)
            message = await self.messages[write.index].edit(
                content=write.content, allowed_mentions=SAFE_MENTIONS, view=view
            )
            self._views[write.index] = view
        self.messages[write.index] = message
        self.shown[write.index] = write.content

    async def _send(self, content: str, view: discord.ui.View | None) -> discord.Message:
        reference = None
        if self._reference is not None and not self.messages:
            reference = self._reference.to_reference(fail_if_not_exists=False)
        self._tried.append(content)
        # The nonce makes Discord itself drop a repeated create (discord.py retries 5xx inside).
        extra: dict[str, Any] = {} if view is None else {"view": view}
        if reference is None:
            return await self._channel.send(
                content, allowed_mentions=SAFE_MENTIONS, nonce=self._nonce, **extra
            )
        return await self._channel.send(
            content, reference=reference, allowed_mentions=SAFE_MENTIONS, nonce=self._nonce, **extra
        )

    async def _find_lost_send(self) -> discord.Message | None:
        """The message a failed create made after all (Discord may create it, then fail).

        Looks at the channel's messages after the previous message of this reply (or after the
        message it replies to) for the bot's message with the content of a failed try.
        """
        me = _me(self._channel)
        anchor = self.messages[-1] if self.messages else self._reference
        if me is None or anchor is None:
            return None
        try:
            async for message in self._channel.history(limit=_LOOKBACK, after=anchor):
                if message.author.id != me.id or message.content not in self._tried:
                    continue
                if self.messages or _replies_to(message, anchor):
                    _log.info("a failed send had created its message after all; continuing it")
                    return message
        except discord.Forbidden as exc:  # no Read Message History: rely on the nonce alone
            _log.warning("cannot check %s for a lost message: %r", _describe(self._channel), exc)
        return None


def _replies_to(message: discord.Message, reference: discord.abc.Snowflake) -> bool:
    return message.reference is not None and message.reference.message_id == reference.id


#: Seconds between two typing requests (Discord shows the indicator for 10 s after each).
_TYPING_EVERY = 5.0
#: Seconds before a typing request the budget could not spare is looked at again.
_TYPING_RETRY = 0.5


async def keep_typing(
    channel: discord.abc.Messageable, budget: RequestBudget | None = None
) -> None:
    """Show the typing indicator in `channel` until cancelled; a failure only logs.

    Parameters
    ----------
    channel: where to show it.
    budget: when given, a typing request (one every 5 s) is sent only when the budget has a
        turn to spare at that moment, so typing never delays a reply's writes nor crowds out
        another reply; without one it is looked at again half a second later.
    """
    try:
        if budget is None:
            async with channel.typing():
                await asyncio.Event().wait()
        while budget is not None:
            if not budget.spare():
                await asyncio.sleep(_TYPING_RETRY)
                continue
            async with budget.turn(math.inf):
                await channel.typing()
            await asyncio.sleep(_TYPING_EVERY)
    except Exception as exc:  # a missing typing indicator is no reason to fail a reply
        _log.debug("typing indicator failed: %r", exc)


async def _close(iterator: AsyncIterator[str]) -> None:
    """Close an async generator of deltas, within a bound."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await asyncio.wait_for(aclose(), _CLOSE_TIMEOUT)
    except Exception as exc:  # the reply is what matters here; the generator's cleanup is not
        _log.warning("closing the deltas of a reply failed: %r", exc)


def _note(text: str) -> str:
    return f"*{text}*"


def _with_error(text: str, error_text: str) -> str:
    if _unclosed(text):
        text += _CLOSE
    return f"{text}\n\n{_note(error_text)}" if is_visible(text) else _note(error_text)


#: Which note a failure gets, by its type (the first that matches; none: the error note):
#: the reply's own stall timeout and the backend's stall (e.g. the OpenAI backend's
#: ``token_timeout``) say the model stopped responding, the backend's first-token timeout that
#: it took too long.
FAILURE_NOTES: tuple[tuple[type[BaseException], str], ...] = (
    (asyncio.TimeoutError, "stall"),
    (TimeoutError, "stall"),
    (StallTimeout, "stall"),
    (FirstTokenTimeout, "slow"),
)


def failure_note(failure: BaseException) -> str:
    """The note :data:`FAILURE_NOTES` gives ``failure``: ``"stall"``, ``"slow"`` or
    ``"error"``."""
    return next((note for kind, note in FAILURE_NOTES if isinstance(failure, kind)), "error")


def final_text(
    text: str,
    failure: BaseException | None,
    *,
    error_text: str = DEFAULT_ERROR_TEXT,
    stall_text: str = DEFAULT_STALL_TEXT,
    empty_text: str | None = DEFAULT_EMPTY_TEXT,
    slow_text: str = DEFAULT_SLOW_TEXT,
) -> str:
    """What a reply finally shows, given the generated `text` and how generation ended.

    A failure appends its note in italics to the text so far (see :func:`failure_note`):
    `stall_text` for a timeout or a backend's :class:`~genbot.streaming.StallTimeout`,
    `slow_text` for a backend's :class:`~genbot.streaming.FirstTokenTimeout`, else
    `error_text`; a generation with nothing visible (see :func:`is_visible`) shows
    `empty_text` in italics instead (``None``: nothing).
    """
    if failure is not None:
        notes = {"stall": stall_text, "slow": slow_text, "error": error_text}
        return _with_error(text, notes[failure_note(failure)])
    if is_visible(text) or empty_text is None:
        return text
    return _note(empty_text)


async def stream_reply(
    channel: discord.abc.Messageable,
    deltas: AsyncIterable[str],
    *,
    reference: discord.Message | None = None,
    placeholder: discord.Message | None = None,
    interval: float = 1.0,
    error_text: str = DEFAULT_ERROR_TEXT,
    stall_text: str = DEFAULT_STALL_TEXT,
    empty_text: str | None = DEFAULT_EMPTY_TEXT,
    timeout: float | None = 60.0,
    retry_budget: float = 60.0,
    pacer: ChannelPacer = PACER,
    budget: RequestBudget = BUDGET,
    buttons: ReplyButtons | None = None,
) -> list[discord.Message]:
    """Stream the text `deltas` into `channel` as a message edited in place; return the messages.

    The typing indicator shows until the first visible delta, which sends the message (replying
    to `reference` if given), or edits `placeholder` (a message the caller already sent in
    reply, e.g. a "queued" note) into the reply. Later deltas are coalesced into edits, at most
    one per channel per `interval` seconds, shared with other replies in the same channel. The
    final text is always written; past 2000 characters the reply continues in new messages (see
    :func:`split_message`). Every message allows only :data:`SAFE_MENTIONS`.

    Every create and edit (and the history check below) takes a turn of `budget`, the bot-wide
    budget of Discord requests (:class:`RequestBudget`): a reply's first message goes before
    the edits of other replies, and when more channels stream than the budget allows at
    `interval`, each channel's edits are spaced further apart (``channels / rate`` seconds).
    The typing indicator takes only turns the budget can spare (see :func:`keep_typing`).

    Every reply has a visible outcome: if `deltas` raises, or yields nothing for `timeout`
    seconds (the stall timeout, ``None``: no bound), the text so far is kept and a note in
    italics is appended (see :func:`final_text`: `stall_text` for the timeout or a backend's
    stall, :data:`DEFAULT_SLOW_TEXT` for a backend's first-token timeout, else `error_text`);
    once that is shown, the exception is re-raised for the caller to log. A generation with no
    visible character (empty, whitespace, zero-width characters) shows ``*empty_text*``
    (``None``: sends nothing and returns ``[]``).

    Discord failures lose no text: discord.py waits out 429s, and a write that fails with a 5xx
    or a network error is tried again with the newest text, after back-off waits doubling from
    `interval` up to 10 s, for up to `retry_budget` seconds of failing in a row. A message
    create is sent with a nonce (Discord drops a repeated one), and before a failed create is
    sent again, the channel's history is checked for it, so a create that Discord carried out
    before failing is not doubled. When the budget is spent, an ERROR is logged with the
    reply's size and channel, and the Discord error raised.

    Parameters
    ----------
    channel: where to reply (any :class:`discord.abc.Messageable`).
    deltas: the reply's text, in pieces; closed (``aclose``) when done.
    reference: the message replied to.
    placeholder: a message of the bot's, replying to `reference`, that becomes the reply.
    interval: the least seconds between two edits in the channel.
    error_text, stall_text, empty_text: the notes described above.
    timeout: the most seconds to wait for each delta (the first included).
    retry_budget: the most seconds writes may fail in a row before the reply gives up.
    pacer: the pacer that spaces the edits of each channel.
    budget: the budget of Discord requests shared by every reply of the process.
    buttons: the buttons of the reply's last message (:class:`ReplyButtons`: one view while
        streaming, one when done); ``None`` (the default): the reply's messages are sent and
        edited without touching their components. Moving the buttons to a new last message,
        or swapping them when the reply is done, may cost one more edit.

    Raises
    ------
    Exception: what `deltas` raised (:class:`asyncio.TimeoutError` on a stall), after the note
        is shown; or the :class:`discord.HTTPException` (or network error) that made writing
        the reply fail: a non-transient one at once, a transient one after `retry_budget`.
    If the caller cancels, the messages stay as they were last written.
    """
    iterator: AsyncIterator[str] = aiter(deltas)
    writer = _ReplyWriter(
        channel, reference, placeholder, interval, pacer, retry_budget, budget, buttons
    )
    typing = asyncio.create_task(keep_typing(channel, budget))
    text = ""
    failure: Exception | None = None
    try:
        try:
            while not writer.task.done():  # a writer that failed ends the reply early
                try:
                    delta = await asyncio.wait_for(anext(iterator), timeout)
                except StopAsyncIteration:
                    break
                text += delta
                if is_visible(text):
                    typing.cancel()
                    writer.update(text)
        except Exception as exc:
            failure = exc
        finally:
            typing.cancel()
            await _close(iterator)
        writer.update(
            final_text(
                text, failure, error_text=error_text, stall_text=stall_text, empty_text=empty_text
            ),
            final=True,
        )
        try:
            await writer.task
        except Exception:
            if failure is not None:
                _log.error("generating a reply failed", exc_info=failure)
            raise
    finally:
        for task in (writer.task, typing):
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        writer.close()
    if failure is not None:
        raise failure
    return writer.messages
