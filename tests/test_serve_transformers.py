"""``genbot serve`` on the transformers backend: the embedded SmolLM2, dequantised to a Hugging
Face model folder, served by a real ``genbot serve`` process (``-s backend=transformers``) and
called with the official ``openai`` client, streaming and not."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from serve_harness import Journal, Upstream

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
    reason="the transformers backend is not installed (the transformers extra)",
)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def served(smollm2_hf: str) -> Iterator[Upstream]:
    args = ["-s", "backend=transformers", "-s", f"model={smollm2_hf}", "-s", "parallel=2"]
    up = Upstream("transformers", args, Journal())
    try:
        yield up.wait_ready()
    finally:
        up.stop()


@pytest.mark.timeout(300)
async def test_transformers_backend_served_to_the_openai_client(
    served: Upstream, smollm2_hf: str
) -> None:
    """Greedy decoding gives the same text streaming and not; the model is listed by its
    folder's name."""
    options: dict[str, Any] = {"messages": QUESTION, "max_tokens": 12, "temperature": 0}
    async with openai.AsyncOpenAI(base_url=served.url, api_key="none") as api:
        [model] = [m.id async for m in api.models.list()]
        done = await api.chat.completions.create(model=model, **options)
        stream = await api.chat.completions.create(model=model, stream=True, **options)
        chunks = [chunk async for chunk in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    text = done.choices[0].message.content
    assert model == Path(smollm2_hf).name  # the folder's name, not its path
    assert text and text.strip()
    assert streamed == text
    assert done.choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    assert done.model == model
