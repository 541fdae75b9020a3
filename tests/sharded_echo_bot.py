"""A small sharded Genbot for the sharding tests: it answers every waking message with
``echo: <text>``, as a reply to it. Run in-process, or as a bot process of its own with
``python -m genbot.testing.launch sharded_echo_bot SHARD_COUNT SHARD_IDS [REDIS_URL]``
(``SHARD_IDS`` like ``0,1``; the token comes from ``DISCORD_TOKEN``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

import discord

import genbot

_log = logging.getLogger(__name__)


class EchoBot(genbot.Genbot):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(guild_ready_timeout=0.05, shutdown_timeout=2.0, **kwargs)
        self.turns: dict[int, asyncio.Lock] = {}

    async def attend(self, channel: discord.abc.Messageable) -> None:
        # Each waking message calls this once; runs in a channel take turns, and each answers
        # every message that has no reply yet, so each message gets exactly one.
        key = getattr(channel, "id", 0)
        async with self.turns.setdefault(key, asyncio.Lock()):
            await self.answer(channel)

    async def answer(self, channel: discord.abc.Messageable) -> None:
        answered: set[int] = set()
        unanswered: list[discord.Message] = []
        async for message in self.context(channel, limit=50):
            if self.user is not None and message.author.id == self.user.id:
                if message.reference is not None and message.reference.message_id is not None:
                    answered.add(message.reference.message_id)
            elif message.id not in answered:
                unanswered.append(message)
        for message in reversed(unanswered):
            await message.reply(f"echo: {message.content}", mention_author=False)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    shard_count, shard_ids = int(argv[0]), [int(i) for i in argv[1].split(",")]
    redis_url = argv[2] if len(argv) > 2 else None
    bot = EchoBot(shard_count=shard_count, shard_ids=shard_ids, cluster_redis=redis_url)
    bot.run(os.environ["DISCORD_TOKEN"], log_handler=None)


if __name__ == "__main__":
    main(sys.argv[1:])
