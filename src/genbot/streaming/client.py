"""The caller side: the hub that connects to one worker, and the streams callers hold.

**Who reads the worker's connection.** The event loops of its callers. A loop watches the
connection's socket (``add_reader``) while it has a reason to: a stream opened on it and not
closed yet, or a caller waiting on it. So with one event loop (a bot), frames are read and
routed, and the waiting caller woken, on the caller's own loop: no other thread, no cross-thread
wake-up, and no (un)registering per wait. Callers on several loops each read; frames are handled
in order (under the connection's read lock) by whichever loop read them, which wakes the callers
of other loops with ``call_soon_threadsafe``. A loop that holds a stream open but is blocked
does not hold up anyone: whoever waits makes their own loop watch too. Synchronous callers
(``with streamer.stream()``, ``for out in stream(x)`` on plain threads) wait on a
``threading.Event``; the hub's thread reads for them.

**The hub** is a small thread with its own asyncio loop, off the path of outputs: it launches
the worker, watches its death (a process's sentinel, a thread's own report; a closed connection
tells whoever reads it), fails every open and waiting stream with :class:`WorkerDied` and
restarts the worker with back-off, reads for synchronous callers, and writes what a full socket
did not take. Callers send their frames (open, inputs, cancel) straight to the socket from their
own thread. Nothing polls.

**Turns offered in advance.** While the worker waits with nothing under way, it offers one
turn (``CREDIT``); a stream opened then takes it at once (``OPEN_GRANTED``), without the round
trip to ask for it. Opening a stream first reads what the connection holds, so an offer that
came while no loop watched is seen.

**Frames in** are handled by a table of small methods, one per frame kind (``_on_grant``,
``_on_out``, ...), that fill the streams' buffers and collect the waiters to wake.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from genbot.streaming import frames
from genbot.streaming.connection import CallerConnection, socket_pair
from genbot.streaming.errors import StreamError, WorkerDied, stream_error
from genbot.streaming.launchers import KILL_GRACE, LaunchedWorker, Launcher

__all__ = ["CallerStream", "Hub", "StreamSlot"]

_log = logging.getLogger(__name__)

_Waiter = asyncio.Future[None] | threading.Event
_Handler = Callable[[int, bytes, list[_Waiter]], None]

#: Seconds ``Hub.stop`` waits for the hub's thread (busy at most with a bounded worker stop).
HUB_STOP_TIMEOUT = 5.0


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _refuse_on_loop(sync_form: str, async_form: str) -> None:
    if _running_loop() is not None:
        raise StreamError(
            f"`{sync_form}` blocks, and this thread runs an asyncio event loop (it would freeze"
            f" every other task on it, e.g. the bot); use `{async_form}` here"
        )


def _wake_futures(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


class Hub:
    """One streamer's caller side (see the module docstring).

    ``launch(connection)`` starts a worker on the worker's end of a fresh connection;
    ``restart_delay()`` gives the back-off before relaunching a dead worker, or ``None`` for no
    restart. ``lock`` guards the streams and the hub's state.
    """

    def __init__(
        self, name: str, launch: Launcher, restart_delay: Callable[[], float | None]
    ) -> None:
        self.name = name
        self._launch = launch
        self._restart_delay = restart_delay
        self.lock = threading.Lock()
        self.streams: dict[int, CallerStream] = {}
        self.worker: LaunchedWorker | None = None
        self._outbox: list[bytes] = []  # frames for a worker being (re)started
        self._link: CallerConnection | None = None  # the current connection, under the lock
        self._links: list[CallerConnection] = []  # every connection not closed yet
        self._restart: asyncio.TimerHandle | None = None
        self.closed = False
        self.dead: str | None = None  # why, once the worker is dead for good (no restart)
        self._ids = itertools.count(1)
        # Reading: why each loop watches the connection (streams opened and callers waiting
        # there), and the connection each loop watches.
        self._interest: dict[asyncio.AbstractEventLoop, int] = {}
        self._watched: dict[asyncio.AbstractEventLoop, CallerConnection] = {}
        self._handlers: dict[int, _Handler] = {
            frames.GRANT: self._on_grant,
            frames.OUT: self._on_out,
            frames.OUTS: self._on_outs,
            frames.END: self._on_end,
            frames.ERROR: self._on_error,
            frames.EXPIRE: self._on_expire,
            frames.FATAL: self._on_fatal,
            frames.CREDIT: self._on_credit,
        }
        # Turns the worker offered (CREDIT) that no stream took yet: a stream opened while there
        # is one has its turn at once, without the round trip to the worker (under the lock).
        self._credit = 0
        # Frames a loop sends while it opens streams on an offered turn (_hold_sends_locked).
        self._held: list[bytes] | None = None
        self._held_loop: asyncio.AbstractEventLoop | None = None
        self._fatal: str | None = None  # why the current worker stopped for good, if it said
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"genbot-streamer-{name}", daemon=True
        )
        self.thread.start()

    # -- lifecycle ------------------------------------------------------------------------------

    def connect(self) -> None:
        """Launch the first worker; raises what launching raised. Call off the hub's thread."""
        asyncio.run_coroutine_threadsafe(self._connect(), self.loop).result()

    async def _connect(self) -> None:
        """On the hub's thread: a fresh connection and a worker on it."""
        self._restart = None
        if self.closed:
            return
        link, worker_end = socket_pair(self.loop)
        try:
            worker = self._launch(worker_end)
        except BaseException:
            link.lose()
            worker_end.sock.close()
            raise
        if not self._attach(link, worker):  # closed while launching: close() missed it
            link.lose()
            worker.stop(KILL_GRACE)
            return
        worker.watch(self.loop, functools.partial(self.link_lost, link))

    def _attach(self, link: CallerConnection, worker: LaunchedWorker) -> bool:
        """Make ``link`` and ``worker`` the current ones; False if the hub closed meanwhile."""
        with self.lock:
            if self.closed:
                return False
            self.worker = worker
            self._link = link
            self._fatal = None
            self._credit = 0
            self._links = [c for c in self._links if not c.closed] + [link]
            if self._outbox:  # opened while the worker (re)started
                link.send(b"".join(self._outbox))
                self._outbox.clear()
            waiting = list(self._interest)
        for loop in waiting:  # callers that waited through the restart
            self.resync_soon(loop)
        return True

    def link_lost(self, link: CallerConnection, reason: str) -> None:
        """The worker behind ``link`` is gone (from any thread): fail every open and waiting
        stream with :class:`WorkerDied`, then (on the hub's thread) restart it with back-off."""
        with self.lock:
            if link is not self._link:
                return
            self._link = None
            self._credit = 0
            if self._fatal and self._fatal not in reason:
                reason = f"{reason} ({self._fatal})"
            delay = None if self.closed else self._restart_delay()
            if delay is None and not self.closed:
                # Marked under the same lock, so that a stream opened after this (e.g. while
                # the dead worker is being stopped) fails at once instead of waiting forever.
                self.dead = reason
            wake = self._fail_all_locked(lambda st: WorkerDied(f"{reason}; stream {st.id} failed"))
        link.lose()
        self._wake(wake, _running_loop())
        self._call_on_hub(self._after_loss, reason, delay)

    def _after_loss(self, reason: str, delay: float | None) -> None:
        """On the hub's thread: make sure the old worker is gone, then schedule the restart."""
        if self.closed:
            return
        if self.worker is not None:
            self.worker.stop(KILL_GRACE)
        self._schedule_restart(reason, delay)

    def _fail_all_locked(self, error: Callable[[CallerStream], StreamError]) -> list[_Waiter]:
        self._outbox.clear()
        self._held = None  # the frames of streams that fail now
        streams = list(self.streams.values())
        self.streams.clear()
        waiters = [st._fail_locked(error(st)) for st in streams]
        return [waiter for waiter in waiters if waiter is not None]

    def _schedule_restart(self, reason: str, delay: float | None) -> None:
        if self.closed:
            return
        if delay is None:
            _log.error("streamer %s: %s; not restarting", self.name, reason)
            return
        _log.warning("streamer %s: %s; restarting the worker in %.2f s", self.name, reason, delay)
        self._restart = self.loop.call_later(delay, self._start_restart)

    def _start_restart(self) -> None:
        task = self.loop.create_task(self._connect())
        task.add_done_callback(self._restart_done)

    def _restart_done(self, task: asyncio.Task[None]) -> None:
        exc = task.exception()
        if exc is None or self.closed:
            return
        reason = f"restarting the worker failed: {exc}"
        with self.lock:
            delay = self._restart_delay()
            if delay is None:
                self.dead = reason
            wake = self._fail_all_locked(lambda st: WorkerDied(f"{reason}; stream {st.id} failed"))
        self._wake(wake, self.loop)
        self._schedule_restart(reason, delay)

    def close(self) -> None:
        """Fail open streams and end the connection: the worker sees EOF. Idempotent; does not
        wait for anything."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            link, self._link = self._link, None
            wake = self._fail_all_locked(lambda st: StreamError("the streamer was closed"))
        if link is not None:
            link.lose()
        self._wake(wake, _running_loop())
        self._call_on_hub(self._cancel_restart)

    def _cancel_restart(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None

    def stop(self, timeout: float = HUB_STOP_TIMEOUT) -> None:
        """Stop the hub's loop and thread (after :meth:`close`), waiting at most ``timeout`` s."""
        if threading.current_thread() is self.thread:
            self.loop.call_soon(self.loop.stop)
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return  # stopped already
        self.thread.join(timeout)
        if self.thread.is_alive():
            _log.warning(
                "streamer %s: its hub thread is still busy after %.1f s; leaving it",
                self.name,
                timeout,
            )
            return
        self.loop.close()
        with self.lock:
            links, self._links = self._links, []
        for link in links:
            link.writer_loop_closed()

    def _call_on_hub(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass  # the hub's loop is closed: the streamer is closed

    # -- reading: which loops watch the connection ---------------------------------------------

    def interest_locked(self, loop: asyncio.AbstractEventLoop, delta: int) -> bool:
        """Under the lock: ``delta`` more (or fewer) reasons for ``loop`` to watch the connection
        (a stream opened there and not closed yet, a caller waiting there). True when ``loop``
        has to start or stop watching: then :meth:`resync_locked` on its thread, or
        :meth:`resync_soon`."""
        count = self._interest.get(loop, 0) + delta
        if count > 0:
            self._interest[loop] = count
        else:
            self._interest.pop(loop, None)
        return count == 0 or count == delta

    def resync_locked(self, loop: asyncio.AbstractEventLoop) -> None:
        """Under the lock, on ``loop``'s thread: make ``loop`` watch the current connection if it
        has a reason to (see :meth:`interest_locked`), and nothing otherwise."""
        want = self._link if loop in self._interest else None
        have = self._watched.get(loop)
        if have is want:
            return
        if have is not None:
            del self._watched[loop]
            have.unwatch(loop)
        if want is not None and want.watch(loop, functools.partial(self._readable, want, loop)):
            self._watched[loop] = want

    def _resync(self, loop: asyncio.AbstractEventLoop) -> None:
        with self.lock:
            self.resync_locked(loop)

    def resync_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        """:meth:`resync_locked` on ``loop``'s thread, from any thread."""
        if _running_loop() is loop:
            self._resync(loop)
            return
        try:
            loop.call_soon_threadsafe(self._resync, loop)
        except RuntimeError:  # that loop is closed: it watches nothing any more
            with self.lock:
                self._interest.pop(loop, None)
                link = self._watched.pop(loop, None)
                if link is not None:
                    link.unwatch(loop)

    def _readable(self, link: CallerConnection, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``, which watches ``link``: read what is there and route it."""
        if self._read_link(link, loop):
            self._resync(loop)  # a lost connection: let go of it

    def _read_link(self, link: CallerConnection, here: asyncio.AbstractEventLoop | None) -> bool:
        """Read what ``link`` holds, without blocking, and route it (``here``: the loop running
        this, if any); True if ``link`` is lost or replaced (its watchers let go of it)."""
        reason = None
        with link.read_lock:
            data = link.recv()
            if data is None:
                return False  # nothing there, or another loop read it first
            if not data:
                reason = "the connection to the worker closed"
            elif link is self._link:
                try:
                    self._route(link.frames.feed(data), here)
                    return False
                except Exception as exc:  # a malformed frame: this connection cannot be trusted
                    _log.exception("streamer %s: bad data from the worker", self.name)
                    reason = f"bad data from the worker ({exc!r})"
        if reason is not None:
            self.link_lost(link, reason)
        return True

    # -- frames in: one small method per kind, called under no lock ----------------------------

    def _route(self, received: list[frames.Frame], here: asyncio.AbstractEventLoop | None) -> None:
        wake: list[_Waiter] = []
        handlers = self._handlers
        for kind, sid, payload in received:
            handler = handlers.get(kind)
            if handler is None:
                raise StreamError(f"unknown frame kind {kind} from the worker")
            handler(sid, payload, wake)
        if wake:
            self._wake(wake, here)

    def _on_grant(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """The worker gave the stream its turn: the caller may send its inputs."""
        with self.lock:
            st = self.streams.get(sid)
            if st is not None:
                st._granted = True
                st._wake_into(wake)

    def _on_out(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """One output; one the caller side cannot unpickle fails its stream, which is cancelled."""
        try:
            value = frames.loads(payload, "an output")
        except StreamError as exc:
            self._end(sid, exc, wake, cancel=True)
            return
        with self.lock:
            st = self.streams.get(sid)
            if st is not None:
                st._buffer.append(value)
                st._wake_into(wake)

    def _on_outs(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """Plain outputs of many streams, ``[(stream id, output), ...]``, in one pickle."""
        outputs = frames.loads(payload, "outputs")
        with self.lock:
            streams = self.streams
            for out_sid, obj in outputs:
                st = streams.get(out_sid)
                if st is not None:
                    st._buffer.append(obj)
                    st._wake_into(wake)

    def _on_end(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """The worker closed the stream."""
        with self.lock:
            st = self.streams.pop(sid, None)
            if st is not None:
                st._ended = True
                st._wake_into(wake)

    def _on_error(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """The stream failed in the worker (payload: message, traceback text and kind)."""
        message, text, kind = frames.loads(payload, "an error")
        self._end(sid, stream_error(message, text, kind), wake)

    def _on_fatal(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """The worker stops for good; its link is lost next, and that reason says why."""
        message = frames.loads(payload, "a reason")
        with self.lock:
            self._fatal = str(message)

    def _on_credit(self, count: int, payload: bytes, wake: list[_Waiter]) -> None:
        """The worker waits and would grant ``count`` turns at once (0: no more; it is busy)."""
        with self.lock:
            self._credit = count

    def _on_expire(self, sid: int, payload: bytes, wake: list[_Waiter]) -> None:
        """The inputs did not arrive within ``input_timeout`` of the turn: the slot is gone."""
        error = StreamError(
            f"stream {sid}: its inputs were not sent within the bound after the turn was"
            " granted, so its slot was given up"
        )
        self._end(sid, error, wake)

    def _end(self, sid: int, error: StreamError, wake: list[_Waiter], cancel: bool = False) -> None:
        with self.lock:
            st = self.streams.pop(sid, None)
            if st is None:
                return  # the caller went away
            st._error = error
            st._wake_into(wake)
            if cancel:
                self._send_locked(frames.frame(frames.CANCEL, sid))

    def _wake(self, waiters: list[_Waiter], here: asyncio.AbstractEventLoop | None) -> None:
        """Wake ``waiters``: at once on ``here`` (the loop running this), else thread-safely."""
        others: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for waiter in waiters:
            if isinstance(waiter, threading.Event):
                waiter.set()
                continue
            loop = waiter.get_loop()
            if loop is here:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                others.setdefault(loop, []).append(waiter)
        for loop, futures in others.items():
            try:
                loop.call_soon_threadsafe(_wake_futures, futures)
            except RuntimeError:
                pass  # that loop is closed; nobody waits there any more

    # -- frames out (any thread) ----------------------------------------------------------------

    def _send_locked(self, data: bytes) -> None:
        if self._held is not None:
            if _running_loop() is self._held_loop:
                self._held.append(data)  # sent at the end of this round of the loop
                return
            # Another thread: what is held goes first, so every stream's frames stay in order.
            data = b"".join([*self._held, data])
            self._held = None
        if self._link is not None:
            self._link.send(data)
        else:
            self._outbox.append(data)  # the worker is (re)starting

    def _hold_sends_locked(self, loop: asyncio.AbstractEventLoop) -> None:
        """Under the lock, on ``loop``: hold what this loop sends until the end of its current
        round of callbacks, then send it at once.

        A stream that took an offered turn sends its open and, usually, its inputs right away:
        the worker would hand it out alone, while the other streams opened in the same round
        (a burst, e.g. ``gather``) are still on their way. Held, they arrive together and make
        one batch, as they do when each waits for its ``GRANT``.
        """
        if self._held is None:
            self._held = []
            self._held_loop = loop
            loop.call_soon(self._release_held)

    def _release_held(self) -> None:
        with self.lock:
            held, self._held = self._held, None
            if held:
                self._send_locked(b"".join(held))

    def register(self, st: CallerStream, inputs: bytes | None = None) -> None:
        """Give ``st`` its id and queue it at the worker (``OPEN``, or ``OPEN_DATA`` with the
        pickled ``inputs``); its home loop watches the connection until it is closed. Call on
        the home loop's thread (or any, for the hub's).

        Raises
        ------
        StreamError
            The streamer is closed.
        WorkerDied
            The worker died and is not restarted.
        """
        link = self._link
        if link is not None and self._watched.get(st._home) is not link:
            # An offer of a turn may have come while no loop here watched the connection.
            self._read_link(link, _running_loop())
        with self.lock:
            if self.closed:
                raise StreamError(f"streamer {self.name} is closed")
            if self.dead is not None:
                raise WorkerDied(f"streamer {self.name}: {self.dead}")
            st.id = next(self._ids)
            self.streams[st.id] = st
            st._sent = inputs is not None
            if self._credit > 0 and self._link is not None:
                self._credit -= 1
                st._granted = True  # the worker offered the turn: no round trip to ask for it
                if st._home is not self.loop:  # a caller on its own event loop (not sync)
                    self._hold_sends_locked(st._home)
                opened = frames.frame(frames.OPEN_GRANTED, st.id)
                if inputs is not None:
                    opened += frames.frame(frames.DATA, st.id, inputs)
            elif inputs is None:
                opened = frames.frame(frames.OPEN, st.id)
            else:
                opened = frames.frame(frames.OPEN_DATA, st.id, inputs)
            self._send_locked(opened)
            resync = self.interest_locked(st._home, 1)
            if resync and st._home is not self.loop:
                self.resync_locked(st._home)
                resync = False
        if resync:
            self.resync_soon(st._home)


class CallerStream:
    """A stream as the caller holds it, once its turn came (``async with streamer.stream()``).

    ``stream(inputs)`` sends the inputs (any picklable object) and returns the stream itself,
    which iterates, with ``async for`` (or ``for`` off the event loop's thread), over the
    worker's outputs as they arrive, until the worker closes the stream.
    """

    def __init__(self, hub: Hub, home: asyncio.AbstractEventLoop) -> None:
        self.id = 0
        self._hub = hub
        # The loop the caller opened the stream on (the hub's, for a synchronous caller): it
        # watches the connection while the stream is open, so waits cost no (un)registering.
        self._home = home
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

    def _wake_into(self, wake: list[_Waiter]) -> None:
        """Under the hub's lock: hand this stream's waiter, if any, to ``wake``."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            wake.append(waiter)

    @property
    def closed(self) -> bool:
        """True once the stream ended, failed, or the caller closed it."""
        return self._closed or self._ended or self._error is not None

    # -- waiting (the check and the waiter are made under the hub's lock) -----------------------

    def _park_locked(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Under the lock, on ``loop``: a future to wait on; ``loop`` watches the connection."""
        future = loop.create_future()
        self._waiter = future
        hub = self._hub
        if hub.interest_locked(loop, 1):
            hub.resync_locked(loop)
        return future

    def _park_sync_locked(self) -> tuple[threading.Event, bool]:
        """Under the lock: an event to wait on; True if the hub's loop must start watching."""
        event = threading.Event()
        self._waiter = event
        return event, self._hub.interest_locked(self._hub.loop, 1)

    def _unpark(self, loop: asyncio.AbstractEventLoop, waiter: _Waiter) -> None:
        """After a wait on ``loop`` (on its thread, or ``loop`` is the hub's), woken or not."""
        hub = self._hub
        with hub.lock:
            if self._waiter is waiter:
                self._waiter = None
            if not hub.interest_locked(loop, -1):
                return
            if loop is not hub.loop:
                hub.resync_locked(loop)
                return
        hub.resync_soon(loop)

    def _sleep_sync(self, event: threading.Event, start_watching: bool) -> None:
        hub = self._hub
        if start_watching:
            hub.resync_soon(hub.loop)  # the hub's thread reads the connection for us
        try:
            event.wait()
        finally:
            self._unpark(hub.loop, event)

    # -- inputs ---------------------------------------------------------------------------------

    def __call__(self, inputs: object) -> CallerStream:
        """Send ``inputs`` (any picklable object); returns the stream, to iterate over.

        Raises
        ------
        StreamError
            The inputs are not picklable, were sent already, or the stream is closed or failed
            (e.g. its turn expired after ``input_timeout``).
        """
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

    # -- outputs --------------------------------------------------------------------------------

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
                if self._taken:
                    break
                loop = asyncio.get_running_loop()
                future = self._park_locked(loop)
            try:
                await future
            finally:
                self._unpark(loop, future)
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
                if self._taken:
                    break
                event, first = self._park_sync_locked()
            self._sleep_sync(event, first)
        return self._taken.popleft()

    # -- turn and closing -----------------------------------------------------------------------

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
                loop = asyncio.get_running_loop()
                future = self._park_locked(loop)
            try:
                await future
            finally:
                self._unpark(loop, future)

    def _wait_turn(self) -> None:
        lock = self._hub.lock
        while True:
            with lock:
                if self._ready_locked():
                    return
                event, first = self._park_sync_locked()
            self._sleep_sync(event, first)

    def close(self) -> None:
        """Leave the stream: the worker sees it closed and the slot is free at once.

        A read (or turn) waiting on the stream in another task or thread wakes up and raises
        :class:`StreamError`.
        """
        hub = self._hub
        here = _running_loop()
        home = self._home
        with hub.lock:
            if self._closed:
                return
            self._closed = True
            waiter, self._waiter = self._waiter, None
            if hub.streams.pop(self.id, None) is not None:
                hub._send_locked(frames.frame(frames.CANCEL, self.id))
            resync = hub.interest_locked(home, -1)
            if resync and home is here:
                hub.resync_locked(home)
                resync = False
        if resync:
            hub.resync_soon(home)
        if waiter is not None:
            hub._wake([waiter], here)

    def __repr__(self) -> str:
        return f"<CallerStream {self.id}{' closed' if self.closed else ''}>"


class StreamSlot:
    """What ``Streamer.stream()`` returns: enter it to wait in the queue for a turn.

    ``async with streamer.stream() as stream:`` on an event loop; ``with streamer.stream() as
    stream:`` from synchronous code off the loop's thread. Leaving the block closes the stream.
    ``inputs``: the pickled inputs, sent with the request for a turn (``streamer.stream(x)``).
    """

    def __init__(self, hub: Hub, inputs: bytes | None = None) -> None:
        self._hub = hub
        self._inputs = inputs
        self._stream: CallerStream | None = None

    def _open(self, home: asyncio.AbstractEventLoop) -> CallerStream:
        if self._stream is not None:
            raise StreamError("a stream slot can be entered once; call streamer.stream() again")
        self._stream = CallerStream(self._hub, home)
        self._hub.register(self._stream, self._inputs)
        return self._stream

    async def __aenter__(self) -> CallerStream:
        stream = self._open(asyncio.get_running_loop())
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
        stream = self._open(self._hub.loop)
        try:
            stream._wait_turn()
        except BaseException:
            stream.close()
            raise
        return stream

    def __exit__(self, *exc_info: object) -> None:
        assert self._stream is not None
        self._stream.close()
