"""Benchmark of genbot.streaming against a bare multiprocessing.Pipe floor.

Run: ``python bench/streamer.py``. For N = 1, 8, 64 and 512 concurrent callers, each opening one
stream to one worker process (which consumes up to 64 streams at a time), it prints the time to
first output (median, p99), the total wall time and the outputs per second, for two loads:
4 outputs of ~100 bytes per stream, and "token streaming", 64 outputs of ~5 bytes per stream.
The floor, measured in the same run: one small message per send over a bare
``multiprocessing.Pipe`` from a worker process to an asyncio reader in the parent (messages per
second, and round trip). Each figure is also printed as a ratio to the floor. Then the time to
first output at N = 1 when the inputs travel with the request for a turn
(``streamer.stream(inputs)``; the table's callers send them once their turn came, as a bot
does). Finally, the time from ``kill -9`` of the worker to every open stream having failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import signal
import statistics
import sys
import time
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import genbot
from genbot.streaming import Stream, StreamError

LOADS = {"4 x 100 B": (4, 100), "64 x 5 B (tokens)": (64, 5)}
SIZES = (1, 8, 64, 512)
FLOOR_MESSAGES = 200_000
FLOOR_ROUND_TRIPS = 2_000


@functools.cache
def distinct_outputs(count: int, size: int) -> list[list[str]]:
    """For each of 64 streams, ``count`` different strings of ``size`` characters (different
    objects, as a model's tokens would be, so that pickling cannot share them)."""
    return [[f"{stream}.{i}".rjust(size, "x")[:size] for i in range(count)] for stream in range(64)]


@genbot.streamer(maximum=64)
def bench_worker(streams: list[Stream]) -> None:
    """Writes ``count`` outputs of ``size`` bytes to every stream, one step at a time."""
    count, size = streams[0].data
    outputs = distinct_outputs(count, size) if count <= 64 else None
    for i in range(count):
        for j, stream in enumerate(streams):
            stream.write(outputs[j][i] if outputs else "x" * size)


def _floor_child(conn: Connection, messages: int) -> None:
    message = b"x" * 5
    for _ in range(messages):
        conn.send_bytes(message)
    while True:  # then echo round trips until the parent closes
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(data)


class _FloorReader:
    """The parent's side of the floor: counts the one-way messages, then answers round trips."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: Connection) -> None:
        self.loop = loop
        self.conn = conn
        self.received = 0
        self.started = 0.0
        self.done: asyncio.Future[float] = loop.create_future()
        self.reply: asyncio.Future[None] | None = None

    def readable(self) -> None:
        try:
            while self.conn.poll():  # only what is already there: a zero-timeout select
                self.conn.recv_bytes()
                self._received_one()
        except EOFError:  # the child died: fail the waits instead of leaving them hanging
            self.loop.remove_reader(self.conn.fileno())
            for future in (self.done, self.reply):
                if future is not None and not future.done():
                    future.set_exception(RuntimeError("the floor's child process died"))

    def _received_one(self) -> None:
        if self.received < FLOOR_MESSAGES:
            if self.received == 0:
                self.started = time.perf_counter()
            self.received += 1
            if self.received == FLOOR_MESSAGES:
                self.done.set_result(time.perf_counter() - self.started)
        elif self.reply is not None and not self.reply.done():
            self.reply.set_result(None)


async def measure_floor() -> tuple[float, float]:
    """(messages per second one way, median round trip in seconds) over a bare Pipe."""
    loop = asyncio.get_running_loop()
    parent, child = multiprocessing.Pipe(duplex=True)
    process = multiprocessing.get_context("spawn").Process(
        target=_floor_child, args=(child, FLOOR_MESSAGES), daemon=True
    )
    process.start()
    child.close()
    reader = _FloorReader(loop, parent)
    loop.add_reader(parent.fileno(), reader.readable)
    elapsed = await reader.done
    rates = (FLOOR_MESSAGES - 1) / elapsed
    trips = []
    for _ in range(FLOOR_ROUND_TRIPS):
        reader.reply = loop.create_future()
        t = time.perf_counter()
        parent.send_bytes(b"ping!")
        await reader.reply
        trips.append(time.perf_counter() - t)
    loop.remove_reader(parent.fileno())
    parent.close()
    process.join(5)
    return rates, statistics.median(trips)


async def one_caller(
    load: tuple[int, int], t0: float, firsts: list[float], early: bool = False
) -> int:
    """One stream: inputs sent once the turn came (``stream(load)``, the bot's way), or with
    the request for a turn (``early``: ``streamer.stream(load)``)."""
    n = 0
    async with bench_worker.stream(load) if early else bench_worker.stream() as stream:
        async for _ in stream if early else stream(load):
            if n == 0:
                firsts.append(time.perf_counter() - t0)
            n += 1
    return n


async def run_round(
    n: int, load: tuple[int, int], early: bool = False
) -> tuple[list[float], float]:
    firsts: list[float] = []
    t0 = time.perf_counter()
    counts = await asyncio.gather(*(one_caller(load, t0, firsts, early) for _ in range(n)))
    wall = time.perf_counter() - t0
    assert counts == [load[0]] * n, "lost outputs"
    return firsts, wall


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def measure_death(process: genbot.streaming.WorkerProcess) -> list[float]:
    """Seconds from kill -9 of the worker to 8 open streams all having failed."""
    figures = []
    for _ in range(3):
        started = asyncio.Event()
        seen = 0

        async def reader(started: asyncio.Event = started) -> None:
            nonlocal seen
            async with bench_worker.stream() as stream:
                async for _ in stream((10**9, 5)):
                    seen += 1
                    if seen >= 8:
                        started.set()

        tasks = [asyncio.create_task(reader()) for _ in range(8)]
        await asyncio.wait_for(started.wait(), 60)
        killed = time.perf_counter()
        assert process.pid is not None
        os.kill(process.pid, signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        figures.append(time.perf_counter() - killed)
        assert all(isinstance(r, StreamError) for r in results)
        await asyncio.wait_for(warm_up(), 60)  # the restarted worker serves again
    return figures


async def warm_up() -> None:
    await run_round(8, (4, 100))


def repeats(n: int, quick: bool) -> int:
    """Rounds per row: enough for a stable median on a machine shared with other work."""
    if quick:
        return max(1, 4 // n)
    return {1: 100, 8: 25, 64: 7, 512: 5}.get(n, max(5, 100 // n))


async def measure_early(quick: bool, floor_rtt: float) -> None:
    """Time to first output at N = 1 with the inputs sent with the request for a turn."""
    print("inputs sent with the request for a turn (streamer.stream(inputs)), N = 1:")
    for name, load in LOADS.items():
        firsts: list[float] = []
        for _ in range(repeats(1, quick)):
            round_firsts, _wall = await run_round(1, load, early=True)
            firsts += round_firsts
        med = statistics.median(firsts)
        print(
            f"  {name:<18} TTFO {med * 1e3:.2f} ms median, {p99(firsts) * 1e3:.2f} ms p99"
            f" ({med / floor_rtt:.1f}x the floor's round trip)"
        )


async def main(quick: bool, sizes: tuple[int, ...]) -> None:
    floor_rate, floor_rtt = await measure_floor()
    print("floor (bare multiprocessing.Pipe -> asyncio reader, one message per send):")
    print(f"  {floor_rate:,.0f} messages/s one way; round trip {floor_rtt * 1e6:.1f} us (median)")
    print()
    process = bench_worker.start_process(maximum=64, backoff=0.05)
    try:
        await asyncio.wait_for(warm_up(), 60)
        header = (
            f"{'load':<18} {'N':>4} {'TTFO med':>10} {'TTFO p99':>10} {'wall':>10}"
            f" {'outputs/s':>11} | {'med/RTT':>8} {'p99/RTT':>8} {'rate/floor':>10}"
        )
        print(header)
        print("-" * len(header))
        for name, load in LOADS.items():
            for n in sizes:
                firsts: list[float] = []
                walls = []
                for _ in range(repeats(n, quick)):
                    round_firsts, wall = await run_round(n, load)
                    firsts += round_firsts
                    walls.append(wall)
                wall = statistics.median(walls)
                rate = n * load[0] / wall
                med = statistics.median(firsts)
                print(
                    f"{name:<18} {n:>4} {med * 1e3:>8.2f}ms {p99(firsts) * 1e3:>8.2f}ms"
                    f" {wall * 1e3:>8.1f}ms {rate:>11,.0f} | {med / floor_rtt:>7.1f}x"
                    f" {p99(firsts) / floor_rtt:>7.1f}x {rate / floor_rate:>9.2f}x"
                )
        print()
        await measure_early(quick, floor_rtt)
        print()
        deaths = await measure_death(process)
        print(
            "kill -9 of the worker -> 8 open streams failed in "
            + ", ".join(f"{d * 1e3:.1f} ms" for d in deaths),
            flush=True,
        )
    finally:
        bench_worker.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="comma-separated numbers of concurrent callers (default: %(default)s)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.quick, tuple(int(n) for n in args.sizes.split(","))))
