"""Failures: worker exceptions, a worker killed mid-stream, unpicklable inputs and outputs."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
from stream_workers import Fragile, HangUp, ask, endless, flaky, unpicklable_output

import genbot
from genbot.streaming import Stream, StreamError, WorkerDied


async def test_batch_function_exception_reaches_the_caller_with_traceback() -> None:
    flaky.start_process()
    try:
        with pytest.raises(StreamError) as info:
            await asyncio.wait_for(ask(flaky, "boom"), 30)
        assert "ValueError: the worker exploded on purpose" in str(info.value)
        assert info.value.traceback is not None
        assert 'raise ValueError("the worker exploded on purpose")' in info.value.traceback
        # the worker goes on with other streams
        assert await asyncio.wait_for(ask(flaky, "fine"), 30) == ["fine"]
    finally:
        flaky.close()


async def test_worker_method_exception_fails_its_streams_and_the_worker_goes_on() -> None:
    fragile = Fragile()
    fragile.start_thread()
    try:
        with pytest.raises(StreamError) as info:
            await asyncio.wait_for(ask(fragile, "boom"), 10)
        assert "RuntimeError: fragile worker broke" in str(info.value)
        assert "fragile worker broke" in (info.value.traceback or "")
        assert await asyncio.wait_for(ask(fragile, "fine"), 10) == ["fine"]
    finally:
        fragile.close()


async def test_unpicklable_inputs_fail_on_the_caller_side() -> None:
    flaky.start_thread()
    try:
        async with flaky.stream() as stream:
            with pytest.raises(StreamError, match="not picklable"):
                stream(lambda: None)
        assert await asyncio.wait_for(ask(flaky, "after"), 10) == ["after"]
    finally:
        flaky.close()


async def test_unpicklable_outputs_fail_in_the_worker_and_reach_the_caller() -> None:
    unpicklable_output.start_process()
    try:
        with pytest.raises(StreamError) as info:
            await asyncio.wait_for(ask(unpicklable_output, "x"), 30)
        assert "not picklable" in str(info.value)
        assert "stream.write(lambda: None)" in (info.value.traceback or "")
    finally:
        unpicklable_output.close()


async def test_kill_9_fails_open_and_waiting_streams_at_once_then_restarts() -> None:
    process = endless.start_process(maximum=2, backoff=0.1)
    try:
        first_outputs = [asyncio.Event(), asyncio.Event()]

        async def reader(i: int) -> None:
            async with endless.stream() as stream:
                async for _ in stream(i):
                    first_outputs[i].set()

        async def waiter() -> None:
            async with endless.stream() as stream:  # the worker takes 2: this one waits
                async for _ in stream("waiting"):
                    pass

        readers = [asyncio.create_task(reader(i)) for i in range(2)]
        queued = asyncio.create_task(waiter())
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_outputs)), 30)
        assert not queued.done()

        pid = process.pid
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        done, _ = await asyncio.wait([*readers, queued], timeout=1.0)
        took = time.monotonic() - killed_at
        assert len(done) == 3, f"only {len(done)} of 3 streams failed within 1 s"
        for task in done:
            assert isinstance(task.exception(), WorkerDied)
        print(f"streams failed {took * 1000:.1f} ms after kill -9")

        # the restarted worker serves the next stream
        async with endless.stream() as stream:
            async for out in stream("next"):
                assert out == 0
                break
        assert process.pid != pid
        assert process.restarts == 1
    finally:
        endless.close()
    assert not process.is_alive()


async def test_without_restart_a_dead_worker_fails_new_streams_at_once() -> None:
    process = endless.start_process(restart=False)
    try:
        async with endless.stream() as stream:
            async for _ in stream("x"):
                break
        process.kill()
        process.join(10)
        with pytest.raises(WorkerDied):
            for _ in range(100):  # bounded: until the death was noticed
                async with endless.stream() as stream:
                    pass
                await asyncio.sleep(0.05)
    finally:
        endless.close()


async def test_without_restart_a_stream_opened_while_the_worker_is_stopped_fails() -> None:
    hangup = HangUp()
    hangup.start_process(restart=False)
    try:
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(ask(hangup, "x"), 30)
        # The caller side is still stopping the wedged process (it waits for it to exit, then
        # terminates it): a stream opened meanwhile must fail too, not wait for a restart.
        with pytest.raises(WorkerDied):
            await asyncio.wait_for(ask(hangup, "y"), 10)
    finally:
        hangup.close()


def test_a_nested_streamer_function_cannot_be_spawned_and_says_why() -> None:
    @genbot.streamer
    def local(streams: list[Stream]) -> None:
        pass

    with pytest.raises(StreamError, match="module level"):
        local.start_process()
    assert not local.running
    local.start_process(start_method="fork")  # fork needs no pickling
    local.close()


def test_sync_callers_fail_too_when_the_worker_dies_or_the_streamer_closes() -> None:
    process = endless.start_process(backoff=0.1)
    errors: list[BaseException] = []
    reading = threading.Barrier(3)

    def call() -> None:
        try:
            with endless.stream() as stream:
                for i, _ in enumerate(stream("sync")):
                    if i == 0:
                        reading.wait(30)
        except StreamError as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        reading.wait(30)
        os.kill(process.pid or 0, signal.SIGKILL)
        for thread in threads:
            thread.join(10)
        assert len(errors) == 2
        assert all(isinstance(e, WorkerDied) for e in errors)

        errors.clear()
        reading.reset()
        threads = [threading.Thread(target=call) for _ in range(2)]
        for thread in threads:
            thread.start()
        reading.wait(30)  # served by the restarted worker
    finally:
        endless.close()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 2
    assert all("closed" in str(e) for e in errors)
