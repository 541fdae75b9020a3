"""Tool calling on the llama.cpp backend, with the real SmolLM2.

SmolLM2-135M's chat template ignores tools (llama.cpp's ``chat_template_caps`` say so), so
genbot describes them in the system message and parses the reply itself; with a template that
renders tools, the server renders and parses them. SmolLM2 does not call a tool with greedy
decoding for any prompt we tried (it answers in prose or writes Python) unless its output is
held to a JSON schema of the call (then it does, end to end); the ``<tool_call>`` path goes
through the backend's own chunk reader fed with recorded server chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from call_schema import CALL_SCHEMA
from model_helpers import greedy
from tool_helpers import ROUND_TRIP, collect, engine_of, with_tools

from genbot.models import ModelError
from genbot.models.base import ToolCall
from genbot.models.llamacpp import ChunkReader, LlamaCppStreamer
from genbot.models.toolcalls import ToolCallParser, parse_tool_calls


@pytest.fixture(scope="module")
def smol() -> Iterator[LlamaCppStreamer]:
    """SmolLM2 with its own template, on a worker thread (so the tests reach its engine)."""
    streamer = LlamaCppStreamer(n_parallel=2, n_threads=2)
    streamer.start_thread()
    yield streamer
    streamer.close()


async def test_smollm2_template_ignores_tools_so_they_go_in_the_system_message(
    smol: LlamaCppStreamer,
) -> None:
    engine = await engine_of(smol)
    assert engine.template_tools is False
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    prompt = engine.prompt(with_tools(question))
    assert "get_weather" in prompt
    assert "Get the current weather in a city" in prompt
    assert "<tool_call>" in prompt  # the format the fallback asks for
    assert "get_weather" not in engine.prompt(greedy(question[0]["content"]))


async def test_tool_round_trip_reaches_the_template_and_generates(smol: LlamaCppStreamer) -> None:
    engine = await engine_of(smol)
    prompt = engine.prompt(with_tools(ROUND_TRIP))
    assert (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    )
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    # Without tools offered now, the earlier call and its result still show as text.
    no_tools = with_tools(ROUND_TRIP)
    no_tools.tools = []
    prompt = engine.prompt(no_tools)
    assert '<tool_call>{"name": "get_weather"' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert "You can call these tools" not in prompt
    out = await collect(smol, with_tools(ROUND_TRIP))
    assert out
    assert all(isinstance(item, str | ToolCall) for item in out)


async def test_smollm2_answers_in_text_and_all_of_it_is_streamed(smol: LlamaCppStreamer) -> None:
    # The finding: greedy SmolLM2-135M does not call the tool; the parser then holds nothing
    # back for good: the streamed text is the whole reply.
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    out = await collect(smol, with_tools(question, 12))
    assert all(isinstance(item, str) for item in out)
    text = "".join(str(item) for item in out)
    assert text.strip()
    assert parse_tool_calls(text, {"get_weather"}) == (text, [])


# The chunk reader of LlamaEngine.chat, fed with chunks as llama.cpp's server streams them.


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> dict[str, Any]:
    if content is not None:
        delta["content"] = content
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def read(chunks: list[dict[str, Any]], parser: ToolCallParser | None) -> tuple[list[Any], str]:
    emitted: list[Any] = []

    def emit(item: Any) -> bool:
        emitted.append(item)
        return True

    reader = ChunkReader(emit, parser)
    for c in chunks:
        assert reader.chunk(c) is False
    return emitted, reader.end()


# A Hermes tool call as Qwen-style models write it, split roughly as a BPE tokenizer would
# (every other split is covered by the parser tests).
HERMES_TOKENS = [
    "Let",
    " me",
    " check",
    ".",
    "\n",
    "<",
    "tool",
    "_",
    "call",
    ">",
    '{"',
    "name",
    '":',
    ' "',
    "get",
    "_",
    "weather",
    '",',
    ' "',
    "arguments",
    '":',
    ' {"',
    "city",
    '":',
    ' "',
    "Paris",
    '"}}',
    "</",
    "tool",
    "_",
    "call",
    ">",
]


def test_fallback_reply_with_a_call_streams_the_text_and_then_the_call() -> None:
    chunks = [chunk(t) for t in HERMES_TOKENS] + [chunk(finish="stop")]
    emitted, finish = read(chunks, ToolCallParser({"get_weather"}, lambda n: f"call_{n}"))
    assert emitted == [
        "Let",
        " me",
        " check",
        ".",
        "\n",
        ToolCall("call_0", "get_weather", '{"city": "Paris"}'),
    ]
    assert finish == "tool_calls"


def test_server_parsed_tool_calls_deltas_are_put_together() -> None:
    chunks = [
        chunk("Checking."),
        chunk(
            tool_calls=[
                {
                    "index": 0,
                    "id": "abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        ),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        chunk(tool_calls=[{"index": 1, "id": "def", "function": {"name": "get_time"}}]),
        chunk(finish="tool_calls"),
    ]
    emitted, finish = read(chunks, None)
    assert emitted == [
        "Checking.",
        ToolCall("abc", "get_weather", '{"city": "Paris"}'),
        ToolCall("def", "get_time", "{}"),
    ]
    assert finish == "tool_calls"


def test_a_caller_gone_stops_before_the_calls() -> None:
    reader = ChunkReader(lambda item: False, ToolCallParser())
    assert reader.chunk(chunk("Hi")) is True
    assert reader.end() == "cancelled"


def test_an_error_chunk_is_a_model_error() -> None:
    reader = ChunkReader(lambda item: True, None)
    assert reader.chunk({"error": {"message": "boom"}}) is True
    with pytest.raises(ModelError, match="boom"):
        reader.end()


async def test_smollm2_held_to_a_call_schema_calls_the_tool() -> None:
    streamer = LlamaCppStreamer(n_parallel=1, n_threads=2, extra_body={"json_schema": CALL_SCHEMA})
    streamer.start_process()  # a process of its own: this module's server is open here
    try:
        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        out = await collect(streamer, with_tools(question, 40))
    finally:
        streamer.close()
    assert len(out) == 1
    call = out[0]
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    assert call.id.startswith("call_")
