"""Tool calling on the llama.cpp backend with a chat template that renders tools: the server
renders them and parses the model's calls (SmolLM2 with a Hermes-style template; its own
template ignores tools, see test_llamacpp_tools.py). In a module of its own: one llama.cpp
server per process, and the other module's is open while its tests run."""

from __future__ import annotations

from tool_helpers import HERMES_TEMPLATE, ROUND_TRIP, collect, engine_of, with_tools

from genbot.models.base import ToolCall
from genbot.models.llamacpp import LlamaCppStreamer


async def test_a_template_that_renders_tools_gets_them_from_the_server() -> None:
    streamer = LlamaCppStreamer(n_parallel=1, n_threads=2, chat_template=HERMES_TEMPLATE)
    streamer.start_thread()
    try:
        engine = await engine_of(streamer)
        assert engine.template_tools is True
        question = [{"role": "user", "content": "What is the weather in Paris?"}]
        prompt = engine.prompt(with_tools(question))
        assert "# Tools" in prompt  # rendered by the template, not by genbot's fallback
        assert '"name": "get_weather"' in prompt
        # OpenAI-form tool_calls and tool messages, rendered by the template itself:
        prompt = engine.prompt(with_tools(ROUND_TRIP))
        assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
        assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
        out = await collect(streamer, with_tools(ROUND_TRIP))
        assert all(isinstance(item, str | ToolCall) for item in out)
    finally:
        streamer.close()
