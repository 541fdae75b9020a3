"""A tiny OpenAI-compatible model server on loopback, for running the real ``genbot`` command
with ``backend = "openai"`` without a model: it streams ``echo: <the last user message>``.

It records the last user message of every chat completion it was asked for (``asked``) and
every request body (``requests``). Tests of tools script its replies: :attr:`OpenAIStub.respond`
(a function of the request body) or :attr:`OpenAIStub.script` (a queue) give a :class:`Reply`,
text and tool calls, streamed as OpenAI or vLLM stream them (see :func:`reply_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = ["OpenAIStub", "Reply", "openai_stub", "reply_events"]

_log = logging.getLogger(__name__)

_ids = itertools.count(1)


@dataclass
class Reply:
    """A scripted reply: its text, then its tool calls, ``(name, arguments)`` (arguments as an
    object, or as the exact JSON text the model would write), streamed in ``style``."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any] | str]] = field(default_factory=list)
    style: Literal["openai", "vllm"] = "openai"
    #: When given, the stream waits for it after its first text event (a slow model); a client
    #: that goes away meanwhile ends it.
    hold: asyncio.Event | None = None
    #: When given, the stream waits for it before its first event (a model slow to start).
    hold_first: asyncio.Event | None = None


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def reply_events(reply: Reply, model: str = "stub") -> Iterator[bytes]:
    """The server-sent events of ``reply``, as the servers send them.

    - ``openai``: a first chunk with the role (and ``content: null`` when the reply calls
      tools), the text a word at a time, then each call in turn: a fragment with its
      ``index``, ``id``, ``type`` and ``function.name`` (``arguments: ""``), then its arguments
      in pieces of 5 characters; then an empty delta with ``finish_reason: "tool_calls"``.
    - ``vllm``: a first chunk ``{"role": "assistant", "content": ""}``, the text, a first
      fragment per call with ``id``, ``type``, ``index`` and the name only, then the argument
      pieces of all calls interleaved (round robin), the last piece sent with ``content: ""``
      and the ``finish_reason`` in the same event.
    """
    calls = [
        (f"call_{next(_ids)}", name, args if isinstance(args, str) else json.dumps(args))
        for name, args in reply.calls
    ]
    first: dict[str, Any] = {"role": "assistant", "content": ""}
    if reply.style == "openai" and calls and not reply.text:
        first["content"] = None
    yield _chunk(model, first)
    words = reply.text.split(" ") if reply.text else []
    for n, word in enumerate(words):
        yield _chunk(model, {"content": word if n == len(words) - 1 else word + " "})
    if not calls:
        yield _chunk(model, {}, "stop")
        return
    if reply.style == "openai":
        for index, (call_id, name, args) in enumerate(calls):
            function = {"name": name, "arguments": ""}
            yield _chunk(
                model,
                {
                    "tool_calls": [
                        {"index": index, "id": call_id, "type": "function", "function": function}
                    ]
                },
            )
            for piece in _pieces(args, 5):
                yield _chunk(
                    model, {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                )
        yield _chunk(model, {}, "tool_calls")
        return
    for index, (call_id, name, _) in enumerate(calls):
        first_part = {"id": call_id, "type": "function", "index": index, "function": {"name": name}}
        yield _chunk(model, {"tool_calls": [first_part]})
    pieces = [
        (position, index, piece)
        for index, (_, _, arguments) in enumerate(calls)
        for position, piece in enumerate(_pieces(arguments, 4))
    ]
    pieces.sort(key=lambda p: p[0])  # round robin across the calls
    for n, (_, index, piece) in enumerate(pieces):
        fragment = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
        if n == len(pieces) - 1:
            yield _chunk(model, {"content": "", **fragment}, "tool_calls")
        else:
            yield _chunk(model, fragment)


class OpenAIStub:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.base_url = ""
        #: Scripted replies, used first to last (before :attr:`respond`).
        self.script: list[Reply] = []
        #: The reply to a request body; ``None``: the echo.
        self.respond: Callable[[dict[str, Any]], Reply] | None = None
        #: Chat completions streaming now, and the most at once so far.
        self.in_flight = 0
        self.most_in_flight = 0
        #: Set while no chat completion streams (:attr:`in_flight` is 0): a test waits on it,
        #: as the loopback Discord's ``wait_for`` does not see the stub's state change.
        self.idle = asyncio.Event()
        self.idle.set()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    def _reply(self, body: dict[str, Any], said: str) -> Reply:
        if body.get("max_tokens") == 1:
            return Reply("ok")
        if self.script:
            return self.script.pop(0)
        if self.respond is not None:
            return self.respond(body)
        return Reply(f"echo: {said.split(': ', 1)[-1]}")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        users = [m.get("content", "") for m in body.get("messages", []) if m["role"] == "user"]
        said = str(users[-1]).splitlines()[-1] if users else ""
        self.asked.append(said)
        if body.get("max_tokens") != 1:
            self.requests.append(body)
        reply = self._reply(body, said)
        self.in_flight += 1
        self.idle.clear()
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            if reply.hold_first is not None:
                await reply.hold_first.wait()
            for n, event in enumerate(reply_events(reply, body.get("model", "stub"))):
                await response.write(event)
                if n == 1 and reply.hold is not None:
                    await reply.hold.wait()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()
        return response


@contextlib.asynccontextmanager
async def openai_stub() -> AsyncIterator[OpenAIStub]:
    """Serve an :class:`OpenAIStub` on a free loopback port; its ``base_url`` ends in ``/v1``."""
    stub = OpenAIStub()
    app = web.Application()
    app.router.add_get("/v1/models", stub.models)
    app.router.add_post("/v1/chat/completions", stub.completions)
    runner = web.AppRunner(app, handler_cancellation=True)  # a client gone ends its stream
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        stub.base_url = f"http://127.0.0.1:{port}/v1"
        yield stub
    finally:
        await runner.cleanup()
