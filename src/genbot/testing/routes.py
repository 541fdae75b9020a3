"""The shape of a REST route table: each feature module (channels and messages in `rest`,
application commands in `interactions`, ...) declares ``ROUTES: list[Route]`` of handlers that
take the `ServerState` and the request; `rest.add_routes` mounts them all."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["Handler", "Route"]

_log = logging.getLogger(__name__)

Handler = Callable[["ServerState", web.Request], Awaitable[web.StreamResponse]]


class Route(NamedTuple):
    """``method`` ``path`` (a template under ``/api/v10``, as Discord documents it) is answered
    by ``handler(state, request)``."""

    method: str
    path: str
    handler: Handler
