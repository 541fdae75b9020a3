from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from loopback_world import World, make_world

from genbot.testing import DiscordServer


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with DiscordServer() as server:
        yield make_world(server)
