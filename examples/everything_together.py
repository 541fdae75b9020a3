"""Putting everything together: a streamer worker, a gatekept attend, the context window, and
a follow-up when messages arrived during the reply.

``echo`` stands for a model (it could be e.g. GPT-3; here it does just some statistic): it
answers every stream twice, one second apart, with the length of its input. Run it with
``DISCORD_TOKEN=... python examples/everything_together.py``.
"""

import os
import sys
import time

import genbot


@genbot.streamer
def echo(streams):
    for _ in range(2):
        time.sleep(1)
        for stream in streams:
            stream.write(f"Echo {len(stream.data)}")
    for stream in streams:
        stream.close()


class MyBot(genbot.Genbot):
    # We gatekeep the attend: only one attend per channel runs at any one time.
    @genbot.gatekeep
    async def attend(self, channel):
        # Wait in queue for the streamer.
        async with echo.stream() as stream:
            # It's our turn, so let's create some inputs and call it.
            buff = []
            async for msg in (ctx := self.context(channel)):
                buff.append(f"{msg.author.name}: {msg.content}")

            async for data in stream("\n".join(buff[::-1])):
                # Send the stream output (our Echo context_length) as a message.
                await channel.send(data)

        # If new messages appeared while we were generating ours, more work has to be done.
        if not await ctx.current():
            await self.attend.force(channel)


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    echo.start_process(minimum=1, maximum=64)
    with echo:  # stops the worker process when the bot has shut down
        MyBot().run(token)
