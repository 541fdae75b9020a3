"""Streaming: asynchronous callers batched into one worker, outputs streamed back in real time.

See :mod:`genbot.streaming.streamer` for how a stream goes and the design choices.
"""

from genbot.streaming.client import CallerStream, StreamSlot
from genbot.streaming.errors import StreamError, WorkerDied, WorkerExit
from genbot.streaming.streamer import (
    FunctionStreamer,
    Streamer,
    WorkerProcess,
    active_streamers,
    streamer,
)
from genbot.streaming.worker import Stream

__all__ = [
    "CallerStream",
    "FunctionStreamer",
    "Stream",
    "StreamError",
    "StreamSlot",
    "Streamer",
    "WorkerDied",
    "WorkerExit",
    "WorkerProcess",
    "active_streamers",
    "streamer",
]
