"""Images to llama.cpp through a multimodal projector (``mmproj``), for real: a tiny CLIP vision
tower with an MLP projector (LLaVA's ``mlp`` type), random weights, written here as a GGUF the
way llama.cpp's clip loader reads it (tools/mtmd/clip.cpp), its output as wide as SmolLM2's
embeddings. llama.cpp loads it beside the embedded SmolLM2, and an image in a message becomes
the projector's image tokens in the model's prompt: counted by the server (``/slots``), end to
end from an attachment on the loopback Discord. The replies are gibberish (random weights): the
tests check the mechanism, not the text. A llama.cpp model without a projector gets the image
named in the text instead."""

from __future__ import annotations

import asyncio
import json
import struct
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("xllamacpp")
pytest.importorskip("gguf")

import gguf
import numpy as np

from chat_world import Chat, greedy_bot, send_image
from genbot.models import ChatRequest, GenerationSettings, ModelError, default_model_path
from genbot.models.base import ChatMessage
from genbot.models.llamacpp import LlamaCppStreamer, LlamaEngine, with_images
from genbot.models.toolcalls import fallback_messages
from genbot.testing import DiscordServer, run_bot

#: The tiny vision tower: a 32x32 image in 8x8 patches, so 16 image tokens.
IMAGE_SIZE, PATCH = 32, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2


def text_embedding_width(model_path: str) -> int:
    """The text model's embedding width (``<arch>.embedding_length`` of its GGUF)."""
    reader = gguf.GGUFReader(model_path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    return int(reader.fields[f"{arch}.embedding_length"].parts[-1][0])


def write_projector(path: Path, n_embd: int, *, hidden: int = 32, ff: int = 64) -> None:
    """A random-weight LLaVA-style projector GGUF: a 2-block CLIP vision tower and an MLP
    (``mm.0``, GELU, ``mm.2``) into ``n_embd`` (the text model's width)."""
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "mlp")
    for key, value in {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "embedding_length": hidden,
        "feed_forward_length": ff,
        "block_count": 2,
        "attention.head_count": 4,
        "projection_dim": n_embd,
    }.items():
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    rng = np.random.default_rng(0)

    def tensor(name: str, *shape: int, scale: float = 0.5) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("v.patch_embd.weight", hidden, 3, PATCH, PATCH)
    tensor("v.position_embd.weight", IMAGE_TOKENS, hidden)
    for block in range(2):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{block}.{name}.weight", hidden, hidden, scale=0.1)
            tensor(f"v.blk.{block}.{name}.bias", hidden, scale=0.1)
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{block}.{name}.weight", np.ones(hidden, np.float32))
            tensor(f"v.blk.{block}.{name}.bias", hidden, scale=0.1)
        tensor(f"v.blk.{block}.ffn_up.weight", ff, hidden, scale=0.1)
        tensor(f"v.blk.{block}.ffn_up.bias", ff, scale=0.1)
        tensor(f"v.blk.{block}.ffn_down.weight", hidden, ff, scale=0.1)
        tensor(f"v.blk.{block}.ffn_down.bias", hidden, scale=0.1)
    tensor("mm.0.weight", n_embd, hidden, scale=0.2)
    tensor("mm.0.bias", n_embd, scale=0.1)
    tensor("mm.2.weight", n_embd, n_embd, scale=0.05)
    tensor("mm.2.bias", n_embd, scale=0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def png(seed: int | None) -> bytes:
    """A 20x20 RGB PNG: black (``None``) or noise from ``seed``."""
    size = 20
    if seed is None:
        pixels = np.zeros((size, size, 3), np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def ask(content: str, *images: bytes, max_new_tokens: int = 6) -> ChatRequest:
    message: ChatMessage = {"role": "user", "content": content}
    if images:
        message["images"] = [
            {"name": f"{i}.png", "mime": "image/png", "data": data} for i, data in enumerate(images)
        ]
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, temperature=0.0, repeat_penalty=1.0
    )
    return ChatRequest([message], settings)


async def reply(model: LlamaCppStreamer, request: ChatRequest) -> str:
    async def collect() -> str:
        return "".join([d async for d in model.chat(request) if isinstance(d, str)])

    return await asyncio.wait_for(collect(), 120)


def engine_of(model: LlamaCppStreamer) -> LlamaEngine:
    assert model.engine is not None, "the worker (a thread) has loaded its engine"
    return model.engine


def last_prompt_tokens(model: LlamaCppStreamer) -> int:
    """The prompt length of the last request, as llama.cpp's server counted it (its one slot's
    ``n_prompt_tokens``, from ``/slots`` on loopback): image tokens included."""
    address = engine_of(model).address.replace("0.0.0.0", "127.0.0.1")
    with urllib.request.urlopen(address + "/slots", timeout=30) as response:
        slots: list[dict[str, Any]] = json.loads(response.read())
    assert len(slots) == 1
    return int(slots[0]["n_prompt_tokens"])


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("mmproj") / "mmproj-tiny.gguf"
    write_projector(path, text_embedding_width(default_model_path()))
    return str(path)


# -- without a projector (first: one llama.cpp server per process, and the next is shared) ----


def test_a_text_only_llama_model_gets_the_image_named_in_the_text() -> None:
    with LlamaEngine(n_parallel=1) as engine:
        assert not engine.vision
        prompt = engine.prompt(ask("What is this?", png(1)))
    assert "What is this?\n[image: 0.png]" in prompt
    assert "__media" not in prompt  # no image marker: the server was sent text only


def test_a_missing_projector_file_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no GGUF projector file"):
        LlamaEngine(n_parallel=1, mmproj=str(tmp_path / "nope.gguf"))


def test_a_projector_made_for_another_model_fails_at_load(tmp_path: Path) -> None:
    other = tmp_path / "mmproj-64.gguf"
    write_projector(other, 64)  # SmolLM2's embeddings are wider
    with pytest.raises(ModelError, match=r"could not load .* with the projector"):
        LlamaEngine(n_parallel=1, mmproj=str(other))


def test_images_join_their_message_in_the_tool_fallback_form() -> None:
    """The template's form (here the tool fallback, which adds a system message) keeps each
    message's images, as content parts after its text."""
    image: ChatMessage = {
        "role": "user",
        "content": "look",
        "images": [{"name": "a.png", "mime": "image/png", "data": b"\x89PNG"}],
    }
    prepared: list[ChatMessage] = [{"role": "user", "content": "look"}, image]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    sent = with_images(prepared, fallback_messages(prepared, tools))
    assert [m["role"] for m in sent] == ["system", "user", "user"]
    assert sent[1]["content"] == "look"
    assert sent[2]["content"] == [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}},
    ]


# -- with the projector -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeing(projector: str) -> Iterator[LlamaCppStreamer]:
    """SmolLM2 with the tiny projector, one slot, in a worker thread."""
    model = LlamaCppStreamer(n_parallel=1, n_ctx=1024, mmproj=projector)
    model.start_thread()
    try:
        yield model
    finally:
        model.close()


async def test_an_image_becomes_the_projectors_tokens_in_the_prompt(
    seeing: LlamaCppStreamer,
) -> None:
    text = await reply(seeing, ask("What is this?"))
    without = last_prompt_tokens(seeing)
    assert engine_of(seeing).vision
    assert "__media" in engine_of(seeing).prompt(ask("What is this?", png(1)))
    one = await reply(seeing, ask("What is this?", png(1)))
    assert last_prompt_tokens(seeing) == without + IMAGE_TOKENS
    await reply(seeing, ask("What is this?", png(1), png(None)))
    assert last_prompt_tokens(seeing) == without + 2 * IMAGE_TOKENS
    # what the model is given is the image itself: another image, another reply
    other = await reply(seeing, ask("What is this?", png(None)))
    assert text and one and other
    assert len({text, one, other}) == 3, (text, one, other)


@pytest.fixture
async def chat() -> AsyncIterator[Chat]:
    async with DiscordServer() as server:
        yield Chat(server)


async def test_an_attached_image_reaches_llama_cpp_through_the_bot(
    chat: Chat, seeing: LlamaCppStreamer, projector: str
) -> None:
    """``mmproj`` alone makes the bot download the image and send it: the server's prompt has
    the image's tokens, and the reply is the model's answer given the image."""
    prompt = "alice: What is this?\n[image: a.png]"  # what the bot's context says
    expected = (await reply(seeing, ask(prompt, png(3), max_new_tokens=8))).strip()
    with_image = last_prompt_tokens(seeing)
    await reply(seeing, ask(prompt, max_new_tokens=8))
    assert last_prompt_tokens(seeing) == with_image - IMAGE_TOKENS
    values: dict[str, Any] = {"backend": "llamacpp", "mmproj": projector, "max_new_tokens": 8}
    bot = greedy_bot(seeing, values)
    async with run_bot(bot, chat.server):
        await send_image(chat, bot, "What is this?", png(3))
    assert bot.attachments.downloads == 1
    assert last_prompt_tokens(seeing) == with_image
    assert chat.replies(chat.dm) == [expected]
