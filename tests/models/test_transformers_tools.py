"""Tool calling on the transformers backend, with SmolLM2 (dequantised from the shipped GGUF).

SmolLM2-135M's chat template ignores tools, so the engine describes them in the system
message (the fallback); given a template that renders tools (Hermes style), it passes them to
``apply_chat_template(tools=...)``. SmolLM2 does not call a tool with greedy decoding, so the
parsing is shown by the engine's real decoding loop driven by a model that replays recorded
output: SmolLM2's own network, its logits replaced by the recorded next token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from model_helpers import reply
from replay_helpers import engine_with, replay
from tool_helpers import HERMES_TEMPLATE, ROUND_TRIP, with_tools

from genbot.models.base import ToolCall
from genbot.models.toolcalls import parse_tool_calls
from genbot.models.transformers import TransformersEngine, TransformersStreamer

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]

# A Hermes / Qwen 2.5 tool call, as such models write it.
RECORDED = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_hf)


@pytest.fixture(scope="module")
def model(smollm2_hf: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_hf)


def prompt_text(engine: TransformersEngine, messages: list[Any]) -> str:
    return str(engine.tokenizer.decode(engine.prompt_ids(with_tools(messages))))


def test_smollm2_template_ignores_tools_so_they_go_in_the_system_message(
    model: Any, tokenizer: Any
) -> None:
    engine = engine_with(model, tokenizer)
    assert engine.template_renders_tools() is False
    prompt = prompt_text(engine, QUESTION)
    assert "get_weather" in prompt
    assert "Get the current weather in a city" in prompt
    assert "<tool_call>" in prompt
    request = with_tools(QUESTION)
    request.tools = []
    assert "get_weather" not in engine.tokenizer.decode(engine.prompt_ids(request))


def test_round_trip_in_the_fallback_form(model: Any, tokenizer: Any) -> None:
    engine = engine_with(model, tokenizer)
    prompt = prompt_text(engine, ROUND_TRIP)
    assert (
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in prompt
    )
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    # Without tools offered now, the earlier call and its result still show as text.
    request = with_tools(ROUND_TRIP)
    request.tools = []
    prompt = str(engine.tokenizer.decode(engine.prompt_ids(request)))
    assert '<tool_call>{"name": "get_weather"' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert "You can call these tools" not in prompt


def test_a_template_that_renders_tools_gets_them(model: Any, tokenizer: Any) -> None:
    engine = engine_with(model, tokenizer, HERMES_TEMPLATE)
    assert engine.template_renders_tools() is True
    prompt = prompt_text(engine, QUESTION)
    assert "# Tools" in prompt  # rendered by the template, not by genbot's fallback
    assert '"name": "get_weather"' in prompt
    # OpenAI-form tool_calls (arguments as an object) and tool messages, rendered by the template:
    prompt = prompt_text(engine, ROUND_TRIP)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt


@pytest.mark.parametrize("template", [None, HERMES_TEMPLATE])
def test_recorded_tool_call_comes_back_as_a_tool_call_not_text(
    model: Any, tokenizer: Any, template: str | None
) -> None:
    request = with_tools(QUESTION, 100)
    request.settings.repeat_penalty = 1.0
    events = replay(model, tokenizer, template, request, RECORDED)
    texts = [delta for _, delta, _ in events if isinstance(delta, str) and delta]
    calls = [delta for _, delta, _ in events if isinstance(delta, ToolCall)]
    assert "".join(texts) == "Let me check.\n"
    assert len(texts) > 1  # the text before the call streamed token by token
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
    assert events[-1] == ("k", "", "tool_calls")
    # The same recording without tools offered is plain text.
    request.tools = []
    plain = replay(model, tokenizer, template, request, RECORDED)
    assert "".join(d for _, d, _ in plain if isinstance(d, str)) == RECORDED


@pytest.fixture(scope="module")
def hf(smollm2_hf: str) -> Iterator[TransformersStreamer]:
    streamer = TransformersStreamer(smollm2_hf, max_batch=2, threads=2)
    streamer.start_thread()
    yield streamer
    streamer.close()


async def test_smollm2_with_tools_and_a_round_trip_through_the_streamer(
    hf: TransformersStreamer,
) -> None:
    # The finding: greedy SmolLM2-135M answers in text; the parser releases all of it.
    items = [item async for item in hf.chat(with_tools(QUESTION, 12))]
    assert all(isinstance(item, str) for item in items)
    text = "".join(str(item) for item in items)
    assert text.strip()
    assert parse_tool_calls(text, {"get_weather"}) == (text, [])
    # A tool call and its result in the conversation: the reply still comes.
    assert await reply(hf, with_tools(ROUND_TRIP, 3))
