"""Launchers: how a streamer's worker is started, watched, restarted and stopped.

A launcher is a function ``launch(connection) -> LaunchedWorker`` that the hub calls with the
worker's end of a fresh connection, for the first worker and for every restart. Three kinds:

- :func:`process_launcher`: a child process (``spawn`` by default, ``fork``, ``forkserver``),
  watched through its sentinel, so its death is seen within milliseconds;
- :func:`thread_launcher`: a daemon thread of this process, which reports its own end;
- :class:`ManualWorker`: ``worker()`` called by the user on a thread of theirs.

:class:`Backoff` gives the delay before restarting a worker that died. Stopping is bounded
(:meth:`LaunchedWorker.stop`): a process that does not exit after EOF is terminated, then
killed; a thread cannot be killed, so a hung one is left behind with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from genbot.streaming.connection import WorkerConnection
from genbot.streaming.errors import StreamError
from genbot.streaming.worker import WorkerSide, serve

if TYPE_CHECKING:
    from genbot.streaming.core import Streamer

__all__ = [
    "DEFAULT_START_METHOD",
    "Backoff",
    "LaunchedWorker",
    "Launcher",
    "ManualWorker",
    "ProcessWorker",
    "ThreadWorker",
    "WorkerProcess",
    "process_launcher",
    "thread_launcher",
]

_log = logging.getLogger(__name__)

DEFAULT_START_METHOD = "spawn"

#: Seconds between SIGTERM and SIGKILL, and after SIGKILL, when stopping a process worker.
KILL_GRACE = 1.0

OnDeath = Callable[[str], None]


class LaunchedWorker(ABC):
    """A worker that a hub launched (a process or a thread)."""

    @abstractmethod
    def watch(self, loop: asyncio.AbstractEventLoop, on_death: OnDeath) -> None:
        """Call ``on_death(reason)`` on ``loop`` once the worker is dead (if it can tell)."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Make sure the worker is gone (it has seen EOF already), in a bounded time: wait up to
        ``timeout`` seconds for it to exit, then end it by force where that is possible."""


class Launcher(Protocol):
    def __call__(self, connection: WorkerConnection) -> LaunchedWorker: ...


class Backoff:
    """Restart delays: ``initial`` doubling per quick death, at most ``maximum`` seconds; a worker
    that ran for ``maximum`` seconds or more before dying is restarted after ``initial``.
    ``delay()`` is ``None`` when restarts are off."""

    def __init__(self, enabled: bool, initial: float, maximum: float) -> None:
        self.enabled = enabled
        self.initial = initial
        self.maximum = maximum
        self.quick_deaths = 0
        self.started_at = time.monotonic()

    def started(self) -> None:
        self.started_at = time.monotonic()

    def delay(self) -> float | None:
        if not self.enabled:
            return None
        if time.monotonic() - self.started_at >= self.maximum:
            self.quick_deaths = 0
        delay = min(self.maximum, self.initial * 2.0**self.quick_deaths)
        self.quick_deaths += 1
        return delay


# -- processes ------------------------------------------------------------------------------

Context = (
    multiprocessing.context.SpawnContext
    | multiprocessing.context.ForkContext
    | multiprocessing.context.ForkServerContext
)


def get_context(method: str) -> Context:
    """The :mod:`multiprocessing` context of a start method.

    Raises
    ------
    ValueError
        ``method`` is not ``"spawn"``, ``"fork"`` or ``"forkserver"``.
    """
    if method == "spawn":
        return multiprocessing.get_context("spawn")
    if method == "fork":
        return multiprocessing.get_context("fork")
    if method == "forkserver":
        return multiprocessing.get_context("forkserver")
    raise ValueError(f"start_method must be 'spawn', 'fork' or 'forkserver', not {method!r}")


class WorkerProcess:
    """Handle on a streamer's worker process, like ``multiprocessing.Process``.

    It follows restarts: ``pid`` and the methods refer to the current process.
    ``restarts`` counts the processes started after the first.
    """

    def __init__(self) -> None:
        self.process: multiprocessing.process.BaseProcess | None = None
        self.restarts = -1

    def _set(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.restarts += 1

    def _current(self) -> multiprocessing.process.BaseProcess:
        assert self.process is not None
        return self.process

    @property
    def pid(self) -> int | None:
        return self._current().pid

    @property
    def exitcode(self) -> int | None:
        return self._current().exitcode

    def is_alive(self) -> bool:
        return self._current().is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._current().join(timeout)

    def terminate(self) -> None:
        self._current().terminate()

    def kill(self) -> None:
        self._current().kill()

    def __repr__(self) -> str:
        return f"<WorkerProcess pid={self.pid} alive={self.is_alive()} restarts={self.restarts}>"


class ProcessWorker(LaunchedWorker):
    """A worker process, watched through its sentinel."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        # Process.join is not safe from two threads at once (the loser of the race for the
        # exit status sees none): the hub's death watch and close() take turns.
        self._join_lock = threading.Lock()

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: OnDeath) -> None:
        sentinel = self.process.sentinel

        def died() -> None:
            loop.remove_reader(sentinel)
            with self._join_lock:
                self.process.join(KILL_GRACE)
            pid, code = self.process.pid, self.process.exitcode
            on_death(f"the worker process {pid} died (exit code {code})")

        loop.add_reader(sentinel, died)

    def stop(self, timeout: float) -> None:
        """Wait ``timeout`` s for the process to exit, then SIGTERM, then SIGKILL, each given
        :data:`KILL_GRACE` s: returns within ``timeout + 2 * KILL_GRACE`` s (plus the wait for
        a death watch that holds the process, itself bounded by :data:`KILL_GRACE`)."""
        with self._join_lock:
            process = self.process
            process.join(timeout)
            if process.exitcode is not None:
                return
            _log.warning(
                "streamer worker process %s did not exit within %.1f s; terminating it",
                process.pid,
                timeout,
            )
            process.terminate()
            process.join(KILL_GRACE)
            if not process.is_alive():
                return
            _log.warning("streamer worker process %s ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.join(KILL_GRACE)
            if process.is_alive():
                _log.error(
                    "streamer worker process %s survived SIGKILL for %.1f s; leaving it",
                    process.pid,
                    KILL_GRACE,
                )


def _process_main(
    streamer: Streamer, connection: WorkerConnection, input_timeout: float, attrs: dict[str, Any]
) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which closes us
    streamer.__dict__.pop("_hub", None)
    for name, value in attrs.items():
        setattr(streamer, name, value)
    side = WorkerSide(connection, input_timeout=input_timeout)
    streamer._worker_side = side
    status = serve(streamer.worker, side)
    side.close()
    sys.exit(status)


def process_launcher(
    streamer: Streamer,
    *,
    context: Context,
    input_timeout: float,
    attrs: dict[str, Any],
    backoff: Backoff,
    handle: WorkerProcess,
) -> Launcher:
    """Launches ``streamer.worker()`` in a child process; ``handle`` follows the restarts.

    ``attrs`` are set on the process's copy of the streamer (it is pickled by reference when
    it is a module-level ``@genbot.streamer`` function).
    """
    name = f"genbot-{streamer._name()}"

    def launch(connection: WorkerConnection) -> LaunchedWorker:
        process = context.Process(
            target=_process_main,
            args=(streamer, connection, input_timeout, attrs),
            name=name,
            daemon=True,
        )
        try:
            process.start()
        except Exception as exc:
            method = context.get_start_method()
            raise StreamError(
                f"cannot start the worker process of {streamer!r} with {method!r}: {exc}."
                " Under 'spawn' the streamer is pickled: define @genbot.streamer"
                " functions and Streamer subclasses at module level, with picklable attributes"
                " (or use start_thread())"
            ) from exc
        connection.sock.close()  # the child has its own copy now
        backoff.started()
        handle._set(process)
        return ProcessWorker(process)

    return launch


# -- threads --------------------------------------------------------------------------------


class ThreadWorker(LaunchedWorker):
    """A worker thread: it reports its own end to the death watch."""

    def __init__(self, streamer: Streamer, connection: WorkerConnection, input_timeout: float):
        self._streamer = streamer
        self._connection = connection
        self._input_timeout = input_timeout
        self._lock = threading.Lock()
        self._ended = False
        self._reason = ""
        self._watch: tuple[asyncio.AbstractEventLoop, OnDeath] | None = None
        self.thread = threading.Thread(
            target=self._main, name=f"genbot-worker-{streamer._name()}", daemon=True
        )

    def _main(self) -> None:
        streamer = self._streamer
        side = WorkerSide(self._connection, input_timeout=self._input_timeout)
        streamer._worker_side = side
        try:
            serve(streamer.worker, side)
        finally:
            if streamer._worker_side is side:
                streamer._worker_side = None
            side.close()
            self._report_end(side.fatal)

    def _death_reason(self) -> str:
        reason = f"the worker thread {self.thread.name} ended"
        # A stream opened just after the worker failed learns why from the reason, not only
        # that the thread ended.
        return f"{reason} ({self._reason})" if self._reason else reason

    def _report_end(self, fatal: str | None) -> None:
        with self._lock:
            self._ended = True
            self._reason = fatal or ""
            watch = self._watch
        if watch is not None:
            loop, on_death = watch
            try:
                loop.call_soon_threadsafe(on_death, self._death_reason())
            except RuntimeError:
                pass  # the hub's loop is closed: nobody is watching any more

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: OnDeath) -> None:
        with self._lock:
            self._watch = (loop, on_death)
            ended = self._ended
        if ended:
            loop.call_soon(on_death, self._death_reason())

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the thread; a thread cannot be killed, so one that is
        still running then (hung, ignoring its connection) is left behind with a warning."""
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        if self.thread.is_alive():
            _log.warning(
                "streamer worker thread %s did not stop within %.1f s; leaving it running",
                self.thread.name,
                timeout,
            )


def thread_launcher(streamer: Streamer, *, input_timeout: float, backoff: Backoff) -> Launcher:
    """Launches ``streamer.worker()`` on a daemon thread of this process (a :class:`ThreadWorker`,
    whose ``thread`` is that thread)."""

    def launch(connection: WorkerConnection) -> LaunchedWorker:
        worker = ThreadWorker(streamer, connection, input_timeout)
        worker.thread.start()
        backoff.started()
        return worker

    return launch


class ManualWorker(LaunchedWorker):
    """``worker()`` called by the user: ``consume()`` attached it; nothing to start or stop."""

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: OnDeath) -> None:
        """Its end shows as its connection closing."""

    def stop(self, timeout: float) -> None:
        """The user's thread returns from ``worker()`` on its own (``consume`` raises)."""
