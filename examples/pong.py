"""Two ways to write a Streamer worker, and a bot that streams from either.

- ``PongStreamer`` subclasses :class:`genbot.Streamer` and overrides ``worker()``: a loop that
  takes the waiting streams with ``consume(minimum, maximum)``, each holding its input ``data``,
  and answers with ``write`` and ``close``.
- ``pong`` is the same worker as a batch function, with ``@genbot.streamer``.

Run it with ``DISCORD_TOKEN=... python examples/pong.py`` (add ``--subclass`` for the first).
Both live at module level: a worker started with ``spawn`` imports this file again.
"""

import os
import sys

import genbot


class PongStreamer(genbot.Streamer):
    def worker(self):
        while True:
            streams = self.consume(minimum=1, maximum=64)
            for stream in streams:
                stream.write(f"Pong: {stream.data}")
                stream.close()


@genbot.streamer
def pong(streams):
    for stream in streams:
        stream.write(f"Pong: {stream.data}")
        stream.close()


class PongBot(genbot.Genbot):
    def __init__(self, streamer, **kwargs):
        super().__init__(**kwargs)
        self.streamer = streamer

    async def attend(self, channel):
        async with self.streamer.stream() as stream:  # waits in queue for a free stream slot
            # Now that it is our turn, create the inputs: here the newest message.
            newest = [msg.content async for msg in self.context(channel, limit=1)]
            inputs = newest[0] if newest else ""
            async for outputs in stream(inputs):
                await channel.send(outputs)  # and collect the outputs in real time


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    streamer = PongStreamer() if "--subclass" in sys.argv else pong
    streamer.start_process()
    with streamer:  # stops the worker process when the bot has shut down
        PongBot(streamer).run(token)
