"""Replies that start inside a think block the prompt opened (local backends).

Some chat templates (DeepSeek-R1, Qwen3 thinking models) end the generation prompt with
``<think>\\n``: the model's output starts inside the think block, and only the closing
``</think>`` comes. A local backend renders the prompt itself, so it knows this from the
template, with no guessing (:func:`opens_think`); :class:`OpenThinkSplitter` then turns what
comes before the ``</think>`` into :class:`~genbot.models.base.Reasoning` items and passes the
rest on as text. ``genbot.reasoning.ReplyFilter`` handles both as for any reasoning model.

Decisions:

- ``Reasoning`` items rather than a made-up leading ``"<think>"`` text: the reasoning is split
  off at the source, so nothing downstream must parse it (the tool-call parser never sees it,
  a hold (``reasoning_hold``) ends at once, a stream read without the filter carries no
  reasoning in its text), and it is the form OpenAI-compatible servers' ``reasoning_content``
  takes already.
- Only a prompt whose END (less whitespace) is an open ``<think>`` counts: a ``<think>`` a user
  wrote somewhere in the conversation must not hide the answer.
- The first ``</think>`` ends the block; after it, :meth:`OpenThinkSplitter.feed` returns each
  delta as it is (no scanning on the hot path). Later ``<think>`` blocks are the reply filter's.
- A reply that never closes the block (it ran out of tokens) is all reasoning.
"""

from __future__ import annotations

import logging

from genbot.models.base import Reasoning

__all__ = ["CLOSE_TAG", "OPEN_TAG", "OpenThinkSplitter", "opens_think"]

_log = logging.getLogger(__name__)

#: The think tags (the same as ``genbot.reasoning``'s; not imported from there, which would
#: load discord.py into model worker processes).
OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"


def opens_think(prompt: str) -> bool:
    """Whether a rendered ``prompt`` ends inside an open think block: its end, less trailing
    whitespace, is ``<think>``.

    Parameters
    ----------
    prompt:
        The prompt text the chat template made (with the generation prompt).
    """
    return prompt.rstrip().endswith(OPEN_TAG)


class OpenThinkSplitter:
    """Splits a reply that starts inside a think block: :meth:`feed` returns the pieces a text
    delta completes, :class:`~genbot.models.base.Reasoning` before the first ``</think>``, text
    after it (a tag cut between deltas is held back until the next one tells)."""

    def __init__(self) -> None:
        #: Still inside the block.
        self.thinking = True
        self._pending = ""

    def feed(self, text: str) -> list[str | Reasoning]:
        """The pieces of the next delta ``text`` (the delta itself once past the block).

        Parameters
        ----------
        text:
            The next text delta of the reply.
        """
        if not self.thinking:
            return [text] if text else []
        pending = self._pending + text
        end = pending.find(CLOSE_TAG)
        if end >= 0:
            self.thinking = False
            self._pending = ""
            rest = pending[end + len(CLOSE_TAG) :]
            return _pieces(pending[:end], rest)
        keep = _tag_start(pending)
        self._pending = pending[len(pending) - keep :]
        return _pieces(pending[: len(pending) - keep], "")

    def flush(self) -> list[str | Reasoning]:
        """What is held back at the end of the reply (reasoning: the block never closed)."""
        held, self._pending = self._pending, ""
        return _pieces(held, "") if self.thinking else []


def _pieces(reasoning: str, text: str) -> list[str | Reasoning]:
    out: list[str | Reasoning] = [Reasoning(reasoning)] if reasoning else []
    return [*out, text] if text else out


def _tag_start(text: str) -> int:
    """Length of the longest end of ``text`` that begins ``</think>``."""
    for n in range(min(len(CLOSE_TAG) - 1, len(text)), 0, -1):
        if CLOSE_TAG.startswith(text[-n:]):
            return n
    return 0
