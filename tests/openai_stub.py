"""A tiny OpenAI-compatible model server on loopback, for running the real ``genbot`` command
with ``backend = "openai"`` without a model: it streams ``echo: <the last user message>``.

It records the last user message of every chat completion it was asked for (``asked``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

__all__ = ["OpenAIStub", "openai_stub"]

_log = logging.getLogger(__name__)


class OpenAIStub:
    def __init__(self) -> None:
        self.asked: list[str] = []
        self.base_url = ""

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        users = [m.get("content", "") for m in body.get("messages", []) if m["role"] == "user"]
        said = str(users[-1]).splitlines()[-1] if users else ""
        self.asked.append(said)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        text = "ok" if body.get("max_tokens") == 1 else f"echo: {said.split(': ', 1)[-1]}"
        for piece in (text, ""):
            chunk = {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": body.get("model", "stub"),
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": piece} if piece else {},
                        "finish_reason": None if piece else "stop",
                    }
                ],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def openai_stub() -> AsyncIterator[OpenAIStub]:
    """Serve an :class:`OpenAIStub` on a free loopback port; its ``base_url`` ends in ``/v1``."""
    stub = OpenAIStub()
    app = web.Application()
    app.router.add_get("/v1/models", stub.models)
    app.router.add_post("/v1/chat/completions", stub.completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        stub.base_url = f"http://127.0.0.1:{port}/v1"
        yield stub
    finally:
        await runner.cleanup()
