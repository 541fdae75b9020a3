"""What a user sees when the OpenAI backend's own timeouts fire: a model that stops sending
tokens mid-reply (``token_timeout``) or sends no first token (``first_token_timeout``) ends the
reply with the bot's "stopped responding" or "took too long" note, not its generic error note.
The ready-made bot on the loopback Discord, the OpenAI backend against tests/openai_stub.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat_world import Chat, scene
from genbot.chatbot import ChatBot
from genbot.models import ChatRequest, GenerationSettings
from genbot.models.openai import OpenAIStreamer
from genbot.output import (
    DEFAULT_ERROR_TEXT,
    DEFAULT_SLOW_TEXT,
    DEFAULT_STALL_TEXT,
    failure_note,
    final_text,
)
from genbot.settings import Settings
from genbot.streaming import FirstTokenTimeout, ModelTimeout, StallTimeout, StreamError
from genbot.testing import run_bot
from openai_stub import OpenAIStub, Reply, openai_stub

FAST: dict[str, Any] = {"guild_ready_timeout": 0.05, "shutdown_timeout": 2.0}
#: The backend's timeout under test; the bot's own stall watchdog is far longer.
SHORT = 0.5

chat = pytest.fixture(scene(Chat), name="chat")


@pytest.fixture
async def stub() -> AsyncIterator[OpenAIStub]:
    async with openai_stub() as stub:
        yield stub


def frozen(stub: OpenAIStub, *, before_first: bool) -> asyncio.Event:
    """Script the stub's next reply to freeze before its first event, or after its first
    text; set the event returned to let it go on (at the end of the test)."""
    release = asyncio.Event()
    hold = {"hold_first": release} if before_first else {"hold": release}
    stub.script.append(Reply("Hello there, friend", **hold))
    return release


def backend(stub: OpenAIStub, **timeouts: float) -> OpenAIStreamer:
    return OpenAIStreamer(base_url=stub.base_url, model="stub", max_retries=0, **timeouts)


def bot(stub: OpenAIStub, **timeouts: float) -> ChatBot:
    settings = Settings().updated(
        {"backend": "openai", "edit_interval": 0.2, "stall_timeout": 60.0}, "test"
    )
    return ChatBot(settings, backend=backend(stub, **timeouts), **FAST)


async def user_sees(chat: Chat, bot: ChatBot, ending: str) -> str:
    async with run_bot(bot, chat.server):
        await chat.server.send_message(chat.dm, chat.alice, "hi")
        await chat.server.wait_for(
            lambda: any(r.endswith(f"*{ending}*") for r in chat.replies(chat.dm)), timeout=30
        )
    [reply] = chat.replies(chat.dm)
    return reply


@pytest.mark.parametrize(
    ("before_first", "timeouts", "note", "shown"),
    [
        # stalled after "Hello ": the stopped-responding note, and the text so far stays
        (False, {"token_timeout": SHORT}, DEFAULT_STALL_TEXT, f"Hello \n\n*{DEFAULT_STALL_TEXT}*"),
        # no first token: the took-too-long note
        (True, {"first_token_timeout": SHORT}, DEFAULT_SLOW_TEXT, f"*{DEFAULT_SLOW_TEXT}*"),
    ],
    ids=["stalled", "no-first-token"],
)
async def test_a_frozen_upstream_shows_its_timeouts_note(
    chat: Chat,
    stub: OpenAIStub,
    before_first: bool,
    timeouts: dict[str, float],
    note: str,
    shown: str,
) -> None:
    release = frozen(stub, before_first=before_first)
    try:
        reply = await user_sees(chat, bot(stub, **timeouts), note)
    finally:
        release.set()
    assert reply == shown


@pytest.mark.parametrize(
    ("before_first", "timeouts", "raised", "said"),
    [
        (False, {"token_timeout": SHORT}, StallTimeout, r"no next token within 0\.5 s"),
        (True, {"first_token_timeout": SHORT}, FirstTokenTimeout, r"no first token within 0\.5"),
    ],
)
async def test_the_backend_raises_typed_timeouts_across_its_worker(
    stub: OpenAIStub,
    before_first: bool,
    timeouts: dict[str, float],
    raised: type[ModelTimeout],
    said: str,
) -> None:
    """Through the backend's worker process: the caller gets the typed error, its message as
    before (``APITimeoutError: ...``)."""
    release = frozen(stub, before_first=before_first)
    request = ChatRequest([{"role": "user", "content": "hi"}], GenerationSettings())
    try:
        with backend(stub, **timeouts) as streamer:
            await asyncio.to_thread(streamer.start_process)
            with pytest.raises(raised, match=f"APITimeoutError: .*{said}"):
                async for _ in streamer.chat(request):
                    pass
    finally:
        release.set()


def test_the_note_of_each_failure() -> None:
    cases: list[tuple[BaseException, str, str]] = [
        (asyncio.TimeoutError(), "stall", DEFAULT_STALL_TEXT),
        (TimeoutError(), "stall", DEFAULT_STALL_TEXT),
        (StallTimeout("x"), "stall", DEFAULT_STALL_TEXT),
        (FirstTokenTimeout("x"), "slow", DEFAULT_SLOW_TEXT),
        (StreamError("x"), "error", DEFAULT_ERROR_TEXT),
        (ValueError("x"), "error", DEFAULT_ERROR_TEXT),
    ]
    for failure, note, text in cases:
        assert failure_note(failure) == note
        assert final_text("so far", failure) == f"so far\n\n*{text}*"
    assert final_text("", FirstTokenTimeout("x"), slow_text="late") == "*late*"


def test_a_worker_refuses_an_unknown_failure_kind() -> None:
    from genbot.streaming.worker import Stream

    stream = Stream.__new__(Stream)
    with pytest.raises(ValueError, match="unknown failure kind 'late'; one of: first_token, stall"):
        stream.fail("x", kind="late")
