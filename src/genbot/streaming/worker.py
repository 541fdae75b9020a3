"""The worker side: the streams a worker consumes, and the threads that move their frames.

A worker (thread or process) owns one :class:`~genbot.streaming.connection.WorkerConnection`.
Frames are read, and the queue of streams kept, by whoever waits on the connection: while
``consume()`` waits, the worker's own thread reads the socket, so it grants turns and takes the
inputs that complete its batch without a switch to another thread; while the worker is busy
elsewhere, a receiver thread reads (so that cancellations and the caller side's end are seen at
once). One reads at a time: the receiver steps aside, woken through a pipe, when ``consume()``
starts waiting, and resumes when it returns, or, when it returned streams, once the first output
went out or the worker reads a stream's ``closed`` (so that it does not compete with the worker's
thread for the first output). A sender thread coalesces everything written since
its last send into one ``send`` call, so many small outputs share a system call.
"""

from __future__ import annotations

import logging
import math
import os
import select
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from genbot.streaming import frames
from genbot.streaming.connection import WorkerConnection
from genbot.streaming.errors import FAILURE_KINDS, StreamError, WorkerExit

__all__ = ["Stream", "WorkerSide", "serve"]

_log = logging.getLogger(__name__)


class Stream:
    """One caller's stream, as the worker sees it.

    ``data`` is the caller's input. ``write(obj)`` sends an output (any picklable object);
    ``close()`` ends the stream; ``closed`` is true once either side closed it (e.g. the caller
    went away): writes to a closed stream are dropped.
    """

    __slots__ = ("_closed", "_side", "data", "id")

    def __init__(self, side: WorkerSide, sid: int, data: Any) -> None:
        self._side = side
        self.id = sid
        self.data = data
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once either side closed the stream (e.g. the caller went away)."""
        if self._side.receiver_held:  # the worker looks: make sure someone reads the socket
            self._side.resume_receiver()
        return self._closed

    def write(self, obj: object) -> None:
        if self._closed:
            return
        side = self._side
        if type(obj) in frames.PLAIN_TYPES:
            side.send_plain(self.id, obj)
        else:
            payload = frames.dumps(obj, "output")  # fails here, in the worker, if unpicklable
            side.send(frames.frame(frames.OUT, self.id, payload))
        if side.receiver_held:  # after the first output went out
            side.resume_receiver()

    def close(self) -> None:
        if not self._closed:
            self._side.finish(self, frames.END, b"")

    def fail(self, error: BaseException | str, *, kind: str | None = None) -> None:
        """End the stream with an error: the caller's iteration raises :class:`StreamError`,
        or with a ``kind`` of :data:`~genbot.streaming.errors.FAILURE_KINDS` its typed
        subclass (``"stall"``: :class:`~genbot.streaming.errors.StallTimeout`, ...).

        Raises
        ------
        ValueError
            ``kind`` is not one of :data:`~genbot.streaming.errors.FAILURE_KINDS`.
        """
        if kind is not None and kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; one of: {', '.join(FAILURE_KINDS)}")
        if self._closed:
            return
        if isinstance(error, BaseException):
            message = f"{type(error).__name__}: {error}"
            text = "".join(traceback.format_exception(error))
        else:
            message, text = error, None
        self._side.finish(self, frames.ERROR, _error_payload(message, text, kind))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Stream {self.id} {state} data={self.data!r:.60}>"


def _encode(batch: list[bytes | tuple[int, object]]) -> bytes:
    """One send's bytes: frames as they are, each run of plain outputs as one OUTS frame."""
    chunks: list[bytes] = []
    run: list[tuple[int, object]] = []
    for item in batch:
        if type(item) is tuple:
            run.append(item)
            continue
        if run:
            chunks.append(frames.frame(frames.OUTS, 0, frames.dumps(run, "outputs")))
            run = []
        chunks.append(item)  # type: ignore[arg-type]
    if run:
        chunks.append(frames.frame(frames.OUTS, 0, frames.dumps(run, "outputs")))
    return b"".join(chunks)


#: The longest wait ``poll`` takes (a C int of milliseconds); ``consume()`` waits again after.
_MAX_POLL_MS = 2**31 - 1


def _poll_ms(seconds: float) -> int:
    """``seconds`` as a ``poll`` timeout: milliseconds, rounded up, at most ``_MAX_POLL_MS``."""
    return min(math.ceil(seconds * 1000), _MAX_POLL_MS)


def _error_payload(message: str, text: str | None, kind: str | None = None) -> bytes:
    return frames.dumps((message, text, kind), "error")


class WorkerSide:
    """State and threads of one worker's connection (see the module docstring).

    Streams go through: *pending* (the caller waits for a turn) -> *granted* (``consume()`` gave
    it the turn, the caller builds and sends its inputs) -> *ready* (the inputs arrived) ->
    *active* (returned by ``consume()``, until either side closes it). Granted streams count
    against ``consume``'s ``maximum``; one whose inputs do not arrive within ``input_timeout``
    seconds is expired and its slot released. A stream whose inputs came with its request
    (``OPEN_DATA``) goes from *pending* to *ready* when it is granted.

    **Credit.** While ``consume()`` waits with a free slot and no stream pending or granted, it
    offers the caller side one turn (``CREDIT`` 1): a caller that opens a stream then takes its
    turn at once, without the round trip to the worker (``OPEN_GRANTED``), and sends its inputs
    unasked, so its first output comes after one round trip, not two. One turn at a time: taken,
    it needs no withdrawal. An offer not taken is withdrawn (``CREDIT`` 0) when ``consume()``
    returns or grants another stream; a stream opened on it before the withdrawal arrived is
    *pending*, as any other, with its inputs when they come, and granted (without a ``GRANT``:
    its caller has its turn already) by a later call.
    """

    def __init__(self, end: WorkerConnection, *, input_timeout: float) -> None:
        self.end = end
        self.input_timeout = input_timeout
        self.cond = threading.Condition(threading.Lock())
        self.pending: dict[int, bytes | None] = {}  # with the inputs, if sent with OPEN
        self.pregranted: set[int] = set()  # pending streams whose callers took a credit
        self.credit = 0  # turns offered with CREDIT and not taken or withdrawn yet
        self.granted: dict[int, float] = {}
        self.ready: dict[int, Stream] = {}
        self.active: dict[int, Stream] = {}
        self.eof = False
        self.fatal: str | None = None  # why the worker stopped, when it failed holding no stream
        # Reading: one thread at a time reads and handles frames, under read_lock (taken before
        # cond). consume() reads while it waits (_consumer_reads); the receiver then steps aside.
        self._read_lock = threading.Lock()
        self._consume_lock = threading.Lock()
        self._frames = frames.FrameReader()
        self._consumer_reads = False
        self._receiver_polling = False  # the receiver waits on the socket (not parked on cond)
        # consume() handed out streams and left the receiver parked: it resumes once the first
        # output went out (or the worker looks at a stream's ``closed``, or closes), so that it
        # does not compete with the worker's thread before that.
        self.receiver_held = False
        self._wake_r, self._wake_w = os.pipe()  # tells the polling receiver to step aside
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._consumer_poll = select.poll()
        self._consumer_poll.register(end.sock, select.POLLIN)
        self._out_cond = threading.Condition(threading.Lock())
        self._outbox: list[bytes | tuple[int, object]] = []
        self._stopping = False
        self._sending = False  # a thread is in end.send(): the others queue behind it
        self._send_first = False  # consume() handed out streams: send the next item at once
        self._handlers: dict[int, Callable[[int, bytes], None]] = {
            frames.OPEN: self._opened,
            frames.OPEN_DATA: self._opened_with_data,
            frames.OPEN_GRANTED: self._opened_granted,
            frames.DATA: self._arrived,
            frames.CANCEL: self._cancelled,
        }
        self._receiver = threading.Thread(target=self._receive, name="genbot-recv", daemon=True)
        self._sender = threading.Thread(target=self._send_loop, name="genbot-send", daemon=True)
        self._receiver.start()
        self._sender.start()

    # -- sending ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Queue ``data`` for the sender thread, which sends everything queued at once."""
        self._queue(data)

    def send_plain(self, sid: int, obj: object) -> None:
        """Queue an output of a plain type; the sender pickles a run of them at once."""
        self._queue((sid, obj))

    def _queue(self, item: bytes | tuple[int, object]) -> None:
        """Queue ``item`` and wake the sender thread, except for the first item after
        ``consume()`` handed out streams, when nothing else waits: that one (typically a new
        stream's first output) this thread sends at once, before the sender thread could run."""
        with self._out_cond:
            self._outbox.append(item)
            if len(self._outbox) > 1 or self._sending:
                return  # the sender thread was told, or sends it after the current send
            now, self._send_first = self._send_first, False
            if not now:
                self._out_cond.notify()
        if now:
            self.flush()

    def send_now(self, data: bytes) -> None:
        """Queue ``data`` and :meth:`flush`."""
        with self._out_cond:
            self._outbox.append(data)
        self.flush()

    def flush(self) -> None:
        """Send what is queued from this thread, unless a send is under way (then the sender
        thread sends it after). Saves the hop to the sender thread when the worker is about to
        wait anyway (in ``consume``); the order of frames is kept either way."""
        with self._out_cond:
            if self._sending or not self._outbox:
                return
            batch, self._outbox = self._outbox, []
            self._sending = True
        try:
            self.end.send(_encode(batch))
        except OSError:
            pass  # the caller side is gone: the receiver sees EOF (we may hold ``cond`` here)
        finally:
            with self._out_cond:
                self._sending = False
                if self._outbox:
                    self._out_cond.notify()

    def _send_loop(self) -> None:
        while True:
            with self._out_cond:
                while self._sending or (not self._outbox and not self._stopping):
                    self._out_cond.wait()
                batch, self._outbox = self._outbox, []
                stopping = self._stopping
                self._sending = bool(batch)
            if batch:
                try:
                    self.end.send(_encode(batch))
                except OSError:
                    self._lost()
                    return
                finally:
                    with self._out_cond:
                        self._sending = False
            if stopping:
                return

    def finish(self, stream: Stream, kind: int, payload: bytes) -> None:
        with self.cond:
            if stream._closed:
                return
            stream._closed = True
            self.active.pop(stream.id, None)
        self.send(frames.frame(kind, stream.id, payload))
        if self.receiver_held:
            self.resume_receiver()

    # -- receiving -------------------------------------------------------------------------

    def _receive(self) -> None:
        """The receiver thread: reads while ``consume()`` does not, until the connection ends."""
        poller = select.poll()
        poller.register(self.end.sock, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while self._receiver_turn():
                poller.poll()
                self._drain_wake()
                with self._read_lock:
                    if not self._consumer_reads:
                        self._read()
        finally:
            with self.cond:
                self._receiver_polling = False
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def _receiver_turn(self) -> bool:
        """Wait while ``consume()`` reads; False once the connection ended."""
        with self.cond:
            self._receiver_polling = False
            while self._consumer_reads and not self.eof:
                self.cond.wait()
            self._receiver_polling = not self.eof
            return self._receiver_polling

    def _drain_wake(self) -> None:
        try:
            os.read(self._wake_r, 64)
        except BlockingIOError:
            pass

    def _read(self) -> None:
        """Under ``read_lock``: read what the socket holds, without blocking, and handle it."""
        data = self.end.recv_nowait()
        if data is None:
            return  # nothing there (yet)
        if not data:
            self._lost()
            return
        handlers = self._handlers
        with self.cond:
            for kind, sid, payload in self._frames.feed(data):
                handler = handlers.get(kind)
                if handler is not None:
                    handler(sid, payload)

    def _opened(self, sid: int, payload: bytes) -> None:
        self.pending[sid] = None

    def _opened_with_data(self, sid: int, payload: bytes) -> None:
        self.pending[sid] = payload

    def _opened_granted(self, sid: int, payload: bytes) -> None:
        """A stream that took its turn from the credit: granted by the next grant, unasked."""
        self.pending[sid] = None
        self.pregranted.add(sid)
        self.credit = max(self.credit - 1, 0)

    def _arrived(self, sid: int, payload: bytes) -> None:
        if self.granted.pop(sid, None) is not None:
            self._make_ready(sid, payload)
        elif sid in self.pregranted and sid in self.pending:
            self.pending[sid] = payload  # its caller had its turn from a withdrawn credit
        # else: expired or cancelled meanwhile

    def _make_ready(self, sid: int, payload: bytes) -> None:
        """The inputs of granted stream ``sid`` are here: it is ready (or fails if garbled)."""
        stream = Stream(self, sid, None)
        try:
            stream.data = frames.loads(payload, "inputs")
        except StreamError as exc:
            stream._closed = True
            self.send(frames.frame(frames.ERROR, sid, _error_payload(str(exc), None)))
            return
        self.ready[sid] = stream

    def _cancelled(self, sid: int, payload: bytes = b"") -> None:
        self.pending.pop(sid, None)
        self.pregranted.discard(sid)
        self.granted.pop(sid, None)
        stream = self.ready.pop(sid, None) or self.active.pop(sid, None)
        if stream is not None:
            stream._closed = True

    def _lost(self) -> None:
        """The caller side is gone (closed, or its process died)."""
        with self.cond:
            self.eof = True
            for stream in [*self.ready.values(), *self.active.values()]:
                stream._closed = True
            self.pending.clear()
            self.pregranted.clear()
            self.granted.clear()
            self.ready.clear()
            self.active.clear()
            self.cond.notify_all()

    # -- consume ---------------------------------------------------------------------------

    def consume(self, minimum: int, maximum: int, timeout: float | None) -> list[Stream]:
        if not 0 <= minimum <= maximum:
            raise ValueError(f"need 0 <= minimum <= maximum, got {minimum} and {maximum}")
        deadline = None if timeout is None else time.monotonic() + timeout
        # One call at a time reads (calls from several threads take turns).
        if not self._consume_lock.acquire(timeout=-1 if timeout is None else timeout):
            self.flush()  # the outputs written since the last call
            return []
        taken: list[Stream] = []
        try:
            while True:
                with self._read_lock, self.cond:
                    wait = self._take_or_wait_locked(minimum, maximum, deadline)
                    if isinstance(wait, list):
                        taken = wait
                        if self.credit:  # busy now: no turn without asking any more
                            self.credit = 0
                            self._queue_frame(frames.frame(frames.CREDIT, 0))
                    else:
                        self._offer_credit_locked(maximum)
                        step_aside = self._receiver_polling and not self._consumer_reads
                        self._consumer_reads = True
                        self.receiver_held = False  # parked already: this thread reads
                self.flush()  # what was written since the last call, and the credit
                if isinstance(wait, list):
                    self._send_first = bool(wait)
                    return wait
                if step_aside:
                    self._wake_receiver()
                self._consumer_poll.poll(-1 if wait is None else _poll_ms(wait))
                with self._read_lock:
                    self._read()
        finally:
            if self._consumer_reads:
                with self.cond:
                    self._consumer_reads = False
                    if taken:  # resumed after the first output (resume_receiver)
                        self.receiver_held = True
                    else:
                        self.cond.notify_all()  # the receiver reads again
            self._consume_lock.release()

    def _take_or_wait_locked(
        self, minimum: int, maximum: int, deadline: float | None
    ) -> list[Stream] | float | None:
        """Under both locks: grant and expire turns, then the streams to return, or how long
        to wait for more (seconds, or ``None``: until something arrives)."""
        if self.eof:
            raise WorkerExit
        now = time.monotonic()
        self._expire(now)
        self._grant_locked(maximum, now)
        ready = len(self.ready)
        if ready >= maximum or (ready >= minimum and not self.granted) or minimum == 0:
            return self._take_locked(maximum)
        wake_at = min(self.granted.values(), default=None)
        if deadline is not None:
            if now >= deadline:
                return self._take_locked(maximum)
            wake_at = deadline if wake_at is None else min(wake_at, deadline)
        return None if wake_at is None else max(wake_at - now, 0.0)

    def _offer_credit_locked(self, maximum: int) -> None:
        """About to wait: offer the caller side a turn, if an ``OPEN`` would get one at once and
        no other stream is under way (pending, or granted and its inputs not here yet)."""
        idle = not self.pending and not self.granted
        free = 1 if idle and len(self.ready) < maximum else 0
        if free != self.credit:
            self.credit = free
            self._queue_frame(frames.frame(frames.CREDIT, free))

    def _queue_frame(self, data: bytes) -> None:
        """Queue ``data`` for the next :meth:`flush`, which the caller of this makes."""
        with self._out_cond:
            self._outbox.append(data)

    def _take_locked(self, maximum: int) -> list[Stream]:
        taken = []
        for sid in list(self.ready)[:maximum]:
            stream = self.ready.pop(sid)
            self.active[sid] = stream
            taken.append(stream)
        return taken

    def resume_receiver(self) -> None:
        """Let the receiver read again, if ``consume()`` left it parked. Not under ``cond``."""
        with self.cond:
            if self.receiver_held:
                self.receiver_held = False
                self.cond.notify_all()

    def _wake_receiver(self) -> None:
        """Make the receiver leave its poll (it then waits until ``consume()`` returns)."""
        with self.cond:
            if self._wake_w < 0:
                return
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _grant_locked(self, maximum: int, now: float) -> None:
        """Give waiting streams their turn while fewer than ``maximum`` are granted or ready."""
        grants = []
        while self.pending and len(self.granted) + len(self.ready) < maximum:
            sid = next(iter(self.pending))
            inputs = self.pending.pop(sid)
            if sid in self.pregranted:
                self.pregranted.discard(sid)  # its caller has its turn already
            else:
                grants.append(frames.frame(frames.GRANT, sid))
            if inputs is None:
                self.granted[sid] = now + self.input_timeout
            else:
                self._make_ready(sid, inputs)  # sent with OPEN: no wait for them
        if grants:
            self.send_now(b"".join(grants))

    def _expire(self, now: float) -> None:
        for sid, deadline in list(self.granted.items()):
            if deadline <= now:
                del self.granted[sid]
                self.send(frames.frame(frames.EXPIRE, sid))

    # -- failures and shutdown -------------------------------------------------------------

    def fail_active(self, message: str, text: str | None) -> int:
        """Fail the streams the worker holds; returns how many."""
        with self.cond:
            streams = list(self.active.values())
        for stream in streams:
            self.finish(stream, frames.ERROR, _error_payload(message, text))
        return len(streams)

    def fail_all(self, message: str, text: str | None, *, fatal: bool = False) -> None:
        """Fail every stream this worker knows of: held, ready, granted and waiting. ``fatal``:
        the worker stops for good; the caller side is told why, so that a stream opened after
        this fails with the same reason."""
        if fatal:
            self.fatal = message
            self.send(frames.frame(frames.FATAL, 0, frames.dumps(message, "a reason")))
        self.fail_active(message, text)
        with self.cond:
            sids = [*self.pending, *self.granted, *self.ready]
            for stream in self.ready.values():
                stream._closed = True
            self.pending.clear()
            self.pregranted.clear()
            self.granted.clear()
            self.ready.clear()
        payload = _error_payload(message, text)
        for sid in sids:
            self.send(frames.frame(frames.ERROR, sid, payload))

    def close(self) -> None:
        """Flush what was written, then close the connection."""
        self.resume_receiver()  # it sees the end, and returns
        with self._out_cond:
            self._stopping = True
            self._out_cond.notify()
        if threading.current_thread() is not self._sender:
            self._sender.join(5.0)
        self.end.close()


def serve(worker: Callable[[], None], side: WorkerSide) -> int:
    """Run ``worker()`` until the streamer closes; returns an exit status.

    An exception from ``worker()`` fails the streams it held (with the traceback) and
    ``worker()`` runs again. If it raised while holding no stream, the failure is not
    any stream's own: every waiting stream fails with it and the worker stops (status 1);
    a process worker is then restarted by the caller side, with back-off.
    """
    while True:
        try:
            worker()
        except WorkerExit:
            return 0
        except Exception as exc:
            text = traceback.format_exc()
            message = f"the worker raised {type(exc).__name__}: {exc}"
            # One line; the traceback reaches the callers (StreamError.traceback) and DEBUG.
            _log.error("streamer worker failed: %s", message)
            _log.debug("the worker's traceback:\n%s", text)
            if side.fail_active(message, text) == 0:
                side.fail_all(message, text, fatal=True)
                return 1
            continue
        _log.warning("streamer worker returned; no more streams will be served")
        side.fail_all("the worker stopped", None)
        return 0
