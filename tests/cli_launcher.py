"""Runs the ``genbot`` command with discord.py pointed at a loopback Discord server.

``genbot.testing.DiscordServer`` redirects discord.py in its own process; a ``genbot`` started
as a subprocess needs the same redirect, from the environment: ``LOOPBACK_DISCORD_API`` (the
REST base, e.g. ``http://127.0.0.1:PORT/api/v10``) and ``LOOPBACK_DISCORD_GATEWAY`` (e.g.
``ws://127.0.0.1:PORT/gateway``). Both are required, so that this never reaches Discord itself.
Usage: ``python tests/cli_launcher.py run ...`` (the arguments of ``genbot``).
"""

from __future__ import annotations

import logging
import os

import discord
import discord.gateway
import discord.http
import yarl

from genbot.cli import main

_log = logging.getLogger(__name__)


def redirect(api: str, gateway: str) -> None:
    """Point discord.py's REST and gateway at a loopback server, as DiscordServer does."""
    for url in (api, gateway):
        host = yarl.URL(url).host
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"cli_launcher: {url} is not a loopback address")
    discord.http.Route.BASE = api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


if __name__ == "__main__":
    redirect(os.environ["LOOPBACK_DISCORD_API"], os.environ["LOOPBACK_DISCORD_GATEWAY"])
    main()
