"""The transformers engine's real decoding loop driven by a model that replays a recording:
the network runs as usual (its cache grows), only its logits are replaced by the recorded next
token. For the tool-calling and thinking tests, whose behaviour SmolLM2's greedy output does
not show."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from genbot.models.transformers import TransformersEngine

_log = logging.getLogger(__name__)

__all__ = ["Replay", "engine_with", "replay", "run"]


class Replay(torch.nn.Module):
    """`model` whose every next token is the next one of `script` (then `eos`), counted from
    the prompt's length `start`."""

    def __init__(self, model: Any, script: list[int], start: int, eos: int) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config
        self.generation_config = model.generation_config
        self.script, self.start, self.eos = script, start, eos

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any = None,
        **kwargs: Any,
    ) -> Any:
        out = self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            **kwargs,
        )
        index = int(position_ids[0, -1]) + 1 - self.start
        token = self.script[index] if index < len(self.script) else self.eos
        logits = torch.full_like(out.logits, -1e9)
        logits[..., token] = 0.0
        out.logits = logits
        return out


def engine_with(model: Any, tokenizer: Any, template: str | None = None) -> TransformersEngine:
    """An engine on the CPU for `model`, with `tokenizer`'s chat template replaced by
    `template` where one is given (the tokenizer given is not changed)."""
    tokenizer = copy.deepcopy(tokenizer)
    if template:
        tokenizer.chat_template = template
    return TransformersEngine(model, tokenizer, device="cpu")


def run(engine: TransformersEngine, request: Any, steps: int = 200) -> list[tuple[Any, Any, Any]]:
    """The events of `request` on `engine`, until its reply ends (at most `steps` steps).

    Raises
    ------
    AssertionError
        The reply did not end within `steps` steps.
    """
    engine.add("k", request)
    events: list[tuple[Any, Any, Any]] = []
    for _ in range(steps):
        events += engine.step()
        if engine.size == 0:
            return events
    raise AssertionError("the reply did not end")


def replay(
    model: Any, tokenizer: Any, template: str | None, request: Any, text: str, steps: int = 200
) -> list[tuple[Any, Any, Any]]:
    """The engine's events for `request` when `model`'s reply is `text`."""
    start = len(engine_with(model, tokenizer, template).prompt_ids(request))
    script = tokenizer.encode(text, add_special_tokens=False)
    replayed = Replay(model, script, start, tokenizer.eos_token_id)
    return run(engine_with(replayed, tokenizer, template), request, steps)
