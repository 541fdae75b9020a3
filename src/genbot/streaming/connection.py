"""The connection between the caller side and one worker: a connected stream socket.

Frames (:mod:`genbot.streaming.frames`) travel over one socket per worker, in order, in both
directions. A worker on this machine (thread or process) gets one end of a
``socket.socketpair()``. Both ends need only ``send``, ``recv`` and, on the caller side, a file
descriptor that event loops can watch, so any connected stream socket would do (e.g. TCP, for a
worker on another machine): the socket is the seam, and there is no other abstraction over it.

The caller's end is read by the event loops whose callers wait on it (each registers the socket
with ``add_reader`` while it has waiters; see :mod:`genbot.streaming.client`), so it closes only
once every loop that watched it has let it go: an event loop must never be left watching a file
descriptor number that was closed and may be reused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import weakref
from collections.abc import Callable

from genbot.streaming import frames

__all__ = ["CallerConnection", "WorkerConnection", "socket_pair"]

_log = logging.getLogger(__name__)

_CHUNK = 1 << 18


class WorkerConnection:
    """The worker's end: read (without blocking) by whichever worker thread waits on it, written
    (blocking) by the worker's sender thread or by a thread that flushes.

    Picklable by :mod:`multiprocessing` (the socket is), so it can be handed to a worker process.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv_nowait(self) -> bytes | None:
        """What the socket holds, without blocking: ``None`` if nothing, ``b""`` once the caller
        side is gone. (The socket stays blocking for the sender's ``sendall``.)"""
        try:
            return self.sock.recv(_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        """Send all of ``data``; raises ``OSError`` once the caller side is gone."""
        self.sock.sendall(data)

    def close(self) -> None:
        """Close; wakes a thread blocked in :meth:`recv`."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class CallerConnection:
    """The caller side's end: a non-blocking socket, written from any thread, read by event loops.

    ``send`` writes straight to the socket from the sending thread, so a caller's frame costs no
    hop to another thread; what the socket does not take at once is queued and written by
    ``writer_loop`` (the hub's) when the socket is writable. Reading: :meth:`watch` and
    :meth:`unwatch` (on the watching loop's thread), :meth:`recv` from a watcher's callback,
    with ``read_lock`` held around the read and the handling of what was read, so that frames
    are handled in order whichever loop reads them.
    """

    def __init__(self, sock: socket.socket, writer_loop: asyncio.AbstractEventLoop) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.frames = frames.FrameReader()  # used under read_lock
        self.read_lock = threading.Lock()
        self._lock = threading.Lock()
        self._writer_loop = writer_loop
        self._pending: list[bytes] = []  # not sent yet, in order
        self._writing = False  # writer_loop watches the socket for writability
        self._watchers: set[asyncio.AbstractEventLoop] = set()
        self.lost = False
        self.closed = False
        _caller_connections.add(self)

    # -- reading (on the watching loop's thread) ----------------------------------------------

    def watch(self, loop: asyncio.AbstractEventLoop, readable: Callable[[], None]) -> bool:
        """Call ``readable()`` on ``loop`` whenever the socket is readable; False once lost."""
        with self._lock:
            if self.lost:
                return False
            loop.add_reader(self.fd, readable)
            self._watchers.add(loop)
            return True

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop watching on ``loop``; the last watcher of a lost connection closes it."""
        with self._lock:
            if loop not in self._watchers:
                return
            self._watchers.discard(loop)
            if not loop.is_closed():
                loop.remove_reader(self.fd)
            self._close_if_unused_locked()

    def recv(self) -> bytes | None:
        """What the socket holds (``b""`` at its end), or ``None`` if another reader took it."""
        try:
            return self.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    # -- writing (any thread) -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Send ``data`` after everything sent before, without blocking; dropped once lost."""
        with self._lock:
            if self.lost:
                return
            if self._pending:
                self._pending.append(data)  # behind what waits for the writer
                return
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the connection is gone: its readers (or the death watch) tell
            if sent == len(data):
                return
            self._pending.append(data[sent:])
        try:
            self._writer_loop.call_soon_threadsafe(self._start_writing)
        except RuntimeError:
            pass  # the hub's loop is closed: so is this connection

    def _start_writing(self) -> None:
        with self._lock:
            if self.lost or self._writing or not self._pending:
                return
            self._writer_loop.add_writer(self.fd, self._writable)
            self._writing = True

    def _writable(self) -> None:
        with self._lock:
            data = b"".join(self._pending)
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = len(data)  # gone: the readers tell
            self._pending = [data[sent:]] if sent < len(data) else []
            if not self._pending:
                self._stop_writing_locked()

    def _stop_writing_locked(self) -> None:
        if self._writing:
            self._writing = False
            if not self._writer_loop.is_closed():
                self._writer_loop.remove_writer(self.fd)
        self._close_if_unused_locked()

    def _stop_writing(self) -> None:
        with self._lock:
            self._stop_writing_locked()

    # -- ending ---------------------------------------------------------------------------------

    def lose(self) -> None:
        """End the connection (from any thread): the worker sees EOF at once; the socket closes
        once no loop watches it any more."""
        with self._lock:
            if self.lost:
                return
            self.lost = True
            self._pending.clear()
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # watchers see EOF and let go
            except OSError:
                pass
            writing = self._writing
            self._close_if_unused_locked()
        if writing:
            try:
                self._writer_loop.call_soon_threadsafe(self._stop_writing)
            except RuntimeError:
                self.writer_loop_closed()

    def writer_loop_closed(self) -> None:
        """The hub's loop is closed: it watches nothing any more."""
        with self._lock:
            self._writing = False
            self._watchers.discard(self._writer_loop)
            self._close_if_unused_locked()

    def _close_if_unused_locked(self) -> None:
        if not self.lost or self.closed or self._writing:
            return
        # A closed loop watches nothing any more (its selector is closed).
        self._watchers = {loop for loop in self._watchers if not loop.is_closed()}
        if not self._watchers:
            self.closed = True
            self.sock.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "lost" if self.lost else "open"
        return f"<CallerConnection fd={self.fd} {state} watched by {len(self._watchers)}>"


def socket_pair(
    writer_loop: asyncio.AbstractEventLoop,
) -> tuple[CallerConnection, WorkerConnection]:
    """A fresh connection to one worker on this machine (thread or process)."""
    caller, worker = socket.socketpair()
    return CallerConnection(caller, writer_loop), WorkerConnection(worker)


# A forked process inherits every caller-side socket of its parent. A forked worker holding
# them would keep its siblings from ever seeing EOF when the parent goes away, so it closes them.
_caller_connections: weakref.WeakSet[CallerConnection] = weakref.WeakSet()


def _close_inherited_connections() -> None:
    for connection in list(_caller_connections):
        connection.sock.close()
    _caller_connections.clear()


os.register_at_fork(after_in_child=_close_inherited_connections)
