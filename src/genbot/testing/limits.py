"""REST bookkeeping, no I/O: request counts per route template, rate-limit windows, 429s on
demand, and injected failures (which requests are answered with an error status instead of,
or after, being carried out). The REST middleware consults a `RequestLedger` on each request."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["Fault", "FaultPlan", "RequestLedger", "error_body", "make_fault"]

_log = logging.getLogger(__name__)

RouteKey = tuple[str, str]  # (method, route template)
BucketKey = tuple[str, str, str]  # (method, route template, major parameter)


@dataclass
class Fault:
    """One injected failure: answer `status` to the next `times` requests, or to every request
    until `until` (a ``time.monotonic()`` instant). `after_effect`: carry the request out first."""

    status: int
    after_effect: bool
    times: int | None = None
    until: float | None = None

    def take(self, now: float) -> bool:
        """Whether the request arriving at `now` fails; consumes one of `times`."""
        if self.times is not None:
            if self.times <= 0:
                return False
            self.times -= 1
            return True
        return self.until is not None and now < self.until

    def spent(self, now: float) -> bool:
        if self.times is not None:
            return self.times <= 0
        return self.until is None or now >= self.until


def make_fault(
    status: int, times: int | None, seconds: float | None, after_effect: bool, now: float
) -> Fault | None:
    """The `Fault` for `DiscordServer.fail_requests`' arguments; None when they clear it
    (``times=0`` or ``seconds=0``). Raises ValueError on arguments Discord could not mean."""
    if (times is None) == (seconds is None):
        raise ValueError("give exactly one of times= or seconds=")
    if not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400..599), not {status}")
    if status == 429:
        raise ValueError("use rate_limit() for 429 Too Many Requests")
    if times is not None:
        if times < 0:
            raise ValueError(f"times must be >= 0, not {times}")
        return Fault(status, after_effect, times=times) if times else None
    assert seconds is not None
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, not {seconds}")
    return Fault(status, after_effect, until=now + seconds) if seconds else None


class FaultPlan:
    """The injected failures per (method, route template)."""

    def __init__(self) -> None:
        self._faults: dict[RouteKey, Fault] = {}

    def set(self, key: RouteKey, fault: Fault | None) -> None:
        """Replace the failure planned for `key` (None: clear it)."""
        if fault is None:
            self._faults.pop(key, None)
        else:
            self._faults[key] = fault
        _log.debug("failure plan for %s %s: %s", *key, fault)

    def clear(self) -> None:
        self._faults.clear()

    def take(self, key: RouteKey, now: float | None = None) -> Fault | None:
        """The failure for a request to `key` arriving now, or None when it is to succeed."""
        fault = self._faults.get(key)
        if fault is None:
            return None
        moment = time.monotonic() if now is None else now
        failing = fault.take(moment)
        if fault.spent(moment):
            del self._faults[key]
        return fault if failing else None


def error_body(status: int) -> dict[str, Any]:
    """Discord's JSON for an error without an API code, e.g. ``{"message": "502: Bad Gateway",
    "code": 0}``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"message": f"{status}: {phrase}", "code": 0}


class RequestLedger:
    """What the REST half counts: requests per route template, each bucket's window of `limit`
    requests per `window` seconds, the 429s and the failures a test planned."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.counts: Counter[RouteKey] = Counter()
        self.times: dict[RouteKey, list[float]] = {}  # arrivals, time.monotonic()
        self.too_many: Counter[RouteKey] = Counter()  # requests answered 429
        self.faults = FaultPlan()
        self._forced_429: dict[RouteKey, list[float]] = {}
        self._windows: dict[BucketKey, tuple[float, int]] = {}
        # The bot-wide limit (Discord's global rate limit, 50 per second; None: none).
        self.global_limit: int | None = None
        self.global_window = 1.0  # seconds
        self.too_many_global = 0  # requests answered 429 for the bot-wide limit
        self._global_span: tuple[float, int] = (0.0, 0)

    def record(self, key: RouteKey) -> None:
        self.counts[key] += 1
        self.times.setdefault(key, []).append(time.monotonic())

    def count(self, key: RouteKey) -> int:
        return self.counts[key]

    def consume(self, key: BucketKey, now: float | None = None) -> tuple[int, float]:
        """Count a request in its bucket's window: (requests in this window, seconds to its
        reset)."""
        moment = time.monotonic() if now is None else now
        reset_at, used = self._windows.get(key, (0.0, 0))
        if moment >= reset_at:
            reset_at, used = moment + self.window, 0
        used += 1
        self._windows[key] = (reset_at, used)
        return used, reset_at - moment

    def consume_global(self, now: float | None = None) -> float | None:
        """Count a request against the bot-wide limit, `global_limit` requests per
        `global_window` seconds: None when it may go, else the seconds until the window is over
        (the request is then answered 429 and not counted).

        Parameters
        ----------
        now: the moment of the request (``time.monotonic()``); ``None``: now.
        """
        if self.global_limit is None:
            return None
        moment = time.monotonic() if now is None else now
        reset_at, used = self._global_span
        if moment >= reset_at:
            reset_at, used = moment + self.global_window, 0
        if used >= self.global_limit:
            self.too_many_global += 1
            return reset_at - moment
        self._global_span = (reset_at, used + 1)
        return None

    def force_rate_limit(self, key: RouteKey, times: int, retry_after: float) -> None:
        """Answer the next `times` requests to `key` with 429 and this ``retry_after``."""
        self._forced_429[key] = [times, retry_after]

    def take_rate_limit(self, key: RouteKey) -> float | None:
        """The ``retry_after`` of a planned 429 for this request, or None."""
        forced = self._forced_429.get(key)
        if forced is None or forced[0] <= 0:
            return None
        forced[0] -= 1
        return forced[1]
