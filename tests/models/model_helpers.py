"""Helpers for the backend tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from genbot.models import ChatRequest, GenerationSettings
from genbot.models.base import ChatStreamer


def greedy(question: str, max_new_tokens: int = 12, **settings: object) -> ChatRequest:
    """A one-question chat request with greedy (deterministic) decoding."""
    return ChatRequest(
        [{"role": "user", "content": question}],
        GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0, **settings),  # type: ignore[arg-type]
    )


async def reply(streamer: ChatStreamer, request: ChatRequest, timeout: float = 60) -> str:
    """The whole reply to ``request``, bounded in time."""

    async def collect() -> str:
        return "".join([delta async for delta in streamer.chat(request)])

    return await asyncio.wait_for(collect(), timeout)


async def started(
    streamer: ChatStreamer, request: ChatRequest, deltas: int = 1
) -> tuple[asyncio.Task[str], list[str]]:
    """Start ``request`` in a task and return once ``deltas`` deltas arrived (or it ended):
    the task (its result is the whole reply) and the deltas so far."""
    seen = asyncio.Event()
    parts: list[str] = []

    async def run() -> str:
        try:
            async for delta in streamer.chat(request):
                parts.append(delta)
                if len(parts) >= deltas:
                    seen.set()
        finally:
            seen.set()
        return "".join(parts)

    task = asyncio.create_task(run())
    await asyncio.wait_for(seen.wait(), 60)
    return task, parts


async def cancel(task: asyncio.Task[str]) -> None:
    """Cancel a chat started by :func:`started` and wait (bounded) until it ended cancelled."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


async def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait (bounded) until ``condition()`` holds, checking every 10 ms."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)
