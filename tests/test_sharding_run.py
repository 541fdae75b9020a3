"""Sharding with the ready-made bot, as an operator runs it: two real ``genbot run`` processes
(``-s shard_count=2 -s shard_ids=0`` and ``=1``, pointed at the loopback Discord by the
launcher) and the OpenAI backend on a loopback model server (``tests/openai_stub.py``). Users
in a guild on each shard and in DMs chat at once; every message gets exactly one reply, and
only the process holding shard 0 syncs the slash commands."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from genbot.testing import DiscordServer, FakeChannel, FakeUser
from genbot_process import GenbotProcess, genbot_process, loopback
from openai_stub import openai_stub

SYNC = "/applications/{application_id}/commands"
TURNS = 2


async def turn(server: DiscordServer, channel: FakeChannel, user: FakeUser, text: str) -> None:
    """Post (mentioning the bot in a guild) and wait until the bot answered it."""
    before = len(server.bot_messages(channel))
    await server.send_message(channel, user, text, mentions_bot=channel.guild_id is not None)

    def answered() -> bool:
        replies = server.bot_messages(channel)[before:]
        return any(text in m["content"] for m in replies)

    await server.wait_for(answered, timeout=30)


async def chat(server: DiscordServer, channel: FakeChannel, user: FakeUser) -> None:
    for n in range(TURNS):
        await turn(server, channel, user, f"{user.name} turn {n}")


async def test_two_genbot_run_processes_split_the_shards_and_answer_every_message_once(
    tmp_path: Path,
) -> None:
    async with DiscordServer(shard_count=2, max_concurrency=2) as server, openai_stub() as stub:
        users = [server.create_user(f"user{k}") for k in range(4)]
        places: list[tuple[FakeChannel, FakeUser]] = []
        for k, user in enumerate(users[:2]):  # a guild on each shard, a user chatting in it
            guild = server.create_guild(f"g{k}", shard=k)
            server.add_member(guild, user)
            places.append((server.create_channel(guild, "general"), user))
        places += [(server.create_dm(user), user) for user in users[2:]]  # and DMs (shard 0)
        config = tmp_path / "genbot.toml"
        config.write_text(
            f'backend = "openai"\nbase_url = "{stub.base_url}"\nmodel = "stub"\n'
            "edit_interval = 0.2\nshard_count = 2\n"
        )
        env = {**loopback(server), "DISCORD_TOKEN": server.token}
        async with contextlib.AsyncExitStack() as stack:
            bots: list[GenbotProcess] = []
            for shard in ("0", "1"):
                args = ("run", "-c", str(config), "-s", f"shard_ids={shard}")
                bots.append(
                    await stack.enter_async_context(genbot_process(*args, cwd=tmp_path, env=env))
                )
            try:
                await server.wait_for(lambda: server.ready_shards() == [(0, 2), (1, 2)], timeout=60)
            except TimeoutError:
                raise AssertionError(
                    f"shards ready: {server.ready_shards()}\n"
                    + "\n---\n".join(bot.log[-4000:] for bot in bots)
                ) from None
            await server.wait_for(lambda: server.commands(), timeout=20)
            await asyncio.gather(*(chat(server, c, u) for c, u in places))
            for channel, user in places:
                asked = [
                    m["content"]
                    for m in server.messages(channel)
                    if m["author"]["id"] == str(user.id)
                ]
                texts = [m["content"] for m in server.bot_messages(channel)]
                assert len(asked) == TURNS and len(texts) == TURNS, (asked, texts)
                for n, text in enumerate(texts):  # one reply each, in order
                    assert f"{user.name} turn {n}" in text, texts
            chats = [said for said in stub.asked if said != "Hi"]  # (each process's warm-up)
            mention = {c.id: "@genbot " if c.guild_id else "" for c, _ in places}
            assert sorted(chats) == sorted(
                f"{u.name}: {mention[c.id]}{u.name} turn {n}"
                for c, u in places
                for n in range(TURNS)
            )  # every message reached the model once
            # Synced once, by the process holding shard 0.
            assert server.request_count("PUT", SYNC) == 1
        for bot in bots:
            assert "Traceback" not in bot.log, bot.log[-3000:]
