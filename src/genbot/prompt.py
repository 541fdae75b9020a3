"""Turning a channel's messages into the chat messages a language model takes.

Decisions, so that one prompt works with every backend and chat template:

- Roles come from authors: the bot's own messages are ``assistant``, everyone else's ``user``.
- A user message's content is prefixed with the author's display name (``"alice: hi"``), because
  most chat templates of local models (SmolLM2's included) drop the ``name`` field, and without
  the prefix a conversation between several people reads as one anonymous user. No ``name``
  field is set: the backends prefix a named message's content themselves
  (:func:`genbot.models.base.prepare_messages`), so a name here would be written twice.
- Consecutive messages of the same role become one turn, their contents joined by newlines, so
  roles alternate (templates like Mistral's or Gemma's refuse anything else) and a long reply
  the bot sent as several Discord messages reads as one reply.
- Mentions show as the names Discord shows (``@alice``, ``#general``, via
  :attr:`discord.Message.clean_content`); ``@everyone``/``@here`` are defused. What a message
  carries besides text shows after it, one line each: ``[attachment: name]``,
  ``[sticker: name]`` and ``[embed: title]`` (its description's first line, or its URL, when it
  has no title), so a message of only a sticker or an embed is a turn the model can answer.
  Messages left with no text are skipped.
- The budget (characters and/or tokens of the contents, the system prompt not counted) keeps the
  newest messages: it stops at the first message, going back in time, that does not fit, so
  the history it keeps has no holes. A message is never cut, except the newest one alone when
  it is over the budget by itself: then its end is kept, behind an ellipsis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import discord

from genbot.attachments import Read, newest_images
from genbot.models.base import ChatMessage, ImagePart, Role
from genbot.reasoning import without_spoiler

__all__ = [
    "ChatMessage",
    "budget_texts",
    "context_to_messages",
    "conversation_order",
    "embed_label",
    "fitting",
    "message_text",
]


_log = logging.getLogger(__name__)

_ELLIPSIS = "\u2026"
#: The most characters of an embed's label.
_LABEL_CHARS = 100


def message_text(message: discord.Message, attachments: Mapping[int, Read] | None = None) -> str:
    """What a model sees of one message: its text with mentions as names, then its
    attachments, stickers and embeds as ``[attachment: name]``, ``[sticker: name]`` and
    ``[embed: title]`` lines. An attachment that `attachments` (by id, from
    :class:`genbot.attachments.AttachmentReader`) has read shows as it says instead."""
    reads = attachments or {}
    parts = [message.clean_content.strip()]
    parts += [
        read.text
        if reads and (read := reads.get(attachment.id))
        else f"[attachment: {attachment.filename}]"
        for attachment in message.attachments
    ]
    parts += [f"[sticker: {sticker.name}]" for sticker in message.stickers]
    parts += [f"[embed: {embed_label(embed)}]" for embed in message.embeds]
    return "\n".join(part for part in parts if part)


def embed_label(embed: discord.Embed) -> str:
    """An embed in a few words: its title, else its description's first line, else its URL,
    else its type; at most 100 characters."""
    for text in (embed.title, (embed.description or "").strip().split("\n")[0], embed.url):
        if text and text.strip():
            text = " ".join(text.split())
            return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + _ELLIPSIS
    return embed.type


def context_to_messages(
    messages: Iterable[discord.Message],
    bot_user: discord.abc.Snowflake,
    *,
    system_prompt: str | None = None,
    max_chars: int | None = 8000,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    attachments: Mapping[int, Read] | None = None,
) -> list[ChatMessage]:
    """Chat messages for a model from Discord `messages`, oldest first, newest within budget.

    `messages` may come in any order (a :class:`genbot.Context` yields the newest first); they
    are put in :func:`conversation_order`. `bot_user` (anything with the bot's ``id``) decides
    which are the assistant's. `max_chars` bounds the characters of the contents, `max_tokens`
    their tokens as `count_tokens` counts them; ``None`` leaves that bound off. The system
    prompt, if given, comes first and is not counted. See the module docstring for the rules.
    `attachments` (by attachment id) is what :class:`genbot.attachments.AttachmentReader` read:
    the files' texts or notes in the text, the newest images in the messages' ``images``.
    """
    kept = _keep(messages, bot_user, max_chars, max_tokens, count_tokens, attachments)
    chat: list[ChatMessage] = []
    if system_prompt:
        chat.append({"role": "system", "content": system_prompt})
    images = newest_images((m for m, _ in kept), attachments or {})
    for message, text in reversed(kept):
        role: Role = "assistant" if message.author.id == bot_user.id else "user"
        _append(chat, role, text, images.get(message.id, []), 1 if system_prompt else 0)
    return chat


def _append(
    chat: list[ChatMessage], role: Role, text: str, images: list[ImagePart], first: int
) -> None:
    """Add a message to `chat`: to the last turn (after `first`) if it has the same role."""
    if len(chat) > first and chat[-1]["role"] == role:
        chat[-1]["content"] += "\n" + text
    else:
        chat.append({"role": role, "content": text})
    if images:  # the images a model that can see gets
        chat[-1]["images"] = chat[-1].get("images", []) + images


def budget_texts(
    messages: Iterable[discord.Message],
    bot_user: discord.abc.Snowflake,
    attachments: Mapping[int, Read] | None = None,
) -> list[str]:
    """The texts a budget weighs, newest first: each message's :func:`message_text`, a user's
    behind ``"name: "``; messages without text left out. (A token budget counts these.)"""
    return [text for _, text in _texts(messages, bot_user, attachments)]


def fitting(
    messages: Iterable[discord.Message],
    bot_user: discord.abc.Snowflake,
    max_chars: int | None = 8000,
    max_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    attachments: Mapping[int, Read] | None = None,
) -> list[discord.Message]:
    """The messages :func:`context_to_messages` keeps within the budget, newest first; the
    others (older, or without text) would be left out.

    Raises
    ------
    ValueError
        ``max_tokens`` without ``count_tokens``.
    """
    return [
        message
        for message, _ in _keep(
            messages, bot_user, max_chars, max_tokens, count_tokens, attachments
        )
    ]


def _texts(
    messages: Iterable[discord.Message],
    bot_user: discord.abc.Snowflake,
    attachments: Mapping[int, Read] | None = None,
) -> list[tuple[discord.Message, str]]:
    out = []
    for message in reversed(conversation_order(messages, bot_user)):
        text = message_text(message, attachments)
        if message.author.id == bot_user.id:
            text = without_spoiler(text)  # its reasoning is not fed back (genbot.reasoning)
        if not text:
            continue
        if message.author.id != bot_user.id:
            text = f"{message.author.display_name}: {text}"
        out.append((message, text))
    return out


def _keep(
    messages: Iterable[discord.Message],
    bot_user: discord.abc.Snowflake,
    max_chars: int | None,
    max_tokens: int | None,
    count_tokens: Callable[[str], int] | None,
    attachments: Mapping[int, Read] | None = None,
) -> list[tuple[discord.Message, str]]:
    """The newest messages and their texts within the budget, newest first."""
    if max_tokens is not None and count_tokens is None:
        raise ValueError("max_tokens needs count_tokens")
    budget = _Budget(max_chars, max_tokens, count_tokens)
    kept: list[tuple[discord.Message, str]] = []
    for message, text in _texts(messages, bot_user, attachments):
        if not budget.take(text):
            if not kept and (tail := budget.tail(text)):
                kept.append((message, tail))
            break
        kept.append((message, text))
    return kept


def conversation_order(
    messages: Iterable[discord.Message], bot_user: discord.abc.Snowflake
) -> list[discord.Message]:
    """Oldest first, except that a reply of the bot comes right after the message it answers.

    Messages that arrive while the bot generates are older than its reply, so by time alone a
    follow-up prompt would end with the bot's answer to an earlier question and the model would
    be asked to continue its own turn. Messages the bot sent in a row (a reply continued past
    2000 characters) move together with the first one.
    """
    ordered = sorted(messages, key=lambda m: m.id)
    ids = {m.id for m in ordered}
    keys: dict[int, tuple[int, int]] = {}
    anchor: int | None = None  # the message the bot's current run of messages answers
    for message in ordered:
        if message.author.id != bot_user.id:
            anchor = None
        else:
            reference = getattr(message.reference, "message_id", None)
            if reference in ids:
                anchor = reference
        keys[message.id] = (message.id, 0) if anchor is None else (anchor, message.id)
    return sorted(ordered, key=lambda m: keys[m.id])


class _Budget:
    def __init__(
        self,
        max_chars: int | None,
        max_tokens: int | None,
        count_tokens: Callable[[str], int] | None,
    ) -> None:
        self.chars = max_chars
        self.tokens = max_tokens
        self.count = count_tokens or len

    def _fits(self, text: str) -> bool:
        if self.chars is not None and len(text) > self.chars:
            return False
        return self.tokens is None or self.count(text) <= self.tokens

    def take(self, text: str) -> bool:
        """Spend the budget on `text` if it fits in what is left."""
        if not self._fits(text):
            return False
        if self.chars is not None:
            self.chars -= len(text)
        if self.tokens is not None:
            self.tokens -= self.count(text)
        return True

    def tail(self, text: str) -> str:
        """The longest end of `text` that fits the whole budget, behind an ellipsis."""
        low, high = 0, len(text)  # the longest fitting tail length lies in [low, high)
        while low + 1 < high:
            middle = (low + high) // 2
            if self._fits(_ELLIPSIS + text[-middle:]):
                low = middle
            else:
                high = middle
        return _ELLIPSIS + text[-low:] if low else ""
