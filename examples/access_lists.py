"""Who may chat with the bot and who may shut it down: ``users``, ``roles`` and ``admins``.

Each is a list (a whitelist) or a dict with ``whitelist`` and/or ``blacklist``. Put your own
ids in (Developer Mode in Discord: right-click a user or role, "Copy ID") and run it with
``DISCORD_TOKEN=... python examples/access_lists.py``.
"""

import os
import sys

import genbot

# Interpreted as a whitelist: users who can chat with the bot anywhere, even in DMs.
USERS = [4567898765678987, 5678987656789, 67897678329876]

# This time, just some blacklisted roles: members holding one cannot chat in that server.
ROLES = {"blacklist": [12345678987653, 98765678987112]}

# We don't want many people shutting our bot down (/shutdown), so we whitelist just one.
ADMINS = [9876789656789]


class HelloBot(genbot.Genbot):
    async def attend(self, channel):
        await channel.send("Hello World!")


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    HelloBot(users=USERS, roles=ROLES, admins=ADMINS).run(token)
