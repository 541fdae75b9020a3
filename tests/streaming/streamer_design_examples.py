"""The Streaming examples of the design doc (genbot-design.md), corrected: the ``stremaer``
typo, and the async forms (``async with``/``async for``) in coroutines."""

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


# "Putting everything together": it could be e.g. GPT-3, here we do just some statistic.
@genbot.streamer
def echo(streams):
    for _ in range(2):
        time.sleep(1)
        for stream in streams:
            stream.write(f"Echo {len(stream.data)}")
    for stream in streams:
        stream.close()


class MyBot:
    """The attend() of the doc's bot, minus Discord: ``channel`` is anything with ``send``."""

    def __init__(self, streamer):
        self.streamer = streamer

    async def attend(self, channel):
        async with self.streamer.stream() as stream:  # waits in queue for a free stream slot
            inputs = "some input data"  # now that it is our turn, we create the inputs
            async for outputs in stream(inputs):
                await channel.send(outputs)  # and collect the outputs in real time


class EchoBot:
    """The doc's final attend(), with the history given instead of read from Discord."""

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
