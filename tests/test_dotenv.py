"""A ``.env`` file in the working directory fills in the environment of every ``genbot`` command
that loads settings; variables already set win. The token is ``DISCORD_TOKEN`` or
``DISCORD_BOT_TOKEN``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genbot.reload import DotEnv, token_from_env
from genbot.testing import DiscordServer
from genbot_process import environment, genbot_process, loopback
from openai_stub import openai_stub


def settings_in(cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "genbot", "settings"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(env),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_genbot_settings_reads_dotenv_and_the_environment_wins(tmp_path: Path) -> None:
    assert "temperature = 0.25" not in settings_in(tmp_path)
    (tmp_path / ".env").write_text("# the bot's secrets\nGENBOT_TEMPERATURE=0.25\n")
    assert "temperature = 0.25" in settings_in(tmp_path)
    assert "temperature = 0.5" in settings_in(tmp_path, {"GENBOT_TEMPERATURE": "0.5"})


async def test_genbot_run_takes_its_token_and_settings_from_dotenv(tmp_path: Path) -> None:
    async with DiscordServer() as server, openai_stub() as stub:
        (tmp_path / ".env").write_text(
            f"DISCORD_BOT_TOKEN={server.token}\n"
            "GENBOT_BACKEND=openai\n"
            f'GENBOT_BASE_URL="{stub.base_url}"\n'
            "GENBOT_MODEL=stub\n"
        )
        async with genbot_process("run", cwd=tmp_path, env=loopback(server)) as bot:
            await server.wait_until_ready(timeout=120)
            assert stub.asked == ["Hi"], "the model warmed up on the stub server"
            assert await bot.stop() == 0, bot.log  # SIGTERM shuts it down gracefully
            assert "SIGTERM received: shutting down" in bot.log


def test_dotenv_fills_in_what_is_not_set_and_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    environ = {"SET": "from the environment"}
    dotenv = DotEnv(path, environ)
    assert dotenv.load() == [], "no file: nothing set"
    path.write_text('SET=from the file\nA=1\nB="two words"\nBARE\n')
    assert dotenv.load() == ["A", "B"]
    assert environ == {"SET": "from the environment", "A": "1", "B": "two words"}
    path.write_text("A=3\nSET=again\n")  # edited: A changes, B is gone, SET stays the real one
    assert dotenv.load() == ["A"]
    assert environ == {"SET": "from the environment", "A": "3"}


def test_the_token_is_discord_token_or_discord_bot_token() -> None:
    assert token_from_env({}) == ""
    assert token_from_env({"DISCORD_BOT_TOKEN": " b "}) == "b"
    assert token_from_env({"DISCORD_TOKEN": "a", "DISCORD_BOT_TOKEN": "b"}) == "a"
    assert token_from_env({"DISCORD_TOKEN": " ", "DISCORD_BOT_TOKEN": "b"}) == "b"


def test_a_dotenv_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    from genbot.settings import SettingsError

    (tmp_path / ".env").write_bytes(b"DISCORD_TOKEN=\xff\xfe\n")
    with pytest.raises(SettingsError, match=r"\.env: cannot read the \.env file: not UTF-8"):
        DotEnv(tmp_path / ".env", environ={}).load()
