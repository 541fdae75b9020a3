"""Streamer examples as a user first writes them: a ``Streamer`` subclass, a batch function under
``@genbot.streamer``, and a bot's ``attend()`` around them (minus Discord), with the async forms
(``async with``/``async for``) in coroutines. The README's "Streaming: many chats, one model"
section shows the same shapes; docs/design.md describes the design."""

from __future__ import annotations

import time

import genbot


class MyStreamer(genbot.Streamer):
    def worker(self):
        while True:
            streams = self.consume(minimum=1, maximum=64)
            for stream in streams:
                stream.write(f"Pong: {stream.data}")
                stream.close()


@genbot.streamer
def streamer(streams):
    for stream in streams:
        stream.write(f"Pong: {stream.data}")
        stream.close()


# Where a model would generate, this one writes a statistic of its input, twice, a second apart.
@genbot.streamer
def echo(streams):
    for _ in range(2):
        time.sleep(1)
        for stream in streams:
            stream.write(f"Echo {len(stream.data)}")
    for stream in streams:
        stream.close()


class MyBot:
    """A bot's attend() around a streamer, minus Discord: ``channel`` is anything with ``send``."""

    def __init__(self, streamer):
        self.streamer = streamer

    async def attend(self, channel):
        async with self.streamer.stream() as stream:  # waits in queue for a free stream slot
            inputs = "some input data"  # now that it is our turn, we create the inputs
            async for outputs in stream(inputs):
                await channel.send(outputs)  # and collect the outputs in real time


class EchoBot:
    """An attend() that builds its inputs from the channel's history once its turn came; the
    history is given instead of read from Discord."""

    def __init__(self, history):
        self.history = history  # list of (author, content), most recent first

    async def attend(self, channel):
        # Wait in queue for the streamer.
        async with echo.stream() as stream:
            # It's our turn, so let's create some inputs and call it.
            buff = []
            for author, content in self.history:
                buff.append(f"{author}: {content}")

            async for data in stream("\n".join(buff[::-1])):
                # Send the stream output (our Echo context_length) as a message.
                await channel.send(data)
