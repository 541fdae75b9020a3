"""A real OpenAI-compatible server on loopback that records every chat completion request and
streams scripted deltas: for the reasoning, attachment and image tests of the ready-made bot.

Each request is answered by the next script in :attr:`MediaServer.script` (a list of deltas,
each ``{"content": ...}`` or ``{"reasoning_content": ...}``), else ``echo: <last user line>``;
the warm-up (``max_tokens == 1``) gets ``ok`` and is not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from genbot.models.openai import OpenAIStreamer

__all__ = ["MediaServer", "loopback", "media_model", "media_server"]


class MediaServer:
    def __init__(self) -> None:
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.script: list[list[dict[str, str]]] = []
        self.arrived = asyncio.Event()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "media", "object": "model"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        if body.get("max_tokens") == 1:
            deltas = [{"content": "ok"}]
        else:
            self.requests.append(body)
            self.arrived.set()
            deltas = self.script.pop(0) if self.script else [{"content": _echo(body)}]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for delta in [*deltas, {}]:
            chunk = {
                "id": "chatcmpl-media",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "media",
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": None if delta else "stop"}
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _echo(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1]["content"] if users else ""
    if isinstance(content, list):  # content parts: the text part
        content = next((p["text"] for p in content if p.get("type") == "text"), "")
    return "echo: " + str(content).splitlines()[-1].split(": ", 1)[-1]


@contextlib.asynccontextmanager
async def loopback(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port until the block ends: its ``http://127.0.0.1:PORT``
    URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def media_server() -> AsyncIterator[MediaServer]:
    """Serve a :class:`MediaServer` on a free loopback port; its ``url`` ends in ``/v1``."""
    server = MediaServer()
    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/chat/completions", server.completions)
    async with loopback(app) as url:
        server.url = f"{url}/v1"
        yield server


async def media_model() -> AsyncIterator[tuple[MediaServer, OpenAIStreamer]]:
    """For a pytest fixture: a :func:`media_server` and an :class:`OpenAIStreamer` of its model
    ``media`` (no retries) on a thread; the streamer is closed afterwards."""
    async with media_server() as server:
        backend = OpenAIStreamer(base_url=server.url, model="media", max_retries=0)
        backend.start_thread()
        try:
            yield server, backend
        finally:
            await asyncio.to_thread(backend.close)
