"""What a reasoning model thinks is never posted as its answer.

Reasoning reaches the bot two ways: as :class:`genbot.models.Reasoning` items of a chat stream
(an OpenAI-compatible server's ``reasoning_content``), and as ``<think>…</think>`` blocks inside
the streamed text (local models: DeepSeek-R1 distills, Qwen3, QwQ, ...). :class:`ThinkSplitter`
splits the text incrementally, whatever the deltas' boundaries (a tag may be cut anywhere);
:class:`ReplyFilter` wraps a chat stream and yields only the answer's text, for
:func:`genbot.output.stream_reply`.

Decisions:

- While the model thinks, the filter yields empty strings: the reply's stall watchdog sees
  progress, and the typing indicator stays on (nothing visible was posted yet).
- What a reply does with the reasoning (the ``reasoning`` setting, :data:`MODES`): ``hide``
  drops it; ``spoiler`` posts it first, in a Discord ``||spoiler||`` of at most
  :data:`SPOILER_CHARS` characters, once the answer begins; ``file`` attaches it whole as
  ``reasoning.txt`` to the reply's last message when the reply is done.
- A reply that was only reasoning has no answer: it gets the usual empty-output note (spoiler
  mode shows no spoiler then; file mode still attaches the file).
- Whitespace between a think block and the answer is dropped.
- Some chat templates open the think block in the prompt (Qwen3, DeepSeek-R1), so the reply
  starts inside it with no ``<think>``: only a ``</think>`` comes. With a hold (``hold_chars``,
  the ``reasoning_hold`` setting; 0, the default, holds nothing) the filter holds back the
  start of a reply, up to that many characters, until it knows: a ``</think>`` before more
  were held makes everything before it reasoning; a ``<think>``, more characters, or the end
  of the reply without a tag make it the answer, which then streams on as usual. While it
  holds, it yields empty strings (the typing indicator stays on, as while thinking). The cost:
  a reply shows its first characters only once that many have come (or at its end), which is
  why it is off unless a profile's model needs it (e.g. ``reasoning_hold = 8000`` for Qwen3).
  A stray ``</think>`` after the hold is dropped, never posted. Better still, run such models'
  servers with their reasoning parser (vLLM ``--reasoning-parser``, llama.cpp's
  ``--reasoning-format deepseek``), which sends the reasoning as ``reasoning_content`` (which
  also ends a hold at once).
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import discord

from genbot.models.base import Reasoning

__all__ = [
    "CLOSE_TAG",
    "MODES",
    "OPEN_TAG",
    "SPOILER_CHARS",
    "ReplyFilter",
    "ThinkSplitter",
    "answer_text",
    "spoiler",
    "without_spoiler",
]

_log = logging.getLogger(__name__)

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
#: The values of the ``reasoning`` setting.
MODES = ("hide", "spoiler", "file")
#: The most characters of reasoning a spoiler shows (its beginning, then an ellipsis).
SPOILER_CHARS = 1500
#: The name of the file ``reasoning = "file"`` attaches.
FILE_NAME = "reasoning.txt"

Piece = tuple[bool, str]  # (is reasoning, text)


class ThinkSplitter:
    """Splits streamed text into answer and ``<think>`` reasoning, delta by delta.

    :meth:`feed` returns ``(is_reasoning, text)`` pieces for what is known; text that may be
    the start of a tag is held back until the next delta tells. :meth:`flush` returns what is
    held at the end. The tags themselves are never returned.

    Parameters
    ----------
    thinking:
        Start inside a think block (for templates that open it in the prompt).
    hold:
        Hold back up to this many characters of the start (0: none) while they may be a think
        block the prompt opened: a ``</think>`` among them makes them reasoning; a
        ``<think>``, more characters, or :meth:`flush` make them text as usual.
    """

    def __init__(self, *, thinking: bool = False, hold: int = 0) -> None:
        self.thinking = thinking
        self._pending = ""
        self.hold = hold
        #: The start is held back: not yet known whether it is reasoning.
        self.undecided = hold > 0 and not thinking

    def decide(self) -> list[Piece]:
        """End the hold: what is held is text as usual (e.g. the reasoning came apart)."""
        if not self.undecided:
            return []
        self.undecided = False
        held, self._pending = self._pending, ""
        return self.feed(held)

    def feed(self, text: str) -> list[Piece]:
        """The pieces that ``text`` (the next delta) completes."""
        if self.undecided:
            return self._feed_held(text)
        if not self._pending and "<" not in text:  # the usual delta: no tag, none begun
            return [(self.thinking, text)] if text else []
        self._pending += text
        pieces: list[Piece] = []
        while True:
            cut, tag = self._next_tag()
            if cut < 0:
                break
            _add(pieces, self.thinking, self._pending[:cut])
            self._pending = self._pending[cut + len(tag) :]
            # a stray closing tag outside a block is dropped (see the module docstring)
            self.thinking = tag == OPEN_TAG or (self.thinking and tag != CLOSE_TAG)
        safe = len(self._pending) - _held(self._pending)
        _add(pieces, self.thinking, self._pending[:safe])
        self._pending = self._pending[safe:]
        return pieces

    def _feed_held(self, text: str) -> list[Piece]:
        """:meth:`feed` while the start is held: it stays held until a tag or the bound
        decides."""
        self._pending += text
        close, opening = self._pending.find(CLOSE_TAG), self._pending.find(OPEN_TAG)
        if close >= 0 and (opening < 0 or close < opening):  # it began inside a think block
            self.undecided = False
            reasoning, rest = self._pending[:close], self._pending[close + len(CLOSE_TAG) :]
            self._pending = ""
            pieces: list[Piece] = []
            _add(pieces, True, reasoning)
            return pieces + self.feed(rest)
        if opening >= 0 or len(self._pending) > self.hold:
            return self.decide()
        return []

    def flush(self) -> list[Piece]:
        """What is held back, at the end of the stream (an unfinished tag is kept as text)."""
        self.undecided = False
        pieces: list[Piece] = []
        _add(pieces, self.thinking, self._pending)
        self._pending = ""
        return pieces

    def _next_tag(self) -> tuple[int, str]:
        """Where the first tag in the pending text starts, and which; ``(-1, "")`` if none."""
        found = [(self._pending.find(tag), tag) for tag in (OPEN_TAG, CLOSE_TAG)]
        return min(((i, t) for i, t in found if i >= 0), default=(-1, ""))


def _add(pieces: list[Piece], thinking: bool, text: str) -> None:
    if text:
        pieces.append((thinking, text))


def _held(text: str) -> int:
    """Length of the longest end of ``text`` that begins a tag."""
    for n in range(min(len(CLOSE_TAG) - 1, len(text)), 0, -1):
        end = text[-n:]
        if OPEN_TAG.startswith(end) or CLOSE_TAG.startswith(end):
            return n
    return 0


def answer_text(text: str) -> str:
    """The answer in a whole generated ``text``: its ``<think>`` blocks left out (and the
    text before a ``</think>`` with no ``<think>`` before it: a block the prompt opened), the
    whitespace around it stripped. For generations that are not streamed to a user (a memory
    summary).

    Parameters
    ----------
    text:
        What the model wrote.
    """
    splitter = ThinkSplitter(hold=len(text))
    pieces = splitter.feed(text) + splitter.flush()
    return "".join(piece for thinking, piece in pieces if not thinking).strip()


def without_spoiler(text: str) -> str:
    """A reply's ``text`` without the reasoning spoiler ``spoiler`` mode put first (``||…||``
    and a blank line; the spoiler holds no ``||``): the bot's earlier replies are fed back to
    the model without their reasoning, as a reasoning file is.

    Parameters
    ----------
    text:
        The text of one of the bot's messages.
    """
    if not text.startswith("||"):
        return text
    end = text.find("||\n\n", 2)
    return text if end < 0 else text[end + 4 :].lstrip()


def spoiler(reasoning: str, limit: int = SPOILER_CHARS) -> str:
    """``reasoning`` as a Discord spoiler (``||…||``) of at most ``limit`` characters of it:
    its beginning, then an ellipsis. ``||`` inside is broken up so it cannot end the spoiler
    early; an empty reasoning gives ``""``.

    Parameters
    ----------
    reasoning:
        What the model thought.
    limit:
        The most characters of it to show (at least 1).

    Raises
    ------
    ValueError
        ``limit`` is less than 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    text = reasoning.strip()
    if not text:
        return ""
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return "||" + text.replace("||", "|\u200b|") + "||"


class ReplyFilter:
    """Wraps a chat stream: yields the answer's text only (``""`` while the model thinks), and
    collects the reasoning in :attr:`reasoning`. Items that are neither text nor
    :class:`~genbot.models.Reasoning` (tool calls) pass through unchanged.

    Parameters
    ----------
    deltas:
        The chat stream (text deltas, ``Reasoning`` items, ...).
    mode:
        One of :data:`MODES`: what the reply shows of the reasoning (module docstring).
    spoiler_chars:
        The most characters a spoiler shows.
    hold_chars:
        How much of the reply's start is held back while it may be a think block that the
        prompt opened (module docstring); 0: none.

    Raises
    ------
    ValueError
        ``mode`` is not one of :data:`MODES`.
    """

    def __init__(
        self,
        deltas: Any,
        mode: str = "hide",
        *,
        spoiler_chars: int = SPOILER_CHARS,
        hold_chars: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"reasoning mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._inner: AsyncIterator[Any] = aiter(deltas)
        self.mode = mode
        self.spoiler_chars = spoiler_chars
        self.splitter = ThinkSplitter(hold=hold_chars)
        self._parts: list[str] = []
        self._answered = False  # visible answer text was yielded
        self._after_reasoning = False  # the last thing seen was reasoning: trim what follows
        self._spoiled = False  # the spoiler was shown
        self._ended = False

    @property
    def reasoning(self) -> str:
        """All the reasoning seen so far."""
        return "".join(self._parts)

    def __aiter__(self) -> ReplyFilter:
        return self

    async def __anext__(self) -> Any:
        if self._ended:
            raise StopAsyncIteration
        try:
            item = await anext(self._inner)
        except StopAsyncIteration:
            self._ended = True
            text = self._answer(self.splitter.flush())
            if text:
                return text
            raise
        if isinstance(item, Reasoning):  # the server splits the reasoning off: no hold
            held = self.splitter.decide()
            self._think(item.text)
            return self._answer(held)
        if isinstance(item, str):
            return self._answer(self.splitter.feed(item))
        return item

    async def aclose(self) -> None:
        """Close the wrapped stream (the model stops): its ``aclose()``, else its ``close()``."""
        self._ended = True
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def _think(self, text: str) -> None:
        if text:
            self._parts.append(text)
            self._after_reasoning = True

    def _answer(self, pieces: list[Piece]) -> str:
        out: list[str] = []
        for thinking, text in pieces:
            if thinking:
                self._think(text)
                continue
            if self._after_reasoning or not self._answered:
                text = text.lstrip()
            if not text:
                continue
            self._after_reasoning = False
            if not self._answered and self.mode == "spoiler" and not self._spoiled:
                self._spoiled = True
                shown = spoiler(self.reasoning, self.spoiler_chars)
                out.append(shown + "\n\n" if shown else "")
            self._answered = True
            out.append(text)
        return "".join(out)

    async def finish(self, messages: list[discord.Message]) -> None:
        """After the reply: in ``file`` mode, attach the reasoning (if any) as
        ``reasoning.txt`` to the reply's last message. A failure is logged, not raised: the
        answer is out already.

        Parameters
        ----------
        messages:
            The reply's messages (what :func:`genbot.output.stream_reply` returned).
        """
        reasoning = self.reasoning.strip()
        if self.mode != "file" or not reasoning or not messages:
            return
        last = messages[-1]
        upload = discord.File(io.BytesIO(reasoning.encode()), filename=FILE_NAME)
        try:
            await last.edit(attachments=[*last.attachments, upload])
        except Exception as exc:
            _log.warning("attaching the reasoning to the reply failed: %r", exc)
