"""Ways to converse: answering in a thread (``reply_mode = "thread"``) and answering an edited
question again (``reanswer_window``).

The decisions are pure functions (:func:`thread_name`, :func:`opens_thread`,
:func:`reanswer_due`, :func:`reply_parts`); the Discord wiring (:func:`open_thread`,
:func:`find_reanswer`) is thin and used by :class:`genbot.chatbot.ChatBot`.

Thread mode: a question in a server's text channel wakes the channel's ``attend``, which opens
a public thread from the question's message and starts the thread's ``attend`` (gatekept like
any other); that one reads the thread's context, whose oldest message is the question (Discord
puts a THREAD_STARTER_MESSAGE first in such a thread, see :func:`genbot.context.thread_starter`),
and answers there. In a thread the bot opened every message wakes it (rule 7 of
:mod:`genbot.wake`). When the thread cannot be opened (no Create Public Threads permission, a
thread channel, a DM), the bot answers in place and logs why.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import discord

from genbot.wake import incoming

if TYPE_CHECKING:
    from genbot.bot import Genbot

__all__ = [
    "find_reanswer",
    "open_thread",
    "opens_thread",
    "reanswer_due",
    "reply_parts",
    "reply_to_redo",
    "thread_name",
    "waking_question",
]

_log = logging.getLogger(__name__)

#: Discord's longest thread name.
THREAD_NAME_CHARS = 100
#: Discord's error code for "a thread has already been created for this message".
_THREAD_EXISTS = 160004
_MENTION = re.compile(r"<(@[!&]?|#)\d+>")


def thread_name(content: str, author: str, limit: int = THREAD_NAME_CHARS) -> str:
    """The name of the thread opened for a question: its text without mentions, on one line,
    cut to ``limit`` characters (with an ellipsis); ``"Chat with <author>"`` when no text is
    left.

    Parameters
    ----------
    content:
        The question's raw content (mentions as ``<@id>``).
    author:
        The name of who asked.
    limit:
        The most characters (Discord allows 100).
    """
    text = " ".join(_MENTION.sub(" ", content).split())
    if not text:
        text = f"Chat with {author}"
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def opens_thread(reply_mode: str, channel: object) -> bool:
    """Whether a question in ``channel`` is answered in a thread opened from it: in thread
    mode, in a server's text channel (not a thread, not a DM)."""
    return reply_mode == "thread" and isinstance(channel, discord.TextChannel)


def waking_question(history: Sequence[discord.Message], bot: Genbot) -> discord.Message | None:
    """The newest message of ``history`` (newest first) that wakes ``bot`` (its wake rules)."""
    assert bot.user is not None
    bot_id = bot.user.id
    for message in history:
        if message.author.id != bot_id and bot.wake_rules.wakes(
            incoming(message, bot_id, bot.message_cache.get), bot_id
        ):
            return message
    return None


async def open_thread(question: discord.Message) -> discord.Thread | bool | None:
    """Open a public thread from ``question``'s message, named by :func:`thread_name`.

    Returns the thread; ``True`` when one was opened from it before (nothing to do); ``None``
    when Discord refused (logged: the caller answers in place).

    Parameters
    ----------
    question:
        The message the thread starts from.
    """
    name = thread_name(question.content, question.author.display_name)
    try:
        return await question.create_thread(name=name)
    except discord.HTTPException as error:
        if error.code == _THREAD_EXISTS:
            return True
        _log.warning(
            "could not open a thread from a message in #%s (%s); answering in place",
            getattr(question.channel, "name", question.channel.id),
            error.text or error,
        )
        return None


# -- answering an edited question again ----------------------------------------------------------


def reanswer_due(
    *,
    window: float,
    old_content: str | None,
    new_content: str,
    created: datetime.datetime,
    edited: datetime.datetime | None,
    answered: datetime.datetime,
) -> bool:
    """Whether an update of a question is an edit that deserves a new answer.

    Parameters
    ----------
    window:
        ``reanswer_window``: the most seconds from the question's creation to its edit;
        0: never.
    old_content:
        The content before the update, when it was cached (``None``: not known).
    new_content:
        The content now.
    created, edited:
        When the question was sent and last edited (Discord's ``edited_timestamp``; ``None``:
        never edited, e.g. a link preview appearing).
    answered:
        When the bot's reply last changed: an edit older than that was answered already.
    """
    if window <= 0 or edited is None:
        return False
    if old_content is not None and old_content == new_content:
        return False  # an update that is no edit of the text (embeds, a thread, a pin)
    if old_content is None and edited <= answered:
        return False
    return (edited - created).total_seconds() <= window


def reply_parts(
    question: discord.Message,
    history: Sequence[discord.Message],
    bot_id: int,
    starter: bool = False,
) -> list[discord.Message]:
    """The bot's reply to ``question`` in ``history`` (newest first), oldest part first: its
    message replying to ``question``, then the bot's messages right after it (a long reply's
    continuations). Empty when the bot did not answer it. The ``starter`` of a thread (thread
    mode) is answered by the bot's first message in the thread, which cannot reply to it."""
    parts: list[discord.Message] = []
    for message in sorted(history, key=lambda m: m.id):
        if message.id <= question.id:
            continue
        if message.author.id != bot_id:
            break
        replying = starter or (
            message.reference is not None and message.reference.message_id == question.id
        )
        if not parts and not replying:
            continue
        if parts and message.reference is not None:
            break
        parts.append(message)
    return parts


def reply_to_redo(
    question_id: int, history: Sequence[discord.Message], bot_id: int, starter: bool = False
) -> list[discord.Message]:
    """The parts of the bot's reply (:func:`reply_parts`) to the question ``question_id`` when
    it is still the latest question in ``history`` (newest first); else none.

    Parameters
    ----------
    question_id:
        The edited question.
    history:
        The context read, newest first.
    bot_id:
        The bot's user id.
    starter:
        The question is the starter of the thread whose ``history`` this is (thread mode).
    """
    latest = next((m for m in history if m.author.id != bot_id), None)
    if latest is None or latest.id != question_id:
        return []
    return reply_parts(latest, history, bot_id, starter)


async def find_reanswer(
    bot: Genbot,
    payload: discord.RawMessageUpdateEvent,
    window: float,
    limit: int,
    where: discord.abc.Messageable | None = None,
) -> list[discord.Message] | None:
    """The bot's reply to re-answer when ``payload`` is an edit, within ``window`` seconds, of
    the latest question in its channel, which the bot answered; else ``None``. Only channels
    whose messages the bot holds (where it chats) are looked at: no request for others.

    Parameters
    ----------
    bot:
        The bot (its context and wake rules decide what is a question).
    payload:
        The MESSAGE_UPDATE.
    window:
        ``reanswer_window`` of the place.
    limit:
        The context limit: how far back the reply is looked for.
    where:
        Where the reply is, if not in the question's channel: the thread opened from the
        question (thread mode), whose latest question it must then be.
    """
    message: discord.Message | None = getattr(payload, "message", None)
    if bot.user is None or message is None or window <= 0:
        return None
    bot_id = bot.user.id
    if message.author.id == bot_id or message.edited_at is None:
        return None
    if (message.edited_at - message.created_at).total_seconds() > window:
        return None
    if bot.message_cache.get(message.channel.id, message.id) is None:
        return None  # a channel the bot has not read: it answered nothing there lately
    where = message.channel if where is None else where
    history = [m async for m in bot.context(where, limit=limit)]
    starter = isinstance(where, discord.Thread) and where.id == message.id
    parts = reply_to_redo(message.id, history, bot_id, starter)  # a question it may see, the latest
    if not parts:
        return None
    old = payload.cached_message
    due = reanswer_due(
        window=window,
        old_content=None if old is None else old.content,
        new_content=message.content,
        created=message.created_at,
        edited=message.edited_at,
        answered=max(p.edited_at or p.created_at for p in parts),
    )
    return parts if due else None
