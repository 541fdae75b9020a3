"""``genbot serve`` in front of a backend whose chat streams carry more than text: reasoning
(:class:`genbot.models.Reasoning`) and tool calls (:class:`genbot.models.ToolCall`). The
server forwards them as OpenAI does (``reasoning_content`` and ``tool_calls`` deltas, or the
message's fields), takes ``tools`` and the tool messages of a round trip, and genbot's own
OpenAI backend reads them back."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import genbot
from genbot.models import ChatRequest, GenerationSettings, Reasoning, ToolCall
from genbot.models.openai import OpenAIStreamer
from genbot.serve import ChatServer
from genbot.streaming import Stream, Streamer

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@genbot.streamer
def thinker(streams: list[Stream]) -> None:
    """Thinks, then: with tools offered, calls ``weather``; after a tool result, answers with
    it; else says what it was asked."""
    for stream in streams:
        request: ChatRequest = stream.data
        last = request.messages[-1]
        stream.write(Reasoning("Let me think."))
        if last["role"] == "tool":
            stream.write(f"It is {last['content']} ({last.get('tool_call_id')}).")
        elif request.tools:
            stream.write("Checking.")
            stream.write(ToolCall("call_7", "weather", '{"city": "Paris"}'))
        else:
            stream.write(f"You said {last['content']}.")
        stream.close()


@pytest.fixture
def backend() -> Iterator[Streamer]:
    thinker.start_thread(maximum=4)
    try:
        yield thinker
    finally:
        thinker.close()


@pytest.fixture
async def url(backend: Streamer) -> AsyncIterator[str]:
    runner = web.AppRunner(ChatServer(backend, model="m").app(), handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/chat/completions", json=body) as response:
            if body.get("stream"):
                events = [
                    line[6:]
                    async for raw in response.content
                    if (line := raw.decode().strip()).startswith("data: ")
                ]
                return response.status, [json.loads(e) for e in events if e != "[DONE]"]
            return response.status, await response.json()


async def test_reasoning_is_streamed_as_reasoning_content(url: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    status, events = await post(url, body)
    assert status == 200
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "Let me think."
    assert "".join(d.get("content") or "" for d in deltas) == "You said hi."
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_whole_completion_carries_its_reasoning_and_tool_calls(url: str) -> None:
    body = {"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER]}
    status, completion = await post(url, body)
    assert status == 200, completion
    [choice] = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Checking."
    assert message["reasoning_content"] == "Let me think."
    assert message["tool_calls"] == [
        {
            "id": "call_7",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        }
    ]


async def test_a_tool_round_trip_through_genbots_openai_backend(url: str) -> None:
    client = OpenAIStreamer(base_url=url, max_concurrency=2)
    client.start_thread()
    try:
        asked = ChatRequest(
            [{"role": "user", "content": "weather?"}], GenerationSettings(), [WEATHER]
        )
        first = [out async for out in client.chat(asked)]
        call = next(out for out in first if isinstance(out, ToolCall))
        answered = ChatRequest(
            [
                *asked.messages,
                {"role": "assistant", "content": "Checking.", "tool_calls": [call.as_dict()]},
                {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
            ],
            GenerationSettings(),
            [WEATHER],
        )
        second = [out async for out in client.chat(answered)]
    finally:
        client.close()
    assert Reasoning("Let me think.") in first
    assert "".join(o for o in first if isinstance(o, str)) == "Checking."
    assert call == ToolCall("call_7", "weather", '{"city": "Paris"}')
    assert "".join(o for o in second if isinstance(o, str)) == "It is sunny (call_7)."


async def test_a_tool_message_needs_the_id_of_its_call(url: str) -> None:
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "content": "sunny"}]
    status, error = await post(url, {"messages": messages})
    assert status == 400
    assert error["error"]["param"] == "messages[1]"
