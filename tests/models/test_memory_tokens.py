"""Token counting for ``context_tokens`` on each backend: llama.cpp's own tokenizer (the real
SmolLM2, its server's ``/tokenize``), the Hugging Face tokenizer, and an OpenAI-compatible
server's ``/tokenize`` (vLLM's or llama.cpp's answer) with the documented estimate where there
is none."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from genbot.chatbot import warm_up
from genbot.models.base import estimate_tokens
from genbot.models.llamacpp import LlamaCppStreamer, _gguf_counts
from genbot.models.openai import OpenAIStreamer
from genbot.models.transformers import TransformersStreamer

TEXTS = [
    "Hello there, how are you today?",
    "alice: Grüße aus Köln, naïve café",
    "def square(x):\n    return x ** 2",
    "",
]


async def test_llamacpp_counts_with_its_servers_tokenizer() -> None:
    streamer = LlamaCppStreamer(n_parallel=1, n_ctx=512, n_threads=2)
    streamer.start_thread()
    try:
        await warm_up(streamer, timeout=120)
        assert streamer.engine is not None  # the worker runs here: its server counts
        counts = await streamer.count_texts(TEXTS)
        total = await streamer.count_tokens([{"role": "user", "content": t} for t in TEXTS])
    finally:
        streamer.close()
    assert counts[-1] == 0 and all(n > 0 for n in counts[:-1])
    assert counts != [estimate_tokens(t) for t in TEXTS]
    assert total == sum(counts)
    # a worker in another process: the GGUF's own vocabulary, loaded here, counts the same
    assert streamer.engine is None
    assert await streamer.count_texts(TEXTS) == counts == _gguf_counts(streamer.model_path, TEXTS)


async def test_transformers_counts_with_the_models_tokenizer(smollm2_hf: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_hf)
    streamer = TransformersStreamer(smollm2_hf)  # not started: the tokenizer loads here
    counts = await streamer.count_texts(TEXTS)
    assert counts == [len(tokenizer.encode(t, add_special_tokens=False)) for t in TEXTS]
    assert counts != [estimate_tokens(t) for t in TEXTS]


Answer = Callable[[dict[str, Any]], dict[str, Any]]


@pytest.fixture
async def tokenizer_server() -> AsyncIterator[
    tuple[list[dict[str, Any]], Callable[[Answer | None], Any]]
]:
    """A loopback server whose ``/tokenize`` answers as the test says (``None``: no such
    endpoint); yields the bodies it got and a function that starts it and gives its base URL."""
    got: list[dict[str, Any]] = []
    runners: list[web.AppRunner] = []

    async def start(answer: Answer | None) -> str:
        app = web.Application()
        if answer is not None:

            async def tokenize(request: web.Request) -> web.Response:
                body = await request.json()
                got.append(body)
                return web.json_response(answer(body))

            app.router.add_post("/tokenize", tokenize)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1"

    yield got, start
    for runner in runners:
        await runner.cleanup()


async def test_openai_counts_with_a_vllm_tokenize(tokenizer_server: Any) -> None:
    got, start = tokenizer_server
    url = await start(lambda body: {"count": len(body["prompt"].split()), "tokens": []})
    streamer = OpenAIStreamer(url, "m")
    assert await streamer.count_texts(["a b c", "d"]) == [3, 1]
    assert got[0]["prompt"] == "a b c" and got[0]["model"] == "m"
    assert got[0]["add_special_tokens"] is False


async def test_openai_counts_with_a_llamacpp_tokenize(tokenizer_server: Any) -> None:
    _, start = tokenizer_server
    url = await start(lambda body: {"tokens": list(body["content"])})
    assert await OpenAIStreamer(url, "m").count_texts(["abcde"]) == [5]


async def test_openai_estimates_without_a_tokenize(tokenizer_server: Any) -> None:
    got, start = tokenizer_server
    url = await start(None)
    streamer = OpenAIStreamer(url, "m")
    assert await streamer.count_texts(["abcde", "", "x" * 40]) == [2, 0, 10]
    assert await streamer.count_texts(["abcd"]) == [1]  # not asked again
    assert got == []


async def test_llamacpp_in_a_worker_process_counts_with_that_servers_tokenizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    import genbot.models.llamacpp as llamacpp

    streamer = LlamaCppStreamer(n_parallel=1, n_ctx=512, n_threads=2)
    streamer.start_process()
    try:
        await warm_up(streamer, timeout=120)
        assert streamer.engine is None and os.path.exists(streamer.address_file)

        def no_fallback(model_path: str, texts: list[str]) -> list[int]:
            raise AssertionError("counted without the worker's server")

        monkeypatch.setattr(llamacpp, "_gguf_counts", no_fallback)
        counts = await streamer.count_texts(TEXTS)
    finally:
        streamer.close()
    assert counts == _gguf_counts(streamer.model_path, TEXTS)  # the same vocabulary
    assert counts != [estimate_tokens(t) for t in TEXTS]
    assert not os.path.exists(streamer.address_file)  # the worker cleans up after itself
