"""A chat template that opens the think block in the generation prompt (DeepSeek-R1, Qwen3
thinking models) on the llama.cpp backend. llama.cpp's server splits the reasoning off
(``reasoning_content``) only for the template formats it recognises; for others, a custom
ChatML one included, it streams everything as ``content``. The engine sees the open
``<think>`` in the prompt the server renders, and the reply's text up to ``</think>`` comes
as ``Reasoning``. SmolLM2 writes what it writes: the tests hold on the mechanism (greedy
decoding, a few tokens): all of it before a ``</think>`` (all of it, if none comes) is
reasoning. In a module of its own: one llama.cpp server per process."""

from __future__ import annotations

from typing import Any

import pytest
from model_helpers import greedy
from tool_helpers import engine_of

from genbot.models.base import Reasoning
from genbot.models.llamacpp import ChunkReader, LlamaCppStreamer
from genbot.reasoning import CLOSE_TAG, ReplyFilter

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
THINKING = CHATML.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")


def split(items: list[Any]) -> tuple[str, str, str]:
    """The whole reply as the model wrote it, its reasoning items' text, its text items'."""
    thought = "".join(i.text for i in items if isinstance(i, Reasoning))
    text = "".join(i for i in items if isinstance(i, str))
    raw = "".join(i.text if isinstance(i, Reasoning) else i for i in items)
    return raw, thought, text


@pytest.mark.parametrize("template", [THINKING, CHATML])
async def test_a_template_that_opens_think_makes_the_reply_reasoning(template: str) -> None:
    streamer = LlamaCppStreamer(n_parallel=1, n_threads=2, chat_template=template)
    streamer.start_thread()
    try:
        engine = await engine_of(streamer)
        assert engine.think_open is (template == THINKING)
        request = greedy("What is two plus two?", 24)
        # the server is asked for the reply as it is (the reader splits it), only then
        assert engine._body(request).get("reasoning_format") == (
            "none" if template == THINKING else None
        )
        items = [item async for item in streamer.chat(request)]
        raw, thought, text = split(items)
        assert raw.strip()
        if template == CHATML:  # unchanged: all text
            assert all(isinstance(i, str) for i in items) and text == raw
            return
        before, _, after = raw.partition(CLOSE_TAG)
        assert thought == before  # everything before a </think> (or all of it) is reasoning
        assert text == after
        filtered = ReplyFilter(streamer.chat(request))
        answer = "".join([t async for t in filtered])
        assert answer == after.strip()
        assert filtered.reasoning == thought
    finally:
        streamer.close()


def chunk(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


def read(chunks: list[dict[str, Any]], think: bool) -> list[Any]:
    emitted: list[Any] = []

    def emit(item: Any) -> bool:
        emitted.append(item)
        return True

    reader = ChunkReader(emit, None, think=think)
    for c in chunks:
        assert reader.chunk(c) is False
    reader.end()
    return emitted


def test_reasoning_content_is_reasoning_and_then_the_content_is_the_answer() -> None:
    """A server that splits the reasoning off itself (its format known, thinking forced
    open): its ``content`` is the answer, whether or not the prompt opened ``<think>``."""
    chunks = [
        chunk(reasoning_content="Two and "),
        chunk(reasoning_content="two."),
        chunk(content="Four."),
    ]
    for think in (False, True):
        assert read(chunks, think) == [Reasoning("Two and "), Reasoning("two."), "Four."]


def test_content_of_an_open_think_is_reasoning_until_the_tag_split_anywhere() -> None:
    chunks = [chunk(content=c) for c in ("Two and two.</th", "ink>\n\nFour", ".")]
    emitted = read(chunks, True)
    assert split(emitted)[1:] == ("Two and two.", "\n\nFour.")
    assert read([chunk(content="Still thinking </")], True) == [
        Reasoning("Still thinking "),
        Reasoning("</"),
    ]
    assert read(chunks, False) == ["Two and two.</th", "ink>\n\nFour", "."]
