"""The `genbot` command, run as a user runs it: a real process, real stdin and exit codes.

A start that fails for a reason the user can fix prints one line to stderr and exits non-zero;
these tests run the real command (through ``tests/cli_launcher.py`` where it must talk to the
loopback Discord server) and check that line, the exit status, and that no traceback is shown
at the default log level.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from genbot.settings import settings_table
from genbot.testing import DiscordServer

GENBOT = [sys.executable, "-m", "genbot"]
LAUNCHER = [sys.executable, str(Path(__file__).with_name("cli_launcher.py"))]
SRC = str(Path(__file__).parents[1] / "src")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without genbot settings or a token, importing ./src."""
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("GENBOT_") and k != "DISCORD_TOKEN"
    }
    path = environ.get("PYTHONPATH")
    environ["PYTHONPATH"] = SRC if not path else f"{SRC}{os.pathsep}{path}"
    return {**environ, **(extra or {})}


def genbot(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GENBOT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(env),
    )


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def launch(*args: str, env: dict[str, str], timeout: float = 180) -> Done:
    """Run ``genbot ARGS`` through the launcher without blocking this loop (whose loopback
    server it talks to); it must exit within ``timeout`` seconds."""
    process = await asyncio.create_subprocess_exec(
        *LAUNCHER,
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(env),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"genbot {' '.join(args)} still ran after {timeout} s") from None
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


def loopback(server: DiscordServer) -> dict[str, str]:
    return {"LOOPBACK_DISCORD_API": server.api_url, "LOOPBACK_DISCORD_GATEWAY": server.gateway_url}


def closed_port() -> int:
    """A loopback port where nothing listens (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def assert_one_line(done: Done | subprocess.CompletedProcess[str], code: int, says: str) -> str:
    """Exit status ``code``, exactly one error line, the last on stderr, containing ``says``,
    and no traceback."""
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("genbot: ")]
    assert done.returncode == code, done.stderr
    assert len(errors) == 1, done.stderr
    assert lines[-1] == errors[0], done.stderr
    assert says in errors[0], errors[0]
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    return errors[0]


# -- user errors: one line, a non-zero status ----------------------------------------------------


async def test_a_wrong_token_is_one_line() -> None:
    async with DiscordServer() as server:
        # the loopback server answers a wrong token as Discord does
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bot not-the-token"}
            async with session.get(f"{server.api_url}/users/@me", headers=headers) as response:
                assert response.status == 401
        env = {**loopback(server), "DISCORD_TOKEN": "not-the-token"}
        done = await launch("run", env=env)
        line = assert_one_line(done, 2, "Discord refused the token (401 Unauthorized)")
        assert "DISCORD_TOKEN" in line and "developers/applications" in line
        assert server.gateway_queries == [], "the bot never went online"

        # at DEBUG the same line, and the traceback in the log
        done = await launch("run", "-s", "log_level=DEBUG", env=env)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1] == line
        assert "Traceback" in done.stderr and "LoginFailure" in done.stderr


async def test_privileged_intents_not_enabled_is_one_line() -> None:
    async with DiscordServer(privileged_intents=False) as server:
        env = {**loopback(server), "DISCORD_TOKEN": server.token}
        done = await launch("run", "-s", "max_new_tokens=1", env=env)
    line = assert_one_line(done, 2, "Discord refused the privileged intents")
    assert "Message Content Intent" in line and "Server Members Intent" in line


async def test_unreachable_discord_is_one_line_and_fails_fast() -> None:
    port = closed_port()
    env = {
        "LOOPBACK_DISCORD_API": f"http://127.0.0.1:{port}/api/v10",
        "LOOPBACK_DISCORD_GATEWAY": f"ws://127.0.0.1:{port}/gateway",
        "DISCORD_TOKEN": "any",
    }
    done = await launch("run", env=env, timeout=60)
    assert_one_line(done, 1, f"cannot reach Discord (Cannot connect to host 127.0.0.1:{port}")


async def test_a_model_server_that_is_not_there_is_one_line() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    async with DiscordServer() as server:
        env = {**loopback(server), "DISCORD_TOKEN": server.token}
        done = await launch("run", "-s", "backend=openai", "-s", f"base_url={url}", env=env)
        assert server.gateway_queries == [], "the bot did not go online without its model"
    assert_one_line(done, 1, f"nothing answers at {url}: start the model server, or set base_url")


def test_the_playground_names_a_model_server_that_is_not_there() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = genbot("playground", "-s", "backend=openai", "-s", f"base_url={url}", stdin="hi\n")
    assert_one_line(done, 1, f"nothing answers at {url}")


def test_a_data_store_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "genbot.sqlite3").write_bytes(b"not a SQLite database " * 8)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = genbot(
        "playground",
        *("-s", "backend=openai", "-s", f"base_url={url}", "-s", f"data_dir={tmp_path}"),
        stdin="hi\n",
    )
    assert_one_line(done, 2, "the data store cannot be used: ")


def test_a_missing_model_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    done = genbot("playground", "-s", f"model={missing}", stdin="hi\n")
    assert_one_line(
        done,
        2,
        f"bad configuration: --set model: setting 'model': no such file (the llamacpp backend "
        f"needs a GGUF model file), got {str(missing)!r}",
    )
    done = genbot("run", env={"DISCORD_TOKEN": "x", "GENBOT_MODEL": str(missing)})
    assert_one_line(done, 2, "environment variable GENBOT_MODEL: setting 'model': no such file")


def test_a_model_file_that_is_not_gguf_is_one_line(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x80\x02 a pickled torch model, say")
    done = genbot("playground", "-s", f"model={model}", stdin="hi\n")
    assert_one_line(done, 2, "setting 'model': not a GGUF file (it does not start with 'GGUF')")


def test_a_corrupt_gguf_model_is_one_line(tmp_path: Path) -> None:
    model = tmp_path / "corrupt.gguf"
    model.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 4)
    done = genbot("playground", "-s", f"model={model}", stdin="hi\n")
    assert_one_line(
        done, 1, f"the model could not be loaded (llama.cpp could not load {str(model)!r}"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="without transformers installed the error names the missing package instead",
)
def test_transformers_without_a_model_is_one_line() -> None:
    done = genbot("run", "-s", "backend=transformers", env={"DISCORD_TOKEN": "x"})
    assert_one_line(
        done, 2, "--set backend: setting 'model': the transformers backend needs a model"
    )


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"temperature = 0.5\n\xe9\n", "not UTF-8 text (byte 0xe9 at offset 18)"),
        (b"genbot = 1\n", "'genbot' must be a [genbot] table of settings, got 1"),
        (b"seed = 1\n[genbot]\n", "top-level key 'seed' beside the [genbot] table"),
        (b"users = {blacklst = [1]}\n", "setting 'users': unknown keys ['blacklst']"),
        (b"temperature = nan\n", "setting 'temperature': must be a finite number, got nan"),
    ],
)
def test_a_bad_config_file_is_one_line(content: bytes, says: str, tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_bytes(content)
    done = genbot("run", "-c", str(config), env={"DISCORD_TOKEN": "x"})
    assert_one_line(done, 2, f"bad configuration: {config}: {says}")


def test_a_directory_or_missing_config_is_one_line(tmp_path: Path) -> None:
    done = genbot("settings", "-c", str(tmp_path))
    assert_one_line(done, 2, f"{tmp_path}: is a directory, not a config file")
    done = genbot("settings", "-c", str(tmp_path / "none.toml"))
    assert_one_line(done, 2, f"{tmp_path / 'none.toml'}: no such config file")


def test_a_set_without_a_value_is_one_line() -> None:
    done = genbot("settings", "-s", "temperature")
    assert_one_line(done, 2, "bad configuration: --set 'temperature': expected NAME=VALUE")


# -- the table behind those lines (pure) -------------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "raised", "says"),
    [
        ("openai", "APIConnectionError: Connection error.", "nothing answers at {url}"),
        ("openai", "APITimeoutError: Request timed out.", "did not answer in time"),
        ("openai", "AuthenticationError: Error code: 401", "refused the API key: set GENBOT_API"),
        ("openai", "NotFoundError: Error code: 404", "has no model 'm' (or base_url is not"),
        (
            "openai",
            "ModelError: the server lists no model; pass model=",
            "failed at start-up: the server lists no model",
        ),
        (
            "llamacpp",
            "ModelError: llama.cpp could not load 'x'",
            "could not be loaded (llama.cpp "
            "could not load 'x'): check that model names a GGUF chat model",
        ),
        (
            "transformers",
            "OSError: no such repo",
            "could not be loaded (no such repo): check that model names a chat (instruct) model",
        ),
    ],
)
def test_a_model_that_fails_its_warm_up_is_explained(backend: str, raised: str, says: str) -> None:
    from genbot.cli import model_problem
    from genbot.settings import Settings
    from genbot.streaming import StreamError

    settings = Settings(backend=backend, model="m", base_url="http://127.0.0.1:1/v1")
    error = StreamError(f"the worker raised {raised}", traceback="Traceback ...\nmore\n")
    line = model_problem(settings, error)
    assert says.format(url=settings.base_url) in line
    assert "\n" not in line and "Traceback" not in line


def test_network_errors_mean_discord_only_where_the_bot_talks_to_discord() -> None:
    from genbot.cli import explain

    refused = ConnectionRefusedError(111, "Connect call failed")
    assert explain(refused) == (
        1,
        "cannot reach Discord ([Errno 111] Connect call failed): "
        "check the network connection (proxy, firewall, DNS), then "
        "start again",
    )
    assert explain(refused, discord=False) is None  # the playground: a bug, with its traceback
    assert explain(RuntimeError("a bug")) is None


# -- the commands ----------------------------------------------------------------------------


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
    assert_one_line(done, 2, "set DISCORD_TOKEN to your bot's token")


def test_bad_configuration_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "genbot.toml"
    config.write_text('backend = "llamacpp"\ntop_p = 3\n')
    done = genbot("run", "-c", str(config), env={"DISCORD_TOKEN": "x"})
    assert_one_line(done, 2, f"{config}: setting 'top_p': must be in (0, 1], got 3")

    done = genbot("run", env={"DISCORD_TOKEN": "x", "GENBOT_MAX_NEW_TOKENS": "lots"})
    assert_one_line(
        done, 2, "GENBOT_MAX_NEW_TOKENS: setting 'max_new_tokens': expected a whole number"
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
