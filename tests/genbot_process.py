"""A real ``genbot`` process for end-to-end tests: started through ``tests/cli_launcher.py``
(discord.py pointed at a loopback server), in a working directory of the test's choosing, with
its log read as it comes so that a test can wait for a line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from genbot.testing import DiscordServer

__all__ = ["GenbotProcess", "environment", "genbot_process", "loopback"]

_log = logging.getLogger(__name__)

LAUNCHER = str(Path(__file__).with_name("cli_launcher.py"))
SRC = str(Path(__file__).parents[1] / "src")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without genbot settings or a token, importing ./src."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GENBOT_") and k not in ("DISCORD_TOKEN", "DISCORD_BOT_TOKEN")
    }
    path = environ.get("PYTHONPATH")
    environ["PYTHONPATH"] = SRC if not path else f"{SRC}{os.pathsep}{path}"
    return {**environ, **(extra or {})}


def loopback(server: DiscordServer) -> dict[str, str]:
    return {"LOOPBACK_DISCORD_API": server.api_url, "LOOPBACK_DISCORD_GATEWAY": server.gateway_url}


class GenbotProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="genbot log reader")

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, says: str, after: int = 0, timeout: float = 60) -> str:
        """The first log line from index ``after`` on that contains ``says`` (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [line for line in self.lines[after:] if says in line]
            if found:
                return found[0]
            if self._reader.done():
                raise AssertionError(f"genbot exited without logging {says!r}:\n{self.log}")
            self._new_line.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"genbot did not log {says!r} in {timeout} s:\n{self.log}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), left)

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    async def stop(self, timeout: float = 30, how: int = signal.SIGTERM) -> int:
        """Signal ``how`` (SIGTERM: as ``docker stop``), then wait; killed if it does not exit
        in ``timeout`` s. Returns the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(how)
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"genbot did not stop in {timeout} s:\n{self.log}") from None
        await asyncio.wait_for(self._reader, timeout)
        assert self.process.returncode is not None
        return self.process.returncode


@contextlib.asynccontextmanager
async def genbot_process(
    *args: str, cwd: Path, env: dict[str, str]
) -> AsyncIterator[GenbotProcess]:
    """``genbot ARGS`` running in ``cwd`` (through the launcher) until the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        LAUNCHER,
        *args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(env),
    )
    running = GenbotProcess(process)
    try:
        yield running
    finally:
        await running.stop()
