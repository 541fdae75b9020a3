"""The playground shows a reply's buttons and presses them with ``/stop`` and ``/regenerate``
(the ready-made bot, with the seeded worker of tests/test_controls.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from genbot.chatbot import ChatBot
from genbot.playground import run_playground
from genbot.streaming import Streamer
from test_controls import RELEASE, make_bot, seeded


@pytest.fixture
def backend() -> Iterator[Streamer]:
    RELEASE.clear()
    seeded.start_thread(maximum=1)
    try:
        yield seeded
    finally:
        RELEASE.set()
        seeded.close()


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
