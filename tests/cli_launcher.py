"""Runs the ``genbot`` command with discord.py pointed at a loopback Discord server.

Usage: ``python tests/cli_launcher.py run ...`` (the arguments of ``genbot``), with
``LOOPBACK_DISCORD_API`` and ``LOOPBACK_DISCORD_GATEWAY`` set; the same as
``python -m genbot.testing.launch genbot run ...`` (see :mod:`genbot.testing.launch`).
"""

from __future__ import annotations

import logging
import sys

from genbot.testing.launch import main

_log = logging.getLogger(__name__)

if __name__ == "__main__":
    main(["genbot", *sys.argv[1:]])
