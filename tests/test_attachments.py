"""Attachments and images: text files reach the model with their names, other files a note,
images an OpenAI-compatible server as ``image_url`` parts when the model can see (``vision``),
else ``[image: name]``. End to end: the ready-made bot on the loopback Discord (which serves the
attachments over HTTP from 127.0.0.1), the OpenAI backend and a real local server that records
each request (tests/media_server.py)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from chat_world import Chat, scene
from genbot.attachments import describe_size, fenced, kind
from genbot.chatbot import ChatBot
from genbot.models.base import ChatMessage, ModelError, prepare_messages
from genbot.models.openai import OpenAIStreamer
from genbot.settings import Settings, SettingsError
from genbot.testing import FakeChannel, FakeUser, run_bot
from genbot.testing.models import Upload
from media_server import MediaServer, media_model

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the bytes need not be a real picture

# -- the pure parts ------------------------------------------------------------------------------


def test_what_is_text_is_decided_by_content_type_and_extension() -> None:
    assert kind("notes.md", "text/markdown; charset=utf-8") == "text"
    assert kind("data.json", "application/json") == "text"
    assert kind("main.py", None) == "text"
    assert kind("config.toml", "application/octet-stream") == "text"  # the name tells
    assert kind("Dockerfile", None) == "text"
    assert kind("cat.png", "image/png") == "image"
    assert kind("cat.jpg", None) == "image"
    assert kind("tool.exe", "application/x-msdownload") == "other"
    assert kind("archive.zip", None) == "other"


def test_sizes_and_fences() -> None:
    assert [describe_size(n) for n in (512, 42_000, 2_000_000, 1_500_000_000)] == [
        "512 bytes",
        "42 kB",
        "2 MB",
        "1.5 GB",
    ]
    assert fenced("a.py", "print(1)\n") == "[file: a.py]\n```py\nprint(1)\n```"
    # a file that holds a fence itself gets a longer one
    assert fenced("README.md", "```sh\nls\n```").startswith("[file: README.md]\n````md\n")


def test_a_backend_that_cannot_see_gets_the_images_named() -> None:
    image = {"name": "cat.png", "mime": "image/png", "data": PNG}
    messages: list[ChatMessage] = [
        {"role": "user", "content": "look", "images": [image]},  # type: ignore[list-item]
        {"role": "user", "content": "again [image: cat.png]", "images": [image]},  # type: ignore[list-item]
    ]
    blind = prepare_messages(messages)
    assert blind == [
        {"role": "user", "content": "look\n[image: cat.png]"},
        {"role": "user", "content": "again [image: cat.png]"},  # named already: not twice
    ]
    assert prepare_messages(messages, images=True)[0]["images"] == [image]
    with pytest.raises(ModelError, match="images must be a list"):
        prepare_messages([{"role": "user", "content": "x", "images": [{"name": "a"}]}])  # type: ignore[list-item]


def test_vision_needs_a_backend_that_can_send_images(tmp_path: Any) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text('backend = "openai"\nvision = true\n')
    assert Settings.load(config, environ={}).vision is True
    config.write_text('backend = "llamacpp"\nvision = true\n')
    with pytest.raises(SettingsError, match="'vision': the llamacpp backend sees images through"):
        Settings.load(config, environ={})


# -- the ready-made bot, end to end --------------------------------------------------------------


chat = pytest.fixture(scene(Chat), name="chat")


model = pytest.fixture(media_model, name="model")


def make_bot(backend: OpenAIStreamer, **values: Any) -> ChatBot:
    settings = Settings().updated({"backend": "openai", "edit_interval": 0.2, **values}, "test")
    return ChatBot(settings, backend=backend, guild_ready_timeout=0.05, close_streamers=False)


async def send_file(
    chat: Chat,
    text: str,
    files: list[tuple[str, str, bytes]],
    *,
    channel: FakeChannel | None = None,
    author: FakeUser | None = None,
    missing: bool = False,
) -> dict[str, Any]:
    """Post `text` with `files` (name, content type, bytes) as alice in the DM, as Discord
    does: the files on the CDN. `missing`: the CDN has lost them (the download fails)."""
    server = chat.server
    where = channel or chat.dm
    attachments = [
        server.state.store_file(where, Upload(i, name, ctype, data), name)
        for i, (name, ctype, data) in enumerate(files)
    ]
    if missing:
        for attachment in attachments:
            server.state.files.pop(int(attachment["id"]))
    message = server.create_message(
        where, author or chat.alice, {"content": text}, attachments=attachments
    )
    await server.dispatch_message("MESSAGE_CREATE", message)
    return message


async def answered(chat: Chat, server: MediaServer, count: int = 1) -> dict[str, Any]:
    """The request of the `count`-th reply, once that reply shows."""
    await chat.server.wait_for(lambda: len(chat.replies(chat.dm)) >= count, timeout=15)
    await chat.server.wait_for(lambda: len(server.requests) >= count, timeout=15)
    return server.requests[count - 1]


def last_user(request: dict[str, Any]) -> Any:
    return [m for m in request["messages"] if m["role"] == "user"][-1]["content"]


async def test_a_text_attachment_reaches_the_model_with_its_name(
    chat: Chat, model: tuple[MediaServer, OpenAIStreamer]
) -> None:
    server, backend = model
    source = "def add(a, b):\n    return a + b\n"
    bot = make_bot(backend)
    async with run_bot(bot, chat.server):
        await send_file(chat, "what does this do?", [("add.py", "text/x-python", source.encode())])
        request = await answered(chat, server)
        # a second question: the file is still in the context, from the cache
        await chat.server.send_message(chat.dm, chat.alice, "and now?")
        again = await answered(chat, server, 2)
    assert last_user(request) == (
        "alice: what does this do?\n[file: add.py]\n```py\ndef add(a, b):\n    return a + b\n```"
    )
    earlier = [m["content"] for m in again["messages"] if m["role"] == "user"][-2]
    assert earlier == last_user(request)
    assert bot.attachments.downloads == 1


async def test_big_and_binary_files_get_a_note_and_are_not_downloaded(
    chat: Chat, model: tuple[MediaServer, OpenAIStreamer]
) -> None:
    server, backend = model
    bot = make_bot(backend, attachment_max_bytes=1000)
    files = [
        ("big.log", "text/plain", b"line\n" * 1000),
        ("tool.bin", "application/octet-stream", b"\x00\x01" * 1000),
        ("latin1.txt", "text/plain", "caf\xe9".encode("latin-1")),
    ]
    async with run_bot(bot, chat.server):
        await send_file(chat, "look", files)
        request = await answered(chat, server)
    assert last_user(request) == (
        "alice: look\n"
        "[file: big.log, 5 kB, not read: larger than 1 kB]\n"
        "[file: tool.bin, 2 kB, not read]\n"
        "[file: latin1.txt, 4 bytes, not read: not UTF-8 text]"
    )
    assert bot.attachments.downloads == 1  # only the small text file was fetched
    assert len(chat.replies(chat.dm)) == 1  # no crash: the question got its answer


async def test_a_failed_download_is_a_note_in_the_context(
    chat: Chat, model: tuple[MediaServer, OpenAIStreamer]
) -> None:
    server, backend = model
    bot = make_bot(backend)
    async with run_bot(bot, chat.server):
        await send_file(chat, "read it", [("notes.txt", "text/plain", b"hello")], missing=True)
        request = await answered(chat, server)
    assert last_user(request) == (
        "alice: read it\n[file: notes.txt, 5 bytes, not read: the download failed (HTTP 404)]"
    )


async def test_an_image_reaches_an_openai_server_as_an_image_url_part(
    chat: Chat, model: tuple[MediaServer, OpenAIStreamer]
) -> None:
    server, backend = model
    bot = make_bot(backend, vision=True)
    async with run_bot(bot, chat.server):
        await send_file(chat, "what is this?", [("cat.png", "image/png", PNG)])
        request = await answered(chat, server)
    text, image = last_user(request)
    assert text == {"type": "text", "text": "alice: what is this?\n[image: cat.png]"}
    assert image["type"] == "image_url"
    url = image["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == PNG


async def test_a_text_only_model_gets_the_image_named(
    chat: Chat, model: tuple[MediaServer, OpenAIStreamer]
) -> None:
    server, backend = model
    bot = make_bot(backend)  # vision = false: the default
    async with run_bot(bot, chat.server):
        await send_file(chat, "what is this?", [("cat.png", "image/png", PNG)])
        request = await answered(chat, server)
    assert last_user(request) == "alice: what is this?\n[image: cat.png]"
    assert "image_url" not in str(request)
    assert bot.attachments.downloads == 0  # nothing fetched for a model that cannot see
