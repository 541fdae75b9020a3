"""The metrics endpoint: scraped over HTTP while the ready-made chat bot runs on the loopback
Discord with a scripted model (tests/chat_workers.py), its values follow the chats, the tokens,
the Discord requests and the errors. Every wait is on an event; no sleeps."""

from __future__ import annotations

import asyncio
import math
import re
import socket
from typing import Any

import aiohttp
import discord
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_workers import RELEASE, one_slot
from chat_world import Chat, chat_bot, scene, settle
from genbot.chatbot import ChatBot
from genbot.cli import explain
from genbot.metrics import ERROR_KINDS, Metrics, MetricsError, error_kind, model_name
from genbot.output import DEFAULT_ERROR_TEXT, DEFAULT_STALL_TEXT
from genbot.settings import Settings, SettingsError
from genbot.streaming import Streamer, StreamError
from genbot.testing import run_bot

FAST: dict[str, Any] = {
    "guild_ready_timeout": 0.05,
    "shutdown_timeout": 2.0,
    "close_streamers": False,
}
CREATE = ("POST", "/channels/{channel_id}/messages")
EDIT = ("PATCH", "/channels/{channel_id}/messages/{message_id}")
MODEL = "llamacpp:default"  # the label of the model the default settings name
QUEUED_NOTE = f"*{ChatBot.queued_text}*"
BUSY_NOTE = f"*{ChatBot.busy_text}*"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


chat = pytest.fixture(scene(Chat), name="chat")


backend = pytest.fixture(one_slot, name="backend")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def make_bot(backend: Streamer, **values: Any) -> ChatBot:
    return chat_bot(backend, {"metrics_port": free_port(), **values}, queued_after=0.2)


async def scrape(bot: ChatBot) -> Samples:
    """GET the bot's metrics endpoint, as Prometheus would."""
    assert bot.metrics.url is not None, "the metrics are not served"
    async with aiohttp.ClientSession() as session:
        async with session.get(bot.metrics.url, timeout=aiohttp.ClientTimeout(total=10)) as got:
            assert got.status == 200
            assert got.headers["Content-Type"].startswith("text/plain; version=")
            text = await got.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled series not created yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def model(samples: Samples, name: str) -> float:
    return value(samples, name, model=MODEL)


def errors(samples: Samples) -> dict[str, float]:
    return {kind: value(samples, "genbot_errors_total", kind=kind) for kind in ERROR_KINDS}


# --- the scrape while chats run -------------------------------------------------------------------


async def test_the_scrape_follows_the_chats_the_tokens_and_the_discord_requests(
    chat: Chat, backend: Streamer
) -> None:
    server = chat.server
    bot = make_bot(backend)
    async with run_bot(bot, server):
        await server.wait_for(lambda: math.isfinite(bot.latency))
        idle = await scrape(bot)
        assert model(idle, "genbot_chats_waiting") == 0
        assert model(idle, "genbot_chats_running") == 0
        assert model(idle, "genbot_model_slots") == 4  # the `parallel` setting
        assert model(idle, "genbot_tokens_generated_total") == 0
        assert value(idle, "genbot_gateway_latency_seconds", shard="0") == bot.latency

        server.rate_limit(*CREATE, times=1)  # the first reply's create is answered 429 once
        await server.send_message(chat.general, chat.alice, "hold", mentions_bot=True)
        await chat.wait_for_reply(chat.general, "Let me think")
        await server.send_message(chat.dm, chat.alice, "hello")
        await chat.wait_for_reply(chat.dm, QUEUED_NOTE)  # the DM chat waits for the only slot
        busy = await scrape(bot)
        assert model(busy, "genbot_chats_running") == 1
        assert model(busy, "genbot_chats_waiting") == 1
        assert model(busy, "genbot_tokens_generated_total") == 1  # "Let me think"
        assert model(busy, "genbot_time_to_first_token_seconds_count") == 1
        assert model(busy, "genbot_reply_duration_seconds_count") == 0
        assert value(busy, "genbot_discord_rate_limited_total", method="POST", route=CREATE[1]) == 1

        RELEASE.set()
        await chat.wait_for_reply(chat.general, "Let me think done.")
        await chat.wait_for_reply(chat.dm, "answer: hello")
        await settle(bot)
        done = await scrape(bot)
    assert model(done, "genbot_chats_running") == 0
    assert model(done, "genbot_chats_waiting") == 0
    # "Let me think", " done." and "answer: hello": three pieces of text, and their characters.
    assert model(done, "genbot_tokens_generated_total") == 3
    assert model(done, "genbot_characters_generated_total") == len(
        "Let me think done.answer: hello"
    )
    assert model(done, "genbot_time_to_first_token_seconds_count") == 2
    assert model(done, "genbot_reply_duration_seconds_count") == 2
    # Every REST request the server saw is counted, by route template; and the one 429.
    for method, route in (CREATE, EDIT):
        counted = value(done, "genbot_discord_requests_total", method=method, route=route)
        assert counted == server.request_count(method, route) > 0, (method, route)
    limited = value(done, "genbot_discord_rate_limited_total", method="POST", route=CREATE[1])
    assert limited == server.rate_limited_count(*CREATE) == 1
    assert errors(done) == dict.fromkeys(ERROR_KINDS, 0)


async def test_the_scrape_counts_errors_by_kind(chat: Chat, backend: Streamer) -> None:
    server = chat.server
    bot = make_bot(backend, stall_timeout=1.0, queue_timeout=1.5)
    expected = dict.fromkeys(ERROR_KINDS, 0.0)
    async with run_bot(bot, server):
        # A hung model: its reply ends with the stall note, and it keeps the only slot ...
        await server.send_message(chat.general, chat.alice, "hang", mentions_bot=True)
        await chat.wait_for_reply(chat.general, f"*{DEFAULT_STALL_TEXT}*")
        await settle(bot)  # the error is counted once the note's edit has returned
        expected["stall"] += 1
        assert errors(await scrape(bot)) == expected
        # ... so the next chat gets no slot within queue_timeout.
        await server.send_message(chat.dm, chat.alice, "hello")
        await chat.wait_for_reply(chat.dm, BUSY_NOTE)
        await settle(bot)
        expected["queue_timeout"] += 1
        assert errors(await scrape(bot)) == expected

        RELEASE.set()  # the model recovers; then it fails
        await server.send_message(chat.dm, chat.alice, "fail")
        await chat.wait_for_reply(chat.dm, f"Let me think\n\n*{DEFAULT_ERROR_TEXT}*")
        await settle(bot)
        expected["backend"] += 1
        assert errors(await scrape(bot)) == expected

        # Discord refuses the reply's message.
        creates = server.request_count(*CREATE)
        server.fail_requests(*CREATE, status=403, times=1)
        await server.send_message(chat.general, chat.alice, "hi", mentions_bot=True)
        await server.wait_for(lambda: server.request_count(*CREATE) > creates)
        await settle(bot)
        expected["discord"] += 1
        done = await scrape(bot)
    assert errors(done) == expected
    assert model(done, "genbot_chats_running") == 0
    assert model(done, "genbot_chats_waiting") == 0


# --- off by default, one registry per bot, bad settings -------------------------------------------


async def test_metrics_are_not_served_unless_a_port_is_set(chat: Chat, backend: Streamer) -> None:
    bot = ChatBot(Settings(), backend=backend, **FAST)
    async with run_bot(bot, chat.server):
        assert bot.metrics.url is None
        assert b"genbot_chats_waiting" in bot.metrics.render()  # kept all the same


def test_each_bot_has_a_registry_of_its_own(backend: Streamer) -> None:
    first = ChatBot(Settings(), backend=backend, **FAST)
    second = ChatBot(Settings(), backend=backend, **FAST)  # the default registry would clash
    first.metrics.error("stall")
    assert first.metrics.registry.get_sample_value("genbot_errors_total", {"kind": "stall"}) == 1
    assert second.metrics.registry.get_sample_value("genbot_errors_total", {"kind": "stall"}) == 0


@pytest.mark.parametrize(
    ("name", "bad"), [("metrics_port", -1), ("metrics_port", 65536), ("metrics_host", "")]
)
def test_bad_metrics_settings_are_refused(name: str, bad: object) -> None:
    with pytest.raises(SettingsError, match=f"setting '{name}'"):
        Settings().updated({name: bad}, "test")


def test_a_new_model_takes_over_the_slots_gauge() -> None:
    metrics = Metrics()
    old, new = object(), object()
    metrics.serving(old, "small", 4)
    metrics.serving(new, "large", 2)
    assert metrics.model_of(old) == "small"
    assert metrics.registry.get_sample_value("genbot_model_slots", {"model": "large"}) == 2
    assert metrics.registry.get_sample_value("genbot_model_slots", {"model": "small"}) is None


def test_labels_and_error_kinds() -> None:
    assert model_name("llamacpp", "") == "llamacpp:default"
    assert model_name("openai", "qwen3") == "qwen3"
    assert error_kind(StreamError("gone")) == "backend"
    assert error_kind(discord.DiscordException("no"), backend_failed=True) == "backend"
    assert error_kind(asyncio.TimeoutError()) == "stall"
    assert error_kind(discord.DiscordException("no")) == "discord"
    assert error_kind(ValueError("bug")) == "other"


async def test_genbot_run_explains_a_taken_port_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = Metrics(port=taken.getsockname()[1])
        with pytest.raises(MetricsError) as caught:
            await metrics.start()
    assert metrics.url is None
    code, line = explain(caught.value) or (0, "")  # exit status 2 and one line, no traceback
    assert code == 2
    assert re.fullmatch(
        r"cannot serve metrics on 127\.0\.0\.1:\d+ \(setting 'metrics_port'\): .+", line
    )
