"""Run a bot process against a loopback Discord: ``python -m genbot.testing.launch MODULE ...``.

`DiscordServer` points discord.py at itself in its own process; a bot started as a subprocess
(``genbot run``, or a test's own bot module) needs the same redirect, from the environment:
``LOOPBACK_DISCORD_API`` (the REST base, e.g. ``http://127.0.0.1:PORT/api/v10``) and
``LOOPBACK_DISCORD_GATEWAY`` (e.g. ``ws://127.0.0.1:PORT/gateway``); `DiscordServer.env`
gives both (with ``DISCORD_TOKEN``). Both are required and must be loopback addresses, so a
launched bot never reaches Discord itself. The launcher then runs ``MODULE`` as ``__main__``
(as ``python -m MODULE ARGS...`` would), e.g.::

    python -m genbot.testing.launch genbot run --set backend=openai ...
    python -m genbot.testing.launch my_test_bot --shards 0,1 --shard-count 3
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
from collections.abc import Mapping, Sequence

import discord.gateway
import discord.http
import yarl

__all__ = ["API_VARIABLE", "GATEWAY_VARIABLE", "command", "main", "redirect"]

_log = logging.getLogger(__name__)

API_VARIABLE = "LOOPBACK_DISCORD_API"
GATEWAY_VARIABLE = "LOOPBACK_DISCORD_GATEWAY"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def redirect(api: str, gateway: str) -> None:
    """Point discord.py's REST and gateway at a loopback server, as `DiscordServer` does.

    Parameters
    ----------
    api, gateway:
        The server's ``api_url`` and ``gateway_url``.

    Raises
    ------
    ValueError
        Either is not on a loopback address.
    """
    for url in (api, gateway):
        if yarl.URL(url).host not in _LOOPBACK:
            raise ValueError(f"{url} is not a loopback address")
    discord.http.Route.BASE = api
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


def command(module: str, *args: str) -> list[str]:
    """The argv that runs ``module`` (as ``python -m``) redirected: pass it with the server's
    `DiscordServer.env` to a subprocess."""
    return [sys.executable, "-m", __name__, module, *args]


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Redirect discord.py from the environment, then run ``argv[0]`` as ``__main__``.

    Parameters
    ----------
    argv:
        ``MODULE ARGS...`` (default: ``sys.argv[1:]``).
    environ:
        Where the two addresses come from (default: ``os.environ``).

    Raises
    ------
    SystemExit
        No module given, an address missing or not a loopback address.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if not args:
        raise SystemExit("usage: python -m genbot.testing.launch MODULE [ARGS...]")
    missing = [name for name in (API_VARIABLE, GATEWAY_VARIABLE) if not env.get(name)]
    if missing:
        raise SystemExit(f"genbot.testing.launch: set {' and '.join(missing)}")
    try:
        redirect(env[API_VARIABLE], env[GATEWAY_VARIABLE])
    except ValueError as error:
        raise SystemExit(f"genbot.testing.launch: {error}") from None
    sys.argv = args
    runpy.run_module(args[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
