"""The README's "Write your own bot": a gatekept attend that reads the context window.

Run it with ``DISCORD_TOKEN=... python examples/my_bot.py``; put your own user id in place of
``1234`` (``users``: who may chat; ``admins``: who may run ``/shutdown``). Chat with it in
the terminal, without Discord: ``PYTHONPATH=examples genbot playground my_bot:MyBot``.
"""

import os
import sys

import genbot


class MyBot(genbot.Genbot):
    @genbot.gatekeep  # one attend per channel at a time
    async def attend(self, channel):
        buffer = []
        async for msg in (ctx := self.context(channel, limit=16)):  # newest first
            buffer.append(f"{msg.author.name}: {msg.content}")
        if not ctx:
            return
        await channel.send(f"I see {len(ctx)} messages.")
        if not await ctx.current():  # new messages arrived meanwhile
            self.attend.force(channel)


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    MyBot(users=[1234], admins=[1234]).run(token)
