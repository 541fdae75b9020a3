"""Profiles and places end to end on the loopback Discord: channels answered by different models
with different profiles at the same time, a thread following its channel, /model, /persona and
/settings with Discord's permission rules, and choices surviving a restart of the bot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot_world import FAST, World, world
from genbot.chatbot import ChatBot
from genbot.commands import Texts
from genbot.settings import Settings
from genbot.streaming import Streamer
from genbot.testing import FakeChannel, FakeUser, run_bot
from profile_workers import BROKEN, MODELS, SEEN, running

MANAGE_CHANNELS = 1 << 4
BOT_FAST = {**FAST, "close_streamers": False}

models = pytest.fixture(running, name="models")


class Bot(ChatBot):
    """The ready-made bot, its named models served by the scripted ones (by ``model``)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.made: list[str] = []
        super().__init__(settings, backend=MODELS["default"], **kwargs)

    def new_backend(self, settings: Settings) -> Streamer:
        self.made.append(settings.model)
        return MODELS[settings.model]


def settings_for(tmp_path: Path, w: World, *channels: FakeChannel, places: str) -> Settings:
    """Settings from a config file: two named models, two profiles and ``places``; every
    message wakes the bot in #general and ``channels``."""
    ids = ", ".join(str(c.id) for c in (w.general, *channels))
    text = f"""
data_dir = "{tmp_path / "data"}"
edit_interval = 0.2
admins = [{w.admin.id}]
channels = [{ids}]
system_prompt = "You are {{bot}}."

[models.small]
backend = "openai"
model = "small"

[models.big]
backend = "openai"
model = "big"
parallel = 2

[profiles.pirate]
model = "small"
system_prompt = "Arr, pirate in #{{channel}} on {{server}}, {{{{literally}}}}."
temperature = 0.8

[models.flaky]
backend = "openai"
model = "flaky"

[profiles.scholar]
system_prompt = "Scholar."
max_new_tokens = 99

"""
    path = tmp_path / "genbot.toml"
    path.write_text(text + places, encoding="utf-8")
    return Settings.load(path, environ={})


def place(channel: FakeChannel, **values: str) -> str:
    lines = [f"[[places]]\nid = {channel.id}"] + [f'{k} = "{v}"' for k, v in values.items()]
    return "\n".join(lines) + "\n"


def pirates_with_deck(w: World, member: FakeUser) -> tuple[FakeChannel, FakeChannel]:
    """A channel #pirates and its thread "deck", with alice and `member` in the thread."""
    pirates = w.server.create_channel(w.guild, "pirates")
    return pirates, w.server.create_thread(pirates, "deck", members=[w.alice, member])


def replies(w: World, channel: FakeChannel) -> list[str]:
    return [m["content"] for m in w.server.bot_messages(channel)]


async def answer(w: World, channel: FakeChannel, user: FakeUser, text: str) -> str:
    """``user`` says ``text`` in ``channel``; the bot's reply to it (bounded wait)."""
    before = len(replies(w, channel))
    await w.server.send_message(channel, user, text)
    await w.server.wait_for(
        lambda: any(r.endswith(f"| {text}") for r in replies(w, channel)[before:]), timeout=15
    )
    return next(r for r in replies(w, channel)[before:] if r.endswith(f"| {text}"))


async def command(
    w: World, channel: FakeChannel, user: FakeUser, command_name: str, **options: str
) -> dict[str, Any]:
    interaction = await w.server.invoke_command(channel, user, command_name, options)
    return await interaction.wait_response()


async def test_two_channels_with_their_profiles_are_answered_by_two_models_at_once(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        books = w.server.create_channel(w.guild, "books")
        places = place(pirates, profile="pirate") + place(books, profile="scholar", model="big")
        bot = Bot(settings_for(tmp_path, w, pirates, books, places=places), **BOT_FAST)
        async with run_bot(bot, w.server):
            # each model holds its reply until the other one streams too
            await w.server.send_message(pirates, w.alice, "together")
            await w.server.send_message(books, w.bob, "together")
            await w.server.wait_for(
                lambda: (
                    any(r.endswith("| together") for r in replies(w, pirates))
                    and any(r.endswith("| together") for r in replies(w, books))
                ),
                timeout=20,
            )
            assert replies(w, pirates)[-1] == (
                "small | Arr, pirate in #pirates on Guild, {literally}. | together"
            )
            assert replies(w, books)[-1] == "big | Scholar. | together"
            # the profiles' sampling reached the models
            assert [(g.temperature, g.max_new_tokens) for g in SEEN["small"]] == [(0.8, 256)]
            assert [(g.temperature, g.max_new_tokens) for g in SEEN["big"]] == [(0.2, 99)]
            # an unplaced channel: the top-level settings and model
            assert await answer(w, w.general, w.alice, "hi") == "default | You are genbot. | hi"
            assert sorted(bot.made) == ["big", "small"]  # one Streamer per model, no more
            assert bot.settings_for(bot.get_channel(books.id)).max_new_tokens == 99  # type: ignore[arg-type]


async def test_a_model_no_place_uses_is_not_loaded(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        bot = Bot(
            settings_for(tmp_path, w, pirates, places=place(pirates, profile="pirate")), **BOT_FAST
        )
        async with run_bot(bot, w.server):
            assert (await answer(w, pirates, w.alice, "ahoy")).startswith("small | Arr")
            assert bot.made == ["small"]  # "big" is defined, but nothing uses it


async def test_a_thread_follows_its_channels_profile_unless_it_has_its_own(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        thread = w.server.create_thread(pirates, "the-deck", members=[w.alice])
        own = w.server.create_thread(pirates, "quiet", members=[w.alice])
        places = place(pirates, profile="pirate") + place(own, profile="scholar")
        bot = Bot(settings_for(tmp_path, w, pirates, places=places), **BOT_FAST)
        async with run_bot(bot, w.server):
            said = await answer(w, thread, w.alice, "yo")
            assert said == "small | Arr, pirate in #the-deck on Guild, {literally}. | yo"
            assert await answer(w, own, w.alice, "yo") == "default | Scholar. | yo"


async def test_model_is_set_by_an_allowed_member_refused_to_others_and_kept_across_restarts(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        w.guild.roles[w.mods.id].permissions = MANAGE_CHANNELS  # mods may manage channels
        settings = settings_for(tmp_path, w, pirates, places=place(pirates, profile="pirate"))
        bot = Bot(settings, **BOT_FAST)
        async with run_bot(bot, w.server):
            assert (await answer(w, pirates, w.alice, "one")).startswith("small | Arr")
            shown = await command(w, pirates, w.bob, "model")
            assert shown["ephemeral"] and "**small**" in shown["content"]
            refused = await command(w, pirates, w.bob, "model", name="big")
            assert refused["ephemeral"]
            assert refused["content"] == Texts.choose_refused.format(permission="Manage Channels")
            assert (await answer(w, pirates, w.alice, "two")).startswith("small | Arr")
            picked = await command(w, pirates, w.mod, "model", name="big")
            assert picked["ephemeral"] and picked["content"] == Texts.model_set.format(model="big")
            # the model changes, the persona (the channel's profile) stays
            assert (await answer(w, pirates, w.alice, "three")).startswith("big | Arr")
            unknown = await command(w, pirates, w.mod, "model", name="huge")
            assert "no model named 'huge'" in unknown["content"]
        restarted = Bot(settings, **BOT_FAST)  # a new bot on the same data_dir
        async with run_bot(restarted, w.server):
            assert (await answer(w, pirates, w.alice, "four")).startswith("big | Arr")
            shown = await command(w, pirates, w.alice, "model")
            assert "**big**" in shown["content"]
            assert restarted.made == ["big"]  # the model in use starts with the bot


async def test_a_channel_overwrite_takes_manage_channels_away_and_admins_may_always(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        w.guild.roles[w.mods.id].permissions = MANAGE_CHANNELS
        w.server.set_overwrite(pirates, w.mods, deny=MANAGE_CHANNELS)
        settings = settings_for(tmp_path, w, pirates, places="")
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            refused = await command(w, pirates, w.mod, "persona", name="pirate")
            assert refused["content"] == Texts.choose_refused.format(permission="Manage Channels")
            assert (await command(w, w.general, w.mod, "persona", name="scholar"))["ephemeral"]
            assert await answer(w, w.general, w.alice, "hm") == "default | Scholar. | hm"
            picked = await command(w, pirates, w.admin, "persona", name="pirate")
            assert picked["content"] == Texts.persona_set.format(persona="pirate")
            assert (await answer(w, pirates, w.alice, "ho")).startswith("small | Arr")
            shown = await command(w, pirates, w.bob, "persona")
            assert "**pirate**" in shown["content"] and "scholar" in shown["content"]


async def test_settings_shows_the_effective_profile_ephemerally(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        books = w.server.create_channel(w.guild, "books")
        places = place(books, profile="scholar", model="big")
        async with run_bot(
            Bot(settings_for(tmp_path, w, books, places=places), **BOT_FAST), w.server
        ):
            shown = await command(w, books, w.bob, "settings")
            assert shown["ephemeral"]
            text = shown["content"]
            assert f"**Persona**: scholar (the config's place {books.id})" in text
            assert "**Model**: big" in text and "max_new_tokens 99" in text
            assert "temperature 0.2" in text and "**Context**: up to 16 messages" in text
            assert "**Wakes on**: every message" in text and "**System prompt**: Scholar." in text


async def test_a_reload_applies_new_places_at_the_next_reply_and_restarts_a_changed_model(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        books = w.server.create_channel(w.guild, "books")
        before = settings_for(tmp_path, w, pirates, books, places=place(pirates, profile="pirate"))
        bot = Bot(before, **BOT_FAST)
        async with run_bot(bot, w.server):
            assert (await answer(w, pirates, w.alice, "a")).startswith("small | Arr")
            assert await answer(w, books, w.alice, "b") == "default | You are genbot. | b"
            places = place(pirates, profile="pirate") + place(books, profile="pirate")
            settings_for(tmp_path, w, pirates, books, places=places)  # writes the file
            path = tmp_path / "genbot.toml"
            text = path.read_text(encoding="utf-8")
            path.write_text(text.replace('model = "small"\n', 'model = "small"\nparallel = 3\n', 1))
            after = Settings.load(path, environ={})
            assert after.models["small"]["parallel"] == 3
            changes = await bot.reconfigure(after)
            assert "a changed named model starts anew" in changes.describe()
            assert (await answer(w, books, w.alice, "c")).startswith(
                "small | Arr, pirate in #books"
            )
            assert (await answer(w, pirates, w.alice, "d")).startswith("small | Arr")
            assert bot.made == ["small", "small"]  # the changed definition made a new Streamer
            assert bot.settings_for(bot.get_channel(books.id)).parallel == 3  # type: ignore[arg-type]


async def test_model_and_persona_names_autocomplete_from_the_config(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        settings = settings_for(tmp_path, w, places="")
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            offered = await w.server.invoke_autocomplete(w.general, w.bob, "model", "name", "")
            assert [c["value"] for c in offered] == ["default", "small", "big", "flaky"]
            offered = await w.server.invoke_autocomplete(w.general, w.bob, "model", "name", "BI")
            assert [c["name"] for c in offered] == ["big"]
            offered = await w.server.invoke_autocomplete(w.general, w.bob, "persona", "name", "")
            assert [c["value"] for c in offered] == ["default", "pirate", "scholar"]
            offered = await w.server.invoke_autocomplete(w.general, w.bob, "persona", "name", "r")
            assert [c["value"] for c in offered] == ["pirate", "scholar"]


async def test_a_named_model_that_does_not_start_gets_a_note_and_the_next_chat_tries_again(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        lab = w.server.create_channel(w.guild, "lab")
        BROKEN.set()
        bot = Bot(settings_for(tmp_path, w, lab, places=place(lab, model="flaky")), **BOT_FAST)
        async with run_bot(bot, w.server):  # the start-up's attempt fails, and is logged
            await w.server.send_message(lab, w.alice, "first")
            note = f"*{ChatBot.unavailable_text}*"
            await w.server.wait_for(lambda: note in replies(w, lab), timeout=15)
            assert await answer(w, w.general, w.alice, "meanwhile") == (
                "default | You are genbot. | meanwhile"
            )
            BROKEN.clear()
            assert await answer(w, lab, w.alice, "second") == "flaky | You are genbot. | second"
            assert bot.made == ["flaky"]


async def test_a_choice_in_a_thread_stays_in_the_thread_and_a_dm_is_its_users(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates, deck = pirates_with_deck(w, w.mod)
        w.guild.roles[w.mods.id].permissions = MANAGE_CHANNELS
        settings = settings_for(tmp_path, w, pirates, places=place(pirates, profile="pirate"))
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            picked = await command(w, deck, w.mod, "persona", name="scholar")
            assert picked["content"] == Texts.persona_set.format(persona="scholar")
            # scholar sets no model, and the channel's model came with its profile: the default
            assert await answer(w, deck, w.alice, "in") == "default | Scholar. | in"
            assert (await answer(w, pirates, w.alice, "out")).startswith("small | Arr")
            # a DM is the user's own conversation: they pick there, for that DM only
            alice_dm, admin_dm = w.server.create_dm(w.alice), w.server.create_dm(w.admin)
            picked = await command(w, alice_dm, w.alice, "model", name="big")
            assert picked["content"] == Texts.model_set.format(model="big")
            assert await answer(w, alice_dm, w.alice, "dm") == "big | You are genbot. | dm"
            assert await answer(w, admin_dm, w.admin, "dm") == "default | You are genbot. | dm"


async def test_with_choose_permission_empty_only_admins_choose_even_in_dms(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        settings = settings_for(tmp_path, w, pirates, places="").updated(
            {"choose_permission": ""}, "test"
        )
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            alice_dm = w.server.create_dm(w.alice)
            refused = await command(w, alice_dm, w.alice, "model", name="big")
            assert refused["content"] == Texts.choose_refused_admins
            assert await answer(w, alice_dm, w.alice, "dm") == "default | You are genbot. | dm"


async def test_regenerate_in_a_thread_of_a_placed_channel_uses_its_model_and_profile(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    from genbot.controls import REGENERATE, Control

    async with world() as w:
        pirates = w.server.create_channel(w.guild, "pirates")
        thread = w.server.create_thread(pirates, "the-deck", members=[w.alice])
        places = place(pirates, profile="pirate")
        bot = Bot(settings_for(tmp_path, w, pirates, places=places), **BOT_FAST)
        async with run_bot(bot, w.server):
            said = await answer(w, thread, w.alice, "yo")
            reply = w.server.bot_messages(thread)[-1]
            question = reply["message_reference"]["message_id"]
            await w.server.wait_for(
                lambda: w.server.buttons(thread, reply["id"]) == ["Regenerate"], timeout=15
            )
            custom_id = Control(REGENERATE, int(question), w.alice.id).custom_id
            await w.server.press(thread, reply["id"], custom_id, w.alice)
            await w.server.wait_for(lambda: len(SEEN.get("small", [])) == 2, timeout=15)
            await asyncio.wait_for(asyncio.gather(*bot.attending()), 15)
    _, again = SEEN["small"]
    assert (again.temperature, again.seed is not None) == (0.8, True)
    assert w.server.message(thread, int(reply["id"]))["content"] == said
    assert "default" not in SEEN
