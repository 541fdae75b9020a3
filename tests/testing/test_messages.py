"""Messages through a real discord.py client: send, reply, edit, delete, history, limits."""

from __future__ import annotations

import asyncio
import io

import discord
import pytest
from loopback_world import Recorder, World, all_intents

from genbot.testing import run_bot

MESSAGES = "/channels/{channel_id}/messages"


async def test_edit_delete_and_bulk_delete_reach_the_client(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        first = await server.send_message(world.channel, world.alice, "first")
        second = await server.send_message(world.channel, world.alice, "second")
        third = await server.send_message(world.channel, world.alice, "third")
        edited = asyncio.ensure_future(bot.wait_for("raw_message_edit", timeout=5))
        await server.edit_message(world.channel, first, "first, edited")
        assert (await edited).data["content"] == "first, edited"
        deleted = asyncio.ensure_future(bot.wait_for("raw_message_delete", timeout=5))
        await server.delete_message(world.channel, second)
        assert (await deleted).message_id == int(second["id"])
        channel = bot.get_channel(world.channel.id)
        mine = [await channel.send(f"bot {i}") for i in range(2)]
        bulk = asyncio.ensure_future(bot.wait_for("raw_bulk_message_delete", timeout=5))
        await server.bulk_delete(world.channel, [third, int(mine[0].id)])
        assert (await bulk).message_ids == {int(third["id"]), mine[0].id}
        assert [m["content"] for m in server.messages(world.channel)] == ["first, edited", "bot 1"]


async def test_bot_sends_edits_deletes_and_replies(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        question = await server.send_message(world.channel, world.alice, "question?")
        channel = bot.get_channel(world.channel.id)
        asked = await channel.fetch_message(int(question["id"]))
        reply = await asked.reply("answer")
        stored = server.message(world.channel, reply.id)
        assert stored["type"] == 19
        assert stored["message_reference"]["message_id"] == question["id"]
        assert [u["id"] for u in stored["mentions"]] == [str(world.alice.id)]
        assert reply.reference is not None and reply.reference.message_id == asked.id
        quiet = await asked.reply("no ping", mention_author=False)
        assert server.message(world.channel, quiet.id)["mentions"] == []
        edited = await reply.edit(content="better answer")
        assert edited.edited_at is not None
        assert server.message(world.channel, reply.id)["content"] == "better answer"
        await reply.delete()
        await quiet.delete()
        assert server.bot_messages(world.channel) == []
        with pytest.raises(discord.NotFound) as error:
            await channel.fetch_message(reply.id)
        assert error.value.code == 10008
        assert server.request_count("PATCH", MESSAGES + "/{message_id}") == 1
        assert server.request_count("DELETE", MESSAGES + "/{message_id}") == 2


async def test_allowed_mentions_decide_who_is_pinged(world: World) -> None:
    server = world.server
    bot = Recorder(allowed_mentions=discord.AllowedMentions.none())
    async with run_bot(bot, server):
        channel = bot.get_channel(world.channel.id)
        text = f"@everyone <@{world.alice.id}> <@&{world.mods.id}>"
        silent = await channel.send(text)
        loud = await channel.send(text, allowed_mentions=discord.AllowedMentions.all())
        assert (silent.mention_everyone, silent.mentions, silent.role_mentions) == (False, [], [])
        assert loud.mention_everyone
        assert [u.id for u in loud.mentions] == [world.alice.id]
        assert [r.id for r in loud.role_mentions] == [world.mods.id]


async def test_history_windows_are_newest_first_like_discord(world: World) -> None:
    server = world.server
    posted = [await server.send_message(world.channel, world.bob, f"m{i}") for i in range(10)]
    ids = [int(m["id"]) for m in posted]
    assert ids == sorted(ids)
    bot = Recorder()
    async with run_bot(bot, server):
        channel = bot.get_channel(world.channel.id)

        async def contents(**kwargs: object) -> list[str]:
            return [m.content async for m in channel.history(**kwargs)]

        assert await contents(limit=3) == ["m9", "m8", "m7"]
        assert await contents(limit=3, before=discord.Object(ids[5])) == ["m4", "m3", "m2"]
        assert await contents(limit=3, after=discord.Object(ids[5])) == ["m6", "m7", "m8"]
        assert await contents(limit=None, after=discord.Object(ids[7])) == ["m8", "m9"]
        assert await contents(limit=4, around=discord.Object(ids[5])) == ["m6", "m5", "m4", "m3"]
        assert await contents(limit=None) == [f"m{i}" for i in reversed(range(10))]
        raw = await bot.http.logs_from(world.channel.id, 3, after=ids[5])
        assert [m["content"] for m in raw] == ["m8", "m7", "m6"]
        assert server.request_count("GET", MESSAGES) == 7


async def test_validation_errors_carry_discords_codes(world: World) -> None:
    bot = Recorder()
    async with run_bot(bot, world.server):
        channel = bot.get_channel(world.channel.id)
        with pytest.raises(discord.HTTPException) as too_long:
            await channel.send("x" * 2001)
        assert (too_long.value.status, too_long.value.code) == (400, 50035)
        assert "In content: Must be 2000 or fewer in length." in str(too_long.value)
        with pytest.raises(discord.HTTPException) as empty:
            await bot.http.send_message(world.channel.id, params=_params(content=""))
        assert (empty.value.status, empty.value.code) == (400, 50006)
        with pytest.raises(discord.NotFound) as unknown:
            await bot.http.send_message(12345, params=_params(content="hi"))
        assert unknown.value.code == 10003
        ok = await channel.send("x" * 2000)
        assert len(ok.content) == 2000
        with pytest.raises(discord.HTTPException) as edit_too_long:
            await ok.edit(content="y" * 2001)
        assert edit_too_long.value.code == 50035


def _params(**kwargs: object) -> discord.http.MultipartParameters:
    return discord.http.handle_message_parameters(**kwargs)  # type: ignore[arg-type]


async def test_multipart_uploads_become_attachments(world: World) -> None:
    bot = Recorder()
    async with run_bot(bot, world.server):
        channel = bot.get_channel(world.channel.id)
        sent = await channel.send("see file", file=discord.File(io.BytesIO(b"hello"), "a.txt"))
        assert sent.content == "see file"
        assert [(a.filename, a.size) for a in sent.attachments] == [("a.txt", 5)]
        assert await sent.attachments[0].read() == b"hello"
        only_file = await channel.send(file=discord.File(io.BytesIO(b"x"), "b.bin"))
        assert only_file.attachments[0].filename == "b.bin"


async def test_typing_both_ways(world: World) -> None:
    server = world.server
    bot = Recorder()
    async with run_bot(bot, server):
        channel = bot.get_channel(world.channel.id)
        await channel.typing()
        typing = asyncio.ensure_future(bot.wait_for("typing", timeout=5))
        await server.start_typing(world.channel, world.alice)
        _, who, _ = await typing
        assert who.id == world.alice.id
        events = server.typing_events(world.channel)
        assert [user_id for user_id, _ in events] == [server.bot_user.id, world.alice.id]


async def test_content_is_blank_without_the_message_content_intent(world: World) -> None:
    server = world.server
    bot = Recorder(intents=all_intents(message_content=False))
    dm = server.create_dm(world.alice)
    async with run_bot(bot, server):
        plain = await server.send_message(world.channel, world.alice, "secret")
        mention = await server.send_message(world.channel, world.alice, "hey", mentions_bot=True)
        await server.send_message(dm, world.alice, "private")
        await server.wait_for(lambda: len(server.messages(dm)) == 1)
        await bot.received_at_least(3)
        assert bot.contents() == ["", f"<@{server.bot_user.id}> hey", "private"]
        own = await bot.get_channel(world.channel.id).send("mine")
        assert own.content == "mine"
        fetched = [m.content async for m in bot.get_channel(world.channel.id).history()]
        assert fetched == ["mine", mention["content"], ""]
        assert server.message(world.channel, int(plain["id"]))["content"] == "secret"


async def test_unfaked_routes_are_recorded_and_answer_404(world: World) -> None:
    bot = Recorder()
    async with run_bot(bot, world.server):
        with pytest.raises(discord.NotFound):
            await bot.get_channel(world.channel.id).invites()
    assert world.server.unhandled_requests == [("GET", f"/channels/{world.channel.id}/invites")]
