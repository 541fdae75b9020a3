"""close() is bounded even when the worker hangs, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal

import pytest
from stream_workers import Hanging, Stubborn, ask, pong

from genbot.streaming import StreamError, active_streamers


async def test_close_kills_a_hung_worker_process_that_ignores_sigterm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn = Stubborn()
    process = stubborn.start_process()
    try:
        async with stubborn.stream() as stream:
            outputs = stream("x")
            assert await asyncio.wait_for(outputs.__anext__(), 30) == "stuck"
            # The worker now never reads its connection and ignores SIGTERM: close() waits its
            # timeout, terminates, waits a grace, kills.
            with caplog.at_level(logging.WARNING, logger="genbot.streaming"):
                await asyncio.wait_for(asyncio.to_thread(stubborn.close, 0.2), 30)
            with pytest.raises(StreamError, match="closed"):
                await outputs.__anext__()
    finally:
        stubborn.close()
    assert not process.is_alive()
    assert process.exitcode == -signal.SIGKILL
    assert "did not exit within 0.2 s; terminating it" in caplog.text
    assert "ignored SIGTERM; killing it" in caplog.text
    assert stubborn not in active_streamers()


async def test_close_returns_with_a_warning_when_a_worker_thread_hangs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hanging = Hanging()
    thread = hanging.start_thread()
    try:
        async with hanging.stream() as stream:
            outputs = stream("x")
            assert await asyncio.wait_for(outputs.__anext__(), 10) == "stuck"
            with caplog.at_level(logging.WARNING, logger="genbot.streaming"):
                await asyncio.wait_for(asyncio.to_thread(hanging.close, 0.2), 30)
            with pytest.raises(StreamError, match="closed"):
                await outputs.__anext__()
        assert not hanging.running
        assert "did not stop within 0.2 s; leaving it running" in caplog.text
        assert thread.is_alive()  # a thread cannot be killed: it is left behind
    finally:
        hanging.release.set()
    thread.join(10)  # released, it sees that the streamer closed and returns
    assert not thread.is_alive()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
async def test_start_use_close_cycles_leave_no_file_descriptor() -> None:
    def open_fds() -> int:
        gc.collect()  # e.g. finished processes of earlier tests hold a sentinel until collected
        return len(os.listdir("/proc/self/fd"))

    async def cycle(i: int) -> None:
        pong.start_thread()
        try:
            answers = await asyncio.wait_for(asyncio.gather(*(ask(pong, j) for j in range(4))), 10)
            assert answers == [[f"Pong: {j}"] for j in range(4)]
            async with pong.stream() as stream:  # open while closing: fails, lets go of the socket
                stream(i)
                await asyncio.to_thread(pong.close)
        finally:
            pong.close()

    await cycle(-1)  # first use: imports, the default executor's thread
    before = open_fds()
    for i in range(10):
        await cycle(i)
    assert open_fds() == before
