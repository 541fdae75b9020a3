"""Errors of :mod:`genbot.streaming`."""

from __future__ import annotations

__all__ = [
    "FAILURE_KINDS",
    "FirstTokenTimeout",
    "ModelTimeout",
    "StallTimeout",
    "StreamError",
    "WorkerDied",
    "WorkerExit",
    "stream_error",
]


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


class ModelTimeout(StreamError):
    """The backend gave up waiting on the model: it sent no first token, or stopped sending
    tokens, within the backend's bound. A worker fails a stream with one of these by giving
    :meth:`Stream.fail <genbot.streaming.Stream.fail>` its ``kind`` (see
    :data:`FAILURE_KINDS`), so that the caller can say so (the ready-made bot shows its own
    notes for them, not its generic error note)."""


class FirstTokenTimeout(ModelTimeout):
    """The model sent no first token in time (e.g. the OpenAI backend's
    ``first_token_timeout``): kind ``"first_token"``."""


class StallTimeout(ModelTimeout):
    """The model stopped sending tokens mid-reply (a stall, e.g. the OpenAI backend's
    ``token_timeout``): kind ``"stall"``."""


#: The typed failures a worker can give a stream (``Stream.fail(message, kind=KIND)``): the
#: class the caller's iteration raises, by kind. Without a kind it raises :class:`StreamError`.
FAILURE_KINDS: dict[str, type[StreamError]] = {
    "first_token": FirstTokenTimeout,
    "stall": StallTimeout,
}


def stream_error(message: str, traceback: str | None, kind: str | None) -> StreamError:
    """The error a caller sees for a stream that failed in the worker with ``kind``
    (an unknown or no kind: a plain :class:`StreamError`)."""
    cls = FAILURE_KINDS.get(kind, StreamError) if kind is not None else StreamError
    return cls(message, traceback=traceback)


class WorkerExit(SystemExit):
    """Raised in the worker by ``consume()`` once the streamer closed: the worker should return.

    A ``SystemExit``, so that ``except Exception`` in a worker loop does not swallow it and a
    worker thread that lets it through ends quietly.
    """
