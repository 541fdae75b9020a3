"""The tool loop: a reply that may call tools, as one stream of text for the user.

:func:`tool_loop` takes the model's first stream and yields what the user sees: the model's
text as it comes, then, when the step ends with :class:`~genbot.models.ToolCall` s, one short
status line per call (``*using `weather` …*`` and then ``✓`` or ``*failed: why*``, in the
order of the calls), while the calls run concurrently (each checked against its schema, with a
timeout and an output cap: :func:`genbot.tools.run_call`); then it asks the model again with
the assistant message that called the tools and one ``tool`` message per result, and streams
that step the same way, up to ``max_steps`` steps that call tools. Whatever a tool does, the
reply goes on: a failure is a status line for the user and an ``error: ...`` result the model
reads.

When the model still calls tools after ``max_steps`` steps, it is asked once more *without*
tools, so that it answers with what it has (a server may still send calls then: they are not
run, and the reply ends with :data:`STEPS_NOTE`).

Each step is a stream of its own, opened by the caller's ``open_step`` (the ready-made bot
waits there for a fair turn at the model, so the model's slot is free while the tools run and
other chats keep generating; see :class:`genbot.chatbot.ChatBot`). Everything but tool calls
passes through unchanged (text deltas, :class:`~genbot.models.Reasoning`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

import discord

from genbot.models.base import ChatMessage, ChatRequest, ToolCall
from genbot.tools import REASON_CHARS, Outcome, Tool, run_call

__all__ = ["STEPS_NOTE", "NoStep", "ToolLimits", "status_line", "tool_loop"]

_log = logging.getLogger(__name__)

#: The last line of a reply whose model still called tools when it was asked without them.
STEPS_NOTE = "*Stopped: the model kept calling tools.*"
#: The last line of a reply whose next step could not start (:class:`NoStep`).
NO_STEP_NOTE = "*The model is busy; the answer stops here.*"

#: Opens the stream of one more step of a reply: an async context manager whose value is the
#: step's outputs; leaving it ends the step (frees the model's slot).
StepOpener = Callable[[ChatRequest], AbstractAsyncContextManager[AsyncIterable[Any]]]


class NoStep(Exception):
    """``open_step`` could not start the next step (no model slot came in time): the reply
    ends with :data:`NO_STEP_NOTE`."""


@dataclass(frozen=True)
class ToolLimits:
    """The bounds of a reply's tool calls: steps that call tools (``max_steps``), seconds per
    call (``timeout``) and characters of a result the model gets (``output_chars``)."""

    max_steps: int = 4
    timeout: float = 30.0
    output_chars: int = 4000


def status_line(name: str) -> str:
    """The status line of a call while it runs (its name is a checked tool name, or shown
    escaped when the model made one up)."""
    shown = " ".join(name.replace("`", "").split())[:64] or "?"
    return f"*using `{discord.utils.escape_mentions(shown)}` …*"


def outcome_mark(outcome: Outcome) -> str:
    """What follows the status line once the call is done: ``✓`` or ``*failed: why*``."""
    if outcome.ok:
        return " ✓"
    return f" *failed: {_safe(outcome.reason, REASON_CHARS)}*"


def _safe(text: str, limit: int) -> str:
    """One line of `text`, short, its markdown and mentions made inert."""
    line = " ".join(text.split())
    if len(line) > limit:
        line = line[: limit - 1] + "…"
    return discord.utils.escape_mentions(discord.utils.escape_markdown(line))


async def tool_loop(
    first: AsyncIterable[Any],
    request: ChatRequest,
    tools: Sequence[Tool],
    open_step: StepOpener,
    limits: ToolLimits = ToolLimits(),
    *,
    first_done: Callable[[], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> AsyncIterator[Any]:
    """The reply to ``request`` as the user sees it, tool steps included (see the module).

    Parameters
    ----------
    first:
        The outputs of the first step (the stream of ``request``, already sent).
    request:
        The first step's request: its messages and settings are the base of the next ones,
        its ``tools`` those offered.
    tools:
        The tools offered, as :class:`genbot.tools.Tool` (looked up by the calls' names).
    open_step:
        Opens the stream of a next step (see :data:`StepOpener`); raises :class:`NoStep`
        when it cannot.
    limits:
        The bounds of the calls.
    first_done:
        Called once the first step's stream has ended with calls (to free what it holds).
    on_outcome:
        Called with each call's outcome (the metrics count them).
    """
    offered = {t.name: t for t in tools}
    messages = list(request.messages)
    step = _Step()
    async for out in step.read(first):
        yield out
    rounds = 0
    while step.calls:
        if rounds == limits.max_steps:  # asked without tools, it still called some
            yield f"{step.separator()}{STEPS_NOTE}"
            return
        if rounds == 0 and first_done is not None:
            first_done()
        rounds += 1
        outcomes: list[Outcome] = []
        async for line in _run_calls(step, offered, limits, outcomes, on_outcome):
            yield line
        messages += _step_messages(step, outcomes)
        tools_now = request.tools if rounds < limits.max_steps else []  # last: answer now
        more = replace(request, messages=list(messages), tools=tools_now)
        step = _Step()
        async with contextlib.AsyncExitStack() as stack:
            try:
                source = await stack.enter_async_context(open_step(more))
            except NoStep:
                yield NO_STEP_NOTE
                return
            async for out in step.read(source):
                yield out


class _Step:
    """One step's stream: its text (for the assistant message) and the calls at its end."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[ToolCall] = []

    async def read(self, source: AsyncIterable[Any]) -> AsyncIterator[Any]:
        async for out in source:
            if isinstance(out, ToolCall):
                self.calls.append(out)
                continue
            if isinstance(out, str) and out:
                self.text.append(out)
            yield out

    def separator(self) -> str:
        """A line break before a status line, unless the step's text ends a line (a step
        without text follows a status line, or starts the reply)."""
        return "\n" if self.text and not self.text[-1].endswith("\n") else ""


async def _run_calls(
    step: _Step,
    offered: dict[str, Tool],
    limits: ToolLimits,
    outcomes: list[Outcome],
    on_outcome: Callable[[Outcome], None] | None,
) -> AsyncIterator[str]:
    """Run the step's calls concurrently; yield each one's status line and, once it is done,
    its mark, in the order of the calls. Closing this early cancels the calls."""
    tasks = [
        asyncio.ensure_future(run_call(call, offered, limits.timeout, limits.output_chars))
        for call in step.calls
    ]
    try:
        lead = step.separator()
        for call, task in zip(step.calls, tasks, strict=True):
            yield f"{lead}{status_line(call.name)}"
            lead = ""
            outcome = await task
            if not outcome.ok:
                _log.info("tool call %s failed: %s", call.name, outcome.reason)
            if on_outcome is not None:
                on_outcome(outcome)
            outcomes.append(outcome)
            yield f"{outcome_mark(outcome)}\n"
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _step_messages(step: _Step, outcomes: list[Outcome]) -> list[ChatMessage]:
    """The assistant message that called the tools, then one tool message per result."""
    called: ChatMessage = {
        "role": "assistant",
        "content": "".join(step.text),
        "tool_calls": [call.as_dict() for call in step.calls],
    }
    results: list[ChatMessage] = [
        {"role": "tool", "tool_call_id": o.call.id, "content": o.text} for o in outcomes
    ]
    return [called, *results]
