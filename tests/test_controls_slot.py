"""Stop on a regeneration that has its model slot but has not written yet (issue 8's rough
edges): a long reply's later messages are deleted by then, so the reply must end on its first
message, marked as stopped, with a Regenerate button that works. On the loopback Discord with
the scripted worker of ``test_controls`` (``long`` answers with 3000 characters)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from chat_workers import RELEASE
from chat_world import Chat, settle
from genbot.controls import REGENERATE, STOP, Control
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_controls import backend, chat, custom_id, make_bot, press
from test_controls_races import hold_the_slot

__all__ = ["backend", "chat"]  # the fixtures


class Gate:
    """Holds the regeneration in its window: it has its slot and deleted the reply's later
    messages (it reads its context only then), and has not written yet."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()

    def wrap(self, context: Any) -> Any:
        def gated(channel: Any, limit: int = 16) -> Any:
            inner = context(channel, limit)
            if not self.armed:
                return inner
            self.armed = False
            return self._held(inner)

        return gated

    async def _held(self, inner: Any) -> AsyncIterator[Any]:
        self.reached.set()
        await asyncio.wait_for(self.opened.wait(), 15)
        async for message in inner:
            yield message


async def test_stop_after_a_regeneration_has_its_slot_ends_the_reply_on_its_first_message(
    chat: Chat, backend: Streamer, tmp_path: Path
) -> None:
    server = chat.server
    bot = make_bot(backend, tmp_path)
    gate = Gate()
    bot.context = gate.wrap(bot.context)  # type: ignore[method-assign]
    async with run_bot(bot, server):
        question = await server.send_message(chat.general, chat.alice, "long", mentions_bot=True)
        regenerate = custom_id(REGENERATE, question, chat.alice)
        await server.wait_for(
            lambda: (
                len(server.bot_messages(chat.general)) == 2
                and server.buttons(chat.general, server.bot_messages(chat.general)[-1]["id"])
                == ["Regenerate"]
            ),
            timeout=15,
        )
        first, last = (dict(m) for m in server.bot_messages(chat.general))
        await hold_the_slot(chat)
        gate.armed = True
        await server.press(chat.general, last["id"], regenerate, chat.alice)
        # it waits for the slot, showing Stop: alice presses it, and the bot handles the
        # press only once the regeneration has its slot (as when the press crosses the slot)
        await server.wait_for(lambda: server.buttons(chat.general, last["id"]) == ["Stop"])
        handle_stop = bot.controls._handlers[STOP]

        async def stop_in_the_window(interaction: Any, control: Control) -> None:
            await asyncio.wait_for(gate.reached.wait(), 15)
            await handle_stop(interaction, control)

        bot.controls._handlers[STOP] = stop_in_the_window
        stop = await press(chat, STOP, last, question)
        RELEASE.set()  # the slot comes free: the regeneration takes it
        await asyncio.wait_for(gate.reached.wait(), 15)
        # it has its slot: the reply's second message is gone, its first stays
        assert [m["id"] for m in server.bot_messages(chat.general)] == [first["id"]]
        response = await stop.wait_response()
        gate.opened.set()
        await server.wait_for(
            lambda: server.buttons(chat.general, first["id"]) == ["Regenerate"], timeout=15
        )
        await chat.wait_for_reply(chat.dm, "Let me think done.")
        await settle(bot)
        stopped = dict(server.message(chat.general, first["id"]))
        assert [m["id"] for m in server.bot_messages(chat.general)] == [first["id"]]
        assert not bot.controls.regenerating and not bot.controls.running
        # the Regenerate button on the first message works
        await server.press(chat.general, first["id"], regenerate, chat.alice)
        await server.wait_for(
            lambda: (
                len(server.bot_messages(chat.general)) == 2
                and "(seed " in server.bot_messages(chat.general)[-1]["content"]
                and server.buttons(chat.general, server.bot_messages(chat.general)[-1]["id"])
                == ["Regenerate"]
            ),
            timeout=15,
        )
        await settle(bot)
    assert response["type"] == 6  # acknowledged, not "already done"
    assert stopped["content"] == "*Stopped.*"
    again = server.bot_messages(chat.general)
    assert again[0]["id"] == first["id"] and again[-1]["content"] != last["content"]
