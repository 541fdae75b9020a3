"""The `genbot` command, run as a user runs it: a real process, real stdin and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from genbot.settings import settings_table

GENBOT = [sys.executable, "-m", "genbot"]


def genbot(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("GENBOT_") and k != "DISCORD_TOKEN"
    }
    return subprocess.run(
        [*GENBOT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environ, **(env or {})},
    )


def test_playground_answers_with_the_embedded_model() -> None:
    done = genbot(
        "playground",
        "-s",
        "max_new_tokens=16",
        "-s",
        "temperature=0",
        stdin="Hi! What is Discord?\n",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "you: Hi! What is Discord?"
    reply = "\n".join(lines[1:])
    assert reply.startswith("genbot: ") and len(reply) > len("genbot: ") + 5, done.stdout
    assert "model ready" in done.stderr, "model loading is reported"


def test_playground_runs_a_bot_class_by_module_path() -> None:
    done = genbot("playground", "genbot.playground:EchoBot", stdin="hello\n")
    assert done.returncode == 0, done.stderr
    assert "echo: hello" in done.stdout


def test_playground_names_a_bot_it_cannot_load() -> None:
    done = genbot("playground", "genbot.nothing:Bot")
    assert done.returncode == 2
    assert "cannot load genbot.nothing:Bot" in done.stderr


def test_run_without_a_token_says_so() -> None:
    done = genbot("run")
    assert done.returncode == 2
    assert "DISCORD_TOKEN" in done.stderr


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text('backend = "llamacpp"\ntop_p = 3\n')
    done = genbot("run", "-c", str(config), env={"DISCORD_TOKEN": "x"})
    assert done.returncode == 2
    assert f"{config}: setting 'top_p': must be in (0, 1], got 3" in done.stderr

    done = genbot("run", env={"DISCORD_TOKEN": "x", "GENBOT_MAX_NEW_TOKENS": "lots"})
    assert done.returncode == 2
    assert "GENBOT_MAX_NEW_TOKENS: setting 'max_new_tokens': expected a whole number" in (
        done.stderr
    )


def test_settings_prints_the_readme_table_and_values() -> None:
    done = genbot("settings", "--markdown")
    assert done.returncode == 0
    assert done.stdout.strip() == settings_table()
    done = genbot("settings", "-s", "temperature=0.5")
    assert "temperature = 0.5" in done.stdout.splitlines()


def test_run_help_lists_every_setting() -> None:
    done = genbot("run", "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0
    for name in ("backend", "model", "system_prompt", "context_limit", "admins"):
        assert f"{name} = " in done.stdout
