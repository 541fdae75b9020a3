"""`ServerState` and the pieces around it on their own: the route tables, the request ledger,
message deletion, and the rule that handlers use the state's public API only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from loopback_world import World

import genbot.testing
from genbot.testing import ServerState, interactions, rest
from genbot.testing.limits import RequestLedger
from genbot.testing.models import FakeChannel, FakeGuild

PACKAGE = Path(genbot.testing.__file__).parent


def test_route_tables_are_unique_and_all_mounted(world: World) -> None:
    routes = rest.all_routes()
    keys = [(route.method, route.path) for route in routes]
    assert len(keys) == len(set(keys))
    assert set(interactions.ROUTES) <= set(routes) and set(rest.ROUTES) <= set(routes)
    mounted = {
        (r.method, r.resource.canonical[len(rest.PREFIX) :])
        for r in world.server._runner.app.router.routes()  # type: ignore[union-attr]
        if r.resource is not None and r.resource.canonical.startswith(rest.PREFIX + "/")
    }
    assert set(keys) <= mounted


def test_a_bucket_window_resets_after_its_window() -> None:
    ledger = RequestLedger(limit=2, window=1.0)
    key = ("GET", "/users/@me", "")
    assert [ledger.consume(key, now=10.0)[0] for _ in range(3)] == [1, 2, 3]
    assert ledger.consume(key, now=10.5) == (4, 0.5)
    assert ledger.consume(key, now=11.0) == (1, 1.0)
    assert ledger.consume(("GET", "/users/@me", "other"), now=10.5)[0] == 1
    ledger.force_rate_limit(key[:2], times=1, retry_after=0.25)
    assert [ledger.take_rate_limit(key[:2]) for _ in range(2)] == [0.25, None]


async def test_deleting_a_missing_message_deletes_nothing() -> None:
    state = ServerState()
    guild = state.add_guild(FakeGuild(state.snowflakes.next(), "g", state.bot_user.id))
    channel = state.add_channel(guild, FakeChannel(state.snowflakes.next(), "c"))
    kept = state.create_message(channel, state.bot_user, {"content": "kept"})
    with pytest.raises(KeyError):
        await state.delete_messages(channel, [int(kept["id"]), 12345])
    assert list(channel.messages.values()) == [kept]
    await state.delete_messages(channel, [int(kept["id"])])
    assert channel.messages == {}


@pytest.mark.parametrize(
    "module", ["rest", "gateway", "interactions", "payloads", "state", "limits", "routes"]
)
def test_handlers_use_no_private_attribute_of_another_object(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    private = [
        f"{node.value.id}.{node.attr} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and isinstance(node.value, ast.Name)
        and node.value.id != "self"
    ]
    assert private == []
