"""A scripted, controllable chat backend for the ``genbot serve`` and fleet tests, at module
level so that ``genbot serve serve_workers:Scripted`` (and its spawned worker) can import it.

:class:`Scripted` batches every stream it is given (continuous batching, one token per stream
per tick of :data:`TICK` seconds, never more than ``max_new_tokens``). The reply is chosen by
the first word of the last user message (after a bot's ``name: @bot`` prefix):

- ``count N``: ``"1"``, ``" 2"``, ... ``" N"``, then the end;
- ``forever``: ``"tick "`` until ``max_new_tokens`` or the caller goes away;
- ``fail``: ``"partial"``, then a failure; ``failnow``: a failure before any text;
- anything else: ``"You said: <message>"``, one word per token.

It reports what it does on its standard error, which it shares with ``genbot serve``: one
line per event, :data:`EVENT_PREFIX` and ``{"event": "open" | "cancelled" | "done" |
"failed", "said": ..., "tokens": N}`` (the harness reading that upstream's output knows which
upstream it is).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator

from genbot.models.base import ChatRequest, ChatStreamer, ModelError
from genbot.streaming import Stream

__all__ = ["EVENT_PREFIX", "TICK", "Scripted", "report"]

_log = logging.getLogger(__name__)

#: Seconds per decoding step.
TICK = 0.01
#: Most streams generated at once.
CAPACITY = 64


#: What starts an event line on standard error.
EVENT_PREFIX = "serve-test-event "


def report(event: str, said: str, tokens: int) -> None:
    """Write one event line (short enough to be written at once, never interleaved)."""
    line = json.dumps({"event": event, "said": said[:200], "tokens": tokens})
    os.write(2, f"{EVENT_PREFIX}{line}\n".encode())


def _said(request: ChatRequest) -> str:
    users = [m["content"] for m in request.messages if m["role"] == "user"]
    return users[-1] if users else ""


def _count(words: list[str]) -> Iterator[str]:
    for i in range(1, int(words[1]) + 1):
        yield str(i) if i == 1 else f" {i}"


def _forever(words: list[str]) -> Iterator[str]:
    while True:
        yield "tick "


def _fail(words: list[str]) -> Iterator[str]:
    yield "partial"
    raise ModelError("the GPU caught fire")


def _fail_now(words: list[str]) -> Iterator[str]:
    raise ModelError("the model is on strike")
    yield ""  # a generator


def _echo(words: list[str]) -> Iterator[str]:
    text = "You said: " + " ".join(words)
    first, *rest = text.split(" ")
    yield first
    for word in rest:
        yield f" {word}"


def _unprefixed(words: list[str]) -> list[str]:
    """The words without the ``name: @bot`` a chat bot's message starts with."""
    rest = list(words)
    while rest and (rest[0].endswith(":") or rest[0].startswith("@")):
        rest = rest[1:]
    return rest


_SCRIPTS = {"count": _count, "forever": _forever, "fail": _fail, "failnow": _fail_now}


class _Reply:
    def __init__(self, request: ChatRequest) -> None:
        self.said = _said(request)
        words = self.said.split()
        asked = _unprefixed(words)
        script = _SCRIPTS.get(asked[0] if asked else "")
        self.tokens = script(asked) if script else _echo(words)
        self.left = request.settings.max_new_tokens
        self.written = 0


class Scripted(ChatStreamer):
    """Scripted replies, many at once; see the module docstring."""

    def worker(self) -> None:
        active: dict[Stream, _Reply] = {}
        while True:
            for stream in self.consume(0 if active else 1, CAPACITY - len(active)):
                reply = active[stream] = _Reply(stream.data)
                report("open", reply.said, 0)
            time.sleep(TICK)
            for stream, reply in list(active.items()):
                outcome = self._step(stream, reply)
                if outcome is not None:
                    del active[stream]
                    report(outcome, reply.said, reply.written)

    @staticmethod
    def _step(stream: Stream, reply: _Reply) -> str | None:
        """Write the reply's next token; the outcome once it is over, else None."""
        if stream.closed:
            return "cancelled"
        try:
            token = next(reply.tokens) if reply.left > 0 else None
        except StopIteration:
            token = None
        except ModelError as error:
            stream.fail(error)
            return "failed"
        if token is None:
            stream.close()
            return "done"
        stream.write(token)
        reply.left -= 1
        reply.written += 1
        return None
