"""The design doc's "Putting everything together", corrected, as a real bot on loopback Discord.

Corrections: the missing parenthesis after ``self.context(channel``; the stream is read with
``async for`` (a plain ``for`` on the event loop's thread would freeze the bot, and genbot
refuses it); re-attending passes ``force=True`` (without it the gatekeep makes it a no-op).
The worker sleeps 0.2 s instead of 1 s per round, to keep the suite short.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import genbot
from bot_world import FAST, world
from genbot.testing import run_bot


@genbot.streamer
def echo(streams: list[Any]) -> None:
    for _ in range(2):
        time.sleep(0.2)
        for stream in streams:
            stream.write(f"Echo {len(stream.data)}")
    for stream in streams:
        stream.close()


class MyBot(genbot.Genbot):
    # We will gatekeep the attend, i.e. only one attend per channel will be running at any time.
    @genbot.gatekeep
    async def attend(self, channel: Any) -> None:
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
                await self.attend(channel, force=True)


async def test_putting_everything_together() -> None:
    echo.start_process(minimum=1, maximum=64)
    try:
        async with world() as w, run_bot(MyBot(**FAST), w.server) as bot:
            dm = w.server.create_dm(w.alice)
            general = w.general
            first = "alice: hello"
            await w.server.send_message(dm, w.alice, "hello")
            # A second channel at the same time: both are served by the one worker.
            await w.server.send_message(general, w.bob, "hi", mentions_bot=True)
            await w.server.wait_for(lambda: len(w.contents(dm)) >= 1, timeout=30)
            # A message arrives while the first reply is being generated: one follow-up.
            await w.server.send_message(dm, w.alice, "again")
            await w.server.wait_for(lambda: len(w.contents(dm)) == 4, timeout=30)
            while running := bot.attending():
                await asyncio.wait(running, timeout=30)
            follow_up = "\n".join([first, *(f"genbot: Echo {len(first)}",) * 2, "alice: again"])
            assert w.contents(dm) == [f"Echo {len(first)}"] * 2 + [f"Echo {len(follow_up)}"] * 2
            mention = f"bob: <@{bot.user.id}> hi"
            assert w.contents(general) == [f"Echo {len(mention)}"] * 2
    finally:
        echo.close()
