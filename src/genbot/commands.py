"""The slash commands every `Genbot` has: ``/reset``, ``/ping``, ``/thread``, ``/shutdown``,
``/reload``, ``/usage``.

Each command is a module-level function that finds its bot as ``interaction.client`` and takes
what it says from ``bot.texts`` (a :class:`Texts`), so a subclass changes a text with one class
attribute::

    class MyBot(genbot.Genbot):
        texts = Texts(not_allowed="Sorry, members only.")

Adding a command is a decorated function; its docstring's first line is its description, and
what it says goes into new fields of :class:`Texts`::

    @builtin("usage")
    async def usage(interaction: Interaction) -> None:
        \"\"\"How many tokens you used today\"\"\"
        await interaction.response.send_message(interaction.client.texts.usage.format(...))

Refusals are ephemeral (only the user sees them). ``/reset`` answers with
:data:`genbot.context.RESET_MARKER`, a visible boundary no context reaches past.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

import discord
from discord import app_commands

from genbot.context import RESET_MARKER
from genbot.memory import Memory, remembered_fact, scope_of
from genbot.quota import Usage
from genbot.reload import ReloadError

if TYPE_CHECKING:
    from genbot.bot import Genbot

__all__ = ["BUILTIN", "Interaction", "Texts", "builtin", "install_commands"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Texts:
    """What the built-in commands say. Override any of them in a subclass of ``Genbot``:
    ``texts = Texts(pong="Pang!")`` (or ``dataclasses.replace(Genbot.texts, ...)``).

    ``descriptions`` maps a command's name to the description Discord shows for it (default: the
    first line of the command function's docstring).
    """

    not_allowed: str = "You may not chat with this bot here."
    not_admin: str = "Only the bot's admins can shut it down."
    command_refused: str = "You may not use this command here."
    command_failed: str = "Sorry, that failed."
    pong: str = "Pong!"
    #: ``{ms}``: the gateway latency in milliseconds (a float).
    pong_latency: str = "Pong! ({ms:.0f} ms)"
    thread_needs_text_channel: str = "Threads can be opened in a server's text channels."
    #: ``{thread}``: a mention of the new thread.
    thread_opened: str = "Opened {thread}."
    shutting_down: str = "Shutting down."
    not_admin_reload: str = "Only the bot's admins can reload its config."
    #: ``{changes}``: one line saying what changed.
    reloaded: str = "Config reloaded: {changes}."
    #: ``{error}``: why (one line, e.g. the config file's error).
    reload_failed: str = "The config was not reloaded, the running one stays: {error}"
    #: ``/usage``: ``{tokens}``, ``{replies}``: today's counts (UTC); ``{quota}``: the quota.
    usage_user: str = "Today (UTC) you used {tokens} tokens in {replies} replies."
    usage_user_quota: str = " Your daily quota is {quota} tokens."
    usage_rate: str = " Your rate limit is {rate}."
    usage_server: str = "Today (UTC) this server used {tokens} tokens in {replies} replies."
    usage_server_quota: str = " Its daily quota is {quota} tokens."
    usage_not_admin: str = "Only the bot's admins can see a server's use."
    usage_needs_server: str = "Ask for a server's use in that server."
    usage_off: str = "This bot does not count usage."
    # -- /model, /persona, /settings (profiles and places) --
    #: ``{model}``, ``{persona}``: a name; ``{names}``: the names to pick from.
    model_current: str = "This channel's model is **{model}** (pick one of: {names})."
    model_set: str = "This channel now uses the model **{model}**."
    model_unknown: str = "There is no model named {model!r}; pick one of: {names}."
    persona_current: str = "This channel's persona is **{persona}** (pick one of: {names})."
    persona_set: str = "This channel now uses the persona **{persona}**."
    persona_unknown: str = "There is no persona named {persona!r}; pick one of: {names}."
    #: ``{permission}``: the permission that allows it (setting ``choose_permission``).
    choose_refused: str = (
        "Only the bot's admins and members with the {permission} permission here can change "
        "this channel's model or persona."
    )
    choose_refused_admins: str = "Only the bot's admins can change this channel's model or persona."
    choose_off: str = "This bot has no models or personas to pick."

    #: ``/memory`` (see :mod:`genbot.memory`).
    memory_off: str = "This bot keeps no memory."
    #: ``{facts}``: numbered lines.
    memory_facts: str = "What you asked me to remember here:\n{facts}"
    memory_no_facts: str = "You asked me to remember nothing here."
    #: ``{summary}``: the channel's summary.
    memory_summary: str = "\n\nMy summary of this channel's earlier conversation:\n{summary}"
    #: ``{fact}``: what was stored.
    memory_remembered: str = "I will remember: {fact}"
    #: ``{count}``: how many facts were deleted.
    memory_forgot: str = "Forgot {count} of your facts here."
    memory_bad_forget: str = "Say `all`, or the number of a fact `/memory` shows."
    memory_channel_forgot: str = "Forgot this channel's summary."
    memory_channel_nothing: str = "This channel has no summary to forget."
    memory_not_admin: str = "Only the bot's admins can clear a channel's memory."
    descriptions: Mapping[str, str] = field(default_factory=dict)


if TYPE_CHECKING:
    from genbot.chatbot import ChatBot

# Kept for callers of the first release; the texts live in Texts now.
NOT_ALLOWED = Texts.not_allowed
NOT_ADMIN = Texts.not_admin

Interaction: TypeAlias = "discord.Interaction[Genbot]"
Callback: TypeAlias = Callable[..., Coroutine[Any, Any, None]]

#: The built-in commands by name, in the order they are registered.
BUILTIN: dict[str, Callback] = {}
#: The commands the ready-made chat bot (:class:`genbot.chatbot.ChatBot`) adds to them.
CHATBOT: dict[str, Callback] = {}


def builtin(
    name: str, registry: dict[str, Callback] | None = None
) -> Callable[[Callback], Callback]:
    """Register the decorated coroutine function as the built-in command ``/name``.

    Parameters
    ----------
    name:
        The command's name (Discord's rules: 1-32 lowercase letters, digits, ``-`` or ``_``).
    registry:
        Where: :data:`BUILTIN` (every bot, the default) or :data:`CHATBOT`.

    Raises
    ------
    ValueError
        When a command of that name is registered already.
    """

    commands = BUILTIN if registry is None else registry

    def register(callback: Callback) -> Callback:
        if name in commands:
            raise ValueError(f"a built-in command /{name} is registered already")
        commands[name] = callback
        return callback

    return register


def install_commands(bot: Genbot, commands: Mapping[str, Callback] | None = None) -> None:
    """Add ``commands`` (default: :data:`BUILTIN`) and the error handler to ``bot.tree``, with
    descriptions from ``bot.texts.descriptions`` or else the functions' docstrings."""
    for name, callback in (BUILTIN if commands is None else commands).items():
        doc = inspect.getdoc(callback) or name
        description = bot.texts.descriptions.get(name) or doc.splitlines()[0]
        bot.tree.add_command(
            app_commands.Command(name=name, description=description, callback=callback)
        )
    bot.tree.error(on_command_error)


async def _refuse(interaction: Interaction, text: str) -> None:
    await interaction.response.send_message(text, ephemeral=True)


@builtin("reset")
async def reset(interaction: Interaction) -> None:
    """Start afresh: the bot forgets everything before this"""
    bot = interaction.client
    if not bot.may_chat(interaction.user, interaction.channel):
        return await _refuse(interaction, bot.texts.not_allowed)
    await interaction.response.send_message(
        RESET_MARKER, allowed_mentions=discord.AllowedMentions.none()
    )


@builtin("ping")
async def ping(interaction: Interaction) -> None:
    """Check that the bot is alive"""
    # a sharded bot: the latency of the shard this command came on
    texts, latency = interaction.client.texts, interaction.client.latency_of(interaction.guild_id)
    measured = math.isfinite(latency)  # NaN or infinity until the first heartbeat's answer
    await interaction.response.send_message(
        texts.pong_latency.format(ms=latency * 1000) if measured else texts.pong
    )


ThreadName = app_commands.Range[str, 1, 100]


@builtin("thread")
@app_commands.describe(name="The thread's name")
async def thread(interaction: Interaction, name: ThreadName) -> None:
    """Open a thread to chat with the bot"""
    bot, channel = interaction.client, interaction.channel
    if not isinstance(channel, discord.TextChannel):
        return await _refuse(interaction, bot.texts.thread_needs_text_channel)
    if not bot.may_chat(interaction.user, channel):
        return await _refuse(interaction, bot.texts.not_allowed)
    # Two requests (rate limits may hold them up) before the answer: Discord drops an
    # interaction not acknowledged within 3 s, so acknowledge it first.
    await interaction.response.defer(ephemeral=True, thinking=True)
    opened = await channel.create_thread(name=name, type=discord.ChannelType.public_thread)
    await opened.add_user(interaction.user)
    await interaction.followup.send(
        bot.texts.thread_opened.format(thread=opened.mention), ephemeral=True
    )


@builtin("shutdown")
async def shutdown(interaction: Interaction) -> None:
    """Shut the bot down (admins only)"""
    # Closes this process (its bot and all its shards); a bot sharded over several processes
    # keeps the others running.
    bot = interaction.client
    if not bot.is_admin(interaction.user):
        return await _refuse(interaction, bot.texts.not_admin)
    await interaction.response.send_message(bot.texts.shutting_down, ephemeral=True)
    _log.info("shutdown requested by %s (%s)", interaction.user, interaction.user.id)
    # not awaited here: close() must not wait for this interaction's own handler
    _background.add(task := asyncio.create_task(bot.close(), name="genbot: /shutdown"))
    task.add_done_callback(_background.discard)


@builtin("reload")
async def reload(interaction: Interaction) -> None:
    """Re-read the bot's config and apply it (admins only)"""
    bot = interaction.client
    if not bot.is_admin(interaction.user):
        return await _refuse(interaction, bot.texts.not_admin_reload)
    # a new model may take a while to load: acknowledge within Discord's 3 s first
    await interaction.response.defer(ephemeral=True, thinking=True)
    _log.info("reload requested by %s (%s)", interaction.user, interaction.user.id)
    try:
        changes = await bot.reload()
    except ReloadError as error:  # logged by the bot; the admin sees the one line
        text = bot.texts.reload_failed.format(error=error)
    else:
        text = bot.texts.reloaded.format(changes=changes)
    await interaction.followup.send(text[:2000], ephemeral=True)


@builtin("usage")
@app_commands.describe(server="Show this server's use instead of yours (admins only)")
async def usage(interaction: Interaction, server: bool = False) -> None:
    """How many tokens you used today"""
    bot, texts = interaction.client, interaction.client.texts
    counts = getattr(bot, "usage", None)
    if not isinstance(counts, Usage):
        return await _refuse(interaction, texts.usage_off)
    if not server:
        used = await counts.used("user", interaction.user.id)
        text = texts.usage_user.format(tokens=used.tokens, replies=used.replies)
        if counts.user_tokens_per_day:
            text += texts.usage_user_quota.format(quota=counts.user_tokens_per_day)
        if counts.rate is not None:
            text += texts.usage_rate.format(rate=counts.rate.text)
    elif not bot.is_admin(interaction.user):
        return await _refuse(interaction, texts.usage_not_admin)
    elif interaction.guild_id is None:
        return await _refuse(interaction, texts.usage_needs_server)
    else:
        used = await counts.used("server", interaction.guild_id)
        text = texts.usage_server.format(tokens=used.tokens, replies=used.replies)
        if counts.server_tokens_per_day:
            text += texts.usage_server_quota.format(quota=counts.server_tokens_per_day)
    await interaction.response.send_message(text, ephemeral=True)


# -- /model, /persona, /settings: the ready-made chat bot's profiles and places -----------------


def name_choices(names: Iterable[str], typed: str, most: int = 25) -> list[str]:
    """The names to offer for what was ``typed`` so far: those that start with it, then those
    that hold it (case-insensitive), at most ``most`` (Discord shows 25).

    Parameters
    ----------
    names:
        The names to pick from, in their order.
    typed:
        What the user typed in the option so far.
    most:
        How many to offer.
    """
    typed = typed.casefold()
    starting = [n for n in names if n.casefold().startswith(typed)]
    holding = [n for n in names if typed in n.casefold() and n not in starting]
    return (starting + holding)[:most]


def _chatbot(interaction: Interaction) -> ChatBot:
    from genbot.chatbot import ChatBot

    bot = interaction.client
    if not isinstance(bot, ChatBot):  # pragma: no cover - only a ChatBot installs CHATBOT
        raise TypeError("/model, /persona and /settings need a genbot.chatbot.ChatBot")
    return bot


def _model_names(bot: ChatBot) -> list[str]:
    from genbot.profiles import DEFAULT

    return [DEFAULT, *bot.settings.models]


def _persona_names(bot: ChatBot) -> list[str]:
    from genbot.profiles import DEFAULT

    return [DEFAULT, *bot.settings.profiles]


async def _complete_models(interaction: Interaction, typed: str) -> list[app_commands.Choice[str]]:
    names = name_choices(_model_names(_chatbot(interaction)), typed)
    return [app_commands.Choice(name=n, value=n) for n in names]


async def _complete_personas(
    interaction: Interaction, typed: str
) -> list[app_commands.Choice[str]]:
    names = name_choices(_persona_names(_chatbot(interaction)), typed)
    return [app_commands.Choice(name=n, value=n) for n in names]


def may_choose(bot: ChatBot, interaction: Interaction) -> bool:
    """Whether the user may set the model or persona where ``interaction`` was run: an admin;
    in a server a member with the ``choose_permission`` permission in that channel; in a DM
    the person the bot talks to there (their own conversation), unless ``choose_permission``
    is empty (admins only)."""
    if bot.is_admin(interaction.user):
        return True
    flag = bot.settings.choose_permission
    if not flag:
        return False
    if interaction.guild_id is None:  # a DM: the user's own conversation with the bot
        return True
    return bool(getattr(interaction.permissions, flag, False))


async def _pick(interaction: Interaction, what: str, name: str | None) -> None:
    """``/model`` or ``/persona`` (``what``): show the current one, or set ``name``."""
    from genbot.profiles import Choice

    bot, texts, channel = _chatbot(interaction), interaction.client.texts, interaction.channel
    names = _model_names(bot) if what == "model" else _persona_names(bot)
    shown = ", ".join(names)
    key = "model" if what == "model" else "persona"
    if channel is None or not bot.may_chat(interaction.user, channel):
        return await _refuse(interaction, texts.not_allowed)
    if len(names) == 1 and name is None:
        return await _refuse(interaction, texts.choose_off)
    place = bot.place_of(channel)
    if name is None:
        current = place.model if what == "model" else place.profile
        text = getattr(texts, f"{key}_current").format(**{key: current}, names=shown)
        return await _refuse(interaction, text)
    if not may_choose(bot, interaction):
        flag = bot.settings.choose_permission
        refusal = texts.choose_refused if flag else texts.choose_refused_admins
        return await _refuse(interaction, refusal.format(permission=_permission_name(flag)))
    if name not in names:
        text = getattr(texts, f"{key}_unknown").format(**{key: name}, names=shown)
        return await _refuse(interaction, text)
    choice = Choice(model=name) if what == "model" else Choice(profile=name)
    await bot.choose(channel, choice, interaction.user.id)
    await _refuse(interaction, getattr(texts, f"{key}_set").format(**{key: name}))


def _permission_name(flag: str) -> str:
    return " ".join(word.capitalize() for word in flag.split("_"))


@builtin("model", CHATBOT)
@app_commands.describe(name="The model to use here (empty: show the current one)")
@app_commands.autocomplete(name=_complete_models)
async def model(interaction: Interaction, name: str | None = None) -> None:
    """Show or set the model that answers in this channel"""
    await _pick(interaction, "model", name)


@builtin("persona", CHATBOT)
@app_commands.describe(name="The persona (profile) to use here (empty: show the current one)")
@app_commands.autocomplete(name=_complete_personas)
async def persona(interaction: Interaction, name: str | None = None) -> None:
    """Show or set the persona (profile) that answers in this channel"""
    await _pick(interaction, "persona", name)


@builtin("settings", CHATBOT)
async def settings(interaction: Interaction) -> None:
    """Show the model, persona and settings that answer in this channel"""
    bot, channel = _chatbot(interaction), interaction.channel
    if channel is None or not bot.may_chat(interaction.user, channel):
        return await _refuse(interaction, bot.texts.not_allowed)
    await _refuse(interaction, settings_text(bot, channel)[:2000])


def settings_text(bot: ChatBot, channel: Any) -> str:
    """What ``/settings`` shows for ``channel``: the effective profile, model, sampling,
    context and wake rule."""
    place = bot.place_of(channel)
    used = bot.settings_for(channel)
    seed = "random" if used.seed < 0 else str(used.seed)
    prompt = used.system_prompt or "(none)"
    if len(prompt) > 300:
        prompt = prompt[:299] + "…"
    return "\n".join(
        [
            f"**Persona**: {place.profile} ({_origin(place.profile_from)})",
            f"**Model**: {place.model} ({_origin(place.model_from)}): {used.backend}, "
            f"{used.model or 'default model'}",
            f"**Sampling**: temperature {used.temperature:g}, top_p {used.top_p:g}, "
            f"repeat_penalty {used.repeat_penalty:g}, max_new_tokens {used.max_new_tokens}, "
            f"seed {seed}",
            f"**Context**: up to {used.context_limit} messages, {used.context_chars} characters",
            f"**Wakes on**: {wake_text(bot, channel)}",
            f"**System prompt**: {prompt}",
        ]
    )


_ORIGINS = {
    "chosen": "picked here with a command",
    "config": "the config's place {id}",
    "profile": "the persona's model",
    "default": "the default",
}


def _origin(origin: tuple[str, int]) -> str:
    kind, place = origin
    return _ORIGINS[kind].format(id=place)


def wake_text(bot: Genbot, channel: Any) -> str:
    """Which messages wake the bot in ``channel``, in words (see :mod:`genbot.wake`)."""
    rules = bot.wake_rules
    ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)}
    ignored = f"; messages starting with {rules.ignore_prefix!r} are ignored"
    ignored = ignored if rules.ignore_prefix else ""
    if ids & (rules.channels.blacklist or frozenset()):
        return "nothing (this channel is in the channels blacklist)"
    if isinstance(channel, discord.DMChannel) or ids & (rules.channels.whitelist or frozenset()):
        return "every message" + ignored
    if isinstance(channel, discord.Thread):
        return "every message in a thread the bot is in, else mentions and replies" + ignored
    return "mentions of the bot and replies to it" + ignored


@builtin("memory", CHATBOT)
@app_commands.describe(
    remember="A fact for the bot to remember about you here",
    forget="Forget your facts here: all, or the number /memory shows",
    channel="With forget: clear this channel's summary instead (admins only)",
)
async def memory(
    interaction: Interaction,
    remember: app_commands.Range[str, 1, 300] | None = None,
    forget: str | None = None,
    channel: bool = False,
) -> None:
    """What the bot remembers about you (only you see it)"""
    bot, texts = interaction.client, interaction.client.texts
    kept = getattr(bot, "memory", None)
    settings_for = getattr(bot, "settings_for", None)
    if not isinstance(kept, Memory) or settings_for is None:
        return await _refuse(interaction, texts.memory_off)
    if not bot.may_chat(interaction.user, interaction.channel):
        return await _refuse(interaction, texts.not_allowed)
    if channel:
        if not bot.is_admin(interaction.user):
            return await _refuse(interaction, texts.memory_not_admin)
        cleared = await kept.drop_channel(interaction.channel_id or 0)
        text = texts.memory_channel_forgot if cleared else texts.memory_channel_nothing
    elif not settings_for(interaction.channel).memory:
        return await _refuse(interaction, texts.memory_off)
    else:
        handler = _memory_forget if forget is not None else _memory_remember if remember else None
        text = await (handler or _memory_show)(interaction, kept, forget or remember or "")
    await interaction.response.send_message(text[:2000], ephemeral=True)


async def _memory_show(interaction: Interaction, kept: Memory, _: str) -> str:
    texts, scope = interaction.client.texts, scope_of(interaction.channel)
    days = interaction.client.settings_for(interaction.channel).memory_days  # type: ignore[attr-defined]
    await kept.rows.prune(kept.clock(), days)
    facts = await kept.rows.facts(interaction.user.id, scope)
    lines = "\n".join(f"{i}. {fact.text}" for i, fact in enumerate(facts, 1))
    text = texts.memory_facts.format(facts=lines) if facts else texts.memory_no_facts
    summary = await kept.rows.summary(interaction.channel_id or 0)
    if summary is not None:
        text += texts.memory_summary.format(summary=summary.text)
    return text


async def _memory_remember(interaction: Interaction, kept: Memory, what: str) -> str:
    fact = remembered_fact(f"remember: {what}") or what
    await kept.rows.add_fact(
        interaction.user.id, scope_of(interaction.channel), fact, kept.clock(), None
    )
    return interaction.client.texts.memory_remembered.format(fact=fact)


async def _memory_forget(interaction: Interaction, kept: Memory, which: str) -> str:
    texts, scope = interaction.client.texts, scope_of(interaction.channel)
    which = which.strip().lower()
    ids: list[int] | None = None
    if which != "all":
        facts = await kept.rows.facts(interaction.user.id, scope)
        if not which.isdigit() or not 1 <= int(which) <= len(facts):
            return texts.memory_bad_forget
        ids = [facts[int(which) - 1].id]
    count = await kept.rows.forget_facts(interaction.user.id, scope, ids)
    return texts.memory_forgot.format(count=count)


async def on_command_error(interaction: Interaction, error: app_commands.AppCommandError) -> None:
    """The tree's error handler: a short ephemeral answer; unexpected errors are logged."""
    texts = interaction.client.texts
    if isinstance(error, app_commands.CheckFailure):
        text = texts.command_refused
    else:
        _log.error(
            "command /%s failed", interaction.command and interaction.command.name, exc_info=error
        )
        text = texts.command_failed
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
    else:  # deferred: fill in the "thinking..." message
        await interaction.followup.send(text, ephemeral=True)


#: Strong references to fire-and-forget tasks (asyncio keeps only weak ones).
_background: set[asyncio.Task[None]] = set()
