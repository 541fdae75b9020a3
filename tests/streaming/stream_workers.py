"""Streamers for the streaming tests, at module level so that spawned workers can import them,
and ``ask``, the caller every test uses."""

from __future__ import annotations

import signal
import socket
import threading
import time

# The subclass and decorator examples of streamer_design_examples, under the tests' names.
from streamer_design_examples import MyStreamer as Ping
from streamer_design_examples import streamer as pong

import genbot
from genbot.streaming import Stream, Streamer, WorkerExit, frames

__all__ = [
    "Continuous",
    "Fragile",
    "Garbled",
    "HangUp",
    "Hanging",
    "Pairs",
    "Patient",
    "Ping",
    "Recorder",
    "Stubborn",
    "TwoConsumers",
    "ask",
    "endless",
    "flaky",
    "numbers",
    "pong",
    "silent",
    "unpicklable_output",
]


async def ask(streamer: Streamer, inputs: object) -> list[object]:
    """Open a stream, send ``inputs`` and return all its outputs."""
    async with streamer.stream() as stream:
        return [out async for out in stream(inputs)]


@genbot.streamer
def numbers(streams: list[Stream]) -> None:
    """Writes ``(data, i)`` for i in range(count) to every stream; data is ``(tag, count)``."""
    longest = max(stream.data[1] for stream in streams)
    for i in range(longest):
        for stream in streams:
            if i < stream.data[1]:
                stream.write((stream.data[0], i))


@genbot.streamer
def silent(streams: list[Stream]) -> None:
    """Writes nothing: holds its streams until their callers close them."""
    while not all(stream.closed for stream in streams):
        time.sleep(0.01)


@genbot.streamer
def flaky(streams: list[Stream]) -> None:
    """Raises on the input "boom", echoes anything else."""
    for stream in streams:
        if stream.data == "boom":
            raise ValueError("the worker exploded on purpose")
        stream.write(stream.data)


@genbot.streamer
def endless(streams: list[Stream]) -> None:
    """Writes to each stream until the caller closes it (for kill -9 and cancellation tests)."""
    i = 0
    while any(not stream.closed for stream in streams):
        for stream in streams:
            stream.write(i)
        i += 1
        time.sleep(0.001)


class Recorder(Streamer):
    """A thread-mode worker taking one stream at a time that records what it saw.

    Writes to the stream until it is closed by the caller or ``data`` outputs were written;
    ``seen`` gets ``(data, closed_by_caller)`` per stream, ``done`` is set after each stream.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[object, bool]] = []
        self.done = threading.Event()

    def worker(self) -> None:
        while True:
            [stream] = self.consume(minimum=1, maximum=1)
            count = stream.data if isinstance(stream.data, int) else 1
            i = 0
            while not stream.closed and i < count:
                stream.write(i)
                i += 1
                time.sleep(0.001)
            self.seen.append((stream.data, stream.closed))
            stream.close()
            self.done.set()


class Continuous(Streamer):
    """Continuous batching: decoding steps over the active streams, taking new ones between steps.

    Each stream gets ``data`` outputs ``(data, step)``; the first stream waits (writing one
    output per step) until a second stream has joined, so a worker that cannot take streams
    mid-generation never finishes it.
    """

    def worker(self) -> None:
        active: list[tuple[Stream, list[int]]] = []
        joined = False
        step = 0
        while True:
            new = self.consume(minimum=0 if active else 1, maximum=8 - len(active))
            if new and active:
                joined = True
            active += [(stream, [0]) for stream in new]
            step += 1
            for stream, written in active:
                stream.write((stream.data, step))
                if joined:
                    written[0] += 1
            for stream, written in active:
                if written[0] >= 3 or stream.closed:
                    stream.close()
            active = [(s, w) for s, w in active if not s.closed]
            time.sleep(0.002)


class Fragile(Streamer):
    """A subclass whose worker() raises while holding a stream whose data is "boom"."""

    def worker(self) -> None:
        while True:
            for stream in self.consume(minimum=1, maximum=8):
                if stream.data == "boom":
                    raise RuntimeError("fragile worker broke")
                stream.write(stream.data)
                stream.close()


@genbot.streamer
def unpicklable_output(streams: list[Stream]) -> None:
    for stream in streams:
        stream.write(lambda: None)


class Pairs(Streamer):
    """Wants streams two at a time, but waits at most 0.2 s: tells each the size of its batch."""

    def worker(self) -> None:
        while True:
            streams = self.consume(minimum=2, maximum=2, timeout=0.2)
            for stream in streams:
                stream.write(len(streams))
                stream.close()


class HangUp(Streamer):
    """Drops its connection on its first stream and lives on, wedged: the caller side sees the
    connection close at once but needs a while (terminate) to stop the process."""

    def worker(self) -> None:
        self.consume()
        side = self._worker_side
        assert side is not None
        side.end.sock.shutdown(socket.SHUT_RDWR)
        time.sleep(60)


class Stubborn(Streamer):
    """A process worker that hangs for good once it holds a stream, as one stuck in C code
    would: its main thread never returns to ``consume()`` (so never sees EOF) and it ignores
    SIGTERM. Writes "stuck" first, so the caller knows it got there."""

    def worker(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        [stream] = self.consume()
        stream.write("stuck")
        while True:
            time.sleep(3600)


class Hanging(Streamer):
    """A thread worker that hangs once it holds a stream (writes "stuck", then ignores its
    connection) until the test sets ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def worker(self) -> None:
        while True:
            [stream] = self.consume()
            stream.write("stuck")
            self.release.wait()


class Garbled(Streamer):
    """Answers the input "garble" with a frame of a kind that does not exist; echoes the rest."""

    def worker(self) -> None:
        while True:
            [stream] = self.consume()
            if stream.data == "garble":
                side = self._worker_side
                assert side is not None
                side.send_now(frames.frame(99, stream.id))
                continue
            stream.write(stream.data)
            stream.close()


class TwoConsumers(Streamer):
    """Two threads of the worker call ``consume()`` at once, each taking one stream at a time;
    each stream gets the name of the thread that took it."""

    def worker(self) -> None:
        threads = [
            threading.Thread(target=self._consume_loop, name=f"consumer-{i}", daemon=True)
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _consume_loop(self) -> None:
        try:
            while True:
                [stream] = self.consume(minimum=1, maximum=1)
                stream.write(threading.current_thread().name)
                time.sleep(0.01)  # busy: the other thread takes the next stream meanwhile
                stream.close()
        except WorkerExit:
            return


class Patient(Streamer):
    """Waits for its streams with a timeout of years (longer than one ``poll`` can wait)."""

    def worker(self) -> None:
        while True:
            for stream in self.consume(minimum=1, maximum=1, timeout=1e9):
                stream.write(stream.data)
                stream.close()
