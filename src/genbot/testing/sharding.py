"""Sharding as Discord does it, for the loopback server: which shard an event goes to, the
``shard`` field of an IDENTIFY, and the session start limit (``remaining`` IDENTIFYs in all, at
most one IDENTIFY per rate-limit bucket every `IDENTIFY_INTERVAL` seconds, where a shard's
bucket is ``shard_id % max_concurrency``).

Pure decisions only; the gateway (`genbot.testing.gateway`) acts on them.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "IDENTIFY_INTERVAL",
    "IdentifyVerdict",
    "SessionStartLimit",
    "event_guild_id",
    "parse_shard",
    "receives",
    "shard_of",
]

_log = logging.getLogger(__name__)

#: Discord's window: one IDENTIFY per bucket per 5 seconds.
IDENTIFY_INTERVAL = 5.0
#: How long the session start budget lasts before it is refilled (Discord: a day).
RESET_PERIOD = 86_400.0

# Events whose data is the guild itself ("id"), not something in a guild ("guild_id").
_GUILD_EVENTS = frozenset({"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"})


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that gets a guild's events: ``(guild_id >> 22) % shard_count``; DMs (``None``)
    go to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def event_guild_id(event: str, data: dict[str, Any]) -> int | None:
    """The guild a dispatch belongs to (``None``: none, as for a DM's events)."""
    raw = data.get("id") if event in _GUILD_EVENTS else data.get("guild_id")
    return None if raw is None else int(raw)


def receives(shard: tuple[int, int] | None, guild_id: int | None) -> bool:
    """Whether a session identified with `shard` (``None``: unsharded, gets everything) gets
    the events of `guild_id` (``None``: a DM)."""
    if shard is None:
        return True
    shard_id, shard_count = shard
    return shard_of(guild_id, shard_count) == shard_id


def parse_shard(value: object) -> tuple[int, int] | None:
    """The ``shard`` of an IDENTIFY as ``(shard_id, shard_count)``; ``None`` when absent.

    Raises
    ------
    ValueError
        Not ``[shard_id, shard_count]`` with ``0 <= shard_id < shard_count`` (Discord closes
        the connection with 4010 Invalid shard).
    """
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"shard must be [shard_id, shard_count], got {value!r}")
    shard_id, shard_count = value
    valid = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not valid or not 0 <= shard_id < shard_count:
        raise ValueError(f"invalid shard {value!r}")
    return shard_id, shard_count


class IdentifyVerdict(enum.Enum):
    """What the session start limit says to an IDENTIFY."""

    ACCEPTED = "accepted"
    #: Another IDENTIFY of the same bucket came less than `IDENTIFY_INTERVAL` s ago: Discord
    #: answers Invalid Session (op 9, not resumable).
    TOO_SOON = "too soon"
    #: ``remaining`` is 0: Discord resets the token, so the IDENTIFY fails authentication.
    EXHAUSTED = "exhausted"


class SessionStartLimit:
    """The ``session_start_limit`` of ``/gateway/bot`` and its enforcement.

    Parameters
    ----------
    total:
        IDENTIFYs allowed per `reset_period` seconds (Discord: 1000 a day).
    max_concurrency:
        Rate-limit buckets: shard ``k`` is in bucket ``k % max_concurrency``.
    interval:
        Seconds between two IDENTIFYs of one bucket (Discord: 5).
    clock:
        A monotonic clock, in seconds.

    Raises
    ------
    ValueError
        A `total` or `max_concurrency` below 1, or a negative `interval`.
    """

    def __init__(
        self,
        *,
        total: int = 1000,
        max_concurrency: int = 1,
        interval: float = IDENTIFY_INTERVAL,
        reset_period: float = RESET_PERIOD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1 or max_concurrency < 1 or not interval >= 0:
            raise ValueError(
                "session start limit needs total >= 1, max_concurrency >= 1, interval >= 0; "
                f"got {total!r}, {max_concurrency!r}, {interval!r}"
            )
        self.total = total
        self.max_concurrency = max_concurrency
        self.interval = interval
        self.reset_period = reset_period
        self._clock = clock
        self._used = 0
        self._reset_at: float | None = None
        self._last: dict[int, float] = {}  # bucket: time of its last accepted IDENTIFY

    def bucket(self, shard_id: int) -> int:
        return shard_id % self.max_concurrency

    def _refill(self, now: float) -> None:
        if self._reset_at is not None and now >= self._reset_at:
            self._used, self._reset_at = 0, None

    def remaining(self) -> int:
        self._refill(self._clock())
        return self.total - self._used

    def to_json(self) -> dict[str, int]:
        """The ``session_start_limit`` object (``reset_after`` in milliseconds)."""
        now = self._clock()
        self._refill(now)
        reset_after = 0 if self._reset_at is None else self._reset_at - now
        return {
            "total": self.total,
            "remaining": self.total - self._used,
            "reset_after": int(reset_after * 1000),
            "max_concurrency": self.max_concurrency,
        }

    def identify(self, shard_id: int) -> IdentifyVerdict:
        """Judge an IDENTIFY of `shard_id` (0 when unsharded), counting it when accepted."""
        now = self._clock()
        self._refill(now)
        if self._used >= self.total:
            return IdentifyVerdict.EXHAUSTED
        bucket = self.bucket(shard_id)
        last = self._last.get(bucket)
        if last is not None and now - last < self.interval:
            return IdentifyVerdict.TOO_SOON
        self._last[bucket] = now
        self._used += 1
        if self._reset_at is None:
            self._reset_at = now + self.reset_period
        return IdentifyVerdict.ACCEPTED
