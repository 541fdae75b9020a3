"""Reloading the ready-made bot's config while it runs: ``/reload`` (admins only) and ``SIGHUP``
apply a new access list at once, reject a broken file (the running config stays), and swap in a
new model that takes new chats while the old one finishes its chats and then stops."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot_world import World, send, world
from chat_workers import one_slot
from genbot.chatbot import ChatBot
from genbot.commands import Texts
from genbot.reload import Changes, compare
from genbot.settings import Settings
from genbot.streaming import FunctionStreamer, Stream, Streamer
from genbot.testing import DiscordServer, FakeChannel, FakeUser, run_bot
from genbot_process import genbot_process, loopback
from openai_stub import openai_stub

FAST: dict[str, Any] = {"guild_ready_timeout": 0.05, "shutdown_timeout": 2.0}
TEXTS = Texts()


backend = pytest.fixture(one_slot, name="backend")


class Config:
    """The bot's config file, and what its bot is built from."""

    def __init__(self, path: Path, w: World) -> None:
        self.path = path
        self.w = w

    def write(self, text: str, model: str = "a") -> None:
        self.path.write_text(
            f'backend = "openai"\nmodel = "{model}"\nedit_interval = 0.2\n{text}\n'
        )

    def load(self) -> Settings:
        return Settings.load(self.path, environ={})


@pytest.fixture
async def config(tmp_path: Path) -> AsyncIterator[Config]:
    async with world() as w:
        made = Config(tmp_path / "genbot.toml", w)
        made.write(f"admins = [{w.admin.id}]")
        yield made


def chat_bot(config: Config, backend: Streamer, **kwargs: Any) -> ChatBot:
    options = {**FAST, "close_streamers": False, **kwargs}
    return ChatBot(config.load(), backend=backend, load_settings=config.load, **options)


async def reload(server: DiscordServer, channel: FakeChannel, user: FakeUser) -> dict[str, Any]:
    """``/reload`` as ``user``: its final (ephemeral) answer."""
    interaction = await server.invoke_command(channel, user, "reload")
    first = await interaction.wait_response(timeout=30)
    if first["type"] != 5:  # not deferred: refused at once
        return first
    assert first["ephemeral"]
    return await interaction.wait_response(timeout=60, index=1)


async def chats(bot: ChatBot, w: World, user: FakeUser, text: str) -> bool:
    """Whether ``user`` gets an answer to ``text`` in their DM (and it is there when True)."""
    if bot.attending():  # earlier chats end first, so that what runs next is this one's
        await asyncio.wait(bot.attending(), timeout=30)
    dm = w.server.create_dm(user)
    await send(bot, w.server, dm, user, text)  # the bot has seen it: an attend started, or not
    if not bot.attending():
        return False
    await w.server.wait_for(lambda: f"answer: {text}" in w.contents(dm), timeout=30)
    return True


async def test_reload_by_an_admin_applies_a_new_access_list(
    config: Config, backend: Streamer
) -> None:
    w = config.w
    config.write(f"admins = [{w.admin.id}]\nusers = {{blacklist = [{w.bob.id}]}}")
    async with run_bot(chat_bot(config, backend), w.server) as bot:
        assert not await chats(bot, w, w.bob, "hello?")
        assert await chats(bot, w, w.alice, "hi")

        config.write(f"admins = [{w.admin.id}]\nusers = {{blacklist = [{w.alice.id}]}}")
        answer = await reload(w.server, w.general, w.admin)
        assert answer["ephemeral"]
        assert answer["content"] == TEXTS.reloaded.format(changes="changed users")

        assert await chats(bot, w, w.bob, "now?")
        assert not await chats(bot, w, w.alice, "and me?")
    assert w.contents(w.server.create_dm(w.bob)) == ["answer: now?"]


async def test_reload_by_someone_else_is_refused(config: Config, backend: Streamer) -> None:
    w = config.w
    async with run_bot(chat_bot(config, backend), w.server) as bot:
        config.write(f"admins = [{w.admin.id}]\nusers = {{blacklist = [{w.alice.id}]}}")
        for user in (w.alice, w.bob):
            answer = await reload(w.server, w.general, user)
            assert answer["ephemeral"] and answer["content"] == TEXTS.not_admin_reload
        assert await chats(bot, w, w.alice, "still me")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("users = [", "not valid TOML: "),
        ("temperature = 9", "setting 'temperature': must be from 0 to 2, got 9"),
    ],
)
async def test_a_broken_config_is_rejected_and_the_running_one_stays(
    config: Config, backend: Streamer, text: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    w = config.w
    config.write(f"admins = [{w.admin.id}]\nusers = {{blacklist = [{w.bob.id}]}}")
    async with run_bot(chat_bot(config, backend), w.server) as bot:
        config.write(text)  # would also drop bob's ban and the admins
        answer = await reload(w.server, w.general, w.admin)
        assert answer["ephemeral"]
        content = answer["content"]
        assert content.startswith(TEXTS.reload_failed.format(error=f"{config.path}: "))
        assert says in content and "\n" not in content, content
        assert f"the config was not reloaded, the running one stays: {config.path}" in caplog.text

        assert await chats(bot, w, w.alice, "still here?")
        assert not await chats(bot, w, w.bob, "me too?")
        assert bot.is_admin(w.admin) and bot.settings.temperature == Settings().temperature


# -- a new model -------------------------------------------------------------------------------


class Model(FunctionStreamer):
    """A model in a thread that answers ``<name>: <what was said>``; ``hold`` waits for
    :attr:`release` first. Records when it is closed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release = threading.Event()
        self.closed = threading.Event()
        super().__init__(self.answer, maximum=4)

    def answer(self, streams: list[Stream]) -> None:
        if self.name == "broken":
            raise RuntimeError("out of memory")
        for stream in streams:
            messages = stream.data.messages
            said = messages[-1]["content"].splitlines()[-1].split(": ", 1)[-1]
            if "hold" in said:
                stream.write(f"{self.name}: holding")
                self.release.wait(30)
            stream.write(f"{self.name}: {said}")

    def close(self, timeout: float = 5.0) -> None:
        self.release.set()
        super().close(timeout)
        self.closed.set()


class Swapper(ChatBot):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.models: list[Model] = []
        super().__init__(*args, **kwargs)

    def new_backend(self, settings: Settings) -> Streamer:
        model = Model(settings.model)
        self.models.append(model)
        model.start_thread()
        return model


async def test_a_new_model_takes_new_chats_and_the_old_one_stops_after_its_chats(
    config: Config,
) -> None:
    w = config.w
    bot = Swapper(config.load(), load_settings=config.load, **FAST)
    old = bot.models[0]
    alice, bob = w.server.create_dm(w.alice), w.server.create_dm(w.bob)
    async with run_bot(bot, w.server):
        await w.server.send_message(alice, w.alice, "hold on")
        await w.server.wait_for(lambda: w.contents(alice) == ["a: holding"], timeout=30)

        config.write(f"admins = [{w.admin.id}]", model="b")
        answer = await reload(w.server, w.general, w.admin)
        assert answer["content"].startswith("Config reloaded: changed model; the new model is")
        new = bot.models[1]
        assert bot.backend is new and bot.streamers == (old, new)

        await w.server.send_message(bob, w.bob, "hi")
        await w.server.wait_for(lambda: w.contents(bob) == ["b: hi"], timeout=30)
        assert old.running and not old.closed.is_set(), "alice's chat still runs on it"

        old.release.set()
        await w.server.wait_for(lambda: w.contents(alice) == ["a: holdinga: hold on"], timeout=30)
        assert await asyncio.to_thread(old.closed.wait, 30), "the old model was closed"
        assert bot.streamers == (new,) and new.running
    assert not new.running, "the bot closed the model it owns"


async def test_a_new_model_that_does_not_start_keeps_the_old_one(config: Config) -> None:
    w = config.w
    bot = Swapper(config.load(), load_settings=config.load, **FAST)
    old = bot.models[0]
    async with run_bot(bot, w.server):
        config.write(f"admins = [{w.admin.id}]\ntemperature = 0.1", model="broken")
        answer = await reload(w.server, w.general, w.admin)
        assert answer["content"].startswith(
            TEXTS.reload_failed.format(error="the new model did not start: ")
        )
        assert "out of memory" in answer["content"]
        assert await asyncio.to_thread(bot.models[1].closed.wait, 30), "it was closed again"
        assert bot.backend is old and bot.streamers == (old,)
        assert bot.settings.temperature == Settings().temperature, "nothing else changed"
        dm = w.server.create_dm(w.alice)
        await w.server.send_message(dm, w.alice, "hi")
        await w.server.wait_for(lambda: w.contents(dm) == ["a: hi"], timeout=30)


# -- SIGHUP, in a real `genbot run` --------------------------------------------------------------


async def test_sighup_reloads_a_running_genbot(tmp_path: Path) -> None:
    async with DiscordServer() as server, openai_stub() as stub:
        guild = server.create_guild("Guild")
        alice, bob = server.create_user("alice"), server.create_user("bob")
        for user in (alice, bob):
            server.add_member(guild, user)
        alice_dm, bob_dm = server.create_dm(alice), server.create_dm(bob)
        config = tmp_path / "genbot.toml"
        settings = f'backend = "openai"\nbase_url = "{stub.base_url}"\nedit_interval = 0.2\n'
        config.write_text(f"{settings}users = {{blacklist = [{alice.id}]}}\n")
        env = {**loopback(server), "DISCORD_TOKEN": server.token}
        # a --set override stays in force through the reload
        args = ("run", "-c", str(config), "-s", "model=stub")

        def replies(dm: FakeChannel) -> list[str]:
            return [m["content"] for m in server.bot_messages(dm)]

        async with genbot_process(*args, cwd=tmp_path, env=env) as bot:
            await server.wait_until_ready(timeout=120)
            await server.send_message(alice_dm, alice, "before")
            await server.send_message(bob_dm, bob, "ping")
            await server.wait_for(lambda: replies(bob_dm) == ["echo: ping"], timeout=60)

            config.write_text(f"{settings}users = {{blacklist = [{bob.id}]}}\n")
            seen = len(bot.lines)
            bot.send_signal(signal.SIGHUP)
            assert "config reloaded: changed users" in await bot.wait_line("config reloaded", seen)

            await server.send_message(alice_dm, alice, "after")
            await server.wait_for(lambda: replies(alice_dm) == ["echo: after"], timeout=60)

            config.write_text("users = [\n")
            seen = len(bot.lines)
            bot.send_signal(signal.SIGHUP)
            line = await bot.wait_line("not reloaded", seen)
            assert f"the running one stays: {config}: not valid TOML" in line
            await server.send_message(alice_dm, alice, "still")
            await server.wait_for(lambda: replies(alice_dm)[-1:] == ["echo: still"], timeout=60)
        # alice's "before" never reached the model: she was blocked then
        assert stub.asked == ["Hi", "bob: ping", "alice: after", "alice: still"]
        assert "Traceback" not in bot.log


def test_compare_names_what_changed_and_when_it_applies() -> None:
    old = Settings()
    assert compare(old, old) == Changes() and Changes().describe() == "nothing changed"
    new = Settings(users=[1], temperature=0.1, sync_commands=False, parallel=2)
    changes = compare(old, new)
    assert changes.changed == ("parallel", "temperature", "users", "sync_commands")
    assert changes.model and changes.at_restart == ("sync_commands",)
    assert changes.describe() == (
        "changed parallel, temperature, users, sync_commands; the new model is ready, the old "
        "one stops once its chats finish; sync_commands applies at the next start"
    )
    assert not compare(old, Settings(system_prompt="Be brief.")).model
