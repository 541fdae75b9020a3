"""The context window: ``self.context(channel, limit)`` yields the channel's visible messages,
newest first. This bot answers with the transcript it would give a model, oldest first.

Run it with ``DISCORD_TOKEN=... python examples/context_window.py``.
"""

import os
import sys

import genbot


class TranscriptBot(genbot.Genbot):
    async def attend(self, channel):
        buffer = []
        async for msg in self.context(channel, limit=16):
            buffer.append(f"{msg.author.name}: {msg.content}")

        inputs = "\n".join(buffer[::-1])
        await channel.send(inputs)


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    TranscriptBot().run(token)
