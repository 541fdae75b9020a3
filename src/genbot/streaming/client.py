"""The caller side: the hub that talks to one worker, and the streams callers hold.

Each started streamer has a *hub*: an asyncio loop on a thread of its own that owns the
connection to the worker, routes incoming frames by stream id into per-stream buffers, watches
the worker's death, and restarts it. Callers never run on the hub: an ``async`` caller waits on
a future of its own loop, which the hub completes through ``call_soon_threadsafe`` (one call per
loop per chunk received, not per frame); a synchronous caller waits on a ``threading.Event``.
Callers send their frames (open, inputs, cancel) straight to the connection from their own
thread (see :class:`~genbot.streaming.transport.CallerEnd`). Nothing polls.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

from genbot.streaming import frames
from genbot.streaming.errors import StreamError, WorkerDied
from genbot.streaming.transport import CallerEnd, WorkerEnd

__all__ = ["CallerStream", "Hub", "LaunchedWorker", "StreamSlot"]

log = logging.getLogger("genbot.streaming")

_Waiter = asyncio.Future[None] | threading.Event

_UNREADABLE = -1  # not a frame kind: an output the caller side cannot unpickle


def _on_loop_thread() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _refuse_on_loop(sync_form: str, async_form: str) -> None:
    if _on_loop_thread():
        raise StreamError(
            f"`{sync_form}` blocks, and this thread runs an asyncio event loop (it would freeze"
            f" every other task on it, e.g. the bot); use `{async_form}` here"
        )


def _wake(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


class _Link:
    """One connection to one worker; the hub replaces it when the worker restarts."""

    def __init__(self, hub: Hub, end: CallerEnd) -> None:
        self.hub = hub
        self.end = end
        self.reader = frames.FrameReader()

    def data_received(self, data: bytes) -> None:
        try:
            self.hub.route(self, self.reader.feed(data))
        except Exception as exc:  # a malformed frame: this connection cannot be trusted
            log.exception("streamer %s: bad data from the worker", self.hub.name)
            self.hub.link_lost(self, f"bad data from the worker ({exc!r})")

    def closed(self) -> None:
        self.hub.link_lost(self, "the connection to the worker closed")


class LaunchedWorker(ABC):
    """A worker that a hub launched (a process or a thread)."""

    @abstractmethod
    def watch(self, loop: asyncio.AbstractEventLoop, on_death: Callable[[str], None]) -> None:
        """Call ``on_death(reason)`` on ``loop`` once the worker is dead (if it can tell)."""

    @abstractmethod
    def stop(self, timeout: float) -> None:
        """Make sure the worker is gone (it has seen EOF already), waiting up to ``timeout``."""


class Hub:
    """See the module docstring. ``launch(caller_end, worker_end)`` starts a worker on a fresh
    connection; ``restart_delay()`` gives the back-off before relaunching a dead worker, or
    ``None`` for no restart."""

    def __init__(
        self,
        name: str,
        pair: Callable[[], tuple[CallerEnd, WorkerEnd]],
        launch: Callable[[CallerEnd, WorkerEnd], LaunchedWorker],
        restart_delay: Callable[[], float | None],
    ) -> None:
        self.name = name
        self._pair = pair
        self._launch = launch
        self._restart_delay = restart_delay
        self.lock = threading.Lock()
        self.streams: dict[int, CallerStream] = {}
        self.worker: LaunchedWorker | None = None
        self._outbox: list[bytes] = []  # frames for a worker being (re)started
        self._link: _Link | None = None  # set and cleared under the lock
        self._restart: asyncio.TimerHandle | None = None
        self.closed = False
        self.dead: str | None = None  # why, once the worker is dead for good (no restart)
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"genbot-streamer-{name}", daemon=True
        )
        self.thread.start()

    # -- lifecycle (hub thread) ------------------------------------------------------------

    def connect(self) -> None:
        """Launch the first worker; raises what launching raised. Call off the hub thread."""
        asyncio.run_coroutine_threadsafe(self._connect(), self.loop).result()

    async def _connect(self) -> None:
        self._restart = None
        if self.closed:
            return
        caller_end, worker_end = self._pair()
        try:
            worker = self._launch(caller_end, worker_end)
        except BaseException:
            caller_end.close()
            raise
        self.worker = worker
        link = _Link(self, caller_end)
        caller_end.start(self.loop, link.data_received, link.closed)
        with self.lock:
            self._link = link
            if self._outbox:  # opened while the worker (re)started
                caller_end.send(b"".join(self._outbox))
                self._outbox.clear()
        worker.watch(self.loop, lambda reason: self.link_lost(link, reason))

    def link_lost(self, link: _Link, reason: str) -> None:
        """Fail every open and waiting stream, then restart the worker (with back-off)."""
        if link is not self._link:
            return
        link.end.close()
        delay = self._fail_all(reason)
        if self.closed:
            return
        if self.worker is not None:
            self.worker.stop(1.0)
        self._schedule_restart(reason, delay)

    def _fail_all(self, reason: str) -> float | None:
        """Fail every stream; returns the delay before a restart, or ``None`` for none.

        Without a restart the hub is marked dead under the same lock, so that a stream opened
        after this (e.g. while the dead worker is being stopped) fails at once instead of
        waiting for a worker that never comes.
        """
        delay = None if self.closed else self._restart_delay()
        with self.lock:
            self._link = None
            self._outbox.clear()
            if delay is None and not self.closed:
                self.dead = reason
            streams = list(self.streams.values())
            self.streams.clear()
            wake = [
                st._fail_locked(WorkerDied(f"{reason}; stream {st.id} failed")) for st in streams
            ]
        self._wake(wake)
        return delay

    def _schedule_restart(self, reason: str, delay: float | None) -> None:
        if delay is None:
            log.error("streamer %s: %s; not restarting", self.name, reason)
            return
        log.warning("streamer %s: %s; restarting the worker in %.2f s", self.name, reason, delay)
        self._restart = self.loop.call_later(delay, self._start_restart)

    def _start_restart(self) -> None:
        task = self.loop.create_task(self._connect())
        task.add_done_callback(self._restart_done)

    def _restart_done(self, task: asyncio.Task[None]) -> None:
        exc = task.exception()
        if exc is not None and not self.closed:
            reason = f"restarting the worker failed: {exc}"
            self._schedule_restart(reason, self._fail_all(reason))

    def close(self) -> None:
        """Fail open streams and drop the connection; the worker sees EOF. Idempotent."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self._outbox.clear()
            streams = list(self.streams.values())
            self.streams.clear()
            wake = [st._fail_locked(StreamError("the streamer was closed")) for st in streams]
        self._wake(wake)
        if threading.current_thread() is self.thread:
            self._drop_link()
        else:
            asyncio.run_coroutine_threadsafe(self._adrop_link(), self.loop).result()

    async def _adrop_link(self) -> None:
        self._drop_link()

    def _drop_link(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        with self.lock:
            link, self._link = self._link, None
        if link is not None:
            link.end.close()

    def stop(self) -> None:
        """Stop the hub's loop and thread (after :meth:`close` and the worker stopped)."""
        if threading.current_thread() is self.thread:
            self.loop.call_soon(self.loop.stop)
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    # -- frames in (hub thread) ------------------------------------------------------------

    def route(self, link: _Link, received: list[frames.Frame]) -> None:
        if link is not self._link:
            return
        # Unpickle before taking the lock; then route by stream id under it.
        decoded: list[tuple[int, int, Any]] = []
        for kind, sid, payload in received:
            value: Any = None
            if kind == frames.OUTS:
                value = frames.loads(payload, "outputs")
            elif kind == frames.OUT:
                try:
                    value = frames.loads(payload, "an output")
                except StreamError as exc:
                    kind, value = _UNREADABLE, exc
            elif kind == frames.ERROR:
                message, text = frames.loads(payload, "an error")
                value = StreamError(message, traceback=text)
            decoded.append((kind, sid, value))
        wake: list[_Waiter | None] = []
        with self.lock:
            streams = self.streams
            for kind, sid, value in decoded:
                if kind == frames.OUTS:
                    for out_sid, obj in value:
                        st = streams.get(out_sid)
                        if st is not None:
                            st._buffer.append(obj)
                            if st._waiter is not None:
                                wake.append(st._waiter)
                                st._waiter = None
                    continue
                st = streams.get(sid)
                if st is None:
                    continue  # the caller went away
                if kind == frames.OUT:
                    st._buffer.append(value)
                elif kind == frames.GRANT:
                    st._granted = True
                elif kind == frames.END:
                    st._ended = True
                    del streams[sid]
                elif kind == frames.ERROR:
                    st._error = value
                    del streams[sid]
                elif kind == frames.EXPIRE:
                    st._error = StreamError(
                        f"stream {sid}: its inputs were not sent within the bound after the"
                        " turn was granted, so its slot was given up"
                    )
                    del streams[sid]
                elif kind == _UNREADABLE:
                    st._error = value
                    del streams[sid]
                    self._send_locked(frames.frame(frames.CANCEL, sid))
                waiter = st._waiter
                if waiter is not None:
                    st._waiter = None
                    wake.append(waiter)
        self._wake(wake)

    def _wake(self, waiters: list[_Waiter | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for waiter in waiters:
            if waiter is None:
                continue
            if isinstance(waiter, threading.Event):
                waiter.set()
            else:
                by_loop.setdefault(waiter.get_loop(), []).append(waiter)
        for loop, futures in by_loop.items():
            try:
                loop.call_soon_threadsafe(_wake, futures)
            except RuntimeError:
                pass  # that loop is closed; nobody waits there any more

    # -- frames out (any thread) -----------------------------------------------------------

    def _send_locked(self, data: bytes) -> None:
        if self._link is not None:
            self._link.end.send(data)
        else:
            self._outbox.append(data)  # the worker is (re)starting

    def register(self, st: CallerStream) -> None:
        with self.lock:
            if self.closed:
                raise StreamError(f"streamer {self.name} is closed")
            if self.dead is not None:
                raise WorkerDied(f"streamer {self.name}: {self.dead}")
            st.id = next(self._ids)
            self.streams[st.id] = st
            self._send_locked(frames.frame(frames.OPEN, st.id))


class CallerStream:
    """A stream as the caller holds it, once its turn came (``async with streamer.stream()``).

    ``stream(inputs)`` sends the inputs (any picklable object) and returns the stream itself,
    which iterates, with ``async for`` (or ``for`` off the event loop's thread), over the
    worker's outputs as they arrive, until the worker closes the stream.
    """

    def __init__(self, hub: Hub) -> None:
        self.id = 0
        self._hub = hub
        self._buffer: deque[Any] = deque()  # outputs, filled by the hub
        self._taken: deque[Any] = deque()  # the caller's, emptied without the lock
        self._granted = False
        self._ended = False
        self._error: StreamError | None = None
        self._waiter: _Waiter | None = None
        self._sent = False
        self._closed = False

    def _fail_locked(self, error: StreamError) -> _Waiter | None:
        self._error = error
        waiter, self._waiter = self._waiter, None
        return waiter

    @property
    def closed(self) -> bool:
        """True once the stream ended, failed, or the caller closed it."""
        return self._closed or self._ended or self._error is not None

    # -- inputs ----------------------------------------------------------------------------

    def __call__(self, inputs: object) -> CallerStream:
        payload = frames.dumps(inputs, "inputs")
        hub = self._hub
        with hub.lock:
            if self._sent:
                raise StreamError(f"stream {self.id}: inputs were already sent")
            if self._closed:
                raise StreamError(f"stream {self.id} is closed")
            if self._error is not None:
                raise self._error
            if hub.streams.get(self.id) is not self:
                raise StreamError(f"stream {self.id} has ended")
            self._sent = True
            hub._send_locked(frames.frame(frames.DATA, self.id, payload))
        return self

    # -- outputs ---------------------------------------------------------------------------

    def _take_locked(self) -> bool:
        """Move buffered outputs to the caller's own deque; False at the end; raise on error."""
        if self._buffer:
            self._taken, self._buffer = self._buffer, self._taken
            return True
        if self._error is not None:
            raise self._error
        if self._ended:
            return False
        if self._closed:
            raise StreamError(f"stream {self.id} is closed")
        if not self._sent:
            raise StreamError(f"stream {self.id}: send the inputs first: `stream(inputs)`")
        return True

    def __aiter__(self) -> CallerStream:
        return self

    async def __anext__(self) -> Any:
        # Outputs are taken from the shared buffer in bulk, so the lock is held once per wake-up.
        lock = self._hub.lock
        while not self._taken:
            with lock:
                if not self._take_locked():
                    raise StopAsyncIteration
                if not self._taken:
                    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._waiter = future
            if not self._taken:
                await future
        return self._taken.popleft()

    def __iter__(self) -> CallerStream:
        _refuse_on_loop("for out in stream(inputs)", "async for out in stream(inputs)")
        return self

    def __next__(self) -> Any:
        lock = self._hub.lock
        while not self._taken:
            with lock:
                if not self._take_locked():
                    raise StopIteration
                if not self._taken:
                    event = threading.Event()
                    self._waiter = event
            if not self._taken:
                event.wait()
        return self._taken.popleft()

    # -- turn and closing ------------------------------------------------------------------

    def _ready_locked(self) -> bool:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise StreamError(f"stream {self.id} is closed")
        return self._granted

    async def _await_turn(self) -> None:
        lock = self._hub.lock
        while True:
            with lock:
                if self._ready_locked():
                    return
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiter = future
            await future

    def _wait_turn(self) -> None:
        lock = self._hub.lock
        while True:
            with lock:
                if self._ready_locked():
                    return
                event = threading.Event()
                self._waiter = event
            event.wait()

    def close(self) -> None:
        """Leave the stream: the worker sees it closed and the slot is free at once.

        A read (or turn) waiting on the stream in another task or thread wakes up and raises
        :class:`StreamError`.
        """
        hub = self._hub
        with hub.lock:
            if self._closed:
                return
            self._closed = True
            waiter, self._waiter = self._waiter, None
            if hub.streams.pop(self.id, None) is not None:
                hub._send_locked(frames.frame(frames.CANCEL, self.id))
        hub._wake([waiter])

    def __repr__(self) -> str:
        return f"<CallerStream {self.id}{' closed' if self.closed else ''}>"


class StreamSlot:
    """What ``Streamer.stream()`` returns: enter it to wait in the queue for a turn.

    ``async with streamer.stream() as stream:`` on an event loop; ``with streamer.stream() as
    stream:`` from synchronous code off the loop's thread. Leaving the block closes the stream.
    """

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._stream: CallerStream | None = None

    def _open(self) -> CallerStream:
        if self._stream is not None:
            raise StreamError("a stream slot can be entered once; call streamer.stream() again")
        self._stream = CallerStream(self._hub)
        self._hub.register(self._stream)
        return self._stream

    async def __aenter__(self) -> CallerStream:
        stream = self._open()
        try:
            await stream._await_turn()
        except BaseException:
            stream.close()
            raise
        return stream

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._stream is not None
        self._stream.close()

    def __enter__(self) -> CallerStream:
        _refuse_on_loop("with streamer.stream()", "async with streamer.stream()")
        stream = self._open()
        try:
            stream._wait_turn()
        except BaseException:
            stream.close()
            raise
        return stream

    def __exit__(self, *exc_info: object) -> None:
        assert self._stream is not None
        self._stream.close()
