"""The llama.cpp backend against the real default model (SmolLM2-135M, tiny replies)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from model_helpers import cancel, greedy, reply, started, wait_until

from genbot import StreamError
from genbot.models import ChatRequest, GenerationSettings, ModelError
from genbot.models.llamacpp import LlamaCppStreamer, LlamaEngine

QUESTIONS = [
    "What is Discord?",
    "Name a colour of the sky.",
    "Write a haiku about the sea.",
    "What is two plus two?",
]


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppStreamer]:
    """The default model in a worker process, 4 slots."""
    streamer = LlamaCppStreamer(n_parallel=4)
    streamer.start_process()
    yield streamer
    streamer.close()


async def test_chat_streams_a_reply_in_deltas(llama: LlamaCppStreamer) -> None:
    request = ChatRequest(
        [{"role": "user", "name": "alice", "content": "Hi! What is Discord?"}],
        GenerationSettings(max_new_tokens=16),
    )
    deltas = [d async for d in llama.chat(request)]
    assert len(deltas) > 1
    assert all(isinstance(d, str) for d in deltas)
    assert "".join(deltas).strip()


async def test_greedy_replies_together_equal_replies_alone(llama: LlamaCppStreamer) -> None:
    alone = [await reply(llama, greedy(q)) for q in QUESTIONS]
    together = await asyncio.gather(*(reply(llama, greedy(q)) for q in QUESTIONS))
    assert together == alone
    assert len(set(alone)) == len(QUESTIONS)  # really different replies, not one cached


async def test_stream_joining_mid_generation_gets_the_reply_it_gets_alone(
    llama: LlamaCppStreamer,
) -> None:
    alone = await reply(llama, greedy(QUESTIONS[2]))
    first, _ = await started(llama, greedy(QUESTIONS[0], 48), deltas=4)
    joined = await reply(llama, greedy(QUESTIONS[2]))
    assert not first.done()  # it joined, and finished, while the first was generating
    assert joined == alone
    await asyncio.wait_for(first, 60)


async def test_seed_makes_sampling_reproducible(llama: LlamaCppStreamer) -> None:
    def sampled(seed: int) -> ChatRequest:
        settings = GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=1.0, seed=seed)
        return ChatRequest([{"role": "user", "content": "Tell me a story."}], settings)

    a, b = await reply(llama, sampled(7)), await reply(llama, sampled(7))
    assert a == b
    others = {await reply(llama, sampled(seed)) for seed in (8, 9, 10)}
    assert others - {a}


async def test_stop_string_ends_the_reply_before_it(llama: LlamaCppStreamer) -> None:
    full = await reply(llama, greedy("What is Discord?", 16))
    word = full.split()[2]
    cut = await reply(llama, greedy("What is Discord?", 16, stop=[word]))
    assert cut == full[: full.index(word)]


async def test_bad_request_fails_that_stream_only(llama: LlamaCppStreamer) -> None:
    with pytest.raises(StreamError, match="role must be one of"):
        await reply(llama, ChatRequest([{"role": "robot", "content": "beep"}]))
    with pytest.raises(StreamError, match="expected a ChatRequest"):
        async with llama.stream() as stream:
            async for _ in stream("not a request"):
                pass
    assert await reply(llama, greedy("What is Discord?", 4))


async def test_cancelled_caller_frees_its_slot() -> None:
    # One slot, and a first request that would run for thousands of tokens: the second
    # request is served only if cancelling the first stopped it and freed the slot.
    streamer = LlamaCppStreamer(n_parallel=1, n_ctx=2048, extra_body={"ignore_eos": True})
    streamer.start_thread()
    try:
        endless, _ = await started(streamer, greedy("Count to a million.", 4000), deltas=2)
        await cancel(endless)
        assert await reply(streamer, greedy("What is Discord?", 8), timeout=30)
        engine = streamer.engine
        assert engine is not None
        assert engine.cancelled == 1
        await wait_until(lambda: engine.active == 0)
    finally:
        streamer.close()


def test_one_llama_server_per_process() -> None:
    with LlamaEngine(n_parallel=1) as engine:
        assert engine.address.startswith("http://127.0.0.1:")
        with pytest.raises(ModelError, match="already running"):
            LlamaEngine(n_parallel=1)
    with LlamaEngine(n_parallel=1):  # free again once closed
        pass


def test_missing_model_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="no GGUF model file"):
        LlamaEngine(str(tmp_path / "nope.gguf"))


async def test_model_that_cannot_load_fails_the_waiting_callers(tmp_path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really a model")
    with LlamaCppStreamer(str(broken), n_parallel=1) as streamer:
        streamer.start_thread(restart=False)
        with pytest.raises(StreamError, match="could not load"):
            await reply(streamer, greedy("What is Discord?", 3), timeout=30)
        # A caller that comes after the worker gave up learns why, too.
        with pytest.raises(StreamError, match="could not load"):
            await reply(streamer, greedy("And now?", 3), timeout=30)
