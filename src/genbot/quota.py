"""Rate limits and daily token quotas, and the usage counts behind them and ``/usage``.

Three limits, each off by default (settings ``user_rate``, ``user_tokens_per_day``,
``server_tokens_per_day``); the bot's admins are exempt from all three:

- **rate**: at most ``count`` chats a user starts per ``period`` (``"6/minute"``), over a
  sliding window: the user may start another once the oldest of the last ``count`` is a
  ``period`` old. Kept in memory (a restart forgets it: the window is short);
- **tokens per day**, per user (in every server and DM together) and per server: the tokens of
  the replies generated since 00:00 UTC. A chat is refused once the count reached the quota;
  replies already under way finish, so a quota can be overrun by what they generate (at most
  ``max_new_tokens`` each). Counted in the bot's data store (:mod:`genbot.store`), so they
  survive a restart; days older than :data:`KEEP_DAYS` are dropped when the bot starts.

**Tokens counted** are an estimate of the tokens generated, the same for every backend: the
larger of the number of non-empty text deltas the backend streamed (llama.cpp and OpenAI-compatible
servers stream about one delta per token, the transformers backend one per decoding step) and
the reply's characters divided by 4, rounded up (a backend that streams bigger chunks is still
counted about right for English text). See :func:`estimate_tokens`.

**Notices**: a refused chat gets one short reply saying which limit and when it resets; further
refused chats of the same user and limit get none until it resets (:class:`Notices`; in
memory, so a restart may notice once more). The decisions are pure (:class:`Rate`,
:class:`RateLimiter`, :class:`Notices`, :func:`over_quota`); :class:`Usage` wires them to the
store.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from genbot.store import Store, StoreError

__all__ = [
    "KEEP_DAYS",
    "LimitTexts",
    "Notices",
    "Rate",
    "RateLimiter",
    "Refusal",
    "Usage",
    "Used",
    "estimate_tokens",
    "over_quota",
]

_log = logging.getLogger(__name__)

#: What a failing store raises: logged, and the chat goes on (the bot stays useful).
_STORE_ERRORS = (sqlite3.Error, OSError, StoreError)

#: Days of usage counts kept in the data store.
KEEP_DAYS = 90
DAY = 86400.0

#: Seconds of each period a rate may name.
_PERIODS = {
    **dict.fromkeys(("second", "seconds", "sec", "secs", "s"), 1.0),
    **dict.fromkeys(("minute", "minutes", "min", "mins", "m"), 60.0),
    **dict.fromkeys(("hour", "hours", "hr", "hrs", "h"), 3600.0),
    **dict.fromkeys(("day", "days", "d"), DAY),
}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*", re.IGNORECASE)
#: The most chats a rate may allow per period.
MAX_RATE_COUNT = 1_000_000


def estimate_tokens(deltas: int, chars: int) -> int:
    """The tokens a reply counts for: ``max(deltas, ceil(chars / 4))`` (module docstring)."""
    return max(deltas, math.ceil(chars / 4))


# -- rate limit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """At most ``count`` chats per ``period`` seconds; ``text`` is how it was written."""

    count: int
    period: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """``"<count>/<period>"``, the period ``second``, ``minute``, ``hour`` or ``day`` (or
        a plural, ``s``, ``sec``, ``m``, ``min``, ``h``, ``hr``, ``d``), optionally with a
        multiple: ``"6/minute"``, ``"1/second"``, ``"20/5 minutes"``. Empty: no limit (``None``).

        Raises
        ------
        ValueError
            Any other text, a count of 0 or above :data:`MAX_RATE_COUNT`, a multiple of 0.
        """
        if not text.strip():
            return None
        match = _RATE.fullmatch(text)
        unit = match and match.group(3).lower()
        if match is None or unit not in _PERIODS:
            raise ValueError(
                "must be '<count>/<period>' with period second, minute, hour or day, "
                "such as '6/minute'"
            )
        count, multiple = int(match.group(1)), int(match.group(2) or 1)
        if not 1 <= count <= MAX_RATE_COUNT:
            raise ValueError(f"the count must be from 1 to {MAX_RATE_COUNT}")
        if multiple < 1:
            raise ValueError("the period's multiple must be at least 1")
        return cls(count, multiple * _PERIODS[unit], text.strip())


class RateLimiter:
    """Sliding-window rate limit per key (pure: the caller passes the time).

    Parameters
    ----------
    rate:
        The limit; ``None``: every key may always go.
    """

    def __init__(self, rate: Rate | None) -> None:
        self.rate = rate
        self._hits: dict[Hashable, deque[float]] = {}

    def wait(self, key: Hashable, now: float) -> float:
        """Seconds until ``key`` may start a chat (0: now); records nothing."""
        hits = self._hits.get(key)
        if self.rate is None or hits is None or len(hits) < self.rate.count:
            return 0.0
        return max(0.0, hits[-self.rate.count] + self.rate.period - now)

    def hit(self, key: Hashable, now: float) -> None:
        """Record that ``key`` started a chat at ``now``."""
        if self.rate is None:
            return
        hits = self._hits.get(key)
        if hits is None or hits.maxlen != self.rate.count:  # new, or the rate was reloaded
            hits = self._hits[key] = deque(hits or (), maxlen=self.rate.count)
        hits.append(now)
        if len(self._hits) > 1024 and len(self._hits) % 1024 == 0:
            self.forget(now)

    def forget(self, now: float) -> None:
        """Drop the keys whose newest chat is older than the period (they may go anyway)."""
        period = self.rate.period if self.rate is not None else 0.0
        for key in [k for k, hits in self._hits.items() if hits[-1] + period <= now]:
            del self._hits[key]


# -- quotas -------------------------------------------------------------------------------------


def day_of(now: float) -> str:
    """The UTC date of ``now`` (seconds since the epoch), as ``YYYY-MM-DD``."""
    return dt.datetime.fromtimestamp(now, dt.timezone.utc).date().isoformat()


def next_midnight(now: float) -> float:
    """When the UTC day of ``now`` ends (seconds since the epoch)."""
    return (math.floor(now / DAY) + 1) * DAY


@dataclass(frozen=True)
class Refusal:
    """Why a chat is refused: ``kind`` (``"rate"``, ``"user_quota"`` or ``"server_quota"``),
    the ``limit`` as configured, when it resets (``until``, seconds since the epoch), and
    whether the user should be told (the first refusal of this kind until it resets)."""

    kind: str
    limit: str
    until: float
    notify: bool = True


def over_quota(
    user_used: int, user_quota: int, server_used: int, server_quota: int, now: float
) -> Refusal | None:
    """The quota a new chat would break (quotas of 0 are off), the user's first, or ``None``."""
    if user_quota and user_used >= user_quota:
        return Refusal("user_quota", str(user_quota), next_midnight(now))
    if server_quota and server_used >= server_quota:
        return Refusal("server_quota", str(server_quota), next_midnight(now))
    return None


class Notices:
    """Whom a limit was told already, until when (pure: the caller passes the time)."""

    def __init__(self) -> None:
        self._until: dict[Hashable, float] = {}

    def first(self, key: Hashable, until: float, now: float) -> bool:
        """Whether to tell ``key`` now: not if it was told and that limit has not reset yet.
        When it is told, it is not told again before ``until``."""
        if self._until.get(key, 0.0) > now:
            return False
        if len(self._until) >= 1024:
            self._until = {k: u for k, u in self._until.items() if u > now}
        self._until[key] = until
        return True


# -- texts --------------------------------------------------------------------------------------


def format_wait(seconds: float) -> str:
    """``"12 s"``, ``"3 min"``, ``"5 h 12 min"``: a wait, rounded up, for people."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


@dataclass(frozen=True)
class LimitTexts:
    """What a refused chat is told, by refusal kind. ``{limit}``: the limit as configured,
    ``{wait}``: how long until it resets. Override with ``ChatBot.limit_texts = LimitTexts(...)``.
    """

    rate: str = "You are sending messages too fast (limit: {limit}). Try again in {wait}."
    user_quota: str = (
        "You have used your {limit} tokens for today. The quota resets at 00:00 UTC, in {wait}."
    )
    server_quota: str = (
        "This server has used its {limit} tokens for today. The quota resets at 00:00 UTC, "
        "in {wait}."
    )

    def notice(self, refusal: Refusal, now: float) -> str:
        """The notice for ``refusal`` at time ``now``."""
        text: str = getattr(self, refusal.kind)
        return text.format(limit=refusal.limit, wait=format_wait(refusal.until - now))


# -- the counts in the store --------------------------------------------------------------------

#: The usage tables' migrations (append-only; see genbot.store).
MIGRATIONS = [
    """
    CREATE TABLE usage (
        day TEXT NOT NULL,          -- the UTC date, YYYY-MM-DD
        scope TEXT NOT NULL,        -- 'user' or 'server'
        id INTEGER NOT NULL,        -- the user's or the server's Discord id
        tokens INTEGER NOT NULL DEFAULT 0,
        replies INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (day, scope, id)
    )
    """,
]

_ADD = """
INSERT INTO usage (day, scope, id, tokens, replies) VALUES (?, ?, ?, ?, 1)
ON CONFLICT (day, scope, id) DO UPDATE
SET tokens = tokens + excluded.tokens, replies = replies + 1
"""


@dataclass(frozen=True)
class Used:
    """What a user or server used on one UTC day."""

    tokens: int = 0
    replies: int = 0


class Usage:
    """Counts each reply's tokens per user and server and day, and refuses chats over the
    limits (see the module docstring).

    Parameters
    ----------
    store:
        The bot's data store; :meth:`open` opens it and creates the tables.
    rate:
        The per-user rate limit, or ``None``.
    user_tokens_per_day, server_tokens_per_day:
        The daily quotas; 0: none.
    clock:
        Seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        store: Store,
        *,
        rate: Rate | None = None,
        user_tokens_per_day: int = 0,
        server_tokens_per_day: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.limiter = RateLimiter(rate)
        self.user_tokens_per_day = user_tokens_per_day
        self.server_tokens_per_day = server_tokens_per_day
        self.clock = clock
        self.notices = Notices()

    @property
    def rate(self) -> Rate | None:
        return self.limiter.rate

    async def open(self) -> None:
        """Open the store, create or migrate the tables, drop days older than KEEP_DAYS.

        Raises
        ------
        genbot.store.StoreError
            The store cannot be opened or migrated.
        """
        await self.store.open()
        await self.store.migrate("usage", MIGRATIONS)
        oldest = day_of(self.clock() - KEEP_DAYS * DAY)
        await self.store.execute("DELETE FROM usage WHERE day < ?", (oldest,))

    async def used(self, scope: str, id: int, now: float | None = None) -> Used:
        """What the user (``scope="user"``) or server (``"server"``) ``id`` used on the UTC day
        of ``now`` (default: today)."""
        day = day_of(self.clock() if now is None else now)
        row = await self.store.fetchone(
            "SELECT tokens, replies FROM usage WHERE day = ? AND scope = ? AND id = ?",
            (day, scope, id),
        )
        return Used() if row is None else Used(int(row[0]), int(row[1]))

    async def record(self, user: int, server: int | None, tokens: int) -> None:
        """Count one reply of ``tokens`` tokens for ``user`` (and ``server``, unless a DM).
        A failure is logged, not raised: the reply was given already."""
        day = day_of(self.clock())
        rows = [(day, "user", user, tokens)]
        if server is not None:
            rows.append((day, "server", server, tokens))
        try:
            async with self.store.transaction():
                await self.store.executemany(_ADD, rows)
        except _STORE_ERRORS as exc:
            _log.error("counting %d tokens of user %s failed: %r", tokens, user, exc)

    async def admit(self, user: int, server: int | None, *, exempt: bool = False) -> Refusal | None:
        """Whether ``user`` may start a chat (in ``server``, ``None`` for a DM) now: ``None``
        if so (and the chat counts for the rate limit), else why not, with ``notify`` set for
        the first refusal until that limit resets. ``exempt`` (admins): always ``None``.
        When the store fails, the chat is let through and the error logged."""
        if exempt:
            return None
        now = self.clock()
        try:
            refusal = await self._quota(user, server, now)
        except _STORE_ERRORS as exc:
            _log.error("reading the usage of user %s failed; not limiting: %r", user, exc)
            refusal = None
        if refusal is None and (wait := self.limiter.wait(user, now)) > 0:
            assert self.rate is not None
            refusal = Refusal("rate", self.rate.text, now + wait)
        if refusal is None:
            self.limiter.hit(user, now)
            return None
        key = (refusal.kind, user, server if refusal.kind == "server_quota" else None)
        return replace(refusal, notify=self.notices.first(key, refusal.until, now))

    async def _quota(self, user: int, server: int | None, now: float) -> Refusal | None:
        if not (self.user_tokens_per_day or self.server_tokens_per_day):
            return None
        user_used = server_used = 0
        if self.user_tokens_per_day:
            user_used = (await self.used("user", user, now)).tokens
        if server is not None and self.server_tokens_per_day:
            server_used = (await self.used("server", server, now)).tokens
        return over_quota(
            user_used, self.user_tokens_per_day, server_used, self.server_tokens_per_day, now
        )
