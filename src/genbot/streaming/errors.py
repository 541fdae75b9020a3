"""Errors of :mod:`genbot.streaming`."""

from __future__ import annotations

__all__ = ["StreamError", "WorkerDied", "WorkerExit"]


class StreamError(Exception):
    """Every failure a caller of a streamer sees.

    ``traceback`` holds the worker's formatted traceback when the failure came from an
    exception raised in the worker, else ``None``.
    """

    def __init__(self, message: str, *, traceback: str | None = None) -> None:
        super().__init__(message)
        self.traceback = traceback

    def __str__(self) -> str:
        message = super().__str__()
        if self.traceback:
            return f"{message}\n\nWorker traceback:\n{self.traceback.rstrip()}"
        return message


class WorkerDied(StreamError):
    """The worker (process or thread) went away while the stream was open or waiting."""


class WorkerExit(SystemExit):
    """Raised in the worker by ``consume()`` once the streamer closed: the worker should return.

    A ``SystemExit``, so that ``except Exception`` in a worker loop does not swallow it and a
    worker thread that lets it through ends quietly.
    """
