"""`Changes`: how tests wait on the loopback server's state without polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

__all__ = ["Changes"]

_log = logging.getLogger(__name__)


class Changes:
    """A wake-up signal: `notify` after each change a test could wait for; `wait_for` re-checks
    its predicate on each one."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake every `wait_for`."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        """Return once `predicate()` is true, re-evaluated after each `notify`.

        Raises
        ------
        TimeoutError
            `predicate()` is still false after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _log.debug("wait_for timed out after %s s", timeout)
                raise TimeoutError(f"condition not met within {timeout} s")
            event = self._event
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(event.wait(), remaining)
