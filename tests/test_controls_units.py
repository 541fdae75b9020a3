"""The pure decisions of genbot.controls, and a RunningReply stopped mid-stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from genbot.controls import (
    REGENERATE,
    STOP,
    Control,
    RunningReply,
    carries_controls,
    decode,
    may_press,
    stopped_suffix,
)


def test_a_custom_id_says_what_a_press_needs_and_fits_discord() -> None:
    biggest = 2**64 - 1
    for action in (STOP, REGENERATE):
        control = Control(action, biggest, biggest)
        assert decode(control.custom_id) == control
        assert len(control.custom_id) <= 100
    assert decode("genbot:regen:12:34") == Control(REGENERATE, 12, 34)
    for other in ("t:whisper", "genbot:regen:12", "genbot:delete:1:2", "genbot:stop:1:2:3", ""):
        assert decode(other) is None


def test_only_the_asker_or_an_admin_may_press() -> None:
    control = Control(STOP, 1, 42)
    assert may_press(42, control, admin=False)
    assert not may_press(7, control, admin=False)
    assert may_press(7, control, admin=True)


def test_the_stopped_note_closes_an_open_code_block() -> None:
    assert stopped_suffix("Let me think") == "\n\n*Stopped.*"
    assert stopped_suffix("") == "*Stopped.*"
    assert stopped_suffix("```py\nprint(1)") == "\n```\n\n*Stopped.*"
    assert stopped_suffix("```py\nprint(1)\n```") == "\n\n*Stopped.*"


def test_only_our_buttons_count_as_controls() -> None:
    ours = SimpleNamespace(children=[SimpleNamespace(custom_id="genbot:regen:1:2")])
    theirs = SimpleNamespace(children=[SimpleNamespace(custom_id="poll:yes")])
    link = SimpleNamespace(children=[SimpleNamespace(custom_id=None)])
    assert carries_controls([theirs, ours])
    assert not carries_controls([theirs, link])
    assert not carries_controls([])


class _Stream:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_stop_ends_the_deltas_at_once_with_the_note() -> None:
    forever = asyncio.Event()

    async def deltas() -> AsyncIterator[Any]:
        yield "Let me"
        yield " think"
        await forever.wait()  # a model that goes on and on
        yield "never"

    stream, forgotten = _Stream(), []
    running = RunningReply(1, stream, deltas(), forgotten.append)
    assert [await anext(running), await anext(running)] == ["Let me", " think"]
    waiting = asyncio.ensure_future(anext(running))
    await asyncio.sleep(0)
    assert not waiting.done()
    running.stop()
    assert await asyncio.wait_for(waiting, 5) == "\n\n*Stopped.*"
    assert stream.closed
    with pytest.raises(StopAsyncIteration):
        await anext(running)
    await running.aclose()
    assert forgotten == [running]


async def test_a_failure_that_is_not_a_stop_is_raised() -> None:
    async def deltas() -> AsyncIterator[Any]:
        yield "a"
        raise RuntimeError("the GPU caught fire")

    running = RunningReply(1, _Stream(), deltas(), lambda r: None)
    assert await anext(running) == "a"
    with pytest.raises(RuntimeError):
        await anext(running)


async def test_a_stop_under_wait_for_leaves_the_reader_running() -> None:
    # stream_reply reads each delta under asyncio.wait_for: the stop interrupts that read,
    # and the reading task goes on as if it had not been cancelled.
    forever = asyncio.Event()

    async def deltas() -> AsyncIterator[Any]:
        yield "Hi"
        await forever.wait()  # a tool call that takes its time
        yield "never"

    running = RunningReply(1, _Stream(), deltas(), lambda r: None)
    started = asyncio.Event()

    async def reader() -> list[str]:
        got = [await asyncio.wait_for(anext(running), 5)]
        started.set()
        got.append(await asyncio.wait_for(anext(running), 5))
        await asyncio.sleep(0)  # not cancelled any more
        task = asyncio.current_task()
        assert task is not None
        if hasattr(task, "cancelling"):  # Python 3.11+ counts the cancels
            assert task.cancelling() == 0
        return got

    task = asyncio.ensure_future(reader())
    await started.wait()
    await asyncio.sleep(0)
    running.stop()
    assert await asyncio.wait_for(task, 5) == ["Hi", "\n\n*Stopped.*"]


async def test_a_cancel_that_is_not_a_stop_cancels_the_reader() -> None:
    forever = asyncio.Event()

    async def deltas() -> AsyncIterator[Any]:
        await forever.wait()
        yield "never"

    running = RunningReply(1, _Stream(), deltas(), lambda r: None)
    waiting = asyncio.ensure_future(anext(running))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not running.stopped
