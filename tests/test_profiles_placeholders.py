"""The ``{date}`` and ``{time}`` placeholders of a system prompt are filled in with the UTC
date and time of each reply, and ``{server}``/``{channel}`` with a DM's, end to end."""

from __future__ import annotations

import datetime
from pathlib import Path

from bot_world import world
from genbot.settings import Settings
from genbot.streaming import Streamer
from genbot.testing import run_bot
from test_profiles_chat import BOT_FAST, Bot, answer, models

__all__ = ["models"]


def _minutes(start: datetime.datetime, end: datetime.datetime) -> set[str]:
    """Every ``YYYY-MM-DD HH:MM UTC`` from `start` to `end`."""
    found, at = set(), start.replace(second=0, microsecond=0)
    while at <= end:
        found.add(at.strftime("%Y-%m-%d %H:%M UTC"))
        at += datetime.timedelta(minutes=1)
    return found


async def test_date_and_time_are_the_utc_date_and_time_of_the_reply(
    tmp_path: Path, models: dict[str, Streamer]
) -> None:
    prompt = "Now {date} {time}; {server} #{channel}."
    settings = Settings().updated({"system_prompt": prompt, "data_dir": str(tmp_path)}, "test")
    async with world() as w:
        dm = w.server.create_dm(w.alice)
        async with run_bot(Bot(settings, **BOT_FAST), w.server):
            before = datetime.datetime.now(datetime.timezone.utc)
            said = await answer(w, dm, w.alice, "when")
            after = datetime.datetime.now(datetime.timezone.utc)
    model, system, text = said.split(" | ")
    assert (model, text) == ("default", "when")
    now, where = system.removeprefix("Now ").split("; ")
    assert now in _minutes(before, after)
    assert where == "Direct Messages #DM."
