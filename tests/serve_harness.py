"""Real processes for the ``genbot serve`` and fleet tests: ``genbot serve`` upstreams (each in
its own process group, so that a test can kill or freeze one with its model worker) and a real
HAProxy in front of them, on free loopback ports. Every wait is bounded and event-driven: the
harness reads each process's standard error on a thread and wakes waiters per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_workers import EVENT_PREFIX

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
#: Seconds a process may take to start (spawning a model worker on a busy machine included).
START_TIMEOUT = 120.0
#: Seconds a process may take to exit once asked.
STOP_TIMEOUT = 15.0

_LISTENING = re.compile(r"serving \S+ at (http://[\d.]+:\d+/v1)")


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without genbot settings, importing ./src and tests/ (the workers)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GENBOT_")}
    paths = [str(SRC), str(TESTS), *filter(None, [environ.get("PYTHONPATH")])]
    return {**environ, "PYTHONPATH": os.pathsep.join(paths), **(extra or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Journal:
    """Lines of output and worker events of several processes, with bounded waits on them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []  # (process name, line)
        self.events: list[dict[str, Any]] = []  # worker events, with "upstream": name
        self._changed = threading.Condition()

    def add(self, name: str, line: str) -> None:
        with self._changed:
            self.lines.append((name, line))
            if line.startswith(EVENT_PREFIX):
                self.events.append({"upstream": name, **json.loads(line[len(EVENT_PREFIX) :])})
            self._changed.notify_all()

    def wait_sync(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Block until ``predicate()`` (called under the journal's lock) is true.

        Raises
        ------
        AssertionError
            Still false after ``timeout`` seconds; the message shows the recent output.
        """
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                recent = "\n".join(f"{n}: {line}" for n, line in self.lines[-40:])
                raise AssertionError(f"not within {timeout} s: {what}\nrecent output:\n{recent}")

    async def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """:meth:`wait_sync` without blocking the event loop."""
        await asyncio.to_thread(self.wait_sync, predicate, timeout, what)

    def find(
        self, event: str, said: str | None = None, upstream: str | None = None
    ) -> list[dict[str, Any]]:
        """The worker events of kind ``event`` (for the message ``said`` and of ``upstream``,
        if given)."""
        with self._changed:
            return [
                e
                for e in self.events
                if e["event"] == event
                and (said is None or e["said"] == said)
                and (upstream is None or e["upstream"] == upstream)
            ]

    def output(self, name: str) -> str:
        with self._changed:
            return "\n".join(line for n, line in self.lines if n == name)


class Process:
    """A child process in its own process group; its standard error goes to the journal."""

    def __init__(
        self, name: str, argv: list[str], journal: Journal, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.journal = journal
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        with self.popen.stderr:
            for line in self.popen.stderr:
                self.journal.add(self.name, line.rstrip("\n"))
        self.journal.add(self.name, f"[exited with {self.popen.wait()}]")

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the process and its children (its model worker)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait (bounded) until it has exited and its reader thread has put all its output in
        the journal (the exit comes first: a check of the output right after ``popen.wait()``
        can miss the last lines); its exit status.

        Raises
        ------
        subprocess.TimeoutExpired
            It still runs after `timeout` seconds.
        AssertionError
            Its output did not end within `timeout` seconds more.
        """
        code = self.popen.wait(timeout)
        self._reader.join(timeout)
        assert not self._reader.is_alive(), f"{self.name}: its output did not end in {timeout} s"
        return code

    def stop(self) -> int:
        """Stop it (SIGCONT, SIGTERM, then SIGKILL to its group) and return its exit status."""
        self.signal_group(signal.SIGCONT)
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # what is left of the group (an orphaned worker)
        code = self.popen.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        return code


class Upstream(Process):
    """``genbot serve ARGS --port 0``; :attr:`url` is its ``/v1`` address once ready."""

    def __init__(
        self, name: str, args: list[str], journal: Journal, env: dict[str, str] | None = None
    ) -> None:
        argv = [sys.executable, "-m", "genbot", "serve", *args, "--port", "0"]
        super().__init__(name, argv, journal, environment(env))
        self.url = ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Upstream:
        def listening() -> bool:
            return self.exited() or any(
                _LISTENING.search(line) for n, line in self.journal.lines if n == self.name
            )

        self.journal.wait_sync(listening, timeout, f"{self.name} listens")
        found = _LISTENING.search(self.journal.output(self.name))
        assert found, f"{self.name} exited:\n{self.journal.output(self.name)}"
        self.url = found.group(1)
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/")[0])


def haproxy_config(bind: str, servers: dict[str, str], maxconn: int) -> str:
    """The HAProxy configuration of the fleet tests (and of the README): listening on ``bind``
    (``host:port``) in front of ``servers`` (name -> ``host:port``), each taking ``maxconn``
    requests at once."""
    marks = "observe layer4 error-limit 1 on-error mark-down"
    lines = [f"    server {name} {address} {marks}" for name, address in servers.items()]
    return HAPROXY_CFG.format(bind=bind, maxconn=maxconn, servers="\n".join(lines))


HAPROXY_CFG = """\
global
    log stderr format short local0 notice

defaults
    mode http
    log global
    timeout connect 2s
    timeout client 120s
    timeout server 120s        # > the client's first-token timeout: the client times out first
    timeout queue 60s          # how long a request may wait for a free model slot
    timeout check 2s
    retries 3
    option redispatch 1        # every retry of a failed connection goes to another server
    retry-on conn-failure empty-response 503
    option abortonclose        # a client that leaves is not sent on from the queue

frontend models
    bind {bind}
    default_backend genbot

backend genbot
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    # maxconn = the server's `parallel`: HAProxy queues the rest and hands each to the first
    # server with a free slot. A server that refuses a connection is marked down at once.
    default-server check inter 1s fall 2 rise 1 maxconn {maxconn}
{servers}
"""


def haproxy_binary() -> str:
    found = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        raise AssertionError("haproxy is not installed: run scripts/system-deps")
    return found


class HAProxy(Process):
    """A real HAProxy (foreground, master-worker) with :func:`haproxy_config`; :meth:`wait_ready`
    waits for its systemd-style READY notification."""

    def __init__(
        self, directory: Path, servers: dict[str, Upstream], maxconn: int, journal: Journal
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = directory / "haproxy.cfg"
        addresses = {name: f"127.0.0.1:{up.port}" for name, up in servers.items()}
        config.write_text(haproxy_config(f"127.0.0.1:{self.port}", addresses, maxconn))
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = directory / "notify.sock"
        self._notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        argv = [haproxy_binary(), "-Ws", "-db", "-f", str(config)]
        super().__init__("haproxy", argv, journal, env)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> HAProxy:
        self._notify.settimeout(timeout)
        try:
            while b"READY=1" not in self._notify.recv(4096):
                pass
        except TimeoutError:
            raise AssertionError(f"haproxy not ready:\n{self.journal.output(self.name)}") from None
        return self

    def stop(self) -> int:
        self._notify.close()
        return super().stop()
