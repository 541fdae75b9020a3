"""The examples of streamer_design_examples (a subclass, a decorated batch function, bots around
them) run, in spawned worker processes."""

from __future__ import annotations

import asyncio

import streamer_design_examples


class Channel:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        self.sent.append(text)


async def test_subclass_example() -> None:
    streamer = streamer_design_examples.MyStreamer()
    process = streamer.start_process()
    try:
        channels = [Channel() for _ in range(3)]
        bot = streamer_design_examples.MyBot(streamer)
        await asyncio.wait_for(asyncio.gather(*(bot.attend(c) for c in channels)), 30)
    finally:
        streamer.close()
    assert [c.sent for c in channels] == [["Pong: some input data"]] * 3
    assert not process.is_alive()


async def test_decorator_example() -> None:
    streamer = streamer_design_examples.streamer
    process = streamer.start_process(minimum=1, maximum=64)
    try:
        channel = Channel()
        await asyncio.wait_for(streamer_design_examples.MyBot(streamer).attend(channel), 30)
    finally:
        streamer.close()
    assert channel.sent == ["Pong: some input data"]
    assert not process.is_alive()


async def test_putting_everything_together() -> None:
    streamer_design_examples.echo.start_process()
    try:
        history = [("bob", "hello"), ("alice", "hi")]
        channels = [Channel(), Channel()]
        bots = [
            streamer_design_examples.EchoBot(history),
            streamer_design_examples.EchoBot(history[:1]),
        ]
        await asyncio.wait_for(
            asyncio.gather(*(b.attend(c) for b, c in zip(bots, channels, strict=True))), 30
        )
    finally:
        streamer_design_examples.echo.close()
    assert channels[0].sent == ["Echo 20"] * 2  # "alice: hi\nbob: hello"
    assert channels[1].sent == ["Echo 10"] * 2  # "bob: hello"
