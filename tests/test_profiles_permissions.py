"""Who may pick a model or persona, with Manage Channels computed by the loopback Discord from
roles and channel overwrites as Discord does: a member's own allow overwrite grants it in that
channel only, and a thread has its parent channel's overwrites (a deny there reaches it)."""

from __future__ import annotations

from pathlib import Path

from bot_world import world
from genbot.commands import Texts
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_profiles_chat import (
    BOT_FAST,
    MANAGE_CHANNELS,
    Bot,
    answer,
    command,
    models,
    pirates_with_deck,
    settings_for,
)

__all__ = ["models"]

REFUSED = Texts.choose_refused.format(permission="Manage Channels")


async def test_a_members_own_overwrite_grants_manage_channels_in_that_channel_and_its_threads(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates, deck = pirates_with_deck(w, w.bob)
        w.server.set_overwrite(pirates, w.bob, allow=MANAGE_CHANNELS)  # bob's own, in #pirates
        settings = settings_for(tmp_path, w, pirates, places="")
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            refused = await command(w, w.general, w.bob, "model", name="big")
            assert refused["ephemeral"] and refused["content"] == REFUSED
            picked = await command(w, pirates, w.bob, "model", name="big")
            assert picked["content"] == Texts.model_set.format(model="big")
            in_thread = await command(w, deck, w.bob, "model", name="small")
            assert in_thread["content"] == Texts.model_set.format(model="small")
            assert (await answer(w, pirates, w.alice, "a")).startswith("big |")
            assert (await answer(w, deck, w.alice, "b")).startswith("small |")
            assert (await answer(w, w.general, w.alice, "c")).startswith("default |")


async def test_a_deny_on_the_parent_channel_refuses_in_its_threads(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates, deck = pirates_with_deck(w, w.mod)
        w.guild.roles[w.mods.id].permissions = MANAGE_CHANNELS
        w.server.set_overwrite(pirates, w.mod, deny=MANAGE_CHANNELS)
        settings = settings_for(tmp_path, w, pirates, places="")
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            refused = await command(w, deck, w.mod, "persona", name="pirate")
            assert refused["ephemeral"] and refused["content"] == REFUSED
            assert (await answer(w, deck, w.alice, "a")) == "default | You are genbot. | a"
            picked = await command(w, w.general, w.mod, "persona", name="pirate")
            assert picked["content"] == Texts.persona_set.format(persona="pirate")
