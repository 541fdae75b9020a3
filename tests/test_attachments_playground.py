"""``genbot playground --attach FILE`` (and ``/attach FILE`` typed): the message goes with the
file attached, through the loopback server's CDN, and its text reaches the model."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import genbot
from genbot.chatbot import ChatBot
from genbot.playground import read_attachments, run_playground
from genbot.settings import Settings
from genbot.streaming import Stream, Streamer


@genbot.streamer
def lines(streams: list[Stream]) -> None:
    """Answers with the lines of the last user message, joined by `` | ``."""
    for stream in streams:
        request = stream.data
        if request.settings.max_new_tokens == 1:
            stream.write("ok")
        else:
            stream.write(" | ".join(request.messages[-1]["content"].splitlines()))
        stream.close()


@pytest.fixture
def backend() -> Iterator[Streamer]:
    lines.start_thread(maximum=1)
    try:
        yield lines
    finally:
        lines.close()


def test_attached_files_reach_the_model(tmp_path: Path, backend: Streamer) -> None:
    first = tmp_path / "notes.txt"
    first.write_text("hello from a file\n")
    second = tmp_path / "data.csv"
    second.write_text("a,b\n1,2\n")

    def bot() -> ChatBot:
        settings = Settings().updated({"edit_interval": 0.2}, "test")
        return ChatBot(settings, backend=backend, guild_ready_timeout=0.05, close_streamers=False)

    out = io.StringIO()
    script = f"read this\nplain\n/attach {second}\nand this\n/attach {tmp_path / 'nope'}\n"
    code = run_playground(bot, stdin=io.StringIO(script), stdout=out, attach=[first])
    assert code == 0
    shown = out.getvalue().splitlines()
    assert "genbot: you: read this | [file: notes.txt] | ```txt | hello from a file | ```" in shown
    assert "genbot: you: plain" in shown  # the file went with the first message only
    assert "(attached data.csv to your next message)" in shown
    assert "genbot: you: and this | [file: data.csv] | ```csv | a,b | 1,2 | ```" in shown
    assert any(line.startswith(f"(cannot attach {tmp_path / 'nope'}: ") for line in shown)


def test_a_file_that_cannot_be_read_is_refused_before_the_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot attach .*nope"):
        read_attachments([tmp_path / "nope"])
    done = subprocess.run(
        [sys.executable, "-m", "genbot", "playground", "--attach", str(tmp_path / "nope")],
        input="hi\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"genbot: cannot attach {tmp_path / 'nope'}: No such file or directory" in done.stderr
