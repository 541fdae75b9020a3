"""Reasoning models: ``<think>`` blocks and ``reasoning_content`` are never posted as the answer;
``reasoning = "spoiler" | "file"`` shows them apart. The splitter on every cut of the text,
then the ready-made bot end to end on the loopback Discord: a scripted worker that streams think
tags split across deltas, and the OpenAI backend against a real local server that sends
``reasoning_content``."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import genbot
from chat_world import Chat, scene
from genbot.chatbot import ChatBot
from genbot.models import Reasoning
from genbot.models.openai import EventReader, OpenAIStreamer, decode_events
from genbot.output import DEFAULT_EMPTY_TEXT
from genbot.reasoning import ReplyFilter, ThinkSplitter, spoiler
from genbot.settings import Settings, SettingsError
from genbot.streaming import Stream, Streamer
from genbot.testing import run_bot
from media_server import MediaServer, media_model

THOUGHT = "<think>The user greets me. I should greet back.</think>\n\nHello there!"

# -- the splitter, on every cut ------------------------------------------------------------------


def split(deltas: list[str], *, thinking: bool = False) -> tuple[str, str]:
    splitter = ThinkSplitter(thinking=thinking)
    pieces = [p for d in deltas for p in splitter.feed(d)] + splitter.flush()
    answer = "".join(text for reasoning, text in pieces if not reasoning)
    reasoning = "".join(text for is_reasoning, text in pieces if is_reasoning)
    return answer, reasoning


def test_a_think_block_is_split_off_wherever_the_deltas_cut_it() -> None:
    for i in range(len(THOUGHT) + 1):
        for j in range(i, len(THOUGHT) + 1):
            answer, reasoning = split([THOUGHT[:i], THOUGHT[i:j], THOUGHT[j:]])
            assert answer == "\n\nHello there!", (i, j)
            assert reasoning == "The user greets me. I should greet back.", (i, j)
    answer, reasoning = split(list(THOUGHT))  # one character per delta
    assert (answer, reasoning) == ("\n\nHello there!", "The user greets me. I should greet back.")


def test_the_splitter_keeps_what_only_looks_like_a_tag() -> None:
    assert split(["a <thin", "g> and x < y </b>"]) == ("a <thing> and x < y </b>", "")
    assert split(["ends with <thi"]) == ("ends with <thi", "")  # held, then flushed
    assert split(["a<think>b</think>c<think>d</think>e"]) == ("ace", "bd")


def test_a_stray_closing_tag_is_never_posted() -> None:
    """A template that opened the block in the prompt: only `</think>` comes (documented)."""
    assert split(["thinking</th", "ink>answer"]) == ("thinkinganswer", "")
    assert split(["thinking</think>answer"], thinking=True) == ("answer", "thinking")


def test_a_spoiler_is_bounded_and_cannot_be_closed_early() -> None:
    assert spoiler("  short  ") == "||short||"
    assert spoiler("") == ""
    shown = spoiler("x" * 5000, limit=100)
    assert shown == "||" + "x" * 99 + "\u2026||"
    assert spoiler("a || b") == "||a |\u200b| b||"
    with pytest.raises(ValueError, match="at least 1"):
        spoiler("x", limit=0)


async def filtered(items: list[Any], mode: str) -> tuple[list[Any], ReplyFilter]:
    async def source() -> AsyncIterator[Any]:
        for item in items:
            yield item

    shown = ReplyFilter(source(), mode)
    return [out async for out in shown], shown


async def test_the_filter_yields_the_answer_only_and_empty_deltas_while_thinking() -> None:
    items: list[Any] = [Reasoning("Let me "), Reasoning("see."), "<think>more", "</think>", "Hi"]
    out, shown = await filtered(items, "hide")
    assert out == ["", "", "", "", "Hi"]  # progress while thinking, no visible text
    assert shown.reasoning == "Let me see.more"
    out, _ = await filtered(items, "spoiler")
    assert "".join(out) == "||Let me see.more||\n\nHi"
    out, _ = await filtered([Reasoning("only thoughts")], "spoiler")
    assert "".join(out) == ""  # no answer: no spoiler either (the empty note shows)
    with pytest.raises(ValueError, match="hide, spoiler, file"):
        ReplyFilter(iter([]), "show")


def test_the_reasoning_setting_is_checked() -> None:
    assert Settings().reasoning == "hide"
    assert Settings().updated({"reasoning": "file"}, "test").reasoning == "file"
    with pytest.raises(SettingsError, match=r"reasoning.*must be one of hide, spoiler, file"):
        Settings().updated({"reasoning": "show"}, "test")


def test_the_openai_events_carry_reasoning_apart_from_the_text() -> None:
    reasoning: list[str] = []
    chunk = (
        b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},'
        b'"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"","reasoning":" ok"},'
        b'"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )
    events, text, finished, done = decode_events(EventReader(), chunk, reasoning=reasoning)
    assert (events, text, finished, done) == (3, "Hi", False, False)
    assert reasoning == ["hmm", " ok"]


# -- the ready-made bot, end to end --------------------------------------------------------------

#: What the scripted worker streams, by the question's last word.
SCRIPTS: dict[str, list[str]] = {
    # the tags cut inside, and the block spread over several deltas
    "think": ["<thi", "nk>Alice says hi", ". Greet", " back.</th", "ink>", "\n\nHello", " alice!"],
    "only": ["<think>Nothing to say.", "</think>"],
}
#: Lets the "hold" script end its think block.
THINKING_DONE = threading.Event()


@genbot.streamer
def thinker(streams: list[Stream]) -> None:
    for stream in streams:
        request = stream.data
        if request.settings.max_new_tokens == 1:
            stream.write("ok")
        else:
            said = request.messages[-1]["content"].split()[-1]
            if said == "hold":  # thinks until the test lets it answer
                stream.write("<think>Pondering")
                THINKING_DONE.wait(30)
                stream.write("</think>Done thinking.")
            for delta in SCRIPTS.get(said, []):
                stream.write(delta)
        stream.close()


@pytest.fixture
def backend() -> Iterator[Streamer]:
    THINKING_DONE.clear()
    thinker.start_thread(maximum=1)
    try:
        yield thinker
    finally:
        THINKING_DONE.set()
        thinker.close()


chat = pytest.fixture(scene(Chat), name="chat")


def make_bot(backend: Streamer, **values: Any) -> ChatBot:
    settings = Settings().updated({"edit_interval": 0.2, **values}, "test")
    return ChatBot(settings, backend=backend, guild_ready_timeout=0.05, close_streamers=False)


async def settle(bot: ChatBot) -> None:
    while running := bot.attending():
        await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True), 30)


def every_content(chat: Chat) -> list[str]:
    """Every text the bot ever posted in the DM, edits included (from the REST requests)."""
    return [m["content"] for m in chat.server.bot_messages(chat.dm)]


async def test_a_think_block_split_across_deltas_is_never_posted(
    chat: Chat, backend: Streamer
) -> None:
    bot = make_bot(backend)
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "think")
        await chat.wait_for_reply(chat.dm, "Hello alice!")
        await settle(bot)
    assert chat.replies(chat.dm) == ["Hello alice!"]
    assert not chat.server.bot_messages(chat.dm)[0]["attachments"]


async def test_the_typing_indicator_stays_on_while_the_model_thinks(
    chat: Chat, backend: Streamer
) -> None:
    bot = make_bot(backend)
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "hold")
        await chat.server.wait_for(lambda: chat.server.typing_events(chat.dm))
        # the worker is inside its think block: typing shows, nothing is posted
        assert chat.replies(chat.dm) == []
        THINKING_DONE.set()
        await chat.wait_for_reply(chat.dm, "Done thinking.")
        await settle(bot)
    assert chat.replies(chat.dm) == ["Done thinking."]


async def test_spoiler_mode_shows_the_reasoning_hidden_before_the_answer(
    chat: Chat, backend: Streamer
) -> None:
    bot = make_bot(backend, reasoning="spoiler")
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "think")
        await chat.wait_for_reply(chat.dm, "||Alice says hi. Greet back.||\n\nHello alice!")
        await settle(bot)


async def test_file_mode_attaches_the_reasoning(chat: Chat, backend: Streamer) -> None:
    bot = make_bot(backend, reasoning="file")
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "think")
        await chat.server.wait_for(
            lambda: any(m["attachments"] for m in chat.server.bot_messages(chat.dm)), timeout=15
        )
        await settle(bot)
    (reply,) = chat.server.bot_messages(chat.dm)
    assert reply["content"] == "Hello alice!"
    (attached,) = reply["attachments"]
    assert attached["filename"] == "reasoning.txt"
    _, data = chat.server.state.files[int(attached["id"])]
    assert data.decode() == "Alice says hi. Greet back."


async def test_a_reply_of_only_reasoning_gets_the_empty_note(chat: Chat, backend: Streamer) -> None:
    bot = make_bot(backend, reasoning="spoiler")
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "only")
        await chat.wait_for_reply(chat.dm, f"*{DEFAULT_EMPTY_TEXT}*")
        await settle(bot)
    assert chat.replies(chat.dm) == [f"*{DEFAULT_EMPTY_TEXT}*"]


openai = pytest.fixture(media_model, name="openai")


@pytest.mark.parametrize(
    ("mode", "posted"), [("hide", "The answer is 4."), ("spoiler", "||2+2, so 4.||\n\n")]
)
async def test_reasoning_content_of_an_openai_server_is_never_posted_as_the_answer(
    chat: Chat, openai: tuple[MediaServer, OpenAIStreamer], mode: str, posted: str
) -> None:
    server, backend = openai
    server.script.append(
        [
            {"reasoning_content": "2+2"},
            {"reasoning_content": ", so 4."},
            {"content": "The answer"},
            {"content": " is 4."},
        ]
    )
    bot = make_bot(backend, reasoning=mode)
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "what is 2+2?")
        await chat.server.wait_for(lambda: any("is 4." in r for r in chat.replies(chat.dm)), 15)
        await settle(bot)
    (reply,) = chat.replies(chat.dm)
    assert reply == posted if mode == "hide" else reply == posted + "The answer is 4."


def test_the_readme_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Attachments, images and reasoning models") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    exec(code.group(1), {"__name__": "readme_example"})
    assert capsys.readouterr().out == "||2+2 is 4||\n\nIt is 4.\n2+2 is 4\n"


async def test_the_attached_reasoning_is_not_fed_back_to_the_model(
    chat: Chat, openai: tuple[MediaServer, OpenAIStreamer]
) -> None:
    server, backend = openai
    server.script.append([{"reasoning_content": "secret thoughts"}, {"content": "First."}])
    bot = make_bot(backend, reasoning="file")
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "one")
        await chat.server.wait_for(
            lambda: any(m["attachments"] for m in chat.server.bot_messages(chat.dm)), 15
        )
        await chat.server.send_message(chat.dm, chat.alice, "two")
        await chat.server.wait_for(lambda: len(server.requests) == 2, 15)
        await chat.wait_for_reply(chat.dm, "echo: two")
        await settle(bot)
    second = server.requests[1]["messages"]
    assert [m["content"] for m in second if m["role"] == "assistant"] == ["First."]
    assert "reasoning" not in str(second) and "secret" not in str(second)
