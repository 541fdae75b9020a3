"""The README's streaming bot: the chats of every channel batched into one worker process.

``echo`` runs in the worker with up to 64 streams at once; each ``attend`` waits for a free
slot, reads the context at that last moment, and sends what the worker streams back. Run it
with ``DISCORD_TOKEN=... python examples/streaming_echo.py``.

The worker is started with ``spawn``: it imports this file again, so ``echo`` must live at
module level and the start-up code under ``if __name__ == "__main__":``.
"""

import os
import sys

import genbot


@genbot.streamer
def echo(streams):  # runs in the worker, with up to 64 streams at once
    for stream in streams:
        stream.write(f"Echo {len(stream.data)}")
        stream.close()


class MyBot(genbot.Genbot):
    @genbot.gatekeep
    async def attend(self, channel):
        async with echo.stream() as stream:  # wait for a free slot at the worker
            ctx = self.context(channel)  # read the context at the last moment
            lines = [f"{m.author.name}: {m.content}" async for m in ctx]
            async for out in stream("\n".join(lines[::-1])):
                await channel.send(out)


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    echo.start_process(minimum=1, maximum=64)
    with echo:  # stops the worker process when the bot has shut down
        MyBot().run(token)
