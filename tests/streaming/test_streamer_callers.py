"""Callers on several event loops, successive event loops, plain threads, and mixes of them.

The caller side reads the worker's connection on the event loops of its callers (see
``genbot.streaming.client``); these tests hold it to serving every kind of caller whichever loop
reads, including while a loop that holds a stream open is blocked.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from stream_workers import Garbled, ask, numbers, pong

from genbot.streaming import StreamError, WorkerDied


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_callers_on_several_event_loops_and_threads_at_once(mode: str) -> None:
    if mode == "thread":
        numbers.start_thread(maximum=8)
    else:
        numbers.start_process(maximum=8)
    results: dict[str, list[list[object]]] = {}
    errors: list[BaseException] = []

    def on_a_loop(tag: str) -> None:
        async def main() -> list[list[object]]:
            calls = (ask(numbers, (f"{tag}{i}", 20)) for i in range(6))
            return await asyncio.wait_for(asyncio.gather(*calls), 30)

        try:
            results[tag] = asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    def synchronous(tag: str) -> None:
        try:
            with numbers.stream() as stream:
                results[tag] = [list(stream((tag, 20)))]
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=on_a_loop, args=(tag,)) for tag in "abc"]
        threads += [threading.Thread(target=synchronous, args=(tag,)) for tag in ("s", "t")]
        for thread in threads:
            thread.start()
        _join(threads)
    finally:
        numbers.close()
    assert errors == []
    for tag in "abc":
        assert results[tag] == [[(f"{tag}{i}", j) for j in range(20)] for i in range(6)]
    for tag in "st":
        assert results[tag] == [[(tag, j) for j in range(20)]]


def test_one_streamer_serves_successive_event_loops_and_sync_callers() -> None:
    pong.start_thread()
    try:
        for i in range(3):
            assert asyncio.run(asyncio.wait_for(ask(pong, i), 10)) == [f"Pong: {i}"]
            with pong.stream() as stream:
                assert list(stream(f"s{i}")) == [f"Pong: s{i}"]
    finally:
        pong.close()


async def test_a_blocked_loop_holding_a_stream_open_blocks_no_other_caller() -> None:
    pong.start_thread()
    try:
        async with pong.stream() as stream:
            stream("async")  # answered while this loop is blocked below: it cannot read then
            sync_outputs: list[object] = []

            def call() -> None:
                with pong.stream() as other:
                    sync_outputs.extend(other("sync"))

            thread = threading.Thread(target=call)
            thread.start()
            _join([thread])  # blocks this loop until the synchronous caller was served
            assert sync_outputs == ["Pong: sync"]
            assert [out async for out in stream] == ["Pong: async"]
    finally:
        pong.close()


async def test_a_stream_read_from_another_thread_than_its_loop() -> None:
    pong.start_thread()
    try:
        async with pong.stream() as stream:
            stream("across")
            # read synchronously on a thread while the loop that opened the stream awaits it
            outputs = await asyncio.wait_for(asyncio.to_thread(list, stream), 10)
        assert outputs == ["Pong: across"]
    finally:
        pong.close()


async def test_an_unknown_frame_kind_fails_the_streams_and_the_worker_restarts() -> None:
    garbled = Garbled()
    garbled.start_thread(backoff=0.05)
    try:
        with pytest.raises(WorkerDied, match="bad data from the worker"):
            await asyncio.wait_for(ask(garbled, "garble"), 10)
        assert await asyncio.wait_for(ask(garbled, "fine"), 10) == ["fine"]
    finally:
        garbled.close()
    with pytest.raises(StreamError, match="not started"):
        garbled.stream()
