"""Streaming: asynchronous callers batched into one worker, outputs streamed back in real time.

See :mod:`genbot.streaming.core` for how a stream goes and the design choices;
:mod:`genbot.streaming.client` (caller side), :mod:`genbot.streaming.worker` (worker side),
:mod:`genbot.streaming.launchers` (processes, threads, restarts), :mod:`genbot.streaming.frames`
and :mod:`genbot.streaming.connection` (what travels between them) for the parts.

Continuous batching: a generation loop takes the streams that arrived between its decoding
steps (``consume(minimum=0)`` returns at once), and blocks only while it has nothing to do::

    import time

    import genbot

    class Generator(genbot.Streamer):
        def __init__(self, capacity=8, steps=16):
            self.capacity = capacity
            self.steps = steps

        def worker(self):
            active = {}  # stream -> tokens written so far
            while True:
                free = self.capacity - len(active)
                for stream in self.consume(minimum=0 if active else 1, maximum=free):
                    active[stream] = 0
                time.sleep(0.001)  # one decoding step for the whole batch
                for stream in list(active):
                    if stream.closed:  # the caller went away
                        del active[stream]
                        continue
                    stream.write(f"{stream.data}:{active[stream]}")
                    active[stream] += 1
                    if active[stream] == self.steps:
                        stream.close()
                        del active[stream]

    async def ask(generator, prompt):
        async with generator.stream() as stream:
            return [token async for token in stream(prompt)]
"""

from genbot.streaming.client import CallerStream, StreamSlot
from genbot.streaming.core import FunctionStreamer, Streamer, active_streamers, streamer
from genbot.streaming.errors import (
    FirstTokenTimeout,
    ModelTimeout,
    StallTimeout,
    StreamError,
    WorkerDied,
    WorkerExit,
)
from genbot.streaming.launchers import WorkerProcess
from genbot.streaming.worker import Stream

__all__ = [
    "CallerStream",
    "FirstTokenTimeout",
    "FunctionStreamer",
    "ModelTimeout",
    "StallTimeout",
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
