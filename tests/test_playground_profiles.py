"""``/persona NAME`` and ``/model NAME`` typed in the playground pick the persona or model of
its DM (the person the bot talks to in a DM picks for that DM), with the ready-made bot: in
process with two scripted models, and through the real ``genbot playground -c genbot.toml``
with a config of named models and profiles, against a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genbot.chatbot import ChatBot
from genbot.playground import run_playground
from genbot.settings import Settings
from genbot.streaming import Streamer
from openai_stub import openai_stub
from profile_workers import MODELS, running
from test_cli import environment

models = pytest.fixture(running, name="models")

CONFIG = """
data_dir = "{data}"
edit_interval = 0.2
system_prompt = "You are {{bot}}."

[models.small]
backend = "openai"
model = "small"

[profiles.pirate]
model = "small"
system_prompt = "Arr, a pirate on {{server}}."
"""


class Bot(ChatBot):
    """The ready-made bot; its default model and its named models are the scripted ones
    (``<model> | <system prompt> | <said>``)."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings, backend=MODELS["default"], **kwargs)

    def new_backend(self, settings: Settings) -> Streamer:
        return MODELS[settings.model]


def test_persona_and_model_typed_in_the_playground(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data"), encoding="utf-8")
    settings = Settings.load(config, environ={})

    def bot() -> ChatBot:
        return Bot(settings, guild_ready_timeout=0.05, close_streamers=False)

    script = "hello\n/persona pirate\nahoy\n/model\n/model default\nagain\n/persona\n"
    out = io.StringIO()
    assert run_playground(bot, stdin=io.StringIO(script), stdout=out, reply_timeout=30) == 0
    only_you = "genbot (only you can see this): "
    assert [line for line in out.getvalue().splitlines() if line != "    [Regenerate]"] == [
        "you: hello",
        "genbot: default | You are genbot. | hello",
        "you: /persona pirate",
        f"{only_you}This channel now uses the persona **pirate**.",
        "you: ahoy",
        "genbot: small | Arr, a pirate on Direct Messages. | ahoy",  # the pirate's own model
        "you: /model",
        f"{only_you}This channel's model is **small** (pick one of: default, small).",
        "you: /model default",
        f"{only_you}This channel now uses the model **default**.",
        "you: again",
        "genbot: default | Arr, a pirate on Direct Messages. | again",  # still the pirate
        "you: /persona",
        f"{only_you}This channel's persona is **pirate** (pick one of: default, pirate).",
    ]


async def _playground(config: Path, attach: Path, script: str) -> tuple[str, str, int]:
    """``genbot playground -c config --attach attach`` fed ``script``, as a real process."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "genbot", "playground", "-c", str(config)),
        *("--attach", str(attach)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(script.encode()), 180)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("genbot playground still ran after 180 s") from None
    assert process.returncode is not None
    return out.decode(), err.decode(), process.returncode


async def test_genbot_playground_with_named_models_and_profiles(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello from a file\n", encoding="utf-8")
    async with openai_stub() as stub:
        config = tmp_path / "genbot.toml"
        config.write_text(_cli_config(tmp_path, stub.base_url), encoding="utf-8")
        out, err, code = await _playground(
            config, notes, "read this\n/persona pirate\nahoy\n/model\n"
        )
    assert code == 0, err
    lines = out.splitlines()
    assert "you: read this" in lines and "genbot: echo: ahoy" in lines, out
    only_you = "genbot (only you can see this): "
    assert f"{only_you}This channel now uses the persona **pirate**." in lines
    assert f"{only_you}This channel's model is **small** (pick one of: default, small)." in lines
    chats = [body for body in stub.requests if body.get("max_tokens") != 1]
    assert [body["model"] for body in chats] == ["default-model", "small-model"]
    first, second = (body["messages"] for body in chats)
    assert first[0] == {"role": "system", "content": "You are genbot."}
    assert "hello from a file" in first[-1]["content"]  # --attach: with the first message
    assert second[0] == {"role": "system", "content": "Arr, a pirate on Direct Messages."}


def _cli_config(tmp_path: Path, base_url: str) -> str:
    return f"""
data_dir = "{tmp_path / "data"}"
edit_interval = 0.2
system_prompt = "You are {{bot}}."
backend = "openai"
base_url = "{base_url}"
model = "default-model"

[models.small]
backend = "openai"
base_url = "{base_url}"
model = "small-model"

[profiles.pirate]
model = "small"
system_prompt = "Arr, a pirate on {{server}}."
"""
