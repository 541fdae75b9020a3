"""genbot: deploy generative language models as Discord chat bots.

Public names are imported lazily, so that a streamer's worker process (started with
``spawn``) that only needs :mod:`genbot.streaming` does not pay for importing discord.py.
The exception is ``gatekeep`` (standard library only, from :mod:`genbot.gatekeeping`). For type
checkers the lazy names are imported under ``TYPE_CHECKING``, so ``genbot.Genbot`` is the
class, not ``Any``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from genbot._lazy import lazy_dir, lazy_getattr
from genbot._version import __version__
from genbot.gatekeeping import gatekeep

__all__ = [
    "Context",
    "Genbot",
    "StreamError",
    "Streamer",
    "__version__",
    "gatekeep",
    "streamer",
]

_log = logging.getLogger(__name__)

_LAZY = {
    "Genbot": "genbot.bot",
    "Context": "genbot.context",
    "Streamer": "genbot.streaming",
    "StreamError": "genbot.streaming",
    "streamer": "genbot.streaming",
}

if TYPE_CHECKING:
    from genbot.bot import Genbot
    from genbot.context import Context
    from genbot.streaming import Streamer, StreamError, streamer


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
__dir__ = lazy_dir(globals(), __all__)
