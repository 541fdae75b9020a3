"""The API: subclass and decorator, process and thread, async and sync callers."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from stream_workers import Patient, Ping, TwoConsumers, ask, numbers, pong

import genbot
from genbot.streaming import StreamError, WorkerExit, active_streamers


async def test_subclass_in_a_spawned_process() -> None:
    with Ping() as ping:
        process = ping.start_process()
        assert process.is_alive()
        assert await asyncio.wait_for(ask(ping, "hi"), 30) == ["Pong: hi"]
        assert ping in active_streamers()
    assert ping not in active_streamers()
    assert not process.is_alive()


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
async def test_decorated_function_in_a_process(start_method: str) -> None:
    pong.start_process(minimum=1, maximum=64, start_method=start_method)
    try:
        answers = await asyncio.wait_for(asyncio.gather(*(ask(pong, i) for i in range(10))), 30)
        assert answers == [[f"Pong: {i}"] for i in range(10)]
    finally:
        pong.close()


async def test_thread_worker_many_outputs_in_order() -> None:
    numbers.start_thread(maximum=4)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(ask(numbers, (tag, 50)) for tag in range(16))), 30
        )
    finally:
        numbers.close()
    for tag, outputs in enumerate(results):
        assert outputs == [(tag, i) for i in range(50)]


async def test_consume_from_two_threads_at_once() -> None:
    """Calls of consume() from several worker threads take turns; every stream is served."""
    with TwoConsumers() as streamer:
        streamer.start_thread()
        answers = await asyncio.wait_for(asyncio.gather(*(ask(streamer, i) for i in range(12))), 30)
    assert len(answers) == 12
    names = {name for [name] in answers}
    assert names <= {"consumer-0", "consumer-1"}


async def test_manual_worker_on_a_thread() -> None:
    ping = Ping()

    def run() -> None:
        with contextlib.suppress(WorkerExit):  # consume() raises it once the streamer closed
            ping.worker()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        await asyncio.wait_for(wait_started(ping), 10)
        assert await asyncio.wait_for(ask(ping, "x"), 10) == ["Pong: x"]
    finally:
        ping.close()
    thread.join(10)
    assert not thread.is_alive()


async def wait_started(streamer: genbot.Streamer) -> None:
    while not streamer.running:  # the user's worker thread attaches on its first consume()
        await asyncio.sleep(0.01)


def test_not_started_is_a_clear_error() -> None:
    with pytest.raises(StreamError, match="not started"):
        Ping().stream()


@pytest.mark.parametrize("mode", ["thread", "process"])
async def test_inputs_sent_with_the_request_for_a_turn(mode: str) -> None:
    """``streamer.stream(inputs)``: the block starts at the turn with the inputs already sent;
    mixed with callers that send theirs after the turn, each gets its own outputs."""
    if mode == "thread":
        numbers.start_thread(maximum=4)
    else:
        numbers.start_process(maximum=4)

    async def early(tag: str) -> list[object]:
        async with numbers.stream((tag, 5)) as stream:
            with pytest.raises(StreamError, match="already sent"):
                stream((tag, 5))
            return [out async for out in stream]

    try:
        calls = [early(f"e{i}") for i in range(6)] + [ask(numbers, (f"l{i}", 5)) for i in range(6)]
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    finally:
        numbers.close()
    tags = [f"e{i}" for i in range(6)] + [f"l{i}" for i in range(6)]
    assert results == [[(tag, i) for i in range(5)] for tag in tags]


def test_inputs_sent_with_the_request_synchronously() -> None:
    numbers.start_thread(maximum=2)
    try:
        with numbers.stream(("s", 3)) as stream:
            assert list(stream) == [("s", 0), ("s", 1), ("s", 2)]
    finally:
        numbers.close()


def test_unpicklable_inputs_with_the_request_fail_at_once() -> None:
    numbers.start_thread()
    try:
        with pytest.raises(StreamError, match="not picklable"):
            numbers.stream(lambda: None)
    finally:
        numbers.close()


async def test_consume_with_a_timeout_of_years() -> None:
    with Patient() as streamer:
        streamer.start_thread()
        assert await asyncio.wait_for(ask(streamer, "x"), 30) == ["x"]
