"""The ready-made chat bot: the design's "putting everything together", done with real parts.

One gatekept ``attend`` per channel waits (bounded, showing that it is queued) for a free slot
of the model's Streamer, reads the context at that last moment, streams the reply into Discord
(bounded: a model that stops sending text ends the reply with a note), and attends again when
new messages arrived meanwhile, whatever the outcome of its reply.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import discord

from genbot.access import Access, AccessList
from genbot.bot import Genbot, _bounded_in_thread
from genbot.context import Context
from genbot.fairness import FairScheduler, FairStream
from genbot.gatekeeping import gatekeep
from genbot.memory import Memory, Recall
from genbot.metrics import model_name
from genbot.models import ChatRequest, GenerationSettings
from genbot.output import SAFE_MENTIONS, keep_typing, shared_budget, stream_reply
from genbot.prompt import context_to_messages
from genbot.quota import LimitTexts, Rate, Usage, estimate_tokens
from genbot.reload import Changes, ReloadError, compare
from genbot.settings import Settings, SettingsError
from genbot.store import Store
from genbot.streaming import Streamer, StreamError
from genbot.wake import WakeRules

__all__ = ["ChatBot", "make_backend", "warm_up"]

_log = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Streamer:
    """The Streamer that serves ``settings.backend`` (not started yet)."""
    if settings.backend == "llamacpp":
        from genbot.models.llamacpp import LlamaCppStreamer

        return LlamaCppStreamer(model_path=settings.model or None, n_parallel=settings.parallel)
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

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: Streamer | None = None,
        load_settings: Callable[[], Settings] | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.settings = settings or Settings()
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
            **client_kwargs,
        )
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
        #: Chats (attends) in progress on each backend, by id, and the replaced backends.
        self._chats: dict[int, int] = {}
        self._retired: dict[int, Streamer] = {}
        self._reconfiguring = asyncio.Lock()
        self._closing_retired: set[asyncio.Task[None]] = set()

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
            return changes

    def _turns_of(self, backend: Streamer) -> FairScheduler:
        """The fair turns at ``backend``: the current model's, or a replaced one's."""
        if backend is self.turns.backend:
            return self.turns
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

    def _borrow(self) -> Streamer:
        """The backend a new chat uses, counted until :meth:`_give_back`."""
        backend = self.backend
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
            await self.memory.close()
            await self.store.close()

    async def setup_hook(self) -> None:
        await super().setup_hook()
        await self.usage.open()
        if not self.backend.running:
            self.backend.start_process()
        _log.info("loading the model (%s)...", self.settings.model or "embedded SmolLM2")
        seconds = await warm_up(self.backend)
        _log.info("model ready in %.1f s", seconds)

    @gatekeep
    async def attend(self, channel: discord.abc.Messageable) -> None:
        turn = _Turn(self._borrow())
        try:
            try:
                await self._answer(channel, turn)
            finally:
                self._give_back(turn.backend)
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
        """The settings that apply to a reply in ``channel``: the bot's :attr:`settings`.

        Parameters
        ----------
        channel:
            Where the reply goes (a channel, thread or DM).
        """
        return self.settings

    async def _answer(self, channel: discord.abc.Messageable, turn: _Turn) -> None:
        settings = self.settings_for(channel)
        # A first look, without the model: is there a question to answer at all?
        turn.context = self.context(channel, limit=settings.context_limit)
        question, _ = await self._question(turn.context)
        if question is None or not await self._admit(channel, question):
            return
        try:
            stream, placeholder = await self.metrics.wait_for_slot(
                turn.backend, self._wait_for_slot(channel, question, turn.backend)
            )
        except StreamError:
            await self._note(channel, question, None, self.unavailable_text)
            raise
        if stream is None:
            return
        answered = question
        try:
            # Our turn at the model: read the context now, so it is as fresh as it can be.
            turn.context = self.context(channel, limit=settings.context_limit)
            fresh, history = await self._question(turn.context, placeholder)
            if fresh is None or fresh.id != question.id:  # a newer question came meanwhile
                await self._drop(placeholder)
                placeholder = None
            if fresh is None:
                return
            answered = fresh
            assert self.user is not None  # attend runs only while logged in
            # memory and the token budget (genbot.memory): one call
            recall = await self._recall(settings, channel, fresh, history, placeholder, turn)
            chat = context_to_messages(
                recall.history,
                self.user,
                system_prompt=recall.system_prompt,
                max_chars=recall.max_chars,
                max_tokens=recall.max_tokens,
                count_tokens=recall.count_tokens,
            )
            _log.info("replying to %s in %s", fresh.author.display_name, _where(channel))
            try:
                deltas = stream(ChatRequest(chat, generation_settings(settings)))
            except StreamError:  # the turn expired meanwhile, or the worker died: say so
                await self._note(channel, fresh, placeholder, self.unavailable_text)
                raise
            await stream_reply(
                channel,
                deltas,
                reference=fresh,
                placeholder=placeholder,
                interval=settings.edit_interval,
                timeout=settings.stall_timeout,
                budget=shared_budget(settings.discord_requests_per_second),
            )
        except asyncio.TimeoutError as error:  # the reply shows its note; no traceback needed
            stream.failed(error)
            _log.warning(
                "the model sent no text for %.0f s in %s; the reply ended with a note",
                settings.stall_timeout,
                _where(channel),
            )
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

    async def _admit(self, channel: discord.abc.Messageable, question: discord.Message) -> bool:
        """Whether the question's author is within the rate limit and quotas (admins are);
        if not, the first refusal until the limit resets shows a note."""
        author = question.author
        refusal = await self.usage.admit(
            author.id, _guild_id(channel), exempt=self.is_admin(author)
        )
        if refusal is None:
            return True
        _log.info("not answering %s in %s: over the %s", author, _where(channel), refusal.kind)
        if refusal.notify:
            text = self.limit_texts.notice(refusal, self.usage.clock())
            await self._note(channel, question, None, text)
        return False

    async def _question(
        self, context: Context, placeholder: discord.Message | None = None
    ) -> tuple[discord.Message | None, list[discord.Message]]:
        """The newest message of someone else when no reply of the bot answers it yet (the
        `placeholder` aside), and the context read."""
        history = [message async for message in context]
        question = next((m for m in history if m.author != self.user), None)
        if question is None or _answered(question, history, self.user, placeholder):
            return None, history
        return question, history

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
        entering = asyncio.ensure_future(slot.__aenter__())
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
            return await channel.send(
                content,
                reference=question.to_reference(fail_if_not_exists=False),
                allowed_mentions=SAFE_MENTIONS,
            )
        except Exception as exc:
            _log.warning("showing a note in %s failed: %r", _where(channel), exc)
            return None

    async def _drop(self, placeholder: discord.Message | None) -> None:
        """Delete a queued note that will not become the reply."""
        if placeholder is None:
            return
        try:
            await placeholder.delete()
        except Exception as exc:
            _log.warning("deleting a queued note failed: %r", exc)


class _Turn:
    """What one attend read: its newest context, which decides whether to attend again; and
    the backend it uses (the model may be replaced meanwhile)."""

    def __init__(self, backend: Streamer) -> None:
        self.backend = backend
        self.context: Context | None = None


def _answered(
    question: discord.Message,
    history: list[discord.Message],
    bot_user: discord.abc.Snowflake | None,
    placeholder: discord.Message | None = None,
) -> bool:
    """Whether one of the bot's messages after `question` replies to it. Not just "the bot
    spoke last": messages that arrived while it generated precede its reply, and the follow-up
    attend must still answer them. `placeholder`, the bot's own queued note, does not count."""
    return any(
        bot_user is not None
        and m.author.id == bot_user.id
        and m.reference is not None
        and m.reference.message_id == question.id
        and (placeholder is None or m.id != placeholder.id)
        for m in history
        if m.id > question.id
    )


def _guild_id(channel: discord.abc.Messageable) -> int | None:
    guild = getattr(channel, "guild", None)
    return guild.id if guild is not None else None


def _channel_id(channel: discord.abc.Messageable) -> int:
    return int(getattr(channel, "id", 0))


def _model_name(settings: Settings) -> str:
    return model_name(settings.backend, settings.model)


def _where(channel: discord.abc.Messageable) -> str:
    if isinstance(channel, discord.DMChannel):
        return "a DM"
    return f"#{getattr(channel, 'name', channel)}"
