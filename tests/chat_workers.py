"""Scripted model workers for the chat bot's reliability tests, at module level so that a
spawned worker process can import them.

The reply is chosen by the first word of the last thing a user said (``"alice: stall"``):

- ``fail``: writes "Let me think", waits for :data:`RELEASE`, then raises (a backend error);
- ``stall``: writes "Let me think", then sends nothing more until :data:`RELEASE` (a model that
  stops making progress while holding its slot);
- ``hang``: sends nothing at all until :data:`RELEASE` (a hung worker: its slot stays taken);
- ``hold``: writes "Let me think", waits for :data:`RELEASE`, then " done." and ends;
- ``empty``: writes only zero-width characters and whitespace;
- ``die <path>`` (:data:`mortal`, in a process): writes "Let me think", waits for the file
  `path` to exist, then kills its own process;
- anything else: ``answer: <what was said>``.

The one-token warm-up (``max_new_tokens == 1``) is always answered at once.

The pieces (:func:`said_in`, :func:`warm_up`, :func:`record`, :func:`recording`,
:func:`hold_until_closed`, :func:`threaded`) serve the other test files' scripted workers too.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import genbot
from genbot.streaming import Stream, Streamer

__all__ = [
    "RELEASE",
    "SEEN",
    "hold_until_closed",
    "mortal",
    "record",
    "recording",
    "said_in",
    "scripted",
    "threaded",
    "warm_up",
]

#: Lets the waiting scripts go on; set it before closing a worker that waits on it.
RELEASE = threading.Event()
#: Bound on every wait of a script, so no worker outlives a failed test for long.
_WAIT = 30.0
#: What a recording worker was asked (:func:`record`), one list of chat messages per reply.
SEEN: list[list[dict[str, Any]]] = []
_SEEN_LOCK = threading.Lock()


def said_in(messages: list[dict[str, Any]]) -> str:
    """The last line a user said in chat `messages`, without the author's name and mentions
    (``@genbot``); the text parts of a content given in parts."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    last = users[-1] if users else ""
    if isinstance(last, list):  # content parts
        last = " ".join(str(p.get("text", "")) for p in last)
    words = last.splitlines()[-1].split(": ", 1)[-1].split(" ") if last else []
    return " ".join(word for word in words if not word.startswith("@"))


def _said(stream: Stream) -> str:
    return said_in(stream.data.messages)


def warm_up(stream: Stream) -> bool:
    """Answer the one-token warm-up at once; whether `stream` was it."""
    if stream.data.settings.max_new_tokens == 1:
        stream.write("ok")
        stream.close()
        return True
    return False


def _fail(stream: Stream) -> None:
    stream.write("Let me think")
    RELEASE.wait(_WAIT)
    raise RuntimeError("the GPU caught fire")


def _stall(stream: Stream) -> None:
    stream.write("Let me think")
    RELEASE.wait(_WAIT)


def _hang(stream: Stream) -> None:
    RELEASE.wait(_WAIT)


def _hold(stream: Stream) -> None:
    stream.write("Let me think")
    RELEASE.wait(_WAIT)
    stream.write(" done.")


def _empty(stream: Stream) -> None:
    stream.write("\u200b")
    stream.write(" \u200d\n")


def record(stream: Stream) -> None:
    """Add what `stream` asks to :data:`SEEN`."""
    with _SEEN_LOCK:
        SEEN.append(list(stream.data.messages))


def recording(answer: Callable[[Stream, str], None]) -> Streamer:
    """A worker that answers the warm-up, records what each reply is asked (:func:`record`)
    and answers with ``answer(stream, what was said last)``."""

    @genbot.streamer
    def recorder(streams: list[Stream]) -> None:
        for stream in streams:
            if warm_up(stream):
                continue
            record(stream)
            answer(stream, said_in(stream.data.messages))
            stream.close()

    return recorder


def hold_until_closed(stream: Stream) -> None:
    """Write "Let me think", then nothing until the caller closes the stream (Stop) or
    :data:`RELEASE` is set (then " done.")."""
    stream.write("Let me think")
    deadline = time.monotonic() + _WAIT
    while not stream.closed and not RELEASE.wait(0.01) and time.monotonic() < deadline:
        pass
    stream.write(" done.")


_SCRIPTS = {"fail": _fail, "stall": _stall, "hang": _hang, "hold": _hold, "empty": _empty}


@genbot.streamer
def scripted(streams: list[Stream]) -> None:
    """Plays each stream's script (see the module docstring); start it with ``maximum=1``."""
    for stream in streams:
        if warm_up(stream):
            continue
        said = _said(stream)
        script = _SCRIPTS.get(said.split(" ", 1)[0])
        if script is not None:
            script(stream)
        else:
            stream.write(f"answer: {said}")
        stream.close()


@genbot.streamer
def mortal(streams: list[Any]) -> None:
    """``die <path>`` kills the worker's process (run it with ``start_process``)."""
    for stream in streams:
        if warm_up(stream):
            continue
        said = _said(stream)
        if said.startswith("die "):
            stream.write("Let me think")
            deadline = time.monotonic() + _WAIT
            while not os.path.exists(said[4:]) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        stream.write(f"answer: {said}")
        stream.close()


def threaded(streamer: Streamer, maximum: int) -> Iterator[Streamer]:
    """For a pytest fixture (``yield from threaded(...)``): `streamer` on a thread, `maximum`
    chats at a time, with :data:`RELEASE` and :data:`SEEN` cleared; afterwards every held
    script is released and the worker closed."""
    RELEASE.clear()
    SEEN.clear()
    streamer.start_thread(maximum=maximum)
    try:
        yield streamer
    finally:
        RELEASE.set()
        streamer.close()


def one_slot() -> Iterator[Streamer]:
    """For a pytest fixture: :func:`scripted` on a thread, one chat at a time (so a hung script
    holds the only slot); afterwards every held script is released and the worker closed."""
    yield from threaded(scripted, 1)
