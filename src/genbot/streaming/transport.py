"""The transport seam: what carries bytes between the caller side and one worker.

Framing (:mod:`genbot.streaming.frames`) sits above it, so a transport only moves bytes, in
order, in both directions. Today a worker is reached over a ``socket.socketpair()``; another
transport (e.g. Redis lists, for workers on other machines) implements :class:`Transport`,
:class:`CallerEnd` and :class:`WorkerEnd` and nothing else changes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable

__all__ = ["CallerEnd", "SocketPairTransport", "Transport", "WorkerEnd"]

_CHUNK = 1 << 18


class WorkerEnd(ABC):
    """The worker's end: blocking calls, made from the worker's receiver and sender threads.

    Must be picklable by :mod:`multiprocessing` so it can be handed to a worker process.
    """

    @abstractmethod
    def recv(self) -> bytes:
        """The next chunk of bytes; ``b""`` once the caller side is gone."""

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Send all of ``data``; raise ``OSError`` once the caller side is gone."""

    @abstractmethod
    def close(self) -> None:
        """Close; wakes a thread blocked in :meth:`recv`."""


class CallerEnd(ABC):
    """The caller side's end: read on the streamer's asyncio loop, written from any thread."""

    @abstractmethod
    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        """On ``loop``'s thread: feed what arrives to ``on_data``; call ``on_closed`` once the
        other end is gone (not after :meth:`close`)."""

    @abstractmethod
    def send(self, data: bytes) -> None:
        """From any thread, without blocking: send ``data`` after everything sent before."""

    @abstractmethod
    def release_worker_copy(self) -> None:
        """Close this process's copy of the worker's end once a worker process has its own."""

    @abstractmethod
    def close(self) -> None:
        """Stop and close (on the loop's thread once started)."""


class Transport(ABC):
    @abstractmethod
    def pair(self) -> tuple[CallerEnd, WorkerEnd]:
        """A fresh connection to one worker."""


class _SocketWorkerEnd(WorkerEnd):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        try:
            return self.sock.recv(_CHUNK)
        except OSError:
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _SocketCallerEnd(CallerEnd):
    """Sends go straight to the (non-blocking) socket from the sending thread, so a caller's
    frame costs no hop to the loop's thread; what the socket does not take at once is queued
    and written by the loop when the socket is writable."""

    def __init__(self, sock: socket.socket, worker_sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.worker_sock = worker_sock
        self._lock = threading.Lock()
        self._pending: list[bytes] = []  # not sent yet, in order
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._on_data: Callable[[bytes], None] = lambda data: None
        self._on_closed: Callable[[], None] = lambda: None
        _caller_ends.add(self)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_closed: Callable[[], None],
    ) -> None:
        self._on_data = on_data
        self._on_closed = on_closed
        loop.add_reader(self.sock.fileno(), self._readable)
        with self._lock:
            self._loop = loop
            if self._pending:
                loop.add_writer(self.sock.fileno(), self._writable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._on_data(data)
        elif not self._closed:
            self.close()
            self._on_closed()

    def send(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            if self._pending or self._loop is None:
                self._pending.append(data)  # behind what waits for the loop's writer
                return
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                return  # the connection is gone: the reader tells the loop
            if sent == len(data):
                return
            self._pending.append(data[sent:])
            loop = self._loop
        try:
            loop.call_soon_threadsafe(self._start_writing)
        except RuntimeError:
            pass  # the loop is closed: so is this end

    def _start_writing(self) -> None:
        if not self._closed:
            assert self._loop is not None
            self._loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        with self._lock:
            data = b"".join(self._pending)
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = len(data)  # gone: the reader tells the loop
            self._pending = [data[sent:]] if sent < len(data) else []
            if not self._pending and self._loop is not None:
                self._loop.remove_writer(self.sock.fileno())

    def release_worker_copy(self) -> None:
        self.worker_sock.close()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
                self._loop.remove_writer(self.sock.fileno())
        self.sock.close()
        self.worker_sock.close()


# A forked process inherits every caller-side socket of its parent. A forked worker holding
# them would keep its siblings from ever seeing EOF when the parent goes away, so it closes them.
_caller_ends: weakref.WeakSet[_SocketCallerEnd] = weakref.WeakSet()


def _close_inherited_caller_ends() -> None:
    for end in list(_caller_ends):
        end.sock.close()
    _caller_ends.clear()


os.register_at_fork(after_in_child=_close_inherited_caller_ends)


class SocketPairTransport(Transport):
    """One Unix ``socketpair`` per worker (thread or process on this machine)."""

    def pair(self) -> tuple[CallerEnd, WorkerEnd]:
        caller, worker = socket.socketpair()
        return _SocketCallerEnd(caller, worker), _SocketWorkerEnd(worker)
