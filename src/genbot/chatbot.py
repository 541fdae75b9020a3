"""The ready-made chat bot: the design's "putting everything together", done with real parts.

One gatekept ``attend`` per channel waits for a free slot of the model's Streamer, reads the
context at that last moment, streams the reply into Discord, and attends again when new messages
arrived while it was generating.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import discord

from genbot.bot import Genbot
from genbot.gatekeeping import gatekeep
from genbot.models import ChatRequest, GenerationSettings
from genbot.output import stream_reply
from genbot.prompt import context_to_messages
from genbot.settings import Settings
from genbot.streaming import Streamer

__all__ = ["ChatBot", "make_backend", "warm_up"]

log = logging.getLogger(__name__)


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

    return OpenAIStreamer(base_url=settings.base_url, model=settings.model or None,
                          max_concurrency=settings.parallel)


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
    request = ChatRequest(messages=[{"role": "user", "content": "Hi"}],
                          settings=GenerationSettings(max_new_tokens=1, temperature=0.0))

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
    """A Discord chat bot served by the model that ``settings`` names."""

    def __init__(self, settings: Settings | None = None, *, backend: Streamer | None = None,
                 **client_kwargs: Any) -> None:
        self.settings = settings or Settings()
        super().__init__(
            users=self.settings.users, roles=self.settings.roles, admins=self.settings.admins,
            channels=self.settings.channels, ignore_prefix=self.settings.ignore_prefix,
            allow_bots=self.settings.allow_bots, sync_commands=self.settings.sync_commands,
            **client_kwargs,
        )
        self.backend = backend if backend is not None else make_backend(self.settings)
        self.generation = generation_settings(self.settings)

    async def setup_hook(self) -> None:
        await super().setup_hook()
        if not self.backend.running:
            self.backend.start_process()
        log.info("loading the model (%s)...", self.settings.model or "embedded SmolLM2")
        seconds = await warm_up(self.backend)
        log.info("model ready in %.1f s", seconds)

    @gatekeep
    async def attend(self, channel: discord.abc.Messageable) -> None:
        async with self.backend.stream() as stream:
            # Our turn at the model: read the context now, so it is as fresh as it can be.
            ctx = self.context(channel, limit=self.settings.context_limit)
            history = [message async for message in ctx]
            question = next((m for m in history if m.author != self.user), None)
            if question is None or self._answered(question, history):
                return
            chat = context_to_messages(history, self.user,
                                       system_prompt=self.settings.system_prompt,
                                       max_chars=self.settings.context_chars)
            log.info("replying to %s in %s", question.author.display_name, _where(channel))
            await stream_reply(channel, stream(ChatRequest(chat, self.generation)),
                               reference=question, interval=self.settings.edit_interval)
        if not await ctx.current():
            self.attend.force(channel)

    def _answered(self, question: discord.Message, history: list[discord.Message]) -> bool:
        """Whether one of the bot's replies after ``question`` answers it. Not just "the bot
        spoke last": messages that arrived while it generated precede its reply, and the
        follow-up attend must still answer them."""
        return any(m.author == self.user and m.reference is not None
                   and m.reference.message_id == question.id
                   for m in history if m.id > question.id)


def _where(channel: discord.abc.Messageable) -> str:
    if isinstance(channel, discord.DMChannel):
        return "a DM"
    return f"#{getattr(channel, 'name', channel)}"
