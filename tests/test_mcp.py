"""MCP servers end to end: real servers written with the ``mcp`` SDK (tests/mcp_servers),
started over stdio with this Python or over streamable HTTP on 127.0.0.1, through
:class:`genbot.mcp.McpServers` to :meth:`genbot.tools.Tool.run`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from genbot.mcp import McpServers, parse_servers
from genbot.tools import Tool, ToolFailed

SERVERS = Path(__file__).parent / "mcp_servers"
TOOLS_SERVER = str(SERVERS / "tools_server.py")
#: Generous: a Python process importing the SDK starts slowly on a busy machine.
START = 120


def stdio(*args: str, **more: Any) -> dict[str, Any]:
    return {
        "command": sys.executable,
        "args": [TOOLS_SERVER, *args],
        "start_timeout": START,
        **more,
    }


def by_name(servers: McpServers) -> dict[str, Tool]:
    """The servers' tools by name, each run giving its text, ``error: ...`` when it failed."""
    return {tool.name: replace(tool, run=_text_of(tool)) for tool in servers.tools()}


def _text_of(tool: Tool) -> Callable[[dict[str, Any]], Awaitable[str]]:
    async def run(arguments: dict[str, Any]) -> str:
        try:
            return await tool.run(arguments)
        except ToolFailed as failed:
            return f"error: {failed}"

    return run


def _children() -> set[int]:
    """This process's child processes, zombies included."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """Every server process a test starts is gone (and reaped: no zombie) when it ends."""
    before = _children()
    yield
    assert _children() - before == set()


async def test_tools_are_listed_and_called_and_a_missing_command_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configs = parse_servers(
        {
            "t": stdio(env={"GREETING": "hi ${WHO}"}),
            "few": stdio(tools=["echo", "nothing"], admin_only=True),
            "gone": {"command": "/no/such/program-genbot", "start_timeout": START},
        },
        "test",
    )
    with caplog.at_level(logging.INFO, logger="genbot.mcp"):
        async with McpServers(configs, environ={"WHO": "there"}) as servers:
            tools = by_name(servers)
            assert sorted(tools) == [
                "few__echo",
                "t__add",
                "t__crash",
                "t__dotted_name",
                "t__echo",
                "t__environment",
                "t__fail",
                "t__freeze",
                "t__hang",
                "t__picture",
                "t__starts",
            ]
            add = tools["t__add"]
            assert add.description == "Add two whole numbers."
            assert add.parameters["type"] == "object"
            assert set(add.parameters["properties"]) == {"a", "b"}
            assert add.schema()["function"]["name"] == "t__add"
            assert not add.admin_only and tools["few__echo"].admin_only

            assert await add.run({"a": 2, "b": 40}) == "42"
            assert await tools["few__echo"].run({"text": "yo"}) == "echo: yo"
            assert await tools["t__dotted_name"].run({}) == "dotted"
            assert await tools["t__picture"].run({}) == "a red dot\n[image (image/png) not shown]"
            assert await tools["t__environment"].run({"name": "GREETING"}) == "hi there"
            failed = await tools["t__fail"].run({})
            assert failed.startswith("error: ") and "the tool broke on purpose" in failed
            refused = await add.run({"a": 1, "b": "x"})
            assert refused.startswith("error: ")
            status = servers.status()
            assert status["t"] == "running (stdio), 10 tools"
            assert status["few"] == "running (stdio), 1 tool"
            assert status["gone"].startswith("failed (stdio): FileNotFoundError")
            assert (await servers.call("gone", "echo", {})).startswith(
                "error: the MCP server 'gone' is not running"
            )
        assert servers.status()["t"] == "stopped (stdio)"
    logged = caplog.text
    assert "MCP server 'gone': cannot start" in logged and "left out" in logged
    assert "MCP server 'few' has no tools named nothing" in logged


async def test_a_server_that_crashes_mid_call_is_restarted(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    configs = parse_servers({"t": stdio(str(marker), timeout=60)}, "test")
    async with McpServers(configs, restart_delay=0.1) as servers:
        tools = by_name(servers)
        assert await tools["t__starts"].run({}) == "1"
        crashed = await tools["t__crash"].run({})
        assert crashed == (
            "error: the MCP server 't' stopped during the call of 'crash' (it is being restarted)"
        )
        # the next call waits for the restart and works
        assert await tools["t__starts"].run({}) == "2"
        assert await tools["t__echo"].run({"text": "back"}) == "echo: back"
        assert servers.status()["t"] == "running (stdio), 10 tools, restarts: 1"


async def test_a_server_that_keeps_dying_at_start_is_given_up(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    configs = parse_servers({"t": stdio(str(marker), timeout=60)}, "test")
    async with McpServers(configs, restart_delay=0.01, max_restarts=1) as servers:
        tools = by_name(servers)
        marker.write_text("not a number")  # the next start fails: the server cannot count
        assert (await tools["t__crash"].run({})).startswith("error: the MCP server 't' stopped")
        assert (await tools["t__echo"].run({"text": "x"})).startswith(
            "error: the MCP server 't' is not running"
        )
        assert servers.status()["t"].startswith("failed (stdio)")
        assert servers.tools() == []


async def test_a_call_that_hangs_times_out_others_run_and_the_server_still_stops() -> None:
    configs = parse_servers({"t": stdio(timeout=3)}, "test")
    async with McpServers(configs, stop_timeout=30) as servers:
        tools = by_name(servers)
        hanging = asyncio.create_task(tools["t__hang"].run({}))
        # calls run concurrently: others are answered while one hangs
        echoes = [tools["t__echo"].run({"text": str(i)}) for i in range(5)]
        assert await asyncio.gather(*echoes) == [f"echo: {i}" for i in range(5)]
        hung = await hanging
        assert hung == "error: the tool 'hang' of the MCP server 't' gave no result within 3 s"
        # the server itself still answers (and answered the ping that followed the timeout)
        assert await tools["t__echo"].run({"text": "alive"}) == "echo: alive"
        assert servers.status()["t"] == "running (stdio), 10 tools"


async def test_a_frozen_server_is_restarted_after_a_call_times_out(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    configs = parse_servers({"t": stdio(str(marker), timeout=2)}, "test")
    async with McpServers(configs, restart_delay=0.1, ping_timeout=1) as servers:
        tools = by_name(servers)
        frozen = await tools["t__freeze"].run({})
        assert frozen == "error: the tool 'freeze' of the MCP server 't' gave no result within 2 s"
        # the ping that follows gets no answer either: the server is killed and started again
        for _ in range(100):
            result = await tools["t__starts"].run({})
            if result == "2":
                break
            assert result.startswith("error: ")  # the ping has not timed out yet
        assert result == "2"
        assert servers.status()["t"] == "running (stdio), 10 tools, restarts: 1"


async def test_a_server_that_never_answers_is_left_out_after_its_start_timeout() -> None:
    silent = {"command": sys.executable, "args": ["-c", "import time; time.sleep(600)"]}
    configs = parse_servers({"mute": {**silent, "start_timeout": 1}}, "test")
    async with McpServers(configs) as servers:
        assert servers.tools() == []
        assert servers.status()["mute"] == (
            "failed (stdio): TimeoutError: no answer within start_timeout (1 s)"
        )


async def test_a_missing_variable_leaves_the_server_out(caplog: pytest.LogCaptureFixture) -> None:
    configs = parse_servers({"t": stdio(env={"K": "${GENBOT_TEST_NOT_SET}"})}, "test")
    async with McpServers(configs, environ={}) as servers:
        assert servers.tools() == []
        assert "GENBOT_TEST_NOT_SET, which is not set" in servers.status()["t"]
    assert "its tools are left out" in caplog.text


class HttpServer:
    """A streamable-HTTP MCP server process (tests/mcp_servers/http_server.py) on 127.0.0.1."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        """Start it (on the port it had before, if any); returns once it listens."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SERVERS / "http_server.py"),
            "s3cret",
            str(self.port),
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.port = int(await asyncio.wait_for(self.process.stdout.readline(), START))

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 30)


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    """A streamable-HTTP MCP server on a free port of 127.0.0.1."""
    server = HttpServer()
    try:
        await server.start()
        yield server
    finally:
        await server.kill()


async def test_a_streamable_http_server_with_headers_from_the_environment(
    http_server: HttpServer,
) -> None:
    configs = parse_servers(
        {
            "web": {"url": http_server.url, "headers": {"X-Token": "${TOKEN}"}, "timeout": 60},
            "nokey": {"url": http_server.url, "start_timeout": 30},
        },
        "test",
    )
    async with McpServers(configs, environ={"TOKEN": "s3cret"}) as servers:
        tools = by_name(servers)
        assert sorted(tools) == ["web__shout"]
        assert await tools["web__shout"].run({"text": "hey"}) == "HEY"
        assert servers.status()["web"] == "running (http), 1 tool"
        assert servers.status()["nokey"].startswith("failed (http)")


async def test_an_http_server_that_goes_away_is_connected_again(http_server: HttpServer) -> None:
    configs = parse_servers(
        {"web": {"url": http_server.url, "headers": {"X-Token": "s3cret"}, "start_timeout": START}},
        "test",
    )
    # back-off 0.05 s doubling: ten tries span about a minute, for the new process to start
    async with McpServers(configs, restart_delay=0.05, max_restarts=10) as servers:
        shout = by_name(servers)["web__shout"]
        assert await shout.run({"text": "one"}) == "ONE"
        await http_server.kill()
        await http_server.start()  # the same port
        result = await shout.run({"text": "two"})
        if result != "TWO":  # the call reached the old connection before it was seen closed
            assert result == (
                "error: the MCP server 'web' stopped during the call of 'shout' (it is being "
                "restarted)"
            )
            assert await shout.run({"text": "two"}) == "TWO"
        assert servers.status()["web"].startswith("running (http), 1 tool, restarts: ")


async def test_the_chat_bot_starts_its_mcp_servers_and_stops_them_on_close() -> None:
    from chat_workers import one_slot
    from genbot.chatbot import ChatBot
    from genbot.settings import Settings
    from genbot.testing import DiscordServer, run_bot

    settings = Settings().updated({"mcp": {"t": stdio(timeout=60)}}, "test")
    backends = one_slot()
    backend = next(backends)
    try:
        async with DiscordServer() as server:
            bot = ChatBot(
                settings, backend=backend, guild_ready_timeout=0.05, close_streamers=False
            )
            async with run_bot(bot, server, timeout=START):
                tools = by_name(bot.mcp)
                assert "t__echo" in tools
                assert await tools["t__echo"].run({"text": "from the bot"}) == "echo: from the bot"
                assert _children() != set()
            assert bot.mcp.status()["t"] == "stopped (stdio)"
    finally:
        backends.close()


async def test_doctor_starts_each_mcp_server_and_lists_its_tools() -> None:
    from genbot.doctor import Status, diagnose
    from genbot.reload import SettingsSource
    from genbot.testing import DiscordServer

    servers = {
        "t": stdio(tools=["echo", "add"]),
        "gone": {"command": "/no/such/program-genbot", "start_timeout": START},
    }
    source = SettingsSource(None, {"mcp": json.dumps(servers)}, None)
    async with DiscordServer() as server:
        guild = server.create_guild("Guild")
        server.create_channel(guild, "general")
        report = await diagnose(source, token=server.token, timeout=START)
    lines = {finding.check: finding for finding in report.findings}
    assert lines["mcp t"].line() == "OK   mcp t: running (stdio), 2 tools: t__add, t__echo"
    assert lines["mcp gone"].status is Status.FAIL
    assert lines["mcp gone"].text.startswith("failed (stdio): FileNotFoundError")
