"""For the tool tests of the local backends: a chat template that renders tools (Hermes / Qwen
2.5 style ``<tool_call>`` blocks, ChatML markers; SmolLM2's own template ignores tools), a tool,
a tool-call round trip, and helpers."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from model_helpers import wait_until

from genbot.models import ChatRequest, GenerationSettings
from genbot.models.base import ToolCall
from genbot.models.llamacpp import LlamaCppStreamer, LlamaEngine

HERMES_TEMPLATE = (Path(__file__).parent / "hermes_tools.jinja").read_text()

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}

#: A conversation where the assistant called a tool and got its result.
ROUND_TRIP = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_7", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
    },
    {"role": "tool", "tool_call_id": "call_7", "content": "sunny, 21 C"},
]


def with_tools(messages: list[Any], max_new_tokens: int = 3) -> ChatRequest:
    return ChatRequest(
        copy.deepcopy(messages),
        GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0),
        tools=[WEATHER_TOOL],
    )


async def collect(streamer: LlamaCppStreamer, request: ChatRequest) -> list[str | ToolCall]:
    out: list[str | ToolCall] = []
    async for item in streamer.chat(request):
        out.append(item)
    return out


async def engine_of(streamer: LlamaCppStreamer) -> LlamaEngine:
    await wait_until(lambda: streamer.engine is not None, timeout=120)
    assert streamer.engine is not None
    return streamer.engine
