"""The README's "Tools" example runs as written: its bot answers with a tool round trip on the
loopback Discord, against the local OpenAI-compatible server (tests/openai_stub.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from chat_world import Chat
from genbot.testing import DiscordServer, run_bot
from openai_stub import openai_stub
from test_tools_bot import reply_to, weather_model

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def example(after_heading: str) -> str:
    section = README[README.index(after_heading) :]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


async def test_the_readme_tool_example_answers_with_its_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the bot's data folder
    code = example("## Tools")
    assert "http://127.0.0.1:8000/v1" in code
    async with DiscordServer() as server, openai_stub() as stub:
        stub.respond = weather_model
        namespace: dict[str, Any] = {"__name__": "readme_tools"}
        exec(code.replace("http://127.0.0.1:8000/v1", stub.base_url), namespace)
        bot = namespace["bot"]
        chat = Chat(server)
        async with run_bot(bot, server, timeout=30):
            reply = await reply_to(chat, chat.dm, "use weather(city=Paris)", "°C")
        assert reply == "Let me check.\n*using `weather` …* ✓\nAnswer: Sunny in Paris, 21 °C"
        assert stub.requests[0]["tools"][0]["function"]["parameters"]["properties"]["unit"] == {
            "type": "string",
            "enum": ["C", "F"],
            "default": "C",
        }
