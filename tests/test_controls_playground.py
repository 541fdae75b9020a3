"""The playground shows a reply's buttons and presses them with ``/stop`` and ``/regenerate``
(the ready-made bot, with the seeded worker of tests/test_controls.py)."""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_workers import threaded
from genbot.chatbot import ChatBot
from genbot.playground import run_playground
from genbot.streaming import Streamer
from test_controls import make_bot, seeded


@pytest.fixture
def backend() -> Iterator[Streamer]:
    yield from threaded(seeded, 1)


def test_scripted_stop_and_regenerate(backend: Streamer, tmp_path: Path) -> None:
    def bot() -> ChatBot:
        return make_bot(backend, tmp_path)

    out = io.StringIO()
    script = "hello\n/regenerate\nhold\n/stop\n/stop\n"
    assert run_playground(bot, stdin=io.StringIO(script), stdout=out, reply_timeout=30) == 0
    lines = out.getvalue().splitlines()
    assert lines[:3] == ["you: hello", "genbot: answer (seed None): hello", "    [Regenerate]"]
    assert lines[3] == "you: /regenerate"
    assert lines[4].startswith("genbot (edited): answer (seed ") and lines[4] != lines[1]
    assert lines[5:] == [
        "you: hold",
        "you: /stop",
        "genbot: Let me think",
        "",
        "*Stopped.*",
        "    [Regenerate]",
        "you: /stop",
        "(no reply shows a Stop button)",
    ]


_CHILD = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
from test_controls import make_bot, seeded
from genbot.playground import run_playground
seeded.start_thread(maximum=1)
try:
    status = run_playground(lambda: make_bot(seeded, Path(tempfile.mkdtemp())))
finally:
    seeded.close()
raise SystemExit(status)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_stop_typed_while_the_bot_answers_in_a_terminal() -> None:
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: the playground with the ready-made bot, on a terminal
        os.execv(sys.executable, [sys.executable, "-c", _CHILD])
    seen = b""

    def read_until(text: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not shown; got {seen!r}"
            if select.select([fd], [], [], remaining)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    break

    status = None
    try:
        read_until(b"you> ")
        os.write(fd, b"hold\n")
        read_until(b"[Stop]")  # the worker holds the reply until its stream is closed
        os.write(fd, b"/stop\n")
        read_until(b"*Stopped.*")
        read_until(b"[Regenerate]")
        os.write(fd, b"\x04")  # Ctrl-D: end of input
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)
        if status is None:  # failed midway: do not leave the child behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
