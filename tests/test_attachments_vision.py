"""A real multimodal path beyond the recorder: a randomly initialised tiny LLaVA (a CLIP vision
tower and a Llama text model, with a word-level tokenizer and a processor built here) saved to a
folder and served by :class:`TransformersStreamer`; the image goes through the processor into
the model's prefill, so what the model says depends on it. And end to end: an image attached on
the loopback Discord reaches that model through the ready-made bot (``vision = true``)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("PIL")
pytest.importorskip("transformers")

import torch
from PIL import Image

from chat_world import Chat, greedy_bot, scene, send_image
from genbot.models import ChatRequest, GenerationSettings
from genbot.models.base import ChatMessage
from genbot.models.transformers import TransformersStreamer
from genbot.testing import run_bot

WORDS = ["<pad>", "<unk>", "</s>", "<image>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS += [f"w{i}" for i in range(40)]
#: Renders content parts as real vision-language templates do: an image part is <image>.
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}<image> {% else %}{{ p['text'] }}{% endif %}{% endfor %}"
    "{% endif %} </s> {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def png(value: int) -> bytes:
    """A 20x20 PNG: one colour (``value``), or noise for -1."""
    generator = torch.Generator().manual_seed(7)
    pixels = (
        torch.randint(0, 256, (20, 20, 3), generator=generator, dtype=torch.uint8)
        if value < 0
        else torch.full((20, 20, 3), value, dtype=torch.uint8)
    )
    out = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    folder = tmp_path_factory.mktemp("tiny-llava")
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = TEMPLATE
    processor = LlavaProcessor(
        image_processor=ImageProcessor(
            size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=TEMPLATE,
        num_additional_image_tokens=1,
    )
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            vocab_size=len(WORDS),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            eos_token_id=2,
            pad_token_id=0,
        ),
        image_token_id=WORDS.index("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def streamer(tiny_llava: str) -> Iterator[TransformersStreamer]:
    model = TransformersStreamer(tiny_llava, max_batch=4, device="cpu", threads=1)
    model.start_thread()
    try:
        yield model
    finally:
        model.close()


def ask(image: bytes | None) -> ChatRequest:
    message: ChatMessage = {"role": "user", "content": "w1 w2"}
    if image is not None:
        message["images"] = [{"name": "a.png", "mime": "image/png", "data": image}]
    settings = GenerationSettings(max_new_tokens=12, temperature=0.0, repeat_penalty=1.0)
    return ChatRequest([message], settings)


async def reply(model: TransformersStreamer, request: ChatRequest) -> str:
    async def collect() -> str:
        return "".join([delta async for delta in model.chat(request)])

    return await asyncio.wait_for(collect(), 120)


async def test_the_image_reaches_the_model_and_changes_what_it_says(
    streamer: TransformersStreamer,
) -> None:
    black, noise = png(0), png(-1)
    # one at a time, then together in one batch (their image inputs joined in row order)
    alone = [await reply(streamer, ask(image)) for image in (black, noise)]
    together = await asyncio.gather(*(reply(streamer, ask(image)) for image in (black, noise)))
    assert all(alone), "the model answered"
    assert alone[0] != alone[1], "what the model says depends on the image"
    assert list(together) == alone, "batched prefill gives each row its own image"


async def test_an_image_that_is_not_one_fails_the_request_clearly(
    streamer: TransformersStreamer,
) -> None:
    from genbot import StreamError

    with pytest.raises(StreamError, match=r"the image 'a\.png' cannot be read"):
        await reply(streamer, ask(b"not an image"))


chat = pytest.fixture(scene(Chat), name="chat")


async def test_an_attached_image_reaches_a_vision_language_model_through_the_bot(
    chat: Chat, streamer: TransformersStreamer
) -> None:
    """The bot downloads the image from the loopback CDN and sends it, not just its name: its
    reply is what the model says given the bot's prompt and the image, not without it."""
    prompt = "alice: w1 w2\n[image: a.png]"  # what the bot's context says
    with_image, without = ask(png(-1)), ask(None)
    with_image.messages[0]["content"] = without.messages[0]["content"] = prompt
    expected = (await reply(streamer, with_image)).strip()
    assert expected != (await reply(streamer, without)).strip()
    values: dict[str, Any] = {"backend": "transformers", "vision": True, "max_new_tokens": 12}
    bot = greedy_bot(streamer, values)
    async with run_bot(bot, chat.server):
        await send_image(chat, bot, "w1 w2", png(-1))
    assert bot.attachments.downloads == 1
    assert chat.replies(chat.dm) == [expected]
