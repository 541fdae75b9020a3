"""A fleet, tested for real: two ``genbot serve`` upstreams (the scripted backend of
``tests/serve_workers.py``) behind a real HAProxy (``tests/serve_harness.py``, the README's
configuration), and genbot's OpenAI backend going through it as a bot does.

Which upstream served a chat is what its worker reported (its ``open`` event); that an
upstream stopped generating is its ``cancelled`` event.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from genbot.chatbot import ChatBot
from genbot.models import ChatRequest, GenerationSettings
from genbot.models.openai import OpenAIStreamer
from genbot.output import DEFAULT_ERROR_TEXT, DEFAULT_STALL_TEXT
from genbot.settings import Settings
from genbot.streaming import StreamError
from genbot.testing import DiscordServer, FakeChannel, run_bot
from serve_harness import HAProxy, Journal, Upstream, haproxy_config

SCRIPTED = "serve_workers:Scripted"
#: Each upstream generates this many chats at once; HAProxy's maxconn per server is the same.
PARALLEL = 2
#: The OpenAI backend's stall timeout: the longest gap between two events of a reply.
STALL_TIMEOUT = 1.0
README = Path(__file__).parents[1] / "README.md"
BOT_OPTIONS: dict[str, Any] = {"guild_ready_timeout": 0.05, "shutdown_timeout": 2.0}


@dataclass
class Fleet:
    journal: Journal
    upstreams: dict[str, Upstream]
    haproxy: HAProxy
    backend: OpenAIStreamer

    def served_by(self, said: str) -> list[str]:
        """The upstreams that opened a chat ``said``, in order."""
        return [e["upstream"] for e in self.journal.find("open", said)]

    async def opened(self, part: str) -> list[str]:
        """The upstreams that opened a chat whose text contains ``part``, in order, once one
        did: its "open" line reaches the journal on a reader thread, which may come after the
        reply it streams (bounded)."""

        def found() -> list[str]:
            return [e["upstream"] for e in self.journal.find("open") if part in e["said"]]

        await self.journal.wait(found, 30, f"a chat with {part!r} open")
        return found()

    async def wait_open(self, said: str, count: int = 1) -> list[str]:
        await self.journal.wait(
            lambda: len(self.served_by(said)) >= count, 30, f"{count} x {said!r} open"
        )
        return self.served_by(said)

    async def wait_event(self, event: str, said: str, count: int = 1) -> list[dict[str, Any]]:
        await self.journal.wait(
            lambda: len(self.journal.find(event, said)) >= count, 30, f"{count} x {event} {said!r}"
        )
        return self.journal.find(event, said)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    journal = Journal()
    upstreams: dict[str, Upstream] = {}
    haproxy: HAProxy | None = None
    backend: OpenAIStreamer | None = None
    try:
        for name in ("a", "b"):
            args = [SCRIPTED, "-s", f"parallel={PARALLEL}"]
            upstreams[name] = Upstream(name, args, journal)
        for upstream in upstreams.values():
            upstream.wait_ready()
        haproxy = HAProxy(tmp_path, upstreams, PARALLEL, journal).wait_ready()
        # No retries of its own: what reaches the live upstream is HAProxy's doing. The stall
        # timeout (token_timeout) is short, for the frozen upstream.
        backend = OpenAIStreamer(
            base_url=haproxy.url,
            model=SCRIPTED,
            max_concurrency=8,
            max_retries=0,
            token_timeout=STALL_TIMEOUT,
        )
        backend.start_thread()
        yield Fleet(journal, upstreams, haproxy, backend)
    finally:
        if backend is not None:
            backend.close()
        for process in [haproxy, *upstreams.values()]:
            if process is not None:
                process.stop()


def chat(text: str, max_new_tokens: int = 100_000) -> ChatRequest:
    return ChatRequest(
        [{"role": "user", "content": text}], GenerationSettings(max_new_tokens=max_new_tokens)
    )


async def reply(backend: OpenAIStreamer, text: str) -> str:
    return "".join([delta async for delta in backend.chat(chat(text))])


@pytest.fixture
async def streams() -> AsyncIterator[list[AsyncIterator[str]]]:
    """Open chats of a test, closed (the caller leaves) at its end."""
    opened: list[AsyncIterator[str]] = []
    yield opened
    for stream in opened:
        await stream.aclose()  # type: ignore[attr-defined]


async def open_chat(fleet: Fleet, streams: list[AsyncIterator[str]], text: str) -> str:
    """Start a chat through the fleet and return its first delta."""
    stream = fleet.backend.chat(chat(text))
    streams.append(stream)
    return await asyncio.wait_for(stream.__anext__(), 30)


async def test_load_spreads_across_both_upstreams(
    fleet: Fleet, streams: list[AsyncIterator[str]]
) -> None:
    for _ in range(2 * PARALLEL):
        assert (await open_chat(fleet, streams, "forever")).startswith("tick ")
    served = await fleet.wait_open("forever", 2 * PARALLEL)
    assert Counter(served) == {"a": PARALLEL, "b": PARALLEL}
    # Both are full: one more waits in HAProxy's queue, and goes where a slot frees.
    waiting = asyncio.ensure_future(reply(fleet.backend, "count 3"))
    try:
        await streams.pop(0).aclose()  # type: ignore[attr-defined]
        [freed] = await fleet.wait_event("cancelled", "forever")
        assert await asyncio.wait_for(waiting, 30) == "1 2 3"
        assert await fleet.wait_open("count 3") == [freed["upstream"]]
    finally:
        waiting.cancel()


async def test_a_caller_that_goes_away_stops_the_upstream(
    fleet: Fleet, streams: list[AsyncIterator[str]]
) -> None:
    stream = fleet.backend.chat(chat("forever"))
    got = ""
    while got.count("tick ") < 3:
        got += await asyncio.wait_for(stream.__anext__(), 30)
    await stream.aclose()  # type: ignore[attr-defined]
    [cancelled] = await fleet.wait_event("cancelled", "forever")
    [opened] = fleet.served_by("forever")
    assert cancelled["upstream"] == opened
    assert 3 <= cancelled["tokens"] < 100_000
    assert not fleet.journal.find("done", "forever")


async def test_upstream_killed_mid_stream(fleet: Fleet, streams: list[AsyncIterator[str]]) -> None:
    await open_chat(fleet, streams, "forever")
    [victim] = await fleet.wait_open("forever")
    [live] = set(fleet.upstreams) - {victim}
    stream = streams[0]

    async def read_until_error() -> None:
        async for _ in stream:
            pass

    fleet.upstreams[victim].signal_group(signal.SIGKILL)
    # The user must see the failure within a second of the upstream's death.
    with pytest.raises(StreamError):
        await asyncio.wait_for(read_until_error(), 1.0)
    streams.clear()
    for i in range(4):  # the next chats go to the live upstream
        assert await asyncio.wait_for(reply(fleet.backend, f"count {i + 1}"), 30) == " ".join(
            str(n) for n in range(1, i + 2)
        )
        assert await fleet.wait_open(f"count {i + 1}") == [live]


async def test_upstream_frozen_mid_stream(fleet: Fleet, streams: list[AsyncIterator[str]]) -> None:
    """A frozen upstream sends nothing more: the backend's stall timeout fails the chat.
    HAProxy's health checks then take the upstream out; the next chats go to the live one."""
    await open_chat(fleet, streams, "forever")
    [victim] = await fleet.wait_open("forever")
    [live] = set(fleet.upstreams) - {victim}
    fleet.upstreams[victim].signal_group(signal.SIGSTOP)  # SIGCONT when it is stopped
    stream = streams.pop()

    async def read_until_error() -> None:
        async for _ in stream:
            pass

    with pytest.raises(StreamError, match="APITimeoutError"):
        await asyncio.wait_for(read_until_error(), 30)
    down = re.compile(rf"Server genbot/{victim} is DOWN")
    await fleet.journal.wait(
        lambda: any(down.search(line) for _, line in fleet.journal.lines), 30, "marked down"
    )
    for i in range(2):
        assert await asyncio.wait_for(reply(fleet.backend, f"count {i + 2}"), 30)
        assert await fleet.wait_open(f"count {i + 2}") == [live]


def test_readme_shows_the_tested_haproxy_cfg() -> None:
    text = README.read_text()
    found = re.search(r"```haproxy\n(.*?)```", text, re.DOTALL)
    assert found, "README has no ```haproxy block"
    shown = found.group(1)
    bind = re.search(r"^    bind (\S+)$", shown, re.MULTILINE)
    servers = dict(re.findall(r"^    server (\w+) (\S+)", shown, re.MULTILINE))
    assert bind and servers
    maxconn = re.search(r"maxconn (\d+)$", shown, re.MULTILINE)
    assert maxconn
    assert shown == haproxy_config(bind.group(1), servers, int(maxconn.group(1)))


# -- through the ready-made bot: what the user sees on Discord ---------------------------------


def note_shown(server: DiscordServer, channel: FakeChannel, note: str) -> bool:
    """Whether the bot's reply in `channel` ends with `note` (in italics)."""
    replies = server.bot_messages(channel)
    return bool(replies) and replies[-1]["content"].endswith(f"*{note}*")


async def bot_user_sees(fleet: Fleet, how: signal.Signals, within: float, note: str) -> None:
    """A user asks the ready-made bot (its backend through the fleet) for a reply that streams
    forever; once its first text shows, the upstream serving it gets `how`; the reply must end
    with `note` within `within` s, and the user's next question is answered by the live
    upstream."""
    async with DiscordServer() as server:
        guild = server.create_guild("Guild")
        alice = server.create_user("alice")
        server.add_member(guild, alice)
        general = server.create_channel(guild, "general")
        settings = Settings().updated({"backend": "openai", "edit_interval": 0.2}, "test")
        bot = ChatBot(settings, backend=fleet.backend, close_streamers=False, **BOT_OPTIONS)
        async with run_bot(bot, server):
            await server.send_message(general, alice, "forever", mentions_bot=True)
            await server.wait_for(
                lambda: "tick" in "".join(m["content"] for m in server.bot_messages(general)),
                timeout=30,
            )
            [victim] = set(await fleet.opened("forever"))
            [live] = set(fleet.upstreams) - {victim}
            fleet.upstreams[victim].signal_group(how)
            await server.wait_for(lambda: note_shown(server, general, note), timeout=within)
            assert "tick" in server.bot_messages(general)[-1]["content"]  # the text so far stays
            await server.send_message(general, alice, "count 3", mentions_bot=True)
            await server.wait_for(
                lambda: server.bot_messages(general)[-1]["content"] == "1 2 3", timeout=30
            )
        assert await fleet.opened("count 3") == [live]


async def test_a_bot_user_sees_a_killed_upstream_within_a_second(fleet: Fleet) -> None:
    await bot_user_sees(fleet, signal.SIGKILL, within=1.0, note=DEFAULT_ERROR_TEXT)


async def test_a_bot_user_sees_the_stall_timeout_of_a_frozen_upstream(fleet: Fleet) -> None:
    """The backend's stall timeout (token_timeout) shows the bot's own stall note."""
    await bot_user_sees(fleet, signal.SIGSTOP, within=30, note=DEFAULT_STALL_TEXT)
