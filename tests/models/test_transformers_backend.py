"""The transformers backend against a real model: SmolLM2-135M dequantised from the shipped GGUF."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch
from model_helpers import cancel, greedy, reply, started, wait_until

from genbot import StreamError
from genbot.models import ChatRequest, GenerationSettings
from genbot.models.transformers import IncrementalDetokenizer, TransformersStreamer

QUESTIONS = ["What is Discord?", "Write a haiku about the sea.", "Name a colour of the sky."]


@pytest.fixture(scope="module")
def hf(smollm2_hf: str) -> Iterator[TransformersStreamer]:
    """The model on a worker thread (so the tests can look at its engine), batches of 4."""
    streamer = TransformersStreamer(smollm2_hf, max_batch=4, threads=2)
    streamer.start_thread()
    yield streamer
    streamer.close()


@pytest.fixture(scope="module")
def reference(smollm2_hf: str):  # type: ignore[no-untyped-def]
    """The same model and tokenizer, loaded plainly, for transformers' own ``generate``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2_hf), AutoTokenizer.from_pretrained(
        smollm2_hf
    )


def test_detokenizer_never_splits_a_character(reference) -> None:  # type: ignore[no-untyped-def]
    _, tokenizer = reference
    text = "Grüße 👋🏽 from 東京 — naïve café ✨ ok"
    tokens = tokenizer.encode(text, add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add(t) for t in tokens]
    deltas.append(detokenizer.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert sum(1 for d in deltas if d) > 5  # it streamed, not all at the end


async def test_greedy_reply_equals_transformers_generate(
    hf: TransformersStreamer,
    reference,  # type: ignore[no-untyped-def]
) -> None:
    model, tokenizer = reference
    question = QUESTIONS[0]
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    deltas = [d async for d in hf.chat(greedy(question, repeat_penalty=1.0))]
    assert len(deltas) > 1
    assert "".join(deltas) == expected


async def test_stream_joining_mid_generation_gets_the_reply_it_gets_alone(
    hf: TransformersStreamer,
) -> None:
    alone = [await reply(hf, greedy(q)) for q in QUESTIONS[1:]]
    first, _ = await started(hf, greedy(QUESTIONS[0], 40), deltas=5)
    joined = await asyncio.gather(*(reply(hf, greedy(q)) for q in QUESTIONS[1:]))
    assert not first.done()  # they joined, and finished, while the first was generating
    assert joined == alone
    await asyncio.wait_for(first, 60)


async def test_stop_strings_and_length(hf: TransformersStreamer) -> None:
    full = await reply(hf, greedy(QUESTIONS[0], 16))
    word = full.split()[3]
    cut = await reply(hf, greedy(QUESTIONS[0], 16, stop=[word]))
    assert cut == full[: full.index(word)]
    short = [d async for d in hf.chat(greedy(QUESTIONS[0], 3))]
    assert 1 <= len(short) <= 3


async def test_seed_makes_sampling_reproducible(hf: TransformersStreamer) -> None:
    def sampled(seed: int) -> ChatRequest:
        settings = GenerationSettings(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=seed)
        return ChatRequest([{"role": "user", "content": "Tell me a story."}], settings)

    together = await asyncio.gather(reply(hf, sampled(3)), reply(hf, sampled(3)))
    assert together[0] == together[1] == await reply(hf, sampled(3))
    assert {await reply(hf, sampled(seed)) for seed in (4, 5, 6)} - {together[0]}


async def test_cancelled_caller_frees_its_row(smollm2_hf: str) -> None:
    streamer = TransformersStreamer(smollm2_hf, max_batch=1, threads=2)
    streamer.start_thread()
    try:
        story = greedy("Tell me a long story about a dragon.", 2000)
        long, _ = await started(streamer, story, deltas=2)
        await cancel(long)
        # The one row was the long story's: the next request gets it only once it is dropped.
        assert await reply(streamer, greedy(QUESTIONS[0], 4), timeout=30)
        engine = streamer.engine
        assert engine is not None
        assert engine.cancelled == 1
        await wait_until(lambda: engine.size == 0)
    finally:
        streamer.close()


async def test_bad_request_fails_that_stream_only(hf: TransformersStreamer) -> None:
    with pytest.raises(StreamError, match="role must be one of"):
        await reply(hf, ChatRequest([{"role": "robot", "content": "beep"}]))
    assert await reply(hf, greedy(QUESTIONS[0], 3))


async def test_model_that_cannot_load_fails_the_waiting_callers(tmp_path) -> None:
    with TransformersStreamer(str(tmp_path / "no-such-model")) as streamer:
        streamer.start_thread(restart=False)
        with pytest.raises(StreamError):
            await reply(streamer, greedy("What is Discord?", 3), timeout=30)
