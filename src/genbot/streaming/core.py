"""``Streamer``: many asynchronous callers, one batching worker.

How a stream goes (see also :mod:`genbot.streaming.worker`):

1. ``async with streamer.stream() as stream:`` sends *OPEN* and waits in the worker's queue.
2. The worker's ``consume(minimum, maximum)`` takes waiting streams, up to ``maximum``, and
   *grants* each its turn; the caller's ``async with`` body starts only now, so it builds its
   inputs (e.g. reads the context window) at the last moment, and sends them: ``stream(inputs)``.
3. ``consume`` hands a stream to the worker only once its inputs arrived, so ``stream.data`` is
   always there. With ``minimum >= 1`` it returns once every stream it granted has sent its
   inputs (a batch is not split by the round trip); with ``minimum=0`` it returns at once with
   whatever is ready, and streams granted now are handed out by a later call (continuous
   batching). Granted streams count against ``maximum``. A caller that does not send its inputs
   within ``input_timeout`` seconds of its turn loses it: its slot is released and the caller
   gets a :class:`StreamError` when it sends or reads.
4. The worker writes outputs; the caller reads them with ``async for out in stream:``; the
   stream ends when the worker closes it. A caller leaving early (``async with`` left, task
   cancelled) closes the stream: the worker sees ``stream.closed`` and its writes are dropped.

Failures: every failure a caller sees is a :class:`StreamError`. An exception in the worker
reaches the callers of the streams it held, with the worker's traceback text, and the worker
goes on. A dead worker (killed, crashed; :class:`WorkerDied`) fails every open and waiting
stream as soon as its process's sentinel or its connection tells, and is restarted after a
back-off (0.5 s, doubling per quick death up to 30 s). Unpicklable inputs or outputs fail where
they are sent. ``close()`` fails what is open; a worker that does not exit within its ``timeout``
(5 s) after seeing EOF is terminated, then killed.

Caller side: a started streamer runs one small thread with its own asyncio loop that owns the
connection to the worker (see :mod:`genbot.streaming.client`); callers on any event loop, or on
plain threads with the synchronous forms, wait for it without polling. Outputs are buffered
without bound for a caller that reads slower than the worker writes.

Start method: ``start_process()`` uses ``spawn`` by default: it is safe with threads (the caller
side runs one) and with CUDA, and it is what a model holding a GPU needs. The worker process
then imports the streamer's module afresh, so scripts must keep their start-up code under
``if __name__ == "__main__":`` and a ``@genbot.streamer`` function must live at module level.
``start_method="fork"`` also works and starts faster, for workers that hold no threads or GPU.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, overload

from genbot.streaming.client import Hub, LaunchedWorker, StreamSlot
from genbot.streaming.errors import StreamError, WorkerExit
from genbot.streaming.transport import CallerEnd, SocketPairTransport, Transport, WorkerEnd
from genbot.streaming.worker import Stream, WorkerSide, serve

__all__ = ["FunctionStreamer", "Streamer", "WorkerProcess", "active_streamers", "streamer"]

log = logging.getLogger("genbot.streaming")

DEFAULT_START_METHOD = "spawn"

_registry_lock = threading.Lock()
_active: dict[int, Streamer] = {}


def active_streamers() -> list[Streamer]:
    """Streamers that were started and not closed yet (a bot closes them on shutdown)."""
    with _registry_lock:
        return list(_active.values())


class _Backoff:
    """Restart delays: ``initial`` doubling per quick death, at most ``maximum`` seconds; a worker
    that ran for ``maximum`` seconds or more before dying is restarted after ``initial``."""

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
        delay = min(self.maximum, self.initial * 2**self.quick_deaths)
        self.quick_deaths += 1
        return delay


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


class _ProcessWorker(LaunchedWorker):
    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        # Process.join is not safe from two threads at once (the loser of the race for the
        # exit status sees none): the hub's death watch and close() take turns.
        self._join_lock = threading.Lock()

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[str], None]) -> None:
        sentinel = self.process.sentinel

        def died() -> None:
            loop.remove_reader(sentinel)
            with self._join_lock:
                self.process.join(1.0)
            pid, code = self.process.pid, self.process.exitcode
            on_death(f"the worker process {pid} died (exit code {code})")

        loop.add_reader(sentinel, died)

    def stop(self, timeout: float) -> None:
        with self._join_lock:
            process = self.process
            process.join(timeout)
            if process.exitcode is None:
                log.warning(
                    "streamer worker %s did not stop in %.1f s; terminating", process.pid, timeout
                )
                process.terminate()
                process.join(2.0)
            if process.exitcode is None:
                process.kill()
                process.join()


class _ThreadWorker(LaunchedWorker):
    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[str], None]) -> None:
        """A thread's death shows as its connection closing; nothing else to watch."""

    def stop(self, timeout: float) -> None:
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning(
                "streamer worker thread %s is still running; abandoning it", self.thread.name
            )


class _ManualWorker(LaunchedWorker):
    """``worker()`` called by the user: ``consume()`` attached it; nothing to start or stop."""

    def watch(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[str], None]) -> None:
        """Its death shows as its connection closing."""

    def stop(self, timeout: float) -> None:
        """The user's thread returns from ``worker()`` on its own (``consume`` raises)."""


def _process_main(
    streamer: Streamer, end: WorkerEnd, input_timeout: float, attrs: dict[str, Any]
) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which closes us
    streamer.__dict__.pop("_hub", None)
    for name, value in attrs.items():
        setattr(streamer, name, value)
    side = WorkerSide(end, input_timeout=input_timeout)
    streamer._worker_side = side
    status = serve(streamer.worker, side)
    side.close()
    sys.exit(status)


def _thread_main(streamer: Streamer, end: WorkerEnd, input_timeout: float) -> None:
    side = WorkerSide(end, input_timeout=input_timeout)
    streamer._worker_side = side
    try:
        serve(streamer.worker, side)
    finally:
        if streamer._worker_side is side:
            streamer._worker_side = None
        side.close()


class Streamer:
    """Batches many callers' streams into one worker; see the module docstring.

    Subclass it and override :meth:`worker`, which loops on :meth:`consume`; or decorate a batch
    function with :func:`streamer`. Start the worker with :meth:`start_process` or
    :meth:`start_thread` (or call ``worker()`` yourself on a thread of this process), open
    streams with :meth:`stream`, and :meth:`close` it when done (also ``with streamer:``).
    Subclasses need not call ``Streamer.__init__``.
    """

    _hub: Hub | None = None
    _worker_side: WorkerSide | None = None
    transport: Transport = SocketPairTransport()

    # -- worker side -----------------------------------------------------------------------

    def worker(self) -> None:
        """The worker's body: loop on :meth:`consume`, write to the streams, close them."""
        raise NotImplementedError(f"{type(self).__name__} must override worker()")

    def consume(
        self, minimum: int = 1, maximum: int = 1, timeout: float | None = None
    ) -> list[Stream]:
        """Take waiting streams: give them their turn, return them once their inputs arrived.

        Called in the worker. Grants turns to waiting streams (at most ``maximum`` granted or
        ready at a time), then returns up to ``maximum`` streams whose ``data`` is there: with
        ``minimum >= 1``, once at least ``minimum`` are ready and no granted stream's inputs are
        still on their way (bounded by ``input_timeout``). ``minimum=0`` returns at once with
        what is ready (continuous batching: call it between decoding steps, with ``maximum`` the
        free capacity, which may be 0); streams granted then come with a later call.
        ``timeout`` (seconds) bounds the wait; when it passes, fewer than ``minimum`` streams
        (maybe none) are returned. Once the streamer is closed it raises
        :class:`~genbot.streaming.errors.WorkerExit`, which ends the worker.
        """
        side = self._worker_side or self._attach_manual()
        try:
            return side.consume(minimum, maximum, timeout)
        except WorkerExit:
            if self._worker_side is side:
                self._worker_side = None
            raise

    def _attach_manual(self, input_timeout: float = 5.0) -> WorkerSide:
        ends: list[WorkerEnd] = []

        def launch(caller_end: CallerEnd, worker_end: WorkerEnd) -> LaunchedWorker:
            ends.append(worker_end)
            return _ManualWorker()

        with _registry_lock:
            if self._hub is not None:
                raise StreamError(
                    f"{self!r} already has a worker (start_process/start_thread); consume() is"
                    " for that worker's own worker() method"
                )
            self._start_hub(launch, _Backoff(False, 0.0, 0.0))
        side = WorkerSide(ends[0], input_timeout=input_timeout)
        self._worker_side = side
        return side

    # -- starting and stopping -------------------------------------------------------------

    def _worker_attrs(self) -> dict[str, Any]:
        """Attributes to set on the worker process's copy (when pickled by reference)."""
        return {}

    def _start_hub(
        self, launch: Callable[[CallerEnd, WorkerEnd], LaunchedWorker], backoff: _Backoff
    ) -> Hub:
        """Create the hub and launch the first worker; hold ``_registry_lock``."""
        if self._hub is not None:
            raise StreamError(f"{self!r} is already started; close() it first")
        hub = Hub(self._name(), self.transport.pair, launch, backoff.delay)
        try:
            hub.connect()
        except BaseException:
            hub.close()
            if hub.worker is not None:
                hub.worker.stop(1.0)
            hub.stop()
            raise
        self._hub = hub
        _active[id(self)] = self
        return hub

    def start_process(
        self,
        *,
        start_method: str | None = None,
        restart: bool = True,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        input_timeout: float = 5.0,
    ) -> WorkerProcess:
        """Run the worker in a child process; returns a handle that follows restarts.

        ``start_method``: ``"spawn"`` (default, see the module docstring), ``"fork"`` or
        ``"forkserver"``. A dead worker fails every open and waiting stream at once and, with
        ``restart``, is started again after ``backoff`` seconds, doubling per quick death up to
        ``max_backoff``. ``input_timeout``: seconds a caller has to send its inputs once its
        turn came.
        """
        context = multiprocessing.get_context(start_method or DEFAULT_START_METHOD)
        handle = WorkerProcess()
        policy = _Backoff(restart, backoff, max_backoff)
        attrs = self._worker_attrs()
        name = f"genbot-{self._name()}"

        def launch(caller_end: CallerEnd, worker_end: WorkerEnd) -> LaunchedWorker:
            process = context.Process(
                target=_process_main,
                args=(self, worker_end, input_timeout, attrs),
                name=name,
                daemon=True,
            )
            try:
                process.start()
            except Exception as exc:
                method = context.get_start_method()
                raise StreamError(
                    f"cannot start the worker process of {self!r} with {method!r}: {exc}."
                    " Under 'spawn' the streamer is pickled: define @genbot.streamer"
                    " functions and Streamer subclasses at module level, with picklable attributes"
                    " (or use start_thread())"
                ) from exc
            caller_end.release_worker_copy()  # the child has its own now
            policy.started()
            handle._set(process)
            return _ProcessWorker(process)

        with _registry_lock:
            self._start_hub(launch, policy)
        return handle

    def start_thread(
        self,
        *,
        restart: bool = True,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        input_timeout: float = 5.0,
    ) -> threading.Thread:
        """Run the worker on a daemon thread of this process; returns the (first) thread.

        The worker's outputs still travel through the transport, so callers see no difference.
        A worker that stops after failing (see :func:`genbot.streaming.worker.serve`) is
        restarted as in :meth:`start_process`.
        """
        policy = _Backoff(restart, backoff, max_backoff)
        threads: list[threading.Thread] = []

        def launch(caller_end: CallerEnd, worker_end: WorkerEnd) -> LaunchedWorker:
            thread = threading.Thread(
                target=_thread_main,
                args=(self, worker_end, input_timeout),
                name=f"genbot-worker-{self._name()}",
                daemon=True,
            )
            thread.start()
            policy.started()
            threads.append(thread)
            return _ThreadWorker(thread)

        with _registry_lock:
            self._start_hub(launch, policy)
        return threads[0]

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker and fail what is open. Synchronous, idempotent, from any thread.

        The worker sees EOF (``consume`` raises ``WorkerExit``); a process that does not exit
        within ``timeout`` seconds is terminated, then killed. No child process is left.
        """
        with _registry_lock:
            hub = self._hub
            if hub is None:
                return
            self._hub = None
            _active.pop(id(self), None)
        hub.close()
        if hub.worker is not None:
            hub.worker.stop(timeout)
        hub.stop()

    @property
    def running(self) -> bool:
        """Started (or attached by a worker's ``consume()``) and not closed."""
        return self._hub is not None

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- caller side -----------------------------------------------------------------------

    def stream(self) -> StreamSlot:
        """A slot in the queue: ``async with streamer.stream() as stream:`` (see the module doc)."""
        hub = self._hub
        if hub is None:
            raise StreamError(
                f"{self!r} is not started (or was closed): call start_process() or start_thread()"
            )
        return StreamSlot(hub)

    # -- misc ------------------------------------------------------------------------------

    def _name(self) -> str:
        return type(self).__name__

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_hub", None)
        state.pop("_worker_side", None)
        return state

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} {'running' if self.running else 'stopped'}>"


class FunctionStreamer(Streamer):
    """The streamer made by :func:`streamer` from a batch function ``fn(streams)``.

    Its worker loops: ``consume(minimum, maximum)`` -> ``fn(streams)`` -> closes what ``fn`` left
    open. If ``fn`` raises, the streams of that batch fail with the traceback and the loop goes on.
    """

    def __init__(
        self, fn: Callable[[list[Stream]], Any], minimum: int = 1, maximum: int = 64
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self._set_batch(minimum, maximum)

    def _set_batch(self, minimum: int | None, maximum: int | None) -> None:
        minimum = self.__dict__.get("minimum", 1) if minimum is None else minimum
        maximum = self.__dict__.get("maximum", 64) if maximum is None else maximum
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        self.minimum = minimum
        self.maximum = maximum

    def worker(self) -> None:
        while True:
            streams = self.consume(self.minimum, self.maximum)
            try:
                self.fn(streams)
            except Exception as exc:
                log.exception("streamer %s: the batch function raised", self._name())
                for stream in streams:
                    stream.fail(exc)
            finally:
                for stream in streams:
                    stream.close()

    def start_process(
        self, minimum: int | None = None, maximum: int | None = None, **kwargs: Any
    ) -> WorkerProcess:
        """As :meth:`Streamer.start_process`; ``minimum``/``maximum`` set the batch size."""
        self._set_batch(minimum, maximum)
        return super().start_process(**kwargs)

    def start_thread(
        self, minimum: int | None = None, maximum: int | None = None, **kwargs: Any
    ) -> threading.Thread:
        """As :meth:`Streamer.start_thread`; ``minimum``/``maximum`` set the batch size."""
        self._set_batch(minimum, maximum)
        return super().start_thread(**kwargs)

    def _worker_attrs(self) -> dict[str, Any]:
        return {"minimum": self.minimum, "maximum": self.maximum}

    def _name(self) -> str:
        return str(getattr(self, "__name__", "streamer"))

    def __reduce__(self) -> str | tuple[Any, ...]:
        # A module-level @streamer function's name refers to this object, not to the function:
        # pickle it by that name, so a spawned worker imports the module and finds it there.
        module = sys.modules.get(getattr(self, "__module__", ""))
        if module is not None and getattr(module, self.__qualname__, None) is self:
            return self.__qualname__
        return (FunctionStreamer, (self.fn, self.minimum, self.maximum))


BatchFunction = Callable[[list[Stream]], Any]


@overload
def streamer(fn: BatchFunction, *, minimum: int = 1, maximum: int = 64) -> FunctionStreamer: ...


@overload
def streamer(
    fn: None = None, *, minimum: int = 1, maximum: int = 64
) -> Callable[[BatchFunction], FunctionStreamer]: ...


def streamer(
    fn: BatchFunction | None = None, *, minimum: int = 1, maximum: int = 64
) -> FunctionStreamer | Callable[[BatchFunction], FunctionStreamer]:
    """Decorator: make a :class:`FunctionStreamer` from a batch function ``fn(streams)``.

    ``@genbot.streamer`` or ``@genbot.streamer(minimum=1, maximum=64)``; ``start_process`` and
    ``start_thread`` take ``minimum``/``maximum`` too.
    """
    if fn is None:
        return lambda f: FunctionStreamer(f, minimum, maximum)
    return FunctionStreamer(fn, minimum, maximum)


def _close_all() -> None:
    for active in active_streamers():
        try:
            active.close(timeout=2.0)
        except Exception:
            log.exception("closing %r at exit failed", active)


def _forget_in_child() -> None:
    """A forked child does not own its parent's streamers (their threads are not there), and
    the registry's lock may have been held by a parent thread when it forked."""
    global _registry_lock
    _registry_lock = threading.Lock()
    _active.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_in_child)
