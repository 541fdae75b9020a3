"""Category places end to end: the loopback Discord has categories (channel type 4, a text
channel's ``parent_id``) as Discord does, so a ``[[places]]`` entry with a category's id is seen
by the ready-made bot: it applies to the channels in the category and to their threads, and a
channel's own place beats it."""

from __future__ import annotations

from pathlib import Path

import discord
import pytest

from bot_world import world
from genbot.chatbot import place_chain
from genbot.streaming import Streamer
from genbot.testing import run_bot
from profile_workers import running
from test_profiles_chat import BOT_FAST, Bot, answer, place, settings_for

models = pytest.fixture(running, name="models")


async def test_a_category_place_applies_to_its_channels_and_their_threads_unless_they_have_one(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        ships = w.server.create_category(w.guild, "Ships")
        deck = w.server.create_channel(w.guild, "deck", category=ships)
        library = w.server.create_channel(w.guild, "library", category=ships)
        thread = w.server.create_thread(deck, "crows-nest", members=[w.alice])
        places = place(ships, profile="pirate") + place(library, profile="scholar")
        bot = Bot(settings_for(tmp_path, w, deck, library, places=places), **BOT_FAST)
        async with run_bot(bot, w.server):
            seen = bot.get_channel(deck.id)
            assert isinstance(seen, discord.TextChannel) and seen.category_id == ships.id
            assert isinstance(bot.get_channel(ships.id), discord.CategoryChannel)
            assert place_chain(seen) == (deck.id, ships.id, w.guild.id)
            # the category's profile: in its channel, and in a thread of that channel
            said = await answer(w, deck, w.alice, "ahoy")
            assert said == "small | Arr, pirate in #deck on Guild, {literally}. | ahoy"
            said = await answer(w, thread, w.alice, "land")
            assert said == "small | Arr, pirate in #crows-nest on Guild, {literally}. | land"
            # a channel's own place beats its category's
            assert await answer(w, library, w.alice, "hush") == "default | Scholar. | hush"
            # a channel outside the category: the top-level settings
            assert await answer(w, w.general, w.alice, "hi") == "default | You are genbot. | hi"
