"""Downloads of attachments have a size cap and a timeout, end to end on the loopback Discord:
a CDN that never answers, a CDN that sends more bytes than the attachment says it has, and an
image over the image cap each become a note in the context, and the question is answered; and
a model is sent images only when its configuration says it sees, whatever its name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from chat_world import Chat, scene
from genbot.models.openai import OpenAIStreamer
from genbot.testing import run_bot
from genbot.testing.models import Upload
from media_server import MediaServer, loopback, media_model, media_server
from test_attachments import PNG, answered, last_user, make_bot, send_file

chat = pytest.fixture(scene(Chat), name="chat")
model = pytest.fixture(media_model, name="model")


class Cdn:
    """A local CDN on 127.0.0.1: ``/stall/NAME`` never answers (until the test ends) and
    ``/more/NAME`` sends ``extra`` bytes more than the attachment's size."""

    def __init__(self) -> None:
        self.url = ""
        self.release = asyncio.Event()
        self.stalled = 0
        self.extra = b"x" * 5000

    async def stall(self, request: web.Request) -> web.Response:
        self.stalled += 1
        await asyncio.wait_for(self.release.wait(), 60)
        return web.Response(body=b"late")

    async def more(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no Content-Length: the body is streamed
        response.content_type = "text/plain"
        await response.prepare(request)
        for _ in range(5):
            await response.write(self.extra)
        await response.write_eof()
        return response


@pytest.fixture
async def cdn() -> AsyncIterator[Cdn]:
    server = Cdn()
    app = web.Application()
    app.router.add_get("/stall/{name}", server.stall)
    app.router.add_get("/more/{name}", server.more)
    async with loopback(app) as url:
        server.url = url
        try:
            yield server
        finally:
            server.release.set()


async def send_notes(chat: Chat, url: str) -> None:
    """Alice sends "read it" in her DM with a 5-byte ``notes.txt`` whose download is `url`."""
    message = chat.server.create_message(chat.dm, chat.alice, {"content": "read it"})
    attachment = chat.server.state.store_file(
        chat.dm, _upload("notes.txt", "text/plain", b"hello"), "notes.txt"
    )
    attachment["url"] = attachment["proxy_url"] = url
    message["attachments"] = [attachment]
    await chat.server.dispatch_message("MESSAGE_CREATE", message)


async def test_a_download_that_takes_too_long_becomes_a_note(
    chat: Chat, model: tuple[MediaServer, Any], cdn: Cdn
) -> None:
    server, backend = model
    bot = make_bot(backend)
    bot.attachments.timeout = 0.5
    async with run_bot(bot, chat.server):
        await send_notes(chat, f"{cdn.url}/stall/notes.txt")
        request = await answered(chat, server)
    assert cdn.stalled == 1
    assert last_user(request) == (
        "alice: read it\n[file: notes.txt, 5 bytes, not read: the download took over 0.5 s]"
    )


async def test_a_download_larger_than_the_attachment_said_is_cut_off_with_a_note(
    chat: Chat, model: tuple[MediaServer, Any], cdn: Cdn
) -> None:
    server, backend = model
    bot = make_bot(backend, attachment_max_bytes=1000)
    async with run_bot(bot, chat.server):
        await send_notes(chat, f"{cdn.url}/more/notes.txt")
        request = await answered(chat, server)
    assert last_user(request) == (
        "alice: read it\n[file: notes.txt, 5 bytes, not read: larger than 1 kB]"
    )
    assert "xxxxx" not in str(request)


async def test_an_image_over_the_image_cap_is_named_with_a_note_and_not_downloaded(
    chat: Chat, model: tuple[MediaServer, Any]
) -> None:
    server, backend = model
    bot = make_bot(backend, vision=True)
    bot.attachments.image_max_bytes = 1000
    async with run_bot(bot, chat.server):
        await send_file(chat, "what is this?", [("cat.png", "image/png", PNG)])
        request = await answered(chat, server)
    assert last_user(request) == (
        "alice: what is this?\n[image: cat.png, 1.03 kB, not read: larger than 1 kB]"
    )
    assert "image_url" not in str(request)
    assert bot.attachments.downloads == 0
    assert len(chat.replies(chat.dm)) == 1  # the question got its answer


def _upload(name: str, content_type: str, data: bytes) -> Upload:
    return Upload(0, name, content_type, data)


@pytest.mark.parametrize("name", ["llava-hf/llava-1.5-7b-hf", "Qwen/Qwen2.5-VL-7B-Instruct"])
async def test_a_model_named_like_a_vision_model_is_not_sent_images_without_vision(
    chat: Chat, name: str
) -> None:
    async with media_server() as server:
        backend = OpenAIStreamer(base_url=server.url, model=name, max_retries=0)
        backend.start_thread()
        try:
            bot = make_bot(backend, model=name)  # vision = false: the default
            async with run_bot(bot, chat.server):
                await send_file(chat, "what is this?", [("cat.png", "image/png", PNG)])
                request = await answered(chat, server)
        finally:
            await asyncio.to_thread(backend.close)
    assert request["model"] == name
    assert last_user(request) == "alice: what is this?\n[image: cat.png]"
    assert "image_url" not in str(request) and bot.attachments.downloads == 0
