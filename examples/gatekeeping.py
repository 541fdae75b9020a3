"""``@genbot.gatekeep``: people write several short messages rather than one long one, so the
bot waits until the channel goes quiet and then answers all of them at once.

While an attend runs for a channel, the messages that arrive there start no other attend: the
running one sees them when it reads the context. Run it with
``DISCORD_TOKEN=... python examples/gatekeeping.py``.
"""

import asyncio
import os
import sys

import genbot


class PatientBot(genbot.Genbot):
    quiet_seconds = 3.0

    @genbot.gatekeep
    async def attend(self, channel):
        await self.wait_until_quiet(channel)
        words = 0
        async for msg in self.context(channel, limit=16):
            if msg.author == self.user:
                break  # everything older was answered already
            words += len(msg.content.split())
        await channel.send(f"That was {words} words.")

    async def wait_until_quiet(self, channel):
        """Return once nobody has written in ``channel`` for ``quiet_seconds``."""
        while True:
            try:
                await self.wait_for(
                    "message",
                    check=lambda m: m.channel.id == channel.id,
                    timeout=self.quiet_seconds,
                )
            except asyncio.TimeoutError:
                return


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    PatientBot().run(token)
