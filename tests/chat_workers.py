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
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import genbot
from genbot.streaming import Stream, Streamer

__all__ = ["RELEASE", "mortal", "scripted"]

#: Lets the waiting scripts go on; set it before closing a worker that waits on it.
RELEASE = threading.Event()
#: Bound on every wait of a script, so no worker outlives a failed test for long.
_WAIT = 30.0


def _said(stream: Stream) -> str:
    """The last line a user said, without the author's name and mentions (``@genbot``)."""
    users = [m["content"] for m in stream.data.messages if m["role"] == "user"]
    last = users[-1].splitlines()[-1] if users else ""
    words = last.split(": ", 1)[-1].split(" ")
    return " ".join(word for word in words if not word.startswith("@"))


def _warm_up(stream: Stream) -> bool:
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


_SCRIPTS = {"fail": _fail, "stall": _stall, "hang": _hang, "hold": _hold, "empty": _empty}


@genbot.streamer
def scripted(streams: list[Stream]) -> None:
    """Plays each stream's script (see the module docstring); start it with ``maximum=1``."""
    for stream in streams:
        if _warm_up(stream):
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
        if _warm_up(stream):
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


def one_slot() -> Iterator[Streamer]:
    """For a pytest fixture: :func:`scripted` on a thread, one chat at a time (so a hung script
    holds the only slot); afterwards every held script is released and the worker closed."""
    RELEASE.clear()
    scripted.start_thread(maximum=1)
    try:
        yield scripted
    finally:
        RELEASE.set()
        scripted.close()
