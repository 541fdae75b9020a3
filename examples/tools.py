"""A chat bot whose model calls Python tools: the README's "Tools", with a few more.

Run an OpenAI-compatible server with a model that can call tools (vLLM with
``--enable-auto-tool-choice``, llama.cpp's ``llama-server --jinja``, Ollama, ...), then:

    GENBOT_BASE_URL=http://127.0.0.1:8000/v1 DISCORD_TOKEN=... python examples/tools.py

Ask it "what's the weather in Paris?" or "roll two dice". ``/shutdown``-style tools belong to
admins: ``admin_only=True`` (or the ``admin_tools`` setting) offers them to admins' chats only.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from typing import Literal

from genbot.chatbot import ChatBot
from genbot.settings import Settings

bot = ChatBot(Settings.load(environ={"GENBOT_BACKEND": "openai", **os.environ}))


@bot.tool
def weather(city: str, unit: Literal["C", "F"] = "C") -> str:
    """Today's weather in a city.

    Parameters
    ----------
    city:
        The city's name, in English.
    unit:
        Celsius or Fahrenheit.
    """
    return f"Sunny in {city}, {21 if unit == 'C' else 70} °{unit}"


@bot.tool
async def roll_dice(count: int = 1, sides: int = 6) -> list[int]:
    """Roll dice.

    Parameters
    ----------
    count:
        How many dice.
    sides:
        Sides of each die.
    """
    await asyncio.sleep(0)  # an async tool runs on the bot's loop: never block it
    return [random.randint(1, sides) for _ in range(max(1, min(count, 20)))]


@bot.tool(admin_only=True)
def server_load() -> str:
    """The machine's load average (admins only)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    token = os.environ.get("DISCORD_TOKEN") or sys.exit("Set DISCORD_TOKEN to your bot's token.")
    bot.run(token)
