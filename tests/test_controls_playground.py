"""The playground shows a reply's buttons and presses them with ``/stop`` and ``/regenerate``
(the ready-made bot, with the seeded worker of tests/test_controls.py)."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chat_workers import threaded
from genbot.chatbot import ChatBot
from genbot.playground import run_playground
from genbot.streaming import Streamer
from terminal import terminal
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
from terminal import terminal
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
    # the playground with the ready-made bot, on a terminal
    with terminal([sys.executable, "-c", _CHILD]) as term:
        term.read_until(b"you> ")
        term.write(b"hold\n")
        term.read_until(b"[Stop]")  # the worker holds the reply until its stream is closed
        term.write(b"/stop\n")
        term.read_until(b"*Stopped.*")
        term.read_until(b"[Regenerate]")
        assert term.end() == 0
