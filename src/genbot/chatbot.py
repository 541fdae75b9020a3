"""The ready-made chat bot: the design's "putting everything together", done with real parts.

One gatekept ``attend`` per channel waits (bounded, showing that it is queued) for a free slot
of the model's Streamer, reads the context at that last moment, streams the reply into Discord
(bounded: a model that stops sending text ends the reply with a note), and attends again when
new messages arrived meanwhile, whatever the outcome of its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import discord

from genbot.access import Access, AccessList
from genbot.attachments import AttachmentReader, Read
from genbot.bot import Genbot, _bounded_in_thread
from genbot.chains import ReplyChain
from genbot.commands import CHATBOT, install_commands
from genbot.context import Context
from genbot.controls import ControlButton, Controls
from genbot.fairness import FairScheduler, FairStream
from genbot.gatekeeping import gatekeep
from genbot.mcp import McpServers
from genbot.memory import Memory, Recall
from genbot.metrics import model_name
from genbot.models import ChatRequest, GenerationSettings
from genbot.modes import find_reanswer, open_thread, opens_thread, reply_to_redo, waking_question
from genbot.output import SAFE_MENTIONS, ReplyButtons, keep_typing, shared_budget, stream_reply
from genbot.profiles import (
    DEFAULT,
    Choice,
    ChoiceStore,
    Resolved,
    format_prompt,
    model_settings,
    profile_settings,
    resolve,
)
from genbot.prompt import context_to_messages
from genbot.quota import LimitTexts, Rate, Usage, estimate_tokens
from genbot.reasoning import ReplyFilter
from genbot.reload import Changes, ReloadError, compare
from genbot.settings import Settings, SettingsError, sees_images
from genbot.store import Store
from genbot.streaming import ModelTimeout, Streamer, StreamError
from genbot.toolloop import NoStep, StepOpener, ToolLimits, tool_loop
from genbot.tools import Tool, Toolbox, select_tools
from genbot.wake import WakeRules

__all__ = ["ChatBot", "make_backend", "shard_options", "warm_up"]

_log = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Streamer:
    """The Streamer that serves ``settings.backend`` (not started yet)."""
    if settings.backend == "llamacpp":
        from genbot.models.llamacpp import LlamaCppStreamer

        return LlamaCppStreamer(
            model_path=settings.model or None,
            n_parallel=settings.parallel,
            mmproj=settings.mmproj or None,
        )
    if settings.backend == "transformers":
        from genbot.models.transformers import TransformersStreamer

        if not settings.model:
            raise ValueError("setting 'model': the transformers backend needs a model name or path")
        return TransformersStreamer(model=settings.model, max_batch=settings.parallel)
    from genbot.models.openai import OpenAIStreamer

    return OpenAIStreamer(
        base_url=settings.base_url,
        model=settings.model or None,
        max_concurrency=settings.parallel,
        connect_timeout=settings.connect_timeout,
        first_token_timeout=settings.first_token_timeout,
        token_timeout=settings.token_timeout,
    )


def shard_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of :class:`genbot.Genbot` that the sharding settings ask for
    (none when unsharded and without an identify lock)."""
    options: dict[str, Any] = {}
    if settings.shard_count:
        options["shard_count"] = settings.shard_count
        options["shard_ids"] = list(settings.shard_ids) or None
    if settings.cluster_redis:
        options["cluster_redis"] = settings.cluster_redis
    return options


def generation_settings(settings: Settings) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        repeat_penalty=settings.repeat_penalty,
        stop=list(settings.stop),
        seed=None if settings.seed < 0 else settings.seed,
    )


async def warm_up(backend: Streamer, timeout: float = 600.0) -> float:
    """Generate one token, so that model loading happens before the bot goes online.

    Returns the seconds it took. Raises :class:`genbot.StreamError` if the model can't load.
    """
    started = time.perf_counter()
    request = ChatRequest(
        messages=[{"role": "user", "content": "Hi"}],
        settings=GenerationSettings(max_new_tokens=1, temperature=0.0),
    )

    async def one_token() -> None:
        async with backend.stream() as stream:
            async for _ in stream(request):
                pass

    try:
        await asyncio.wait_for(one_token(), timeout)
    except asyncio.TimeoutError as error:
        raise TimeoutError(f"the model did not answer within {timeout:.0f} s") from error
    return time.perf_counter() - started


class ChatBot(Genbot):
    """A Discord chat bot served by the model that ``settings`` names.

    Every question gets a visible outcome: the model's reply, or a short note in italics when
    the model fails, stops sending text for ``settings.stall_timeout`` seconds, or returns
    nothing visible. While a chat waits for a free model slot, the bot shows typing; after
    :attr:`queued_after` seconds it also replies with :attr:`queued_text`, a note that later
    becomes the reply, or turns into :attr:`busy_text` once ``settings.queue_timeout`` seconds
    passed without a slot. Messages that arrive while a reply is generated, whatever its
    outcome, get one more reply afterwards. The texts are class attributes, for subclasses to
    override.

    Its settings can change while it runs: :meth:`reconfigure` applies new ones (access lists,
    prompts, sampling, limits, wake rules at the next reply; a new model definition starts the
    new model and stops the old one once its chats finish), and :meth:`reload` reads them again
    from ``load_settings`` (``/reload``, and ``SIGHUP`` under ``genbot run``).

    Several models and profiles (``[models.NAME]``, ``[profiles.NAME]``, ``[[places]]``, see
    :mod:`genbot.profiles`): :meth:`settings_for` gives a reply's settings for its place, and
    each named model has one Streamer (:meth:`backend_of`, made by :meth:`new_backend` at its
    first use, started and warmed up before its first chat, or at the start when the config's
    places or the choices made with ``/model`` and ``/persona`` use it), with its own turns.
    ``backend`` is the ``default`` model's.

    Turns at the model go round-robin across users, then channels (:attr:`turns`, a
    :class:`genbot.fairness.FairScheduler`). Each reply's tokens are counted in :attr:`usage`
    (in the SQLite store in ``settings.data_dir``, opened in ``setup_hook``); a chat over the
    ``user_rate`` limit or a daily token quota gets one short notice (:attr:`limit_texts`)
    until the limit resets, and is not answered. Admins are exempt.

    Parameters
    ----------
    settings: the bot's settings (default: ``Settings()``).
    backend: the Streamer that generates (default: the one ``settings`` names, see
        :meth:`new_backend`); started in ``setup_hook`` if it is not running.
    load_settings: reads the settings again for :meth:`reload` (raising
        :class:`genbot.settings.SettingsError`); ``None``: this bot cannot reload.
    toolbox: the tools the model may call (default: an empty :class:`genbot.tools.Toolbox`;
        register more with :meth:`tool`); the ``tools`` and ``admin_tools`` settings choose
        which a reply offers (see :meth:`_tool_reply`).
    client_kwargs: passed on to :class:`genbot.Genbot`.
    """

    #: Seconds a chat waits for a model slot before the bot replies with :attr:`queued_text`.
    queued_after: float = 3.0
    #: The note shown (in italics) while a chat waits for a free model slot.
    queued_text: str = "Waiting for a free model slot; the reply will appear here."
    #: The note shown (in italics) when no model slot came free within ``queue_timeout``.
    busy_text: str = "The model is busy with other chats. Please try again in a moment."
    #: The note shown (in italics) when the model cannot take the chat at all.
    unavailable_text: str = "The model is not available right now. Please try again later."
    #: What a chat over a rate limit or token quota is told (once, until the limit resets).
    limit_texts: LimitTexts = LimitTexts()

    def __new__(cls, settings: Settings | None = None, *args: Any, **kwargs: Any) -> ChatBot:
        # The sharding settings make a sharded bot (see Genbot.__new__); arguments win.
        options = shard_options(settings) if settings is not None else {}
        return super().__new__(cls, *args, **{**options, **kwargs})

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: Streamer | None = None,
        load_settings: Callable[[], Settings] | None = None,
        toolbox: Toolbox | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.settings = settings or Settings()
        # -- tools (issue 11) --
        self.toolbox = toolbox if toolbox is not None else Toolbox()
        #: Decorator: register a Python function as a tool (:meth:`genbot.tools.Toolbox.tool`).
        self.tool = self.toolbox.tool
        self.load_settings = load_settings
        super().__init__(
            users=self.settings.users,
            roles=self.settings.roles,
            admins=self.settings.admins,
            channels=self.settings.channels,
            ignore_prefix=self.settings.ignore_prefix,
            allow_bots=self.settings.allow_bots,
            sync_commands=self.settings.sync_commands,
            metrics_port=self.settings.metrics_port,
            metrics_host=self.settings.metrics_host,
            **{**shard_options(self.settings), **client_kwargs},
        )
        install_commands(self, CHATBOT)  # /model, /persona, /settings
        self.backend = self.own(backend if backend is not None else self.new_backend(self.settings))
        self.turns = FairScheduler(self.backend, default_slots=self.settings.parallel)
        self._retired_turns: dict[int, FairScheduler] = {}
        self.store = Store(self.settings.data_dir)
        self.usage = Usage(
            self.store,
            rate=Rate.parse(self.settings.user_rate),
            user_tokens_per_day=self.settings.user_tokens_per_day,
            server_tokens_per_day=self.settings.server_tokens_per_day,
        )
        #: What the bot remembers across restarts, when ``settings.memory`` (:mod:`genbot.memory`).
        self.memory = Memory(self.store)
        self.metrics.serving(self.backend, _model_name(self.settings), self.settings.parallel)
        #: The named models' Streamers in use (see :meth:`backend_of`), and their turns.
        self.model_backends: dict[str, Streamer] = {}
        self._model_turns: dict[int, FairScheduler] = {}
        #: Named models created but not started yet, by id, and their starts under way.
        self._cold: dict[int, Streamer] = {}
        self._starting: dict[int, asyncio.Task[None]] = {}
        #: The /persona and /model choices by channel or thread id (read in setup_hook).
        self.choices: dict[int, Choice] = {}
        self.choice_store = ChoiceStore(self.store)
        self._defined = dict(self.settings.models)
        #: Chats (attends) in progress on each backend, by id, and the replaced backends.
        self._chats: dict[int, int] = {}
        self._retired: dict[int, Streamer] = {}
        self._reconfiguring = asyncio.Lock()
        self._closing_retired: set[asyncio.Task[None]] = set()
        #: Stop and Regenerate: the running replies and the button presses (genbot.controls).
        self.controls = Controls(self)

        #: Edited questions to answer again in place, by channel id.
        self._reanswers: dict[int, int] = {}

        # -- MCP servers (issue 11, part 2): started in setup_hook, stopped in _wind_down --
        #: The MCP servers of ``settings.mcp``; ``self.mcp.tools()`` are their tools.
        self.mcp = McpServers(self.settings.mcp)

        #: Reads (and caches) the files people attach, for the context.
        self.attachments = AttachmentReader()

    def new_backend(self, settings: Settings) -> Streamer:
        """The Streamer for the model ``settings`` name (not started): :func:`make_backend`.
        Override it to serve models your own way; a reload with a new model calls it too.

        Parameters
        ----------
        settings:
            The settings naming the model (``backend``, ``model``, ``base_url``, ``parallel``).
        """
        return make_backend(settings)

    # -- reloading ---------------------------------------------------------------------------

    async def reload(self) -> str:
        """Read the settings again (``load_settings``) and apply them (:meth:`reconfigure`).

        Returns one line saying what changed; logs it too.

        Raises
        ------
        ReloadError
            Settings that do not load or a new model that does not start (the running settings
            and model stay), or no ``load_settings``; the error is logged as well.
        """
        try:
            if self.load_settings is None:
                raise ReloadError("this bot was not given a way to load its settings again")
            try:
                settings = await asyncio.to_thread(self.load_settings)
            except SettingsError as error:
                raise ReloadError(str(error)) from error
            line = (await self.reconfigure(settings)).describe()
        except ReloadError as error:
            _log.error("the config was not reloaded, the running one stays: %s", error)
            raise
        _log.info("config reloaded: %s", line)
        return line

    async def reconfigure(self, settings: Settings) -> Changes:
        """Apply ``settings``: everything but the model at the next reply; a changed model
        definition (``backend``, ``model``, ``base_url``, ``parallel``) first starts and warms
        up the new model, then takes new chats there while the old model finishes its chats and
        is closed. ``sync_commands`` applies at the next start. One reconfiguration at a time.

        Parameters
        ----------
        settings:
            The new settings (checked: from :meth:`Settings.load`).

        Raises
        ------
        ReloadError
            The new model did not start; nothing was changed.
        """
        async with self._reconfiguring:
            changes = compare(self.settings, settings)
            fresh = await self._start_model(settings) if changes.model else None
            access = Access(settings.users, settings.roles, settings.admins)
            channels = AccessList.parse(settings.channels, "channels")
            self.access = access
            self.wake_rules = WakeRules(channels, settings.ignore_prefix, settings.allow_bots)
            self.usage.limiter.rate = Rate.parse(settings.user_rate)
            self.usage.user_tokens_per_day = settings.user_tokens_per_day
            self.usage.server_tokens_per_day = settings.server_tokens_per_day
            self.settings = settings
            if fresh is not None:
                old, self.backend = self.backend, self.own(fresh)
                self.metrics.serving(fresh, _model_name(settings), settings.parallel)
                self._retired[id(old)] = old
                # chats still on the old model keep their turns there; new ones take the new
                self._retired_turns[id(old)] = self.turns
                self.turns = FairScheduler(self.backend, default_slots=settings.parallel)
                self._close_if_idle(old)
            self._retire_named_models(settings)
            return changes

    def _turns_of(self, backend: Streamer) -> FairScheduler:
        """The fair turns at ``backend``: the current model's, or a replaced one's."""
        if backend is self.turns.backend:
            return self.turns
        if id(backend) in self._model_turns:
            return self._model_turns[id(backend)]
        return self._retired_turns.setdefault(
            id(backend), FairScheduler(backend, default_slots=self.settings.parallel)
        )

    async def _start_model(self, settings: Settings) -> Streamer:
        """Start and warm up the model ``settings`` name; a failure closes it again."""
        from genbot.cli import model_problem

        fresh: Streamer | None = None
        try:
            fresh = self.new_backend(settings)
            if not fresh.running:
                fresh.start_process()
            _log.info("loading the new model (%s)...", settings.model or "embedded SmolLM2")
            seconds = await warm_up(fresh)
        except Exception as error:
            if fresh is not None:
                await self._close_backend(fresh)
            if isinstance(error, (StreamError, TimeoutError)):
                problem = model_problem(settings, error)
            else:
                problem = f"{type(error).__name__}: {error}"
            raise ReloadError(f"the new model did not start: {problem}") from error
        if self.closing:  # shut down while it loaded: nobody would close it
            await self._close_backend(fresh)
            raise ReloadError("the bot is shutting down")
        _log.info("new model ready in %.1f s", seconds)
        return fresh

    def _borrow(self, channel: discord.abc.Messageable) -> Streamer:
        """The backend a new chat in ``channel`` uses, counted until :meth:`_give_back`."""
        backend = self.backend_of(self.place_of(channel).model)
        self._chats[id(backend)] = self._chats.get(id(backend), 0) + 1
        return backend

    def _give_back(self, backend: Streamer) -> None:
        left = self._chats.get(id(backend), 1) - 1
        if left:
            self._chats[id(backend)] = left
        else:
            self._chats.pop(id(backend), None)
        self._close_if_idle(backend)

    def _close_if_idle(self, backend: Streamer) -> None:
        """Close a replaced backend once no chat uses it any more (in the background)."""
        if id(backend) not in self._retired or id(backend) in self._chats:
            return
        del self._retired[id(backend)]
        self._retired_turns.pop(id(backend), None)
        if not self.close_streamers:  # the streamers outlive the bot: not this one's to close
            self.disown(backend)
            return
        task = asyncio.create_task(self._close_backend(backend), name="genbot: old model")
        self._closing_retired.add(task)
        task.add_done_callback(self._closing_retired.discard)

    async def _close_backend(self, backend: Streamer) -> None:
        self.disown(backend)
        timeout = self.shutdown_timeout
        close = functools.partial(backend.close, timeout)
        await _bounded_in_thread(close, 2 * timeout, repr(backend))
        _log.info("closed the model %r", backend)

    async def _wind_down(self, caller: asyncio.Task[Any] | None) -> None:
        """As :meth:`Genbot.close`'s wind-down, then waits (bounded) for replaced models to
        close and closes the usage store: before discord.py's own close, so that whoever awaits
        ``run()`` or ``close()`` finds the store closed (a connection still closing when the event
        loop ends would keep the process alive)."""
        try:
            await super()._wind_down(caller)
        finally:
            if self._closing_retired:
                await asyncio.wait(self._closing_retired, timeout=2 * self.shutdown_timeout)
            await self.mcp.stop()  # MCP servers (issue 11, part 2); bounded

            await self.memory.close()
            await self.store.close()
            await self.attachments.close()

    async def setup_hook(self) -> None:
        await super().setup_hook()
        self.add_dynamic_items(ControlButton)  # buttons of earlier runs keep working
        await self.usage.open()
        await self.mcp.start()  # MCP servers (issue 11, part 2); one that fails is left out
        self.choices = await self.choice_store.load()
        if not self.backend.running:
            self.backend.start_process()
        _log.info("loading the model (%s)...", self.settings.model or "embedded SmolLM2")
        seconds = await warm_up(self.backend)
        _log.info("model ready in %.1f s", seconds)
        await self._start_used_models()

    @gatekeep
    async def attend(self, channel: discord.abc.Messageable) -> None:
        turn = _Turn(self._borrow(channel))
        try:
            try:
                await self._answer(channel, turn)
            finally:
                self._give_back(turn.backend)
                self.controls.release(turn.claimed)  # edges8: an edit's new answer ended
        except Exception:
            await self._follow_up(channel, turn)
            raise
        await self._follow_up(channel, turn)

    async def _follow_up(self, channel: discord.abc.Messageable, turn: _Turn) -> None:
        """Attend once more if someone wrote after the context was read: after any outcome,
        so a failed reply leaves no question behind; not again without a new message, so a
        backend that always fails is not asked in a loop."""
        if turn.context is None:
            return
        try:
            if not await turn.context.current():
                self.attend.force(channel)
        except Exception:
            _log.exception("checking %s for new messages failed", _where(channel))

    def settings_for(self, channel: discord.abc.Messageable) -> Settings:
        """The settings that apply to a reply in ``channel``: the bot's :attr:`settings` with
        the values of the place's profile, the definition of its model and the system prompt's
        placeholders filled in (see :mod:`genbot.profiles`).

        Parameters
        ----------
        channel:
            Where the reply goes (a channel, thread or DM).
        """
        place = self.place_of(channel)
        settings = model_settings(profile_settings(self.settings, place.profile), place.model)
        prompt = format_prompt(settings.system_prompt, self.placeholders(channel))
        return settings if prompt == settings.system_prompt else _with_prompt(settings, prompt)

    def place_of(self, channel: object) -> Resolved:
        """The profile and model of ``channel``: :func:`genbot.profiles.resolve` over its
        thread, channel, category and server, the config's places and the choices made.

        Parameters
        ----------
        channel:
            A channel, thread or DM.
        """
        places = {p.id: Choice(p.profile, p.model) for p in self.settings.places}
        return resolve(
            place_chain(channel), places, self.choices, self.settings.profiles, self.settings.models
        )

    def placeholders(self, channel: object) -> dict[str, str]:
        """What each system prompt placeholder says in ``channel`` now."""
        now = datetime.datetime.now(datetime.timezone.utc)
        guild = getattr(channel, "guild", None)
        return {
            "date": now.strftime("%Y-%m-%d"),
            "time": now.strftime("%H:%M UTC"),
            "server": guild.name if guild is not None else "Direct Messages",
            "channel": str(getattr(channel, "name", None) or "DM"),
            "bot": self.user.display_name if self.user is not None else "genbot",
        }

    async def choose(self, channel: object, choice: Choice, user: int) -> None:
        """Keep ``choice`` (merged with the place's earlier one) for the channel or thread,
        in memory and in the store; a model not running yet starts at its first chat.

        Parameters
        ----------
        channel:
            Where ``/persona`` or ``/model`` was run.
        choice:
            The new profile and/or model (``None``: unchanged).
        user:
            Who chose.
        """
        place = _channel_id(channel)
        old = self.choices.get(place, Choice())
        merged = Choice(choice.profile or old.profile, choice.model or old.model)
        await self.choice_store.save(place, merged, user, time.time())
        self.choices[place] = merged
        _log.info("%s picked %s in %s", user, merged, _where(channel))

    # -- the named models --------------------------------------------------------------------

    def backend_of(self, model: str) -> Streamer:
        """The Streamer of the model named ``model`` (``default``: :attr:`backend`); a named
        one is made (:meth:`new_backend`) at its first use and started by its first chat.

        Parameters
        ----------
        model:
            ``default`` or a name of the ``models`` tables.
        """
        if model == DEFAULT:
            return self.backend
        backend = self.model_backends.get(model)
        if backend is None:
            settings = model_settings(self.settings, model)
            backend = self.model_backends[model] = self.own(self.new_backend(settings))
            self._model_turns[id(backend)] = FairScheduler(backend, default_slots=settings.parallel)
            self._cold[id(backend)] = backend
            self.metrics.serving(backend, _model_name(settings), settings.parallel, only=False)
        return backend

    async def _model_ready(self, backend: Streamer) -> None:
        """Start and warm up a named model made by :meth:`backend_of`, once (chats waiting for
        it share the start; a failed start is retried by the next chat).

        Raises :class:`genbot.StreamError` when it does not start."""
        if id(backend) not in self._cold:
            return
        task = self._starting.get(id(backend))
        if task is None:
            task = asyncio.create_task(self._warm(backend), name="genbot: model start")
            self._starting[id(backend)] = task
            task.add_done_callback(lambda _: self._starting.pop(id(backend), None))
        await asyncio.shield(task)

    async def _warm(self, backend: Streamer) -> None:
        try:
            if not backend.running:
                backend.start_process()
            _log.info("loading the model %r...", self.metrics.model_of(backend))
            seconds = await warm_up(backend)
        except Exception as error:
            _log.error("the model %r did not start: %s", self.metrics.model_of(backend), error)
            raise StreamError(f"the model did not start: {error}") from error
        self._cold.pop(id(backend), None)
        _log.info("model %r ready in %.1f s", self.metrics.model_of(backend), seconds)

    async def _enter_when_ready(self, slot: Any, backend: Streamer) -> FairStream:
        await self._model_ready(backend)
        entered: FairStream = await slot.__aenter__()
        return entered

    async def _start_used_models(self) -> None:
        """Start the named models that the config's places and the choices made use (each
        place on its own), so their first chats need not wait; others start at their first."""
        settings = self.settings
        places = {p.id: Choice(p.profile, p.model) for p in settings.places}
        used = {
            resolve((place,), places, self.choices, settings.profiles, settings.models).model
            for place in {*places, *self.choices}
        }
        for name in sorted(used - {DEFAULT}):
            try:
                await self._model_ready(self.backend_of(name))
            except StreamError:  # logged; its chats get the unavailable note and retry
                pass

    def _retire_named_models(self, settings: Settings) -> None:
        """After a reload: a named model whose definition changed or is gone stops once its
        chats finish; the new definition starts at its next chat."""
        for name, backend in list(self.model_backends.items()):
            if settings.models.get(name) == self._defined.get(name):
                continue
            del self.model_backends[name]
            self._cold.pop(id(backend), None)
            self._retired[id(backend)] = backend
            self._retired_turns[id(backend)] = self._model_turns.pop(id(backend))
            self._close_if_idle(backend)
        self._defined = dict(settings.models)
        for name, backend in self.model_backends.items():  # a new default model dropped them
            defined = model_settings(settings, name)
            self.metrics.serving(backend, _model_name(defined), defined.parallel, only=False)

    async def _answer(self, channel: discord.abc.Messageable, turn: _Turn) -> None:
        settings = self.settings_for(channel)
        question = await self._first_look(channel, turn)
        if question is None or not await self._admit(channel, question):
            return
        if turn.reuse:  # edges8: one writer per reply; an edit supersedes a regeneration
            turn.claimed = question.id
            self.controls.claim(question.id)
            await self.controls.supersede(question.id)
        try:
            stream, placeholder = await self.metrics.wait_for_slot(
                turn.backend, self._wait_for_slot(channel, question, turn.backend)
            )
        except StreamError:
            await self._note(channel, question, None, self.unavailable_text)
            raise
        if stream is None:
            return
        placeholder = await self._reuse(turn, placeholder)  # an edited question: in place
        answered = question
        try:
            # Our turn at the model: read the context now, so it is as fresh as it can be.
            turn.context = self.context(channel, limit=settings.context_limit)
            fresh, history = await self._question(turn.context, placeholder, turn.replaced)
            if fresh is None or fresh.id != question.id:  # a newer question came meanwhile
                await self._drop(placeholder, keep=turn.reused)
                placeholder = None
            if fresh is None:
                return
            answered = fresh
            history = await self._conversation(channel, fresh, history, turn)
            await self._reply(settings, channel, fresh, history, placeholder, turn, stream)
        except (asyncio.TimeoutError, ModelTimeout) as error:  # the reply shows its note
            stream.failed(error)  # no traceback needed: the bot's or the backend's timeout
            why = (
                error
                if isinstance(error, ModelTimeout)
                else f"the model sent no text for {settings.stall_timeout:.0f} s"
            )
            _log.warning("%s in %s; the reply ended with a note", why, _where(channel))
        except Exception as error:
            stream.failed(error)
            raise
        finally:
            stream.close()
            counted = stream.inner
            if isinstance(counted, FairStream) and counted.deltas:
                await self.usage.record(
                    answered.author.id,
                    _guild_id(channel),
                    estimate_tokens(counted.deltas, counted.chars),
                )

    async def _reply(
        self,
        settings: Settings,
        channel: discord.abc.Messageable,
        question: discord.Message,
        history: list[discord.Message],
        placeholder: discord.Message | None,
        turn: _Turn,
        stream: Any,
        seed: int | None = None,
    ) -> None:
        """Generate the reply to `question` on `stream` from `history` (with memory, the
        attachments, the tools, the reasoning filter and the buttons) and post it (into
        `placeholder` if given): a reply's and a regeneration's (a new `seed`) shared path."""
        assert self.user is not None  # replies happen only while logged in
        # memory and the token budget (genbot.memory): one call
        recall = await self._recall(settings, channel, question, history, placeholder, turn)
        chat = context_to_messages(
            recall.history,
            self.user,
            system_prompt=recall.system_prompt,
            max_chars=recall.max_chars,
            max_tokens=recall.max_tokens,
            count_tokens=recall.count_tokens,
            attachments=await self._read_attachments(recall.history, settings),  # media
        )
        _log.info("replying to %s in %s", question.author.display_name, _where(channel))
        offered = self._offered_tools(settings, question)  # tools (issue 11)
        sampling = generation_settings(settings)
        if seed is not None:
            sampling = dataclasses.replace(sampling, seed=seed)
        request = ChatRequest(chat, sampling, [t.schema() for t in offered])
        try:
            deltas: AsyncIterable[Any] = stream(request)
        except StreamError:  # the turn expired meanwhile, or the worker died: say so
            await self._note(channel, question, placeholder, self.unavailable_text)
            raise
        # tools (issue 11): the reply may take several steps
        deltas = self._tool_reply(
            settings, channel, question, turn, request, offered, deltas, stream
        )
        filtered = ReplyFilter(  # media: reasoning never posted
            deltas, settings.reasoning, hold_chars=settings.reasoning_hold
        )
        older = [m for m in history if placeholder is None or m.id != placeholder.id]
        shown, buttons = self._controlled(settings, question, stream, filtered, older)  # buttons
        sent = await stream_reply(
            channel,
            shown,
            reference=_replied(channel, question),
            placeholder=placeholder,
            interval=settings.edit_interval,
            timeout=settings.stall_timeout,
            budget=shared_budget(settings.discord_requests_per_second),
            buttons=buttons,
        )
        await filtered.finish(sent)  # media: reasoning = "file" attaches it

    # -- Stop and Regenerate (the buttons: genbot.controls) -----------------------------------

    def _controlled(
        self,
        settings: Settings,
        question: discord.Message,
        stream: Any,
        deltas: AsyncIterable[Any],
        history: list[discord.Message],
    ) -> tuple[AsyncIterable[Any], ReplyButtons | None]:
        """With ``settings.buttons``: the reply's deltas made stoppable (registered for Stop)
        and its buttons. The older replies in `history` lose theirs in any case (buttons
        turned off by a reload leave none behind)."""
        self.controls.retire(history)
        if not settings.buttons:
            return deltas, None
        return self.controls.track(question, stream, deltas), self.controls.buttons(question)

    async def regenerate(
        self,
        channel: discord.abc.Messageable,
        question: discord.Message,
        reply: list[discord.Message],
        *,
        presser: discord.abc.User | None = None,
        notify: Callable[[str], Awaitable[object]] | None = None,
        on_slot: Callable[[], object] | None = None,
    ) -> None:
        """Answer `question` again with a new random seed, in the messages of its earlier
        `reply` (the first becomes the new reply; the others are deleted once it has a model
        slot). Counts against the presser's rate limit and quotas like a question (an admin's
        press is exempt); waits for a model slot in the presser's fair turn (bounded by
        ``queue_timeout``); Stop reaches it, waiting or streaming.

        Parameters
        ----------
        channel: where the reply is.
        question: the message the reply answers.
        reply: the reply's messages, first first (see :meth:`Controls._regenerate`).
        presser: who pressed Regenerate, and pays for it; ``None``: the asker.
        notify: shows a refusal's notice privately (the Regenerate press's ephemeral
            followup), every time; without it the notice is a reply, once until the limit
            resets.
        on_slot: called once it has its model slot, before the reply's later messages are
            deleted (from then on the reply is its first message; it has not written yet).

        Raises
        ------
        StreamError
            The model cannot take the chat (the reply shows :attr:`unavailable_text`).
        """
        self._attending_now()  # shutdown waits for it (bounded) as for a reply
        payer = question.author if presser is None else presser  # edges8: the presser pays
        if not reply or not await self._admit(channel, question, notify, user=payer):
            return
        settings = self.settings_for(channel)
        turn = _Turn(self._borrow(channel))
        try:
            slot = self._turns_of(turn.backend).stream(user=payer.id, channel=_channel_id(channel))
            try:
                stream = await asyncio.wait_for(
                    self._enter_when_ready(slot, turn.backend), settings.queue_timeout
                )
            except asyncio.TimeoutError:
                await self._drop_all(reply[1:])
                await self._note(channel, question, reply[0], self.busy_text)
                return
            except StreamError:
                await self._drop_all(reply[1:])
                await self._note(channel, question, reply[0], self.unavailable_text)
                raise
            if on_slot is not None:  # stopslot: Stop from now on ends it on reply[0]
                on_slot()
            await self._drop_all(reply[1:])  # edges8: a cancel while waiting keeps them
            await self._sample_again(channel, settings, question, reply[0], stream, turn, payer)
        finally:
            self._give_back(turn.backend)

    async def _drop_all(self, messages: list[discord.Message]) -> None:
        for message in messages:
            await self._drop(message)

    def _attending_now(self) -> None:
        """Count the running task (a button press's) as an attend until it ends: in
        :meth:`attending`, waited for and then cancelled by a shutdown."""
        task = asyncio.current_task()
        if task is not None:
            self._attends.add(task)
            task.add_done_callback(self._attends.discard)

    async def _sample_again(
        self,
        channel: discord.abc.Messageable,
        settings: Settings,
        question: discord.Message,
        placeholder: discord.Message,
        stream: FairStream,
        turn: _Turn,
        payer: discord.abc.User,
    ) -> None:
        """Regenerate: the context up to `question` as a reply sees it (its channel's history
        or its reply chain), answered on the reply's path (:meth:`_reply`) with a new seed; its
        tokens count for `payer`."""
        try:
            context = self.context(channel, limit=settings.context_limit + _REGENERATE_SLACK)
            history = [m async for m in context if m.id <= question.id]
            history = await self._conversation(
                channel, question, history[: settings.context_limit], turn
            )
            _log.info("regenerating a reply to %s in %s", question.author, _where(channel))
            seed = secrets.randbelow(2**31)
            await self._reply(settings, channel, question, history, placeholder, turn, stream, seed)
        except (asyncio.TimeoutError, ModelTimeout):  # the reply shows its note
            _log.warning("the model stalled while regenerating a reply in %s", _where(channel))
        finally:
            stream.close()
            if stream.deltas:
                await self.usage.record(
                    payer.id,
                    _guild_id(channel),
                    estimate_tokens(stream.deltas, stream.chars),
                )

    # -- tools (issue 11) ----------------------------------------------------------------------

    def _offered_tools(self, settings: Settings, question: discord.Message) -> list[Tool]:
        """The tools a reply to `question` offers, the bot's own and its MCP servers': those
        the ``tools`` setting turns on, less the admin-only ones (``admin_tools``, an MCP
        server's ``admin_only``, or made so in code) unless its author is an admin."""
        tools = [*self.toolbox]
        taken = {t.name for t in tools}
        # MCP servers' tools (issue 11, part 2); a Python tool of the same name wins
        tools += [t for t in self.mcp.tools() if t.name not in taken]
        if not settings.tools or not tools:
            return []
        return select_tools(
            tools, settings.tools, settings.admin_tools, self.is_admin(question.author)
        )

    def _tool_reply(
        self,
        settings: Settings,
        channel: discord.abc.Messageable,
        question: discord.Message,
        turn: _Turn,
        request: ChatRequest,
        offered: list[Tool],
        deltas: AsyncIterable[Any],
        stream: Any,
    ) -> AsyncIterable[Any]:
        """The reply as :func:`genbot.toolloop.tool_loop` streams it (`deltas` as they are
        when no tool is `offered`). Each further step
        waits for a fair turn at the model again: the model's slot is free while the tools
        run, so other chats keep generating (a step waits at most ``queue_timeout``, and no
        longer than half the ``stall_timeout``; then the reply ends with a note)."""
        if not offered:
            return deltas
        # a call ends before the reply's stall watchdog would give up waiting for it
        timeout = min(settings.tool_timeout, 0.9 * settings.stall_timeout)
        limits = ToolLimits(settings.max_tool_steps, timeout, settings.tool_output_chars)
        opener = self._step_opener(channel, question, turn.backend, settings)
        return tool_loop(
            deltas,
            request,
            offered,
            opener,
            limits,
            first_done=stream.close,  # its slot is free already; stop counting it as running
            on_outcome=lambda o: self.metrics.tool_call(o.label, o.kind),
        )

    def _step_opener(
        self,
        channel: discord.abc.Messageable,
        question: discord.Message,
        backend: Streamer,
        settings: Settings,
    ) -> StepOpener:
        """Opens one more step of a tool reply in a fair turn of its own (see
        :meth:`_tool_reply`), counted in the metrics and the usage as a reply's stream is."""
        wait = min(settings.queue_timeout, settings.stall_timeout / 2)

        @contextlib.asynccontextmanager
        async def open_step(request: ChatRequest) -> AsyncIterator[AsyncIterable[Any]]:
            slot = self._turns_of(backend).stream(
                user=question.author.id, channel=_channel_id(channel)
            )
            stream, _ = await self.metrics.wait_for_slot(backend, _enter(slot, wait))
            if stream is None:
                raise NoStep(f"no model slot came free within {wait:g} s")
            try:
                yield stream(request)
            finally:  # a failure is counted once, by the reply (_answer)
                stream.close()
                counted = stream.inner
                if isinstance(counted, FairStream) and counted.deltas:
                    tokens = estimate_tokens(counted.deltas, counted.chars)
                    await self.usage.record(question.author.id, _guild_id(channel), tokens)

        return open_step

    async def _read_attachments(
        self, messages: list[discord.Message], settings: Settings
    ) -> dict[int, Read]:
        """What the model sees of the context's attachments (:mod:`genbot.attachments`)."""
        return await self.attachments.read(
            messages,
            max_bytes=settings.attachment_max_bytes,
            vision=sees_images(settings),
            skip=self.user.id if self.user is not None else None,
        )

    # -- memory (genbot.memory) ---------------------------------------------------------------

    async def _recall(
        self,
        settings: Settings,
        channel: discord.abc.Messageable,
        question: discord.Message,
        history: list[discord.Message],
        placeholder: discord.Message | None,
        turn: _Turn,
    ) -> Recall:
        """The memory's part of a reply's prompt: the history (less what a summary covers), the
        system prompt with the summary and the user's facts, and the (token) budget."""
        assert self.user is not None
        where, turns = _channel_id(channel), self._turns_of(turn.backend)
        return await self.memory.recall(
            settings,
            channel,
            question,
            [m for m in history if placeholder is None or m.id != placeholder.id],
            self.user,
            cached=self.message_cache.cached(where),
            count_texts=getattr(turn.backend, "count_texts", None),
            open_turn=lambda: turns.stream(user=question.author.id, channel=where),
        )

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if self.store.is_open:
            await self.memory.deleted(payload.channel_id, [payload.message_id])

    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        if self.store.is_open:
            await self.memory.deleted(payload.channel_id, payload.message_ids)

    async def _admit(
        self,
        channel: discord.abc.Messageable,
        question: discord.Message,
        notify: Callable[[str], Awaitable[object]] | None = None,
        user: discord.abc.User | None = None,
    ) -> bool:
        """Whether the question's author (or `user`, who pays instead) is within the rate
        limit and quotas (admins are); if not, the first refusal until the limit resets shows
        a note, or every refusal tells `notify` (a button press, answered ephemerally: Discord
        allows it there)."""
        author = question.author if user is None else user
        refusal = await self.usage.admit(
            author.id, _guild_id(channel), exempt=self.is_admin(author)
        )
        if refusal is None:
            return True
        _log.info("not answering %s in %s: over the %s", author, _where(channel), refusal.kind)
        text = self.limit_texts.notice(refusal, self.usage.clock())
        if notify is not None:
            try:
                await notify(f"*{text}*")
            except Exception as exc:  # a notice is never the main outcome
                _log.warning("telling %s of the %s failed: %r", author, refusal.kind, exc)
        elif refusal.notify:
            await self._note(channel, question, None, text)
        return False

    async def _question(
        self,
        context: Context,
        placeholder: discord.Message | None = None,
        replaced: frozenset[int] = frozenset(),
    ) -> tuple[discord.Message | None, list[discord.Message]]:
        """The newest message of someone else when no reply of the bot answers it yet (the
        `placeholder` and the `replaced` parts of an edited question's reply aside), and the
        context read. With reply chains: the newest message that woke the bot, since a chain
        holds only its own question."""
        history = [message async for message in context]
        question = next((m for m in history if m.author != self.user), None)
        if self.settings_for(context.channel).context_mode == "reply_chain":
            question = waking_question(history, self)  # its chain: the message that woke us
        answers = [m for m in history if m.id not in replaced]
        if question is None or _answered(
            question, answers, self.user, placeholder, _starts(context.channel, question)
        ):
            return None, history
        return question, history

    # -- ways to converse (genbot.modes, genbot.chains) -----------------------------------------

    async def _first_look(
        self, channel: discord.abc.Messageable, turn: _Turn
    ) -> discord.Message | None:
        """A first look, without the model: the question to answer here, if any. An edited
        question's old reply is taken up (:meth:`_reuse`) and answered where it is; in thread
        mode a new question goes to a thread of its own (:meth:`_to_thread`), and ``None`` is
        returned."""
        edited = self._reanswers.pop(_channel_id(channel), None)
        limit = self.settings_for(channel).context_limit
        turn.context = self.context(channel, limit=limit)
        if edited is not None and self.user is not None:
            history = [m async for m in turn.context]
            starter = _channel_id(channel) == edited  # thread mode: its thread's starter
            turn.reuse = reply_to_redo(edited, history, self.user.id, starter)
        question, _ = await self._question(turn.context, turn.reused, turn.replaced)
        if not turn.reuse and await self._to_thread(turn.context):  # an edit: where it was
            return None
        return question

    async def _to_thread(self, context: Context) -> bool:
        """Thread mode in a text channel: open a thread from the newest question that woke the
        bot and hand it to the thread's attend. ``False`` elsewhere, or when the thread could
        not be opened (logged): then the question is answered in place."""
        if not opens_thread(self.settings_for(context.channel).reply_mode, context.channel):
            return False
        history = [message async for message in context]
        question = waking_question(history, self)
        if question is None or question.thread is not None:
            return True
        if _answered(question, history, self.user):
            return True  # answered in place before (e.g. when a thread could not be opened)
        thread = await open_thread(question)
        if thread is None:
            return False
        if isinstance(thread, discord.Thread):
            _log.info("opened a thread for %s in %s", question.author, _where(context.channel))
            self._start_attend(thread)
        return True

    async def _conversation(
        self,
        channel: discord.abc.Messageable,
        question: discord.Message,
        history: list[discord.Message],
        turn: _Turn,
    ) -> list[discord.Message]:
        """The messages the model sees for ``question``: the channel's history, or its reply
        chain (``context_mode``); never the parts of a reply being replaced."""
        settings = self.settings_for(channel)
        if settings.context_mode == "reply_chain":
            chain = ReplyChain(self, channel, question, limit=settings.context_limit)
            history = [message async for message in chain]
        replaced = {part.id for part in turn.reuse[1:]}
        return [m for m in history if m.id not in replaced]

    async def _reuse(
        self, turn: _Turn, placeholder: discord.Message | None
    ) -> discord.Message | None:
        """An edited question's answer goes into the bot's old reply: its first message becomes
        the placeholder (a queued note is dropped), the rest of it is deleted."""
        if turn.reused is None:
            return placeholder
        await self._drop(placeholder)
        for part in turn.reuse[1:]:
            await self._drop(part)
        return turn.reused

    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """An edit of the latest question, within ``reanswer_window`` seconds of it, makes the
        bot answer it again in place (see :func:`genbot.modes.find_reanswer`). A subclass that
        overrides this calls ``super()``."""
        message: discord.Message | None = getattr(payload, "message", None)
        if self.closing or message is None:
            return
        where = self._thread_of(message) or message.channel  # thread mode: the answer's there
        settings = self.settings_for(where)
        window, limit = settings.reanswer_window, settings.context_limit
        found = await find_reanswer(self, payload, window, limit, where)
        if found is not None:
            _log.info("answering an edited question again in %s", _where(where))
            self._reanswers[_channel_id(where)] = message.id
            self.attend.force(where)

    def _thread_of(self, message: discord.Message) -> discord.Thread | None:
        """The thread the bot opened from ``message`` (thread mode), if it knows one."""
        thread = message.thread
        me = self.user
        return (
            thread if thread is not None and me is not None and thread.owner_id == me.id else None
        )

    async def _wait_for_slot(
        self, channel: discord.abc.Messageable, question: discord.Message, backend: Streamer
    ) -> tuple[FairStream | None, discord.Message | None]:
        """Wait (bounded by ``queue_timeout``) for a slot of ``backend``, in its fair turn,
        showing typing, and after
        :attr:`queued_after` seconds the queued note. Returns the stream (``None`` when the wait
        timed out, which shows :attr:`busy_text`) and the note, if one was sent.

        Raises :class:`genbot.StreamError` when the model fails while the chat waits.
        """
        slot = self._turns_of(backend).stream(user=question.author.id, channel=_channel_id(channel))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.queue_timeout
        entering = asyncio.ensure_future(self._enter_when_ready(slot, backend))
        typing = asyncio.create_task(keep_typing(channel))
        placeholder = None
        handed = False
        try:
            await asyncio.wait({entering}, timeout=min(self.queued_after, deadline - loop.time()))
            if not entering.done():
                placeholder = await self._note(channel, question, None, self.queued_text)
                await asyncio.wait({entering}, timeout=max(0.0, deadline - loop.time()))
            if not entering.done():
                entering.cancel()
                await asyncio.gather(entering, return_exceptions=True)
            if entering.cancelled():
                _log.warning(
                    "no model slot came free within %.0f s for %s; told the user it is busy",
                    self.settings.queue_timeout,
                    _where(channel),
                )
                await self._note(channel, question, placeholder, self.busy_text)
                return None, None
            if entering.exception() is not None:
                await self._drop(placeholder)
            stream = entering.result()  # raises the StreamError
            handed = True
            return stream, placeholder
        finally:
            typing.cancel()
            if not entering.done():  # this attend was cancelled: leave the queue
                entering.cancel()
            elif not handed and not entering.cancelled() and entering.exception() is None:
                entering.result().close()  # the slot came, but this attend ends anyway

    async def _note(
        self,
        channel: discord.abc.Messageable,
        question: discord.Message,
        placeholder: discord.Message | None,
        text: str,
    ) -> discord.Message | None:
        """Show `text` in italics: in `placeholder` if given, else as a reply to `question`.
        A note that cannot be shown is logged, not raised: it is never the main outcome."""
        content = f"*{text}*"
        try:
            if placeholder is not None:
                return await placeholder.edit(content=content, allowed_mentions=SAFE_MENTIONS)
            target = _replied(channel, question)  # a thread's starter: no reply across channels
            if target is None:
                return await channel.send(content, allowed_mentions=SAFE_MENTIONS)
            return await channel.send(
                content,
                reference=target.to_reference(fail_if_not_exists=False),
                allowed_mentions=SAFE_MENTIONS,
            )
        except Exception as exc:
            _log.warning("showing a note in %s failed: %r", _where(channel), exc)
            return None

    async def _drop(
        self, placeholder: discord.Message | None, keep: discord.Message | None = None
    ) -> None:
        """Delete a queued note that will not become the reply (not `keep`, an old reply)."""
        if placeholder is None or placeholder is keep:
            return
        try:
            await placeholder.delete()
        except Exception as exc:
            _log.warning("deleting a queued note failed: %r", exc)


#: Extra messages a regeneration's context reads, for those newer than its question.
_REGENERATE_SLACK = 16


class _Turn:
    """What one attend read: its newest context, which decides whether to attend again; and
    the backend it uses (the model may be replaced meanwhile)."""

    def __init__(self, backend: Streamer) -> None:
        self.backend = backend
        self.context: Context | None = None
        #: The parts of the bot's reply that an edited question's new answer replaces.
        self.reuse: list[discord.Message] = []
        #: The question whose reply this attend claimed (edges8: one writer per reply).
        self.claimed: int | None = None

    @property
    def reused(self) -> discord.Message | None:
        return self.reuse[0] if self.reuse else None

    @property
    def replaced(self) -> frozenset[int]:
        """The ids of the reply's parts that the new answer replaces."""
        return frozenset(part.id for part in self.reuse)


async def _enter(slot: Any, timeout: float) -> tuple[FairStream | None, None]:
    """Enter a fair slot within `timeout` seconds: its stream, or ``None`` (tools, issue 11).
    Raises :class:`genbot.StreamError` when the model fails meanwhile."""
    entering = asyncio.ensure_future(slot.__aenter__())
    handed = False
    try:
        await asyncio.wait({entering}, timeout=timeout)
        if not entering.done():
            entering.cancel()
            await asyncio.gather(entering, return_exceptions=True)
        if entering.cancelled():
            return None, None
        stream: FairStream = entering.result()  # raises the StreamError
        handed = True
        return stream, None
    finally:
        if not entering.done():  # cancelled meanwhile: leave the queue
            entering.cancel()
        elif not handed and not entering.cancelled() and entering.exception() is None:
            entering.result().close()  # the slot came, but this reply ends anyway


def _answered(
    question: discord.Message,
    history: list[discord.Message],
    bot_user: discord.abc.Snowflake | None,
    placeholder: discord.Message | None = None,
    starter: bool = False,
) -> bool:
    """Whether one of the bot's messages after `question` replies to it. Not just "the bot
    spoke last": messages that arrived while it generated precede its reply, and the follow-up
    attend must still answer them. `placeholder`, the bot's own queued note, does not count.
    A thread's `starter` (in its parent channel) is answered by any message of the bot's in
    the thread, since a reply cannot reach across channels."""
    return any(
        bot_user is not None
        and m.author.id == bot_user.id
        and (starter or (m.reference is not None and m.reference.message_id == question.id))
        and (placeholder is None or m.id != placeholder.id)
        for m in history
        if m.id > question.id
    )


def _replied(channel: object, message: discord.Message) -> discord.Message | None:
    """What a reply to ``message`` in ``channel`` refers to: none for a thread's starter."""
    return None if _starts(channel, message) else message


def _starts(channel: object, message: discord.Message) -> bool:
    """``message`` is the starter of the thread `channel` (it lives in the parent channel)."""
    return isinstance(channel, discord.Thread) and message.id == channel.id


def place_chain(channel: object) -> tuple[int, ...]:
    """The places ``channel`` is in, most specific first: a thread, its channel, the channel's
    category, the server; a DM is its own."""
    chain: list[int] = []
    if isinstance(channel, discord.Thread):
        chain.append(channel.id)
        parent = channel.parent
        chain.append(channel.parent_id)
        category = getattr(parent, "category_id", None)
    else:
        chain.append(_channel_id(channel))
        category = getattr(channel, "category_id", None)
    if category is not None:
        chain.append(category)
    guild_id = _guild_id(channel)
    if guild_id is not None:
        chain.append(guild_id)
    return tuple(chain)


def _with_prompt(settings: Settings, prompt: str) -> Settings:
    return dataclasses.replace(settings, system_prompt=prompt)


def _guild_id(channel: object) -> int | None:
    guild = getattr(channel, "guild", None)
    return guild.id if guild is not None else None


def _channel_id(channel: object) -> int:
    return int(getattr(channel, "id", 0))


def _model_name(settings: Settings) -> str:
    return model_name(settings.backend, settings.model)


def _where(channel: object) -> str:
    if isinstance(channel, discord.DMChannel):
        return "a DM"
    return f"#{getattr(channel, 'name', channel)}"
