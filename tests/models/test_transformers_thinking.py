"""A chat template that opens the think block in the generation prompt (DeepSeek-R1, Qwen3
thinking models) on the transformers backend: the engine knows it from the rendered prompt,
and the reply's text up to ``</think>`` comes as ``Reasoning``, never as answer text.

The model is a tiny random-weight Llama with SmolLM2's tokenizer, built here; what it "writes"
is scripted by replacing its logits with a recording's next token (its network, cache and the
engine's decoding loop run as usual).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from replay_helpers import engine_with, replay
from tool_helpers import HERMES_TEMPLATE, with_tools

from genbot.models import ChatRequest, GenerationSettings
from genbot.models.base import Reasoning, ToolCall
from genbot.models.thinking import OpenThinkSplitter, opens_think
from genbot.models.transformers import TransformersStreamer
from genbot.reasoning import CLOSE_TAG, OPEN_TAG, ReplyFilter

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: The same, with the generation prompt opening the think block (as DeepSeek-R1's does).
THINKING = CHATML.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")

THOUGHT = "The user asks for two plus two. That is four."
ANSWER = "Two plus two is four."
RECORDED = f"{THOUGHT}\n</think>\n\n{ANSWER}"


def question(text: str = "What is two plus two?", max_new_tokens: int = 100) -> ChatRequest:
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0.0)
    settings.repeat_penalty = 1.0
    return ChatRequest([{"role": "user", "content": text}], settings)


@pytest.fixture(scope="module")
def tokenizer(smollm2_hf: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_hf)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    """A tiny Llama with random weights and SmolLM2's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def replayed(
    model: Any, tokenizer: Any, template: str, request: ChatRequest, text: str
) -> list[Any]:
    """The engine's events' deltas for ``request`` when the model writes ``text``."""
    return [delta for _, delta, _ in replay(model, tokenizer, template, request, text, 300)]


def test_tags_are_the_reply_filters() -> None:
    assert (OPEN_TAG, CLOSE_TAG) == ("<think>", "</think>")


def test_only_a_prompt_that_ends_in_an_open_think_opens_it() -> None:
    assert opens_think("<|im_start|>assistant\n<think>\n")
    assert opens_think("<\uff5cAssistant\uff5c><think>")  # DeepSeek-R1
    assert not opens_think("<|im_start|>assistant\n")
    assert not opens_think("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off
    assert not opens_think("user: what does <think> do?\n<|im_start|>assistant\n")


def test_splitter_cuts_at_the_close_tag_wherever_the_deltas_split_it() -> None:
    for cut in range(1, len(RECORDED)):
        splitter = OpenThinkSplitter()
        pieces = splitter.feed(RECORDED[:cut]) + splitter.feed(RECORDED[cut:]) + splitter.flush()
        thought = "".join(p.text for p in pieces if isinstance(p, Reasoning))
        text = "".join(p for p in pieces if isinstance(p, str))
        assert (thought, text) == (THOUGHT + "\n", f"\n\n{ANSWER}"), cut
    splitter = OpenThinkSplitter()  # never closed: all reasoning
    pieces = splitter.feed("still thinking </th") + splitter.flush()
    assert pieces == [Reasoning("still thinking "), Reasoning("</th")]


def test_engine_sees_the_open_think_in_the_rendered_prompt(model: Any, tokenizer: Any) -> None:
    thinking, plain = engine_with(model, tokenizer, THINKING), engine_with(model, tokenizer, CHATML)
    assert thinking.prompt_opens_think(thinking.prompt_ids(question()))
    assert not plain.prompt_opens_think(plain.prompt_ids(question()))
    asked = question("What does <think> mean in HTML?")
    assert not plain.prompt_opens_think(plain.prompt_ids(asked))


def test_reply_of_a_thinking_template_is_reasoning_until_the_close_tag(
    model: Any, tokenizer: Any
) -> None:
    deltas = replayed(model, tokenizer, THINKING, question(), RECORDED)
    thought = [d.text for d in deltas if isinstance(d, Reasoning)]
    text = "".join(d for d in deltas if isinstance(d, str))
    assert "".join(thought).strip() == THOUGHT
    assert len(thought) > 1  # streamed token by token, as the answer is
    assert text.strip() == ANSWER
    assert THOUGHT not in text and "think>" not in text


def test_the_same_reply_without_the_open_think_is_unchanged(model: Any, tokenizer: Any) -> None:
    deltas = replayed(model, tokenizer, CHATML, question(), RECORDED)
    assert all(isinstance(d, str) for d in deltas)
    assert "".join(deltas) == RECORDED


def test_a_reply_that_never_closes_the_block_is_all_reasoning(model: Any, tokenizer: Any) -> None:
    deltas = replayed(model, tokenizer, THINKING, question(max_new_tokens=6), RECORDED)
    assert deltas and all(isinstance(d, Reasoning) or d == "" for d in deltas)


def test_reasoning_never_reaches_the_tool_call_parser(model: Any, tokenizer: Any) -> None:
    template = HERMES_TEMPLATE.replace(
        "'<|im_start|>assistant\\n' }}", "'<|im_start|>assistant\\n<think>\\n' }}"
    )
    assert template != HERMES_TEMPLATE
    recorded = (
        'I could write <tool_call>{"name": "get_weather"}</tool_call> here.</think>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    request = with_tools([{"role": "user", "content": "Weather in Paris?"}], 100)
    request.settings.repeat_penalty = 1.0
    deltas = replayed(model, tokenizer, template, request, recorded)
    thought = "".join(d.text for d in deltas if isinstance(d, Reasoning))
    calls = [d for d in deltas if isinstance(d, ToolCall)]
    assert thought.startswith("I could write <tool_call>")
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Paris"}')]
    assert not "".join(d for d in deltas if isinstance(d, str)).strip()


async def test_streamer_gives_reasoning_items_that_the_reply_filter_hides(
    model: Any, tokenizer: Any, tmp_path: Path
) -> None:
    """The tiny random model writes what it writes: with greedy decoding and 8 tokens, all of
    it before a ``</think>`` (all of it, if none comes) is reasoning, never answer text."""
    folder = str(tmp_path / "tiny-thinking")
    model.save_pretrained(folder)
    saved = copy.deepcopy(tokenizer)
    saved.chat_template = THINKING
    saved.save_pretrained(folder)
    streamer = TransformersStreamer(folder, max_batch=2, threads=1, device="cpu")
    streamer.start_thread()
    try:
        items = [item async for item in streamer.chat(question(max_new_tokens=8))]
        raw = "".join(i.text if isinstance(i, Reasoning) else i for i in items)
        before = raw.split(CLOSE_TAG)[0]
        thought = "".join(i.text for i in items if isinstance(i, Reasoning))
        assert raw and thought == before
        filtered = ReplyFilter(streamer.chat(question(max_new_tokens=8)))
        answer = "".join([text async for text in filtered])
        after = raw.split(CLOSE_TAG, 1)[1].strip() if CLOSE_TAG in raw else ""
        assert answer == after
        assert filtered.reasoning == thought
    finally:
        streamer.close()
