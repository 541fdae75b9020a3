"""Reasoning models whose chat template opens the think block in the prompt (Qwen3,
DeepSeek-R1): the reply starts inside the block, and only a ``</think>`` comes. The reply's
start is held back (up to ``reasoning_hold`` characters, typing on) until it is known whether it
is reasoning, so the reasoning is never posted."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import genbot
from chat_world import Chat
from genbot.chatbot import ChatBot
from genbot.models import Reasoning
from genbot.reasoning import ReplyFilter, ThinkSplitter, answer_text
from genbot.settings import Settings
from genbot.streaming import Stream, Streamer
from genbot.testing import DiscordServer, run_bot

#: The hold the tests use (``reasoning_hold``).
HOLD = 1000
OPENED = "The user greets me. I should greet back.</think>\n\nHello there!"


def split(deltas: list[str], hold: int = HOLD) -> tuple[str, str]:
    splitter = ThinkSplitter(hold=hold)
    pieces = [p for d in deltas for p in splitter.feed(d)] + splitter.flush()
    answer = "".join(text for reasoning, text in pieces if not reasoning)
    reasoning = "".join(text for is_reasoning, text in pieces if is_reasoning)
    return answer, reasoning


def test_a_block_opened_in_the_prompt_is_reasoning_wherever_the_deltas_cut_it() -> None:
    for i in range(len(OPENED) + 1):
        for j in range(i, len(OPENED) + 1):
            answer, reasoning = split([OPENED[:i], OPENED[i:j], OPENED[j:]])
            assert answer == "\n\nHello there!", (i, j)
            assert reasoning == "The user greets me. I should greet back.", (i, j)


def test_the_hold_ends_with_an_opening_tag_the_bound_or_the_end() -> None:
    splitter = ThinkSplitter(hold=10)
    assert splitter.feed("Hello") == []  # held: it may be reasoning
    assert splitter.feed(" world!") == [(False, "Hello world!")]  # past the bound: text
    assert splitter.feed("</think>more") == [(False, "more")]  # too late: a stray tag, dropped
    assert split(["Hi <think>a</think>b"]) == ("Hi b", "a")  # a block of its own: as usual
    assert split(["Just an answer."]) == ("Just an answer.", "")  # the end decides
    assert split(["x" * 20, "</think>y"], hold=10) == ("x" * 20 + "y", "")  # past it
    assert split(["ends with </thi"]) == ("ends with </thi", "")
    assert answer_text("thoughts</think> The summary.") == "The summary."


async def filtered(items: list[Any], **kwargs: Any) -> list[Any]:
    async def source() -> AsyncIterator[Any]:
        for item in items:
            yield item

    return [out async for out in ReplyFilter(source(), **{"hold_chars": HOLD, **kwargs})]


async def test_the_filter_yields_empty_strings_while_it_holds() -> None:
    out = await filtered(["Let me", " see", "</think>", "Hi"])
    assert out == ["", "", "", "Hi"]  # progress while held, and the reasoning never shown
    assert await filtered(["Plain", " answer"]) == ["", "", "Plain answer"]  # at the end
    long = ["y" * 600, "y" * 600, "z"]
    assert await filtered(long) == ["", "y" * 1200, "z"]  # past the bound: it streams
    assert await filtered(long, hold_chars=0) == long  # no hold
    shown = await filtered(["Let me see</think>", "Hi"], mode="spoiler")
    assert "".join(shown) == "||Let me see||\n\nHi"  # held reasoning: spoiler mode shows it
    # a server that splits the reasoning off (reasoning_content): the hold ends with it
    assert await filtered([Reasoning("hmm"), "Hi", " you"]) == ["", "Hi", " you"]


# -- the ready-made bot, end to end --------------------------------------------------------------

#: Set by the worker once it wrote its reasoning; the test then lets it end it.
WROTE, RELEASE = threading.Event(), threading.Event()


@genbot.streamer
def prompt_thinker(streams: list[Stream]) -> None:
    """Like a model whose template put ``<think>`` in the prompt: it starts with its reasoning
    and closes the block, then answers."""
    for stream in streams:
        if stream.data.settings.max_new_tokens == 1:
            stream.write("ok")
        else:
            stream.write("Pondering the question")
            WROTE.set()
            RELEASE.wait(30)
            stream.write(" carefully.</th")
            stream.write("ink>\n\nDone thinking.")
        stream.close()


@pytest.fixture
def backend() -> Iterator[Streamer]:
    WROTE.clear()
    RELEASE.clear()
    prompt_thinker.start_thread(maximum=1)
    try:
        yield prompt_thinker
    finally:
        RELEASE.set()
        prompt_thinker.close()


async def test_reasoning_before_a_lone_closing_tag_is_never_posted_and_typing_stays_on(
    backend: Streamer,
) -> None:
    async with DiscordServer() as server:
        chat = Chat(server)
        posted: list[str] = []

        def record() -> bool:  # every content the bot's messages ever had
            posted.extend(m["content"] for m in server.bot_messages(chat.dm))
            return False

        recorder = asyncio.ensure_future(server.wait_for(record, timeout=60))
        settings = Settings().updated({"edit_interval": 0.2, "reasoning_hold": HOLD}, "test")
        bot = ChatBot(settings, backend=backend, guild_ready_timeout=0.05, close_streamers=False)
        try:
            async with run_bot(bot, server):
                await server.send_message(chat.dm, chat.alice, "hi")
                await asyncio.to_thread(WROTE.wait, 30)
                since = time.time()
                # the reasoning came, and is held: typing goes on, nothing is posted
                await server.wait_for(
                    lambda: any(t > since for _, t in server.typing_events(chat.dm)), timeout=15
                )
                assert chat.replies(chat.dm) == []
                RELEASE.set()
                await chat.wait_for_reply(chat.dm, "Done thinking.")
                while running := bot.attending():
                    await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 30)
        finally:
            recorder.cancel()
            await asyncio.gather(recorder, return_exceptions=True)
    assert chat.replies(chat.dm) == ["Done thinking."]
    assert posted and not any("Pondering" in text for text in posted)
