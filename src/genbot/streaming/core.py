"""``Streamer``: many asynchronous callers, one batching worker.

How a stream goes (see also :mod:`genbot.streaming.worker`):

1. ``async with streamer.stream() as stream:`` sends *OPEN* and waits in the worker's queue.
2. The worker's ``consume(minimum, maximum)`` takes waiting streams, up to ``maximum``, and
   *grants* each its turn; the caller's ``async with`` body starts only now, so it builds its
   inputs (e.g. reads the context window) at the last moment, and sends them: ``stream(inputs)``.
   A caller that has its inputs already sends them with the request for a turn,
   ``streamer.stream(inputs)`` (*OPEN_DATA*): the stream is ready as soon as it is granted.
   While ``consume`` waits with nothing under way, it offers the caller side one turn in
   advance (*CREDIT*): the next stream opened takes it without the round trip
   (*OPEN_GRANTED*; see :mod:`genbot.streaming.worker`).
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
they are sent. ``close()`` fails what is open and is bounded even when the worker hangs: a
worker process that does not exit within its ``timeout`` (5 s) after seeing EOF is terminated,
then killed, 1 s apart; a worker thread, which cannot be killed, is left behind with a warning.

Caller side (see :mod:`genbot.streaming.client`): an event loop reads the worker's connection
itself while a stream opened there is open or a caller waits there, so outputs reach its
callers without a hop through another thread; callers on several event loops, or on plain
threads with the synchronous forms, work too. A small hub thread launches, watches and restarts
the worker (see :mod:`genbot.streaming.launchers`). Nothing polls. Outputs are buffered
without bound for a caller that reads slower than the worker writes.

Start method: ``start_process()`` uses ``spawn`` by default: it is safe with threads (the caller
side runs one) and with CUDA, and it is what a model holding a GPU needs. The worker process
then imports the streamer's module afresh, so scripts must keep their start-up code under
``if __name__ == "__main__":`` and a ``@genbot.streamer`` function must live at module level.
``start_method="fork"`` also works and starts faster, for workers that hold no threads or GPU.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, overload

from genbot.streaming import frames
from genbot.streaming.client import Hub, StreamSlot
from genbot.streaming.connection import WorkerConnection
from genbot.streaming.errors import StreamError, WorkerExit
from genbot.streaming.launchers import (
    DEFAULT_START_METHOD,
    Backoff,
    LaunchedWorker,
    Launcher,
    ManualWorker,
    ThreadWorker,
    WorkerProcess,
    get_context,
    process_launcher,
    thread_launcher,
)
from genbot.streaming.worker import Stream, WorkerSide

__all__ = ["FunctionStreamer", "Streamer", "active_streamers", "streamer"]

_log = logging.getLogger(__name__)

_registry_lock = threading.Lock()
_NO_INPUTS: Any = object()  # Streamer.stream() without inputs
_active: dict[int, Streamer] = {}


def active_streamers() -> list[Streamer]:
    """Streamers of this process that were started and not closed yet; any left are closed
    at interpreter exit. A bot closes only the Streamers it owns (``Genbot.streamers``)."""
    with _registry_lock:
        return list(_active.values())


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

        Parameters
        ----------
        minimum, maximum
            How many streams to return at least (unless ``timeout`` passes) and at most.
        timeout
            Seconds to wait at most; when they pass, fewer than ``minimum`` streams (maybe
            none) are returned. ``None``: no bound.

        Raises
        ------
        WorkerExit
            The streamer was closed: the worker should return (it is a ``SystemExit``).
        ValueError
            Not ``0 <= minimum <= maximum``.
        StreamError
            Called outside a worker on a streamer that was started with a worker already.
        """
        side = self._worker_side or self._attach_manual()
        try:
            return side.consume(minimum, maximum, timeout)
        except WorkerExit:
            if self._worker_side is side:
                self._worker_side = None
            side.close()  # flushed and closed (again, for a launched worker: harmless)
            raise

    def _attach_manual(self, input_timeout: float = 5.0) -> WorkerSide:
        """``worker()`` called by the user: start the caller side with this thread as worker."""
        connections: list[WorkerConnection] = []

        def launch(connection: WorkerConnection) -> LaunchedWorker:
            connections.append(connection)
            return ManualWorker()

        with _registry_lock:
            if self._hub is not None:
                raise StreamError(
                    f"{self!r} already has a worker (start_process/start_thread); consume() is"
                    " for that worker's own worker() method"
                )
            self._start_hub(launch, Backoff(False, 0.0, 0.0))
        side = WorkerSide(connections[0], input_timeout=input_timeout)
        self._worker_side = side
        return side

    # -- starting and stopping -------------------------------------------------------------

    def _worker_attrs(self) -> dict[str, Any]:
        """Attributes to set on the worker process's copy (when pickled by reference)."""
        return {}

    def _start_hub(self, launch: Launcher, backoff: Backoff) -> Hub:
        """Create the hub and launch the first worker; hold ``_registry_lock``."""
        if self._hub is not None:
            raise StreamError(f"{self!r} is already started; close() it first")
        hub = Hub(self._name(), launch, backoff.delay)
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

        Parameters
        ----------
        start_method
            ``"spawn"`` (default, see the module docstring), ``"fork"`` or ``"forkserver"``.
        restart, backoff, max_backoff
            A dead worker fails every open and waiting stream at once and, with ``restart``,
            is started again after ``backoff`` seconds, doubling per quick death up to
            ``max_backoff``.
        input_timeout
            Seconds a caller has to send its inputs once its turn came.

        Raises
        ------
        StreamError
            Already started, or the process cannot be started (e.g. under ``spawn`` the
            streamer is not picklable: a ``@genbot.streamer`` function not at module level).
        ValueError
            An unknown ``start_method``.
        """
        context = get_context(start_method or DEFAULT_START_METHOD)
        handle = WorkerProcess()
        policy = Backoff(restart, backoff, max_backoff)
        launch = process_launcher(
            self,
            context=context,
            input_timeout=input_timeout,
            attrs=self._worker_attrs(),
            backoff=policy,
            handle=handle,
        )
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

        The worker's outputs still travel through a socket, so callers see no difference.
        A worker that stops after failing (see :func:`genbot.streaming.worker.serve`) is
        restarted as in :meth:`start_process`, which describes the parameters.

        Raises
        ------
        StreamError
            Already started.
        """
        policy = Backoff(restart, backoff, max_backoff)
        launch = thread_launcher(self, input_timeout=input_timeout, backoff=policy)
        with _registry_lock:
            hub = self._start_hub(launch, policy)
        assert isinstance(hub.worker, ThreadWorker)
        return hub.worker.thread

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker and fail what is open. Synchronous, idempotent, from any thread.

        Bounded even when the worker hangs: the worker sees EOF (``consume`` raises
        ``WorkerExit``); a process that does not exit within ``timeout`` seconds is terminated,
        then killed (about ``timeout + 2`` s at worst), so no child process is left; a thread
        that does not return within ``timeout`` s cannot be killed and is left running, with a
        warning in the log.

        Parameters
        ----------
        timeout
            Seconds the worker has to exit on its own.
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

    def stream(self, inputs: Any = _NO_INPUTS) -> StreamSlot:
        """A slot in the queue: ``async with streamer.stream() as stream:`` (see the module doc).

        Parameters
        ----------
        inputs
            The inputs, when the caller has them before its turn: they travel with the request
            for a turn, so the worker can start on them as soon as it grants it (one round
            trip to the worker less before the first output). Then iterate over the stream
            itself: ``async with streamer.stream(x) as stream: async for out in stream:``.
            Without them, the block builds its inputs once its turn came and sends them with
            ``stream(inputs)``.

        Raises
        ------
        StreamError
            The streamer is not started or closed, or ``inputs`` are not picklable.
        """
        hub = self._hub
        if hub is None:
            raise StreamError(
                f"{self!r} is not started (or was closed): call start_process() or start_thread()"
            )
        payload = None if inputs is _NO_INPUTS else frames.dumps(inputs, "inputs")
        return StreamSlot(hub, payload)

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
        # What functools.update_wrapper does, for an object that is not a function.
        for name in functools.WRAPPER_ASSIGNMENTS:
            if hasattr(fn, name):
                setattr(self, name, getattr(fn, name))
        self.__dict__.update(getattr(fn, "__dict__", {}))
        self.__wrapped__ = fn
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
                _log.exception("streamer %s: the batch function raised", self._name())
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
        qualname = getattr(self, "__qualname__", None)
        if (
            module is not None
            and isinstance(qualname, str)
            and getattr(module, qualname, None) is self
        ):
            return qualname
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
            _log.exception("closing %r at exit failed", active)


def _forget_in_child() -> None:
    """A forked child does not own its parent's streamers (their threads are not there), and
    the registry's lock may have been held by a parent thread when it forked."""
    global _registry_lock
    _registry_lock = threading.Lock()
    _active.clear()


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_in_child)
