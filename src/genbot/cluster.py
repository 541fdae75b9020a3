"""Sharding a bot over processes: which shard a guild is on, which shards a process runs, and
an optional Redis-backed identify lock so that processes starting together keep Discord's
identify rate limit.

Discord lets a bot IDENTIFY once per rate-limit *bucket* every 5 seconds; shard ``k`` is in
bucket ``k % max_concurrency`` (``max_concurrency`` comes with ``GET /gateway/bot``, 1 for most
bots). discord.py spaces the IDENTIFYs of the shards of *one* process (its
``before_identify_hook`` sleeps 5 s before every IDENTIFY but the first), but two processes
know nothing of each other: their first shards identify at once and one is refused (Invalid
Session), costing it a retry. :class:`RedisIdentifyLock` takes a per-bucket lease in Redis
(``SET key NX PX``) before each IDENTIFY, held for the 5 s window plus a margin, so every
process of the bot waits its turn. Install it with ``pip install 'genbot[cluster]'``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "IDENTIFY_WINDOW",
    "RedisIdentifyLock",
    "check_shards",
    "identify_in_turn",
    "shard_of",
    "syncs_commands",
]

_log = logging.getLogger(__name__)

#: Discord's identify window per bucket, in seconds.
IDENTIFY_WINDOW = 5.0
#: Added to the window, for the IDENTIFY's way from the process to Discord.
IDENTIFY_MARGIN = 0.5


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that gets a guild's events, ``(guild_id >> 22) % shard_count``; 0 for a DM
    (``guild_id`` ``None``), as Discord routes them."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def check_shards(shard_count: int | None, shard_ids: Sequence[int] | None) -> list[int] | None:
    """Check a process's shard settings; returns ``shard_ids`` as a sorted list (or ``None``:
    every shard of ``shard_count``).

    Parameters
    ----------
    shard_count:
        Shards of the whole bot, at least 1; ``None`` only without ``shard_ids`` (then
        discord.py asks Discord for the recommended count).
    shard_ids:
        The shards this process runs, each in ``0 .. shard_count - 1``, no repeats.

    Raises
    ------
    ValueError
        A count below 1, ``shard_ids`` without a count, an id out of range or repeated, or an
        empty list.
    """
    if shard_count is not None and (isinstance(shard_count, bool) or shard_count < 1):
        raise ValueError(f"shard_count must be at least 1, got {shard_count!r}")
    if shard_ids is None:
        return None
    if shard_count is None:
        raise ValueError("shard_ids needs shard_count (the shards of the whole bot)")
    ids = list(shard_ids)
    if not ids:
        raise ValueError("shard_ids must name at least one shard")
    bad = [i for i in ids if isinstance(i, bool) or not 0 <= i < shard_count]
    if bad:
        raise ValueError(f"shard_ids must be in 0..{shard_count - 1}, got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"shard_ids repeats a shard: {ids!r}")
    return sorted(ids)


def syncs_commands(shard_ids: Sequence[int] | None) -> bool:
    """Whether a process running ``shard_ids`` (``None``: all, or unsharded) syncs the slash
    commands: only the one holding shard 0, so that N processes do not sync N times."""
    return shard_ids is None or 0 in shard_ids


class RedisIdentifyLock:
    """One IDENTIFY per rate-limit bucket per window, across every process that shares a Redis.

    Before each IDENTIFY, :meth:`acquire` sets ``genbot:identify:<bot>:<bucket>`` with ``NX``
    and an expiry of ``window + margin`` seconds; while another process holds it, it waits for
    the key's remaining time and tries again. The lease is never released early: its expiry is
    the rate limit. ``<bot>`` is a hash of the bot's token, so bots sharing a Redis do not
    wait for each other.

    Parameters
    ----------
    url:
        A redis-py URL: ``redis://host:port/db``, ``rediss://...`` or ``unix:///path``.
    window, margin:
        Seconds a lease lasts: Discord's 5 s window plus a margin for the way.
    timeout:
        Most seconds :meth:`acquire` waits before it raises.

    Raises
    ------
    RuntimeError
        The ``redis`` package is not installed (``pip install 'genbot[cluster]'``).
    ValueError
        A URL redis-py does not accept.
    """

    def __init__(
        self,
        url: str,
        *,
        window: float = IDENTIFY_WINDOW,
        margin: float = IDENTIFY_MARGIN,
        timeout: float = 600.0,
        prefix: str = "genbot:identify",
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as error:  # pragma: no cover - the extra is installed in tests
            raise RuntimeError(
                "cluster_redis needs the redis package: pip install 'genbot[cluster]'"
            ) from error
        self.url = url
        self.hold_ms = int((window + margin) * 1000)
        self.timeout = timeout
        self.prefix = prefix
        self._redis: redis.asyncio.Redis = aioredis.Redis.from_url(url)
        self._holder = secrets.token_hex(8)

    def key(self, token: str, bucket: int) -> str:
        bot = hashlib.sha256(token.encode()).hexdigest()[:16]
        return f"{self.prefix}:{bot}:{bucket}"

    async def acquire(self, token: str, bucket: int) -> None:
        """Wait until this process may IDENTIFY in ``bucket``, and take the bucket's lease.

        Parameters
        ----------
        token:
            The bot's token (hashed into the key).
        bucket:
            ``shard_id % max_concurrency``.

        Raises
        ------
        TimeoutError
            No lease within ``timeout`` seconds.
        redis.exceptions.RedisError
            Redis cannot be reached or refuses.
        """
        key = self.key(token, bucket)
        deadline = time.monotonic() + self.timeout
        while not await self._redis.set(key, self._holder, nx=True, px=self.hold_ms):
            left_ms = await self._redis.pttl(key)
            wait = max(left_ms, 10) / 1000  # -1/-2: no expiry or gone: look again soon
            if time.monotonic() + wait > deadline:
                raise TimeoutError(f"no identify lease for bucket {bucket} in {self.timeout} s")
            _log.debug("bucket %d identified elsewhere; waiting %.2f s", bucket, wait)
            await asyncio.sleep(wait)
        _log.debug("identify lease for bucket %d taken", bucket)

    async def close(self) -> None:
        """Close the connection to Redis."""
        await self._redis.aclose()


async def identify_in_turn(
    lock: RedisIdentifyLock,
    token: str,
    shard_id: int,
    max_concurrency: Callable[[], Awaitable[int]],
    fallback: Callable[[], Awaitable[None]],
) -> None:
    """What a bot's ``before_identify_hook`` does with a lock: take the lease of the shard's
    bucket; when Redis fails, log it and fall back to discord.py's own spacing (``fallback``),
    so a Redis outage costs at most a refused IDENTIFY, never the start.

    Parameters
    ----------
    lock, token:
        The lock and the bot's token.
    shard_id:
        The shard about to IDENTIFY (0 when unsharded).
    max_concurrency:
        Returns the bot's ``max_concurrency`` (from ``GET /gateway/bot``); when it fails, 1.
    fallback:
        discord.py's default hook.
    """
    try:
        concurrency = await max_concurrency()
    except Exception as error:  # one bucket for all shards is always safe
        _log.warning("max_concurrency unknown (%s); counting 1", error or type(error).__name__)
        concurrency = 1
    try:
        await lock.acquire(token, shard_id % max(1, concurrency))
    except (OSError, TimeoutError, _redis_error()) as error:
        _log.warning("identify lock unavailable (%s); spacing identifies locally", error)
        await fallback()


def _redis_error() -> type[Exception]:
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover
        return OSError
    return RedisError
