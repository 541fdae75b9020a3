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
    """The caller side's end, driven by the streamer's asyncio loop."""

    @abstractmethod
    async def connect(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        """Attach the end to the running loop, feeding ``protocol_factory()``'s protocol."""

    @abstractmethod
    def release_worker_copy(self) -> None:
        """Close this process's copy of the worker's end once a worker process has its own."""

    @abstractmethod
    def close(self) -> None:
        """Close this end (used when launching the worker failed)."""


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
    def __init__(self, sock: socket.socket, worker_sock: socket.socket) -> None:
        self.sock = sock
        self.worker_sock = worker_sock
        _caller_ends.add(self)

    async def connect(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_accepted_socket(protocol_factory, self.sock)

    def release_worker_copy(self) -> None:
        self.worker_sock.close()

    def close(self) -> None:
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
