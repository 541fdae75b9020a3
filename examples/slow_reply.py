"""A reply that takes time to generate, and messages that arrive meanwhile.

The context caches what it read: ``if not ctx`` skips an empty context, and
``await ctx.current()`` tells whether someone wrote since it was read. If they did, the bot
attends again (``self.attend.force(channel)`` queues one more run after this one; without
it the gatekeep would absorb the call).
Run it with ``DISCORD_TOKEN=... python examples/slow_reply.py``.
"""

import asyncio
import os
import sys

import genbot


class SlowBot(genbot.Genbot):
    thinking_seconds = 5.0

    @genbot.gatekeep
    async def attend(self, channel):
        buffer = []
        async for msg in (ctx := self.context(channel, limit=16)):
            buffer.append(f"{msg.author.name}: {msg.content}")

        if not ctx:
            return
        # The generation of the response may take some time.
        reply = await self.generate(buffer[::-1])
        await channel.send(reply)
        if not await ctx.current():
            # New messages arrived while we were generating: do the whole thing again.
            self.attend.force(channel)

    async def generate(self, lines):
        """Stands for a slow model: ``lines`` is the transcript, oldest first."""
        await asyncio.sleep(self.thinking_seconds)
        return f"I read {len(lines)} messages."


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    SlowBot().run(token)
