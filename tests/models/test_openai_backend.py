"""The OpenAI-compatible backend against a real server: llama.cpp's, serving the default model
in a subprocess (``python -m genbot.models.llamacpp``)."""

from __future__ import annotations

import asyncio
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from model_helpers import cancel, greedy, reply, started

from genbot import StreamError
from genbot.models import ChatRequest, GenerationSettings
from genbot.models.llamacpp import LlamaCppStreamer
from genbot.models.openai import OpenAIStreamer


def serve(*args: str) -> Iterator[str]:
    """Run llama.cpp's server on a free port; yield its address; stop it."""
    command = [sys.executable, "-m", "genbot.models.llamacpp", "--port", "0", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while not line.startswith("listening on ") and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
            if ready:
                line = process.stdout.readline()
                assert line, "the server exited before listening"
        assert line.startswith("listening on "), "the server did not start in 60 s"
        yield line.split()[-1]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    yield from serve("--parallel", "2")


@pytest.fixture(scope="module")
def openai(server: str) -> Iterator[OpenAIStreamer]:
    streamer = OpenAIStreamer(f"{server}/v1", max_concurrency=4, api_key="test-key")
    streamer.start_thread()
    yield streamer
    streamer.close()


async def test_chat_streams_a_reply(openai: OpenAIStreamer) -> None:
    request = ChatRequest(
        [{"role": "user", "name": "bob", "content": "What is Discord?"}],
        GenerationSettings(max_new_tokens=12, seed=1),
    )
    deltas = [d async for d in openai.chat(request)]
    assert len(deltas) > 1
    assert "".join(deltas).strip()


async def test_greedy_replies_together_equal_replies_alone(openai: OpenAIStreamer) -> None:
    questions = ["What is Discord?", "Write a haiku about the sea.", "What is two plus two?"]
    alone = [await reply(openai, greedy(q)) for q in questions]
    together = await asyncio.gather(*(reply(openai, greedy(q)) for q in questions))
    assert together == alone
    assert len(set(alone)) == len(questions)


async def test_stop_strings_are_sent(openai: OpenAIStreamer) -> None:
    full = await reply(openai, greedy("What is Discord?", 16))
    word = full.split()[2]
    cut = await reply(openai, greedy("What is Discord?", 16, stop=[word]))
    assert cut == full[: full.index(word)]


async def test_no_system_prompt_given_means_the_same_reply_embedded_and_over_http(
    openai: OpenAIStreamer,
) -> None:
    # The same llama.cpp and model, once embedded and once behind the OpenAI backend, both
    # without a system prompt: the prompts are the same (no backend adds its own), so the
    # greedy replies are. The OpenAI API has no repeat penalty: leave it off on both.
    questions = ["What is Discord?", "Name a colour of the sky."]
    over_http = [await reply(openai, greedy(q, 16, repeat_penalty=1.0)) for q in questions]
    with LlamaCppStreamer(n_parallel=1) as embedded:
        embedded.start_thread()
        assert [await reply(embedded, greedy(q, 16, repeat_penalty=1.0)) for q in questions] == (
            over_http
        )


async def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for address in serve("--parallel", "1", "--api-key", "sesame"):
        monkeypatch.setenv("OPENAI_API_KEY", "wrong")
        monkeypatch.setenv("GENBOT_API_KEY", "sesame")  # GENBOT_API_KEY comes first
        with OpenAIStreamer(f"{address}/v1", model="m") as streamer:
            streamer.start_thread()
            assert await reply(streamer, greedy("What is Discord?", 3))
        monkeypatch.delenv("GENBOT_API_KEY")
        with OpenAIStreamer(f"{address}/v1", model="m", max_retries=0) as streamer:
            streamer.start_thread()
            with pytest.raises(StreamError, match="401"):
                await reply(streamer, greedy("What is Discord?", 3))


async def test_concurrency_is_bounded(server: str) -> None:
    streamer = OpenAIStreamer(f"{server}/v1", max_concurrency=1)
    streamer.start_thread()
    try:
        first, _ = await started(streamer, greedy("What is Discord?", 24))
        second = await reply(streamer, greedy("Name a colour of the sky.", 4))
        assert second
        assert first.done()  # the second request was sent only once the first was over
    finally:
        streamer.close()


async def test_cancelled_caller_frees_the_server_slot() -> None:
    # A one-slot server and a first request that would run for 8000 tokens: the second is
    # served only if cancelling the first closed its request and freed the slot.
    for address in serve("--parallel", "1", "--ctx", "8192"):
        streamer = OpenAIStreamer(f"{address}/v1", extra_body={"ignore_eos": True})
        streamer.start_thread()
        try:
            endless, _ = await started(streamer, greedy("Count to a million.", 8000), deltas=2)
            await cancel(endless)
            assert await reply(streamer, greedy("What is Discord?", 4), timeout=30)
        finally:
            streamer.close()


class Flaky:
    """A proxy to the server whose next ``failures`` chat requests answer 429, 503, 429, ..."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.failures = 0
        self.statuses: list[int] = []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self.failures > 0:
            self.failures -= 1
            status = 429 if len(self.statuses) % 2 == 0 else 503
            self.statuses.append(status)
            body = {"error": {"message": "try later"}}
            return web.json_response(body, status=status, headers={"Retry-After": "0"})
        self.statuses.append(200)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.upstream}/v1/chat/completions", data=await request.read()) as up,
        ):
            response = web.StreamResponse(status=up.status)
            response.content_type = "text/event-stream"
            await response.prepare(request)
            async for data in up.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response


@pytest.fixture
async def flaky(server: str) -> AsyncIterator[Flaky]:
    proxy = Flaky(server)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", proxy.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield proxy
    finally:
        await runner.cleanup()


async def test_retries_with_back_off_on_429_and_5xx(flaky: Flaky, openai: OpenAIStreamer) -> None:
    expected = await reply(openai, greedy("What is Discord?", 6))
    streamer = OpenAIStreamer(flaky.url, model="smollm2", max_retries=3)
    streamer.start_thread()
    try:
        flaky.failures = 2
        assert await reply(streamer, greedy("What is Discord?", 6)) == expected
        assert flaky.statuses == [429, 503, 200]
        flaky.failures = 10
        with pytest.raises(StreamError, match=r"429|503"):
            await reply(streamer, greedy("What is Discord?", 6))
        assert len(flaky.statuses) == 3 + 4  # the first try and 3 retries, all refused
        assert set(flaky.statuses[3:]) == {429, 503}
    finally:
        streamer.close()
