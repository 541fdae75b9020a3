"""The smallest bot: it answers "Hello World!" to every message that wakes it.

Run it with your bot's token: ``DISCORD_TOKEN=... python examples/hello_world.py``. It answers
in DMs and when mentioned or replied to in a server (see docs/design.md, "Wake rules").
"""

import os
import sys

import genbot


class HelloBot(genbot.Genbot):
    async def attend(self, channel):
        await channel.send("Hello World!")


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    HelloBot().run(token)
