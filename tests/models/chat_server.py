"""A real OpenAI-compatible chat server for the OpenAI backend's tests: aiohttp on a free
loopback port, whose answers the test scripts request by request, and which records what it
got and when a client went away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

Handler = Callable[["ChatServer", web.Request], Awaitable[web.StreamResponse]]

MODEL = "test-model"


def chunk(content: str | None = None, finish: str | None = None, role: str | None = None) -> bytes:
    """One ``chat.completion.chunk`` event, as vLLM and llama.cpp's server send it."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    event = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChatServer:
    """Answers ``POST /v1/chat/completions`` with the next handler of ``script`` (then with
    ``default``), ``GET /v1/models`` with one model. Records each request's JSON body and
    headers (``requests``), the loop time it came (``arrivals``), and each client that went
    away before its answer was complete (``disconnects``; ``disconnected`` is set)."""

    def __init__(self) -> None:
        self.url = ""
        self.script: list[Handler] = []
        self.default: Handler = tokens(["Hello", ",", " world"])
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.arrivals: list[float] = []
        self.arrived = asyncio.Event()
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.forever = asyncio.Event()  # never set: what a hanging handler waits on

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.arrivals.append(asyncio.get_running_loop().time())
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        self.arrived.set()
        handler = self.script.pop(0) if self.script else self.default
        try:
            return await handler(self, request)
        except (asyncio.CancelledError, ConnectionResetError):
            # aiohttp cancels the handler when its client goes away (handler_cancellation)
            self.disconnects += 1
            self.disconnected.set()
            raise

    async def models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})


@asynccontextmanager
async def chat_server() -> AsyncIterator[ChatServer]:
    """A :class:`ChatServer` listening on a free loopback port (``server.url`` ends in /v1)."""
    server = ChatServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_get("/v1/models", server.models)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        server.forever.set()
        await runner.cleanup()


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    return response


def tokens(
    texts: list[str],
    *,
    finish: str | None = "stop",
    done: bool = True,
    then: Callable[[ChatServer, web.Request], Awaitable[None]] | None = None,
) -> Handler:
    """Stream ``texts``, one event each (after a role-only event); then ``then`` if given
    (e.g. :func:`hang`, :func:`drop`), else the ``finish`` event and ``[DONE]``."""

    async def handler(server: ChatServer, request: web.Request) -> web.StreamResponse:
        response = await _sse(request)
        await response.write(chunk(role="assistant", content=""))
        for text in texts:
            await response.write(chunk(text))
        if then is not None:
            await then(server, request)
        if finish is not None:
            await response.write(chunk(finish=finish))
        if done:
            await response.write(DONE)
        await response.write_eof()
        return response

    return handler


def raw(
    parts: list[bytes], then: Callable[[ChatServer, web.Request], Awaitable[None]] | None = None
) -> Handler:
    """Write ``parts`` as they are as an event stream, then ``then`` if given, then end."""

    async def handler(server: ChatServer, request: web.Request) -> web.StreamResponse:
        response = await _sse(request)
        for part in parts:
            await response.write(part)
        if then is not None:
            await then(server, request)
        await response.write_eof()
        return response

    return handler


def status(
    code: int,
    body: object,
    headers: dict[str, str] | Callable[[], dict[str, str]] | None = None,
) -> Handler:
    """Answer ``code`` with ``body`` as JSON, and ``headers`` (or what ``headers()`` returns
    when the answer is made)."""

    async def handler(server: ChatServer, request: web.Request) -> web.StreamResponse:
        made = headers() if callable(headers) else headers
        return web.json_response(body, status=code, headers=made)

    return handler


async def hang(server: ChatServer, request: web.Request) -> None:
    """Wait until the client goes away (or the server stops)."""
    await server.forever.wait()


async def drop(server: ChatServer, request: web.Request) -> None:
    """Close the connection at once, as a server that crashes does."""
    assert request.transport is not None
    request.transport.abort()
    await server.forever.wait()


async def hang_before_answering(server: ChatServer, request: web.Request) -> web.StreamResponse:
    """Accept the request and never answer."""
    await hang(server, request)
    raise AssertionError("unreachable")


async def drop_before_answering(server: ChatServer, request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer."""
    await drop(server, request)
    raise AssertionError("unreachable")
