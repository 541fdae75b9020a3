"""End-to-end: streamed replies and prompts through discord.py against the loopback Discord."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import discord
import pytest

from bot_world import FAST
from genbot import Genbot
from genbot.output import ChannelPacer, RequestBudget, split_message, stream_reply
from genbot.prompt import context_to_messages
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot

EDIT = "/channels/{channel_id}/messages/{message_id}"
CREATE = "/channels/{channel_id}/messages"
_REOPEN = re.compile(r"^```[A-Za-z0-9_+\-.#]*\n")


@dataclass
class World:
    server: DiscordServer
    client: discord.Client
    fake: FakeChannel
    channel: discord.TextChannel
    alice: FakeUser
    bob: FakeUser

    async def ask(self, text: str) -> discord.Message:
        """Alice writes `text`; returns it as the bot's discord.py sees it."""
        sent = await self.server.send_message(self.fake, self.alice, text)
        return await self.channel.fetch_message(int(sent["id"]))

    def replies(self) -> list[str]:
        return [m["content"] for m in self.server.bot_messages(self.fake)]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with DiscordServer() as server:
        guild = server.create_guild("Guild")
        alice, bob = server.create_user("alice"), server.create_user("bob")
        server.add_member(guild, alice)
        server.add_member(guild, bob)
        fake = server.create_channel(guild, "general")
        intents = discord.Intents.default()
        intents.message_content = True
        intents.members = True
        client = discord.Client(intents=intents, guild_ready_timeout=0.05)
        async with run_bot(client, server):
            channel = client.get_channel(fake.id)
            assert isinstance(channel, discord.TextChannel)
            yield World(server, client, fake, channel, alice, bob)


async def test_reply_streams_into_one_message_edited_in_place(world: World) -> None:
    server = world.server
    question = await world.ask("Tell me a story")

    async def deltas() -> AsyncIterator[str]:
        await server.wait_for(lambda: server.typing_events(world.fake))  # typing shows first
        assert world.replies() == []
        yield "Once upon"
        await server.wait_for(lambda: world.replies() == ["Once upon"])
        yield " a time,"
        await server.wait_for(lambda: world.replies() == ["Once upon a time,"])
        for word in " there was a bot that answered in one message".split(" "):
            yield " " + word if word else ""

    # timeout=None: no wait_for task around each delta, so deltas yielded without awaiting
    # anything reach stream_reply before its writer runs again
    messages = await stream_reply(
        world.channel, deltas(), reference=question, interval=0.05, timeout=None
    )
    text = "Once upon a time, there was a bot that answered in one message"
    assert world.replies() == [text]
    (reply,) = server.bot_messages(world.fake)
    assert reply["message_reference"]["message_id"] == str(question.id)
    assert reply["edited_timestamp"] is not None
    assert [m.id for m in messages] == [int(reply["id"])]
    assert messages[0].content == text
    # the last nine deltas came at once and were coalesced into a single edit
    assert server.request_count("PATCH", EDIT) == 2


async def test_5000_character_reply_arrives_as_three_messages_with_intact_code(
    world: World,
) -> None:
    prose = "".join(f"This is sentence {n} of the explanation. " for n in range(34))
    code = "```python\n" + "".join(f"print('line {n}')\n" for n in range(60)) + "```"
    text = f"{prose}\n\n{code}\n\n{prose}{prose}"
    assert 4900 < len(text) < 5100
    question = await world.ask("Explain with code")

    async def deltas() -> AsyncIterator[str]:
        for start in range(0, len(text), 40):
            yield text[start : start + 40]

    messages = await stream_reply(world.channel, deltas(), reference=question, interval=0.05)
    replies = world.replies()
    assert len(replies) == len(messages) == 3
    assert all(len(reply) <= 2000 for reply in replies)
    assert "".join(replies) == text
    assert sum(code in reply for reply in replies) == 1
    first, *rest = server_messages = world.server.bot_messages(world.fake)
    assert first["message_reference"]["message_id"] == str(question.id)
    assert all("message_reference" not in m for m in rest)
    assert [m.id for m in messages] == [int(m["id"]) for m in server_messages]


async def test_long_code_block_is_closed_and_reopened_across_messages(world: World) -> None:
    code = "".join(f"let value_{n} = compute({n});\n" for n in range(150))
    text = f"Here it is:\n```rust\n{code}```\nDone."

    async def deltas() -> AsyncIterator[str]:
        for start in range(0, len(text), 100):
            yield text[start : start + 100]

    await stream_reply(world.channel, deltas(), interval=0.05)
    replies = world.replies()
    assert replies == split_message(text) and len(replies) == 3
    assert all(reply.count("```") % 2 == 0 for reply in replies)
    assert all(reply.startswith("```rust\n") for reply in replies[1:])
    unfenced = [replies[0].removesuffix("\n```")]
    unfenced += [_REOPEN.sub("", r).removesuffix("\n```") for r in replies[1:-1]]
    unfenced += [_REOPEN.sub("", replies[-1])]
    assert "".join(unfenced) == text


async def test_rate_limited_edits_lose_no_text(world: World) -> None:
    server = world.server

    async def deltas() -> AsyncIterator[str]:
        yield "Counting:"
        await server.wait_for(lambda: world.replies() == ["Counting:"])
        # more 429s than discord.py retries (5), so one edit fails and is written again later
        server.rate_limit("PATCH", EDIT, times=7, retry_after=0.02)
        for n in range(1, 60):
            yield f" {n}"
            if n % 10 == 0:
                await server.wait_for(lambda n=n: server.request_count("PATCH", EDIT) >= n // 10)

    await stream_reply(world.channel, deltas(), interval=0.05, pacer=ChannelPacer())
    assert world.replies() == ["Counting:" + "".join(f" {n}" for n in range(1, 60))]
    assert server.request_count("PATCH", EDIT) >= 8
    assert server.rate_limited_count("PATCH", EDIT) == 7


# --- Discord outages -----------------------------------------------------------------------------


async def test_a_502_after_discord_created_the_message_leaves_one_copy(world: World) -> None:
    """discord.py sends the create again by itself after a 502; the nonce makes it one."""
    server = world.server
    question = await world.ask("Hello?")
    server.fail_requests("POST", CREATE, status=502, times=1, after_effect=True)
    await stream_reply(world.channel, _once("Hi there!"), reference=question, interval=0.05)
    assert world.replies() == ["Hi there!"]
    assert server.request_count("POST", CREATE) == 2


async def test_a_503_after_discord_created_the_message_is_found_not_sent_again(
    world: World,
) -> None:
    """discord.py raises a 503 at once; the reply looks for the message before re-sending."""
    server = world.server
    question = await world.ask("Hello?")
    server.fail_requests("POST", CREATE, status=503, times=1, after_effect=True)
    await stream_reply(world.channel, _once("Hi there!"), reference=question, interval=0.05)
    (reply,) = server.bot_messages(world.fake)
    assert reply["content"] == "Hi there!"
    assert reply["message_reference"]["message_id"] == str(question.id)
    assert server.request_count("POST", CREATE) == 1  # found in the history, not re-sent


async def test_a_message_create_outage_of_seconds_loses_no_text(world: World) -> None:
    server = world.server
    question = await world.ask("Tell me something")
    server.fail_requests("POST", CREATE, status=503, seconds=2.0)
    await stream_reply(world.channel, _once("Here it is."), reference=question, interval=0.05)
    assert world.replies() == ["Here it is."]
    assert server.request_count("POST", CREATE) >= 5  # more failures than the old count allowed


async def test_an_outage_longer_than_the_budget_is_logged_with_the_size(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    server = world.server
    server.fail_requests("POST", CREATE, status=503, seconds=60.0)
    with pytest.raises(discord.DiscordServerError):
        await stream_reply(world.channel, _once("x" * 1234), interval=0.05, retry_budget=0.5)
    assert world.replies() == []
    (error,) = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "genbot.output"]
    assert "1234 characters" in error.getMessage()
    assert f"#general ({world.fake.id})" in error.getMessage()


async def test_failing_generator_shows_an_error_in_the_reply(world: World) -> None:
    question = await world.ask("Hello?")

    async def deltas() -> AsyncIterator[str]:
        yield "Let me think"
        await world.server.wait_for(lambda: world.replies())
        raise RuntimeError("the backend died")

    with pytest.raises(RuntimeError, match="backend died"):
        await stream_reply(
            world.channel, deltas(), reference=question, error_text="Generation failed."
        )
    assert world.replies() == ["Let me think\n\n*Generation failed.*"]


async def test_generator_failing_before_any_text_still_replies(world: World) -> None:
    question = await world.ask("Hello?")

    async def deltas() -> AsyncIterator[str]:
        raise ConnectionError("model server unreachable")
        yield ""

    with pytest.raises(ConnectionError):
        await stream_reply(world.channel, deltas(), reference=question, error_text="No model.")
    (reply,) = world.server.bot_messages(world.fake)
    assert reply["content"] == "*No model.*"
    assert reply["message_reference"]["message_id"] == str(question.id)


async def test_model_text_cannot_ping_everyone(world: World) -> None:
    async def deltas() -> AsyncIterator[str]:
        yield "@everyone look"

    await stream_reply(world.channel, deltas())
    (reply,) = world.server.bot_messages(world.fake)
    assert reply["mention_everyone"] is False


async def test_prompt_from_real_messages_renders_mentions_as_names(world: World) -> None:
    server = world.server
    bot_id = world.client.user.id
    await server.send_message(world.fake, world.alice, f"<@{bot_id}> what about <@{world.bob.id}>?")
    await stream_reply(world.channel, _once("Bob is nice."))
    await server.send_message(world.fake, world.bob, "thanks!")
    history = [m async for m in world.channel.history(limit=10)]
    assert context_to_messages(history, world.client.user, system_prompt="Be kind.") == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "alice: @genbot what about @bob?"},
        {"role": "assistant", "content": "Bob is nice."},
        {"role": "user", "content": "bob: thanks!"},
    ]


async def _once(text: str) -> AsyncIterator[str]:
    yield text


async def test_reply_to_a_deleted_message_is_still_sent(world: World) -> None:
    question = await world.ask("Quick, answer before I delete this")
    await world.server.delete_message(world.fake, question.id)
    await stream_reply(world.channel, _once("Answered anyway."), reference=question)
    (reply,) = world.server.bot_messages(world.fake)
    assert reply["content"] == "Answered anyway."
    assert "message_reference" not in reply


async def test_messages_of_only_a_sticker_or_an_embed_reach_the_prompt(world: World) -> None:
    server = world.server
    sticker = {"id": str(server.snowflakes.next()), "name": "Wave", "format_type": 1}
    waved = server.create_message(world.fake, world.alice, {}, extra={"sticker_items": [sticker]})
    await server.dispatch_message("MESSAGE_CREATE", waved)
    await server.send_message(
        world.fake, world.bob, embeds=[{"title": "Build #12 passed", "type": "rich"}]
    )
    history = [m async for m in world.channel.history(limit=10)]
    assert context_to_messages(history, world.client.user) == [
        {"role": "user", "content": "alice: [sticker: Wave]\nbob: [embed: Build #12 passed]"},
    ]


# --- the bot-wide request budget ---------------------------------------------------------------

TYPING = "/channels/{channel_id}/typing"
CHANNELS = 200
RATE = 40
GLOBAL_RATE = 50


def _script(channel_id: int) -> list[str]:
    """The deltas of the reply in a channel: a few words, different in every channel."""
    return [
        f"Reply for {channel_id}:",
        " streamed",
        " in",
        " six",
        " short",
        f" parts {channel_id}.",
    ]


class Streaming(Genbot):
    """A bot whose every reply streams from a generator of deltas over about 3 s, with the
    budget of a bot process (a fresh one, so other tests' requests do not count)."""

    def __init__(self, budget: RequestBudget, **kwargs: Any) -> None:
        super().__init__(**FAST, **kwargs)
        self.budget = budget
        self.pacer = ChannelPacer()
        self.finished: list[int] = []
        self.failures: list[BaseException] = []
        self.all_done = asyncio.Event()

    async def attend(self, channel: discord.abc.Messageable) -> None:
        key = getattr(channel, "id", 0)
        try:
            await stream_reply(
                channel, self.deltas(key), interval=1.0, pacer=self.pacer, budget=self.budget
            )
        except BaseException as exc:
            self.failures.append(exc)
            raise
        else:
            self.finished.append(key)
        finally:
            if len(self.finished) + len(self.failures) == CHANNELS:
                self.all_done.set()

    async def deltas(self, channel_id: int) -> AsyncIterator[str]:
        for delta in _script(channel_id):
            await asyncio.sleep(0.5)  # the generation's pace, the first token's included
            yield delta


def _most_in_a_second(times: list[float]) -> int:
    """The most of `times` (seconds) that fall in one 1-second window."""
    times = sorted(times)
    most, start = 0, 0
    for end, time in enumerate(times):
        while time - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_200_channels_streaming_at_once_keep_to_the_budget() -> None:
    budget = RequestBudget(rate=RATE)
    async with DiscordServer() as server:
        server.global_ratelimit = GLOBAL_RATE  # Discord's bot-wide limit, answered with 429s
        guild = server.create_guild("Busy")
        alice = server.create_user("alice")
        server.add_member(guild, alice)
        fakes = [server.create_channel(guild, f"room-{n}") for n in range(CHANNELS)]
        bot = Streaming(budget, channels=[fake.id for fake in fakes], sync_commands=False)
        async with run_bot(bot, server):
            await asyncio.gather(*(server.send_message(f, alice, "Talk to me") for f in fakes))
            await asyncio.wait_for(bot.all_done.wait(), 120)
        assert bot.failures == []
        for fake in fakes:
            assert [m["content"] for m in server.bot_messages(fake)] == ["".join(_script(fake.id))]
        # every request the replies made, as the server saw them arrive
        writes = server.request_times("POST", CREATE) + server.request_times("PATCH", EDIT)
        writes += server.request_times("POST", TYPING)
        assert server.request_count("POST", CREATE) == CHANNELS  # one message each, no retry
        assert server.request_count("POST", TYPING) > 0  # typing showed: it counts below too
        assert _most_in_a_second(writes) <= RATE
        for method, route in (("POST", CREATE), ("PATCH", EDIT), ("POST", TYPING)):
            assert server.rate_limited_count(method, route) == 0
        assert server.global_rate_limited == 0
        assert budget.active == 0  # every channel stopped counting as streaming
