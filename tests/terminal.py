"""A child process on a pseudo-terminal, for the playground's interactive tests: read what it
shows, type into it, end its input. POSIX only (the tests skip where ``os.fork`` is missing)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator


class Terminal:
    def __init__(self, argv: list[str]) -> None:
        """Run `argv` (``argv[0]`` a path) in a child process on a new pseudo-terminal."""
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execv(argv[0], argv)
        #: All the terminal showed so far.
        self.seen = b""
        self.status: int | None = None

    def read_until(self, text: bytes, timeout: float = 30) -> None:
        """Read until the terminal showed `text`, or the child closed it.

        Raises
        ------
        AssertionError
            Where `text` is not shown within `timeout` seconds.
        """
        import select

        deadline = time.monotonic() + timeout
        while text not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not shown; got {self.seen!r}"
            if select.select([self.fd], [], [], remaining)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    break

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def end(self) -> int:
        """Ctrl-D (end of input), then the child's exit code once it has exited."""
        self.write(b"\x04")
        _, self.status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(self.status)

    def close(self) -> None:
        """Close the terminal; a child not ended (a test failed midway) is killed."""
        os.close(self.fd)
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


@contextlib.contextmanager
def terminal(argv: list[str]) -> Iterator[Terminal]:
    """A :class:`Terminal` running `argv`, closed afterwards."""
    term = Terminal(argv)
    try:
        yield term
    finally:
        term.close()
