"""What a model gets of the files people attach: text files read into the context, images for
models that can see, a short note for everything else.

:class:`AttachmentReader` downloads what a reply's context needs from Discord's attachment URLs
(bounded in size and time, cached per attachment id) and says, per attachment id, what the
model sees of it (:class:`Read`): :func:`genbot.prompt.context_to_messages` puts that in place
of the plain ``[attachment: name]`` line, and the images into the messages' ``images``.

Decisions:

- Text-like files (:func:`kind`: a ``text/*`` or other textual content type, or a known
  extension such as txt, md, py, js, json, csv, log, toml, yaml) of at most ``max_bytes``
  whose bytes are UTF-8 go into the context whole, in a fenced block headed by the file name.
  Larger ones, other types and text that is not UTF-8 get a note:
  ``[file: data.bin, 2 MB, not read]``.
- Images: with ``vision`` they are downloaded (at most :data:`IMAGE_MAX_BYTES` each) and the
  :data:`MAX_IMAGES` newest of the context go to the model; the text names each one
  (``[image: cat.png]``). Without vision nothing is downloaded: the text says
  ``[image: cat.png]``.
- A failed download (an HTTP error, a timeout, more bytes than allowed) is a note in the
  context, ``[file: notes.txt, not read: the download failed (HTTP 404)]``; it is not cached, so
  the next reply tries again.
- The bot's own attachments are not read: they stay ``[attachment: name]``, except its
  ``reasoning.txt`` (``reasoning = "file"``), which the model does not see at all.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import discord

from genbot.models.base import ImagePart
from genbot.reasoning import FILE_NAME as REASONING_FILE

__all__ = [
    "CACHE_BYTES",
    "IMAGE_MAX_BYTES",
    "MAX_IMAGES",
    "AttachmentReader",
    "Read",
    "describe_size",
    "fenced",
    "kind",
    "newest_images",
]

_log = logging.getLogger(__name__)

#: The largest image sent to a model that can see, in bytes.
IMAGE_MAX_BYTES = 10 * 2**20
#: The most images of one context sent to the model (the newest; older ones are named only).
MAX_IMAGES = 4
#: Bytes of downloaded files kept in memory for the next replies (least recently used go).
CACHE_BYTES = 64 * 2**20
#: Seconds a download may take, connecting included.
DOWNLOAD_TIMEOUT = 10.0
#: Downloads of one reply at a time.
PARALLEL_DOWNLOADS = 4

TEXT_EXTENSIONS = frozenset(
    "txt text md markdown rst adoc org tex log csv tsv json jsonl ndjson toml yaml yml ini cfg "
    "conf env properties xml html htm css scss sass less svg py pyi pyx ipynb js mjs cjs jsx ts "
    "tsx vue svelte sh bash zsh fish ps1 bat cmd c h cc cpp cxx hpp hh cs java kt kts scala go "
    "rs rb php pl pm lua r sql swift m mm dart hs ex exs erl clj lisp el vim nix tf hcl proto "
    "graphql gql diff patch srt vtt gitignore dockerfile makefile cmake gradle".split()
)
TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/ld+json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-yaml",
        "application/yaml",
        "application/toml",
        "application/x-toml",
        "application/x-sh",
        "application/x-python",
        "application/sql",
        "application/x-ndjson",
        "image/svg+xml",
    }
)
IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}


@dataclass(frozen=True)
class Read:
    """What the model sees of one attachment: ``text`` in the message's text (a file's
    contents, or a note), and the ``image`` for a model that can see."""

    text: str
    image: ImagePart | None = None


class _Failed(Exception):
    """A download that did not give the file."""


def _extension(filename: str) -> str:
    base = posixpath.basename(filename).lower()
    return base.rsplit(".", 1)[-1] if "." in base.strip(".") else base.lstrip(".")


def kind(filename: str, content_type: str | None) -> str:
    """``"image"``, ``"text"`` or ``"other"``: what an attachment is, by its content type
    (without parameters) and its file name's extension.

    Parameters
    ----------
    filename:
        The attachment's file name.
    content_type:
        Its MIME type as Discord reports it, if any.
    """
    mime = (content_type or "").split(";")[0].strip().lower()
    extension = _extension(filename)
    if mime in IMAGE_TYPES.values() or (not mime and extension in IMAGE_TYPES):
        return "image"
    if mime.startswith("text/") or mime in TEXT_TYPES or extension in TEXT_EXTENSIONS:
        return "text"
    return "other"


def describe_size(size: int) -> str:
    """``size`` bytes for people: ``512 bytes``, ``42 kB``, ``2 MB``, ``1.5 GB``."""
    if size < 1000:
        return f"{size} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            return f"{size / scale:.3g} {unit}"
    raise AssertionError("unreachable")


def fenced(name: str, text: str) -> str:
    """A text file as the model sees it: ``[file: name]`` and its text in a fenced block whose
    fence is longer than any run of backticks in the text."""
    run = best = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        best = max(best, run)
    fence = "`" * max(3, best + 1)
    language = _extension(name)
    language = language if language.isalnum() and len(language) <= 10 else ""
    return f"[file: {name}]\n{fence}{language}\n{text.rstrip()}\n{fence}"


def _note(attachment: discord.Attachment, why: str = "", *, label: str = "file") -> str:
    size = f", {describe_size(attachment.size)}" if attachment.size else ""
    reason = f": {why}" if why else ""
    return f"[{label}: {attachment.filename}{size}, not read{reason}]"


def newest_images(
    messages: Iterable[discord.Message], reads: Mapping[int, Read], limit: int = MAX_IMAGES
) -> dict[int, list[ImagePart]]:
    """The images of ``messages`` (any order) that go to the model, by message id: the
    ``limit`` newest ones.

    Parameters
    ----------
    messages:
        The messages the context keeps.
    reads:
        What :meth:`AttachmentReader.read` made of their attachments.
    limit:
        The most images in all.
    """
    out: dict[int, list[ImagePart]] = {}
    if not reads:
        return out
    left = limit
    for message in sorted(messages, key=lambda m: m.id, reverse=True):
        found = [r.image for a in message.attachments if (r := reads.get(a.id)) and r.image]
        taken = found[: max(0, left)]
        left -= len(taken)
        if taken:
            out[message.id] = taken
    return out


class AttachmentReader:
    """Reads the attachments of a reply's context (see the module docstring); one per bot.

    Parameters
    ----------
    timeout:
        Seconds one download may take.
    image_max_bytes:
        The largest image downloaded.
    cache_bytes:
        Bytes of downloads kept for the next replies.
    """

    def __init__(
        self,
        *,
        timeout: float = DOWNLOAD_TIMEOUT,
        image_max_bytes: int = IMAGE_MAX_BYTES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.timeout = timeout
        self.image_max_bytes = image_max_bytes
        self.cache_bytes = cache_bytes
        self._cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._cached = 0
        self._session: aiohttp.ClientSession | None = None
        #: Downloads made (cache misses), for tests and logs.
        self.downloads = 0

    async def read(
        self,
        messages: Iterable[discord.Message],
        *,
        max_bytes: int,
        vision: bool,
        skip: int | None = None,
    ) -> dict[int, Read]:
        """What the model sees of each attachment of ``messages``, by attachment id.

        Parameters
        ----------
        messages:
            The context's messages.
        max_bytes:
            The largest text file read (``attachment_max_bytes``).
        vision:
            The model can see: images are downloaded for it.
        skip:
            An author id (the bot's) whose attachments are not read.
        """
        messages = list(messages)
        own = {  # the reasoning the bot attached is not fed back to the model: not even named
            attachment.id: Read("")
            for message in messages
            if message.author.id == skip
            for attachment in message.attachments
            if attachment.filename == REASONING_FILE
        }
        wanted = [
            attachment
            for message in messages
            if message.author.id != skip
            for attachment in message.attachments
        ]
        limit = asyncio.Semaphore(PARALLEL_DOWNLOADS)

        async def one(attachment: discord.Attachment) -> tuple[int, Read]:
            async with limit:
                return attachment.id, await self._read(attachment, max_bytes, vision)

        return own | dict(await asyncio.gather(*(one(a) for a in wanted)))

    async def _read(self, attachment: discord.Attachment, max_bytes: int, vision: bool) -> Read:
        what = kind(attachment.filename, attachment.content_type)
        if what == "image":
            return await self._image(attachment, vision)
        if what == "other":
            return Read(_note(attachment))
        if attachment.size > max_bytes:
            return Read(_note(attachment, f"larger than {describe_size(max_bytes)}"))
        try:
            data = await self._fetch(attachment, max_bytes)
        except _Failed as failed:
            return Read(_note(attachment, str(failed)))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return Read(_note(attachment, "not UTF-8 text"))
        if "\x00" in text:
            return Read(_note(attachment, "not text"))
        return Read(fenced(attachment.filename, text))

    async def _image(self, attachment: discord.Attachment, vision: bool) -> Read:
        label = f"[image: {attachment.filename}]"
        if not vision:
            return Read(label)
        if attachment.size > self.image_max_bytes:
            why = f"larger than {describe_size(self.image_max_bytes)}"
            return Read(_note(attachment, why, label="image"))
        try:
            data = await self._fetch(attachment, self.image_max_bytes)
        except _Failed as failed:
            return Read(_note(attachment, str(failed), label="image"))
        mime = (attachment.content_type or "").split(";")[0].strip().lower()
        mime = mime or IMAGE_TYPES[_extension(attachment.filename)]
        return Read(label, {"name": attachment.filename, "mime": mime, "data": data})

    async def _fetch(self, attachment: discord.Attachment, cap: int) -> bytes:
        """The attachment's bytes (at most ``cap``), from the cache or downloaded.

        Raises
        ------
        _Failed
            The download failed, timed out or was larger than ``cap``.
        """
        cached = self._cache.get(attachment.id)
        if cached is not None and len(cached) <= cap:
            self._cache.move_to_end(attachment.id)
            return cached
        try:
            data = await asyncio.wait_for(self._download(attachment.url, cap), self.timeout)
        except asyncio.TimeoutError:
            raise _Failed(f"the download took over {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as error:
            _log.warning("downloading the attachment %s failed: %r", attachment.filename, error)
            raise _Failed(f"the download failed ({type(error).__name__})") from None
        self._keep(attachment.id, data)
        return data

    async def _download(self, url: str, cap: int) -> bytes:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        self.downloads += 1
        async with self._session.get(url) as response:
            if response.status != 200:
                raise _Failed(f"the download failed (HTTP {response.status})")
            if (response.content_length or 0) > cap:
                raise _Failed(f"larger than {describe_size(cap)}")
            chunks: list[bytes] = []
            size = 0
            while chunk := await response.content.readany():
                size += len(chunk)
                if size > cap:
                    raise _Failed(f"larger than {describe_size(cap)}")
                chunks.append(chunk)
        return b"".join(chunks)

    def _keep(self, attachment_id: int, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        replaced = self._cache.pop(attachment_id, None)
        self._cached -= len(replaced) if replaced is not None else 0
        self._cache[attachment_id] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    async def close(self) -> None:
        """Close the HTTP session (the cache stays)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
