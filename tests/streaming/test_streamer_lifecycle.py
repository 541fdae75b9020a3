"""Cancellation, slots, input timeouts, continuous batching, close(), sync forms."""

from __future__ import annotations

import asyncio
import multiprocessing
import textwrap
import threading

import pytest
from stream_workers import Continuous, Pairs, Recorder, ask, endless, numbers, pong, silent

from genbot.streaming import StreamError, active_streamers


async def test_the_body_runs_only_once_the_worker_took_the_stream() -> None:
    recorder = Recorder()
    recorder.start_thread()
    try:
        release = asyncio.Event()
        in_first = asyncio.Event()

        async def first() -> None:
            async with recorder.stream() as stream:
                stream(10**9)
                await stream.__anext__()
                in_first.set()
                await release.wait()

        entered_second = asyncio.Event()

        async def second() -> list[object]:
            async with recorder.stream() as stream:
                entered_second.set()
                return [out async for out in stream(2)]

        task1 = asyncio.create_task(first())
        await asyncio.wait_for(in_first.wait(), 10)
        task2 = asyncio.create_task(second())
        # one slot (maximum=1), held by the first stream: the second waits in the queue
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(entered_second.wait()), 0.3)
        release.set()
        assert await asyncio.wait_for(task2, 10) == [0, 1]
        await task1
    finally:
        recorder.close()


async def test_cancelling_a_caller_closes_its_stream_and_frees_the_slot() -> None:
    recorder = Recorder()
    recorder.start_thread()
    try:
        got_output = asyncio.Event()

        async def hog() -> None:
            async with recorder.stream() as stream:
                async for _ in stream(10**9):  # would run for ages
                    got_output.set()

        hog_task = asyncio.create_task(hog())
        await asyncio.wait_for(got_output.wait(), 10)

        async def queued() -> None:
            async with recorder.stream() as stream:
                stream("never")

        queued_task = asyncio.create_task(queued())
        await asyncio.sleep(0)  # it runs until it waits for its turn, behind the hog...
        queued_task.cancel()  # ...and gives up while waiting
        hog_task.cancel()
        for task in (queued_task, hog_task):
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
        # the slot is free: the next caller is served
        assert await asyncio.wait_for(ask(recorder, 3), 10) == [0, 1, 2]
        # the worker saw the hog's stream closed by the caller, never saw the queued one
        assert recorder.seen[0] == (10**9, True)
        assert recorder.seen[1:] == [(3, False)]
    finally:
        recorder.close()


async def test_leaving_the_block_early_frees_the_slot() -> None:
    recorder = Recorder()
    recorder.start_thread()
    try:
        async with recorder.stream() as stream:
            async for out in stream(10**9):
                assert out == 0
                break
        assert await asyncio.wait_for(ask(recorder, 1), 10) == [0]
        assert recorder.seen[0] == (10**9, True)
    finally:
        recorder.close()


async def test_closing_a_stream_ends_the_read_waiting_on_it_in_another_task() -> None:
    silent.start_thread()
    try:
        async with silent.stream() as stream:
            stream("x")

            async def read() -> list[object]:
                return [out async for out in stream]

            reader = asyncio.create_task(read())
            await asyncio.sleep(0)  # the reader runs until it waits for an output
            stream.close()
            with pytest.raises(StreamError, match="closed"):
                await asyncio.wait_for(reader, 10)
    finally:
        silent.close()


async def test_inputs_not_sent_in_time_release_the_slot() -> None:
    recorder = Recorder()
    recorder.start_thread(input_timeout=0.5)
    try:
        async with recorder.stream() as slow:
            # the slow caller holds its turn without sending: the next caller gets the slot
            assert await asyncio.wait_for(ask(recorder, 2), 10) == [0, 1]
            with pytest.raises(StreamError, match="not sent within"):
                slow("too late")
        assert recorder.seen == [(2, False)]
    finally:
        recorder.close()


async def test_continuous_batching_takes_a_stream_arriving_mid_generation() -> None:
    continuous = Continuous()
    continuous.start_thread()
    try:
        first_step = asyncio.Event()

        async def first() -> list[object]:
            outputs = []
            async with continuous.stream() as stream:
                async for out in stream("a"):
                    outputs.append(out)
                    first_step.set()
            return outputs

        task = asyncio.create_task(first())
        await asyncio.wait_for(first_step.wait(), 10)
        second = await asyncio.wait_for(ask(continuous, "b"), 10)
        first_outputs = await asyncio.wait_for(task, 10)
    finally:
        continuous.close()
    # "b" joined while "a" was being generated: its steps interleave with a's
    assert second[0][1] < first_outputs[-1][1]
    assert [step for _, step in first_outputs] == list(range(1, len(first_outputs) + 1))


async def test_512_concurrent_callers_get_their_own_outputs_in_order() -> None:
    numbers.start_process(maximum=64)
    try:
        counts = [1 + tag % 13 for tag in range(512)]
        results = await asyncio.wait_for(
            asyncio.gather(*(ask(numbers, (tag, n)) for tag, n in enumerate(counts))), 60
        )
    finally:
        numbers.close()
    for tag, (n, outputs) in enumerate(zip(counts, results, strict=True)):
        assert outputs == [(tag, i) for i in range(n)]


def test_sync_forms_from_threads() -> None:
    pong.start_thread()
    try:
        results: dict[int, list[object]] = {}

        def call(i: int) -> None:
            with pong.stream() as stream:
                results[i] = list(stream(i))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == {i: [f"Pong: {i}"] for i in range(8)}
    finally:
        pong.close()


async def test_sync_forms_on_the_event_loop_raise_a_clear_error() -> None:
    pong.start_thread()
    try:
        with pytest.raises(StreamError, match=r"use `async with streamer.stream\(\)` here"):
            with pong.stream():
                pass
        async with pong.stream() as stream:
            with pytest.raises(StreamError, match=r"use `async for out in stream\(inputs\)`"):
                for _ in stream("x"):
                    pass
        assert await asyncio.wait_for(ask(pong, "y"), 10) == ["Pong: y"]
    finally:
        pong.close()


async def test_close_fails_open_streams_and_leaves_no_child() -> None:
    process = endless.start_process()
    started = asyncio.Event()

    async def reader() -> None:
        async with endless.stream() as stream:
            async for _ in stream("x"):
                started.set()

    task = asyncio.create_task(reader())
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.wait_for(asyncio.to_thread(endless.close), 30)  # from another thread
    with pytest.raises(StreamError, match="closed"):
        await asyncio.wait_for(task, 5)
    assert not process.is_alive()
    assert process.pid not in [child.pid for child in multiprocessing.active_children()]
    assert endless not in active_streamers()
    endless.close()  # idempotent
    with pytest.raises(StreamError, match="not started"):
        endless.stream()


async def test_with_block_closes_and_a_closed_streamer_can_start_again() -> None:
    with pong:
        pong.start_thread()
        with pytest.raises(StreamError, match="already started"):
            pong.start_thread()
        assert await asyncio.wait_for(ask(pong, 1), 10) == ["Pong: 1"]
    assert not pong.running
    with pong:
        pong.start_thread()
        assert await asyncio.wait_for(ask(pong, 2), 10) == ["Pong: 2"]


async def test_consume_timeout_returns_fewer_than_minimum() -> None:
    pairs = Pairs()
    pairs.start_thread()
    try:
        assert await asyncio.wait_for(ask(pairs, "alone"), 10) == [1]
        both = await asyncio.wait_for(asyncio.gather(ask(pairs, 1), ask(pairs, 2)), 10)
        assert sorted(both) in ([[1], [1]], [[2], [2]])
    finally:
        pairs.close()


async def test_the_documented_continuous_batching_example() -> None:
    import genbot.streaming

    code = genbot.streaming.__doc__.split("::\n", 1)[1]
    namespace: dict[str, object] = {}
    exec(textwrap.dedent(code), namespace)
    generator = namespace["Generator"](capacity=4, steps=16)
    ask = namespace["ask"]
    generator.start_thread()
    try:
        prompts = [f"p{i}" for i in range(10)]
        results = await asyncio.wait_for(asyncio.gather(*(ask(generator, p) for p in prompts)), 30)
    finally:
        generator.close()
    assert results == [[f"{p}:{i}" for i in range(16)] for p in prompts]
