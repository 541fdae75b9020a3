"""transformers backend: any Hugging Face causal LM, by hub name or local path.

Generation is a continuous-batching decode loop over one KV cache (:class:`TransformersEngine`):
every step decodes one token for all running sequences together; between steps the worker
takes newly arrived streams (``consume(minimum=0)``), prefills them as a batch and merges
their cache rows into the running batch (rows are left-padded to a common length and masked),
and drops the rows of finished or cancelled streams at once.

Why not transformers' own continuous batching (``init_continuous_batching``)? It works on CPU
and streams per request, but it has no per-request seed and no repetition penalty, and it
runs its own generation thread beside the Streamer's worker. This loop is small, keeps every
per-request setting, and lets the Streamer worker be the one scheduler.

Models whose cache has sliding-window layers (e.g. Mistral, Gemma 2/3) are not supported by
the loop: their cache rows cannot be left-padded and merged.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genbot.models.base import (
    ChatMessage,
    ChatRequest,
    ChatStreamer,
    ModelError,
    Reasoning,
    StopBuffer,
    ToolCall,
    prepare_messages,
)
from genbot.models.thinking import OpenThinkSplitter, opens_think
from genbot.models.toolcalls import (
    ToolCallParser,
    fallback_messages,
    openai_messages,
    tool_names,
)

if TYPE_CHECKING:
    from genbot.streaming.worker import Stream

__all__ = ["TransformersEngine", "TransformersStreamer", "gguf_to_hf", "vision_inputs"]

_log = logging.getLogger(__name__)

#: What a decoding step reports per stream: ``(key, text delta, reasoning or tool call, finish
#: reason)``.
_Event = tuple[Any, "str | Reasoning | ToolCall", str | None]

#: How many of a prompt's last tokens are decoded to see whether it opens a think block.
_PROMPT_TAIL = 16

#: A tool that only :meth:`TransformersEngine.template_renders_tools` shows the template.
_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "genbot_probe_tool",
        "description": "Probe.",
        "parameters": {"type": "object", "properties": {}},
    },
}

#: Like llama.cpp's ``repeat_last_n``: the repeat penalty looks at this many latest tokens.
REPEAT_LAST_N = 64


def gguf_to_hf(gguf_path: str, folder: str) -> str:
    """Dequantise a GGUF model (e.g. :func:`genbot.models.default_model_path`) into a Hugging
    Face model folder that :class:`TransformersStreamer` can load; returns ``folder``.

    The same conversion as ``from_pretrained(..., gguf_file=...)``, which also needs
    ``accelerate``; this needs only ``gguf``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    source = Path(gguf_path)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    tensors = load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=model)  # type: ignore[no-untyped-call]
    model.load_state_dict(
        {k: torch.as_tensor(v) for k, v in tensors["tensors"].items()}, strict=False
    )
    model.tie_weights()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name).save_pretrained(folder)
    return folder


class IncrementalDetokenizer:
    """Turns tokens into text deltas without splitting multi-byte characters.

    Decodes a short window of tokens twice (with and without the newest ones) and emits
    the difference only once it no longer ends in an incomplete character (U+FFFD).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def add(self, token: int) -> str:
        self.ids.append(token)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is left undecoded at the end, less a trailing incomplete character."""
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return after[len(before) :].rstrip("\ufffd")


@dataclass
class _Sequence:
    key: Any
    request: ChatRequest
    prompt: list[int]
    generator: torch.Generator
    detokenizer: IncrementalDetokenizer
    stops: StopBuffer
    generated: list[int] = field(default_factory=list)
    #: What a vision-language model's prefill takes besides the ids (``pixel_values``, ...).
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: int = -1  # sampled, not yet fed to the model
    tools: ToolCallParser | None = None  # the request offered tools: parse the reply
    #: The prompt opened a think block and the reply is still inside it (``None``: not, or no
    #: longer): its text is reasoning until the ``</think>``.
    think: OpenThinkSplitter | None = None


class TransformersEngine:
    """Continuous-batching generation for one causal LM; not thread-safe (one worker drives it).

    ``add`` queues a request, ``step`` advances everything by one token and returns
    ``(key, delta, finish_reason | None)`` events, ``remove`` drops a request at once.
    ``system_prompt`` (default none, as every backend) is put first when a request has no
    system message.

    Tools (``ChatRequest.tools``) go to the chat template's ``tools`` argument when it renders
    them (:meth:`template_renders_tools`); otherwise they are described in the system message
    (:func:`genbot.models.toolcalls.fallback_messages`). The reply is parsed by
    :class:`genbot.models.toolcalls.ToolCallParser`: tool-call text is never a text delta,
    and ``step`` reports the calls as :class:`~genbot.models.base.ToolCall` events before the
    finish.

    Reasoning: when the rendered prompt ends inside an open ``<think>`` (templates that open
    the think block in the generation prompt: DeepSeek-R1, Qwen3 thinking models), the reply's
    text up to its ``</think>`` is reported as :class:`~genbot.models.base.Reasoning` events
    (:mod:`genbot.models.thinking`); the text after it as usual.

    Raises
    ------
    ValueError
        ``max_batch`` is less than 1, or a model object came without its tokenizer.
    ModelError
        The tokenizer has no chat template.
    """

    def __init__(
        self,
        model: str | Any,
        tokenizer: Any = None,
        *,
        max_batch: int = 16,
        device: str | None = None,
        dtype: torch.dtype | str | None = None,
        system_prompt: str | None = None,
        processor: Any = None,
        **from_pretrained: Any,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        #: A vision-language model's processor (``None``: a text-only model).
        self.processor = processor
        if isinstance(model, str):
            if dtype is None:
                dtype = torch.float32 if self.device.type == "cpu" else "auto"
            if _is_vision_model(model, from_pretrained):
                model, tokenizer = self._load_vision(model, dtype, from_pretrained)
            else:
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(model, **from_pretrained)
                model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **from_pretrained)
        elif processor is not None and tokenizer is None:
            tokenizer = processor.tokenizer
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a model object")
        if not getattr(self.processor or tokenizer, "chat_template", None):
            raise ModelError("the tokenizer has no chat template: use a chat (instruct) model")
        loaded: Any = model
        self.model = loaded.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.system_prompt = system_prompt
        self.max_length = int(
            getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 1 << 30
        )
        eos = {
            tokenizer.eos_token_id,
            *_as_list(getattr(model.generation_config, "eos_token_id", None)),
        }
        self.eos = {t for t in eos if t is not None}
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.cancelled = 0
        self._waiting: list[_Sequence] = []
        self._rows: list[_Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._renders_tools: bool | None = None

    @property
    def size(self) -> int:
        """Requests being served: running plus waiting for their prefill."""
        return len(self._rows) + len(self._waiting)

    @property
    def running(self) -> int:
        """Rows in the running batch (its KV cache)."""
        return len(self._rows)

    def add(self, key: Any, request: ChatRequest) -> None:
        """Queue a request; it joins the batch at the next step. Raises :class:`ModelError`."""
        if not isinstance(request, ChatRequest):
            raise ModelError(f"expected a ChatRequest, got {type(request).__name__}")
        if self.size >= self.max_batch:
            raise ModelError(f"the batch is full ({self.max_batch} requests)")
        inputs: dict[str, torch.Tensor] = {}
        if self.processor is not None:  # a vision-language model (no tools)
            prompt, inputs = self._vision_prompt(request)
        else:
            prompt = self.prompt_ids(request)
        if len(prompt) >= self.max_length:
            raise ModelError(
                f"the prompt has {len(prompt)} tokens; the model takes {self.max_length}"
            )
        generator = torch.Generator()
        s = request.settings
        generator.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
        self._waiting.append(
            _Sequence(
                key,
                request,
                prompt,
                generator,
                IncrementalDetokenizer(self.tokenizer),
                StopBuffer(s.stop),
                inputs={k: v.to(self.device) for k, v in inputs.items()},
                tools=ToolCallParser(tool_names(request.tools)) if request.tools else None,
                think=OpenThinkSplitter() if self.prompt_opens_think(prompt) else None,
            )
        )

    def prompt_opens_think(self, prompt: list[int]) -> bool:
        """Whether the prompt tokens end inside an open think block (their last tokens,
        decoded with the special tokens, end in ``<think>``)."""
        tail = self.tokenizer.decode(prompt[-_PROMPT_TAIL:], skip_special_tokens=False)
        return opens_think(str(tail))

    def _vision_prompt(self, request: ChatRequest) -> tuple[list[int], dict[str, torch.Tensor]]:
        """A vision-language model's prompt ids and image inputs (:func:`vision_inputs`).

        Raises
        ------
        ModelError
            The messages are not valid, an image cannot be read, or the template failed.
        """
        messages = prepare_messages(request.messages, self.system_prompt, images=True)
        try:
            return vision_inputs(self.processor, messages)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"the chat template failed: {exc}") from exc

    def _load_vision(
        self, name: str, dtype: Any, from_pretrained: dict[str, Any]
    ) -> tuple[Any, Any]:
        """Load a vision-language model and its processor; returns (model, tokenizer)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = self.processor or AutoProcessor.from_pretrained(name, **from_pretrained)  # type: ignore[no-untyped-call]
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, **from_pretrained)
        _log.info("%s is a vision-language model: images reach it", name)
        return model, self.processor.tokenizer

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The prompt tokens of ``request``: its messages (and tools) through the chat template.

        Raises
        ------
        ModelError
            The messages are not valid, or the chat template failed on them.
        """
        messages, kwargs = self._template_input(request)
        try:
            prompt = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs
            )
        except Exception as exc:
            raise ModelError(f"the chat template failed: {exc}") from exc
        if not isinstance(prompt, list):
            prompt = list(prompt["input_ids"])
        return [int(t) for t in prompt]

    def _template_input(self, request: ChatRequest) -> tuple[list[Any], dict[str, Any]]:
        """The messages and keyword arguments for the chat template: the OpenAI form with
        ``tools=`` when it renders tools, else the fallback form (tools in the system message,
        calls and results as text); plain messages when there are no tools or tool messages."""
        messages = prepare_messages(request.messages, self.system_prompt)
        if not request.tools and not _has_tool_messages(messages):
            return list(messages), {}
        if self.template_renders_tools():
            kwargs = {"tools": request.tools} if request.tools else {}
            return openai_messages(messages, object_arguments=True), kwargs
        return fallback_messages(messages, request.tools), {}

    def template_renders_tools(self) -> bool:
        """Whether the chat template shows the tools it is given (tried once, with a probe)."""
        if self._renders_tools is None:
            probe = [{"role": "user", "content": "Hi"}]
            try:
                text = self.tokenizer.apply_chat_template(
                    probe, tools=[_PROBE_TOOL], add_generation_prompt=True, tokenize=False
                )
            except Exception as exc:
                _log.info("the chat template fails with tools (%s): tools get the fallback", exc)
                text = ""
            self._renders_tools = "genbot_probe_tool" in str(text)
        return self._renders_tools

    def remove(self, key: Any) -> None:
        """Drop a request (its caller went away): its row leaves the batch now."""
        waiting = [q for q in self._waiting if q.key != key]
        keep = [i for i, q in enumerate(self._rows) if q.key != key]
        if len(waiting) < len(self._waiting) or len(keep) < len(self._rows):
            self.cancelled += 1
        self._waiting = waiting
        if len(keep) < len(self._rows):
            self._select(keep)

    def reset(self) -> None:
        """Forget every request (after a failed step)."""
        self._waiting, self._rows, self._cache, self._mask = [], [], None, None

    @torch.inference_mode()
    def step(self) -> list[_Event]:
        """Decode one token for every running row, then prefill the waiting requests."""
        events: list[_Event] = []
        if self._rows:
            assert self._mask is not None
            ids = torch.tensor([[q.pending] for q in self._rows], device=self.device)
            positions = self._mask.sum(dim=1, keepdim=True)
            self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
            logits = self._forward(ids, self._mask, positions, self._cache)
            events += self._sample(self._rows, logits)
        if self._waiting:
            events += self._prefill()
        finished = {key for key, _, finish in events if finish}
        if finished:
            self._select([i for i, q in enumerate(self._rows) if q.key not in finished])
        return events

    def _prefill(self) -> list[_Event]:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        new, self._waiting = self._waiting, []
        width = max(len(q.prompt) for q in new)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor(
            [[pad] * (width - len(q.prompt)) + q.prompt for q in new], device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(q.prompt)) + [1] * len(q.prompt) for q in new], device=self.device
        )
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise ModelError("models with sliding-window attention layers are not supported")
        logits = self._forward(ids, mask, positions, cache, **_joined_inputs(new))
        self._merge(cache, mask)
        self._rows += new
        return self._sample(new, logits)

    def _forward(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        **extra: torch.Tensor,
    ) -> torch.Tensor:
        """Run the model over ``ids`` (the cache grows in place); the last position's logits.
        ``extra``: a vision-language model's image inputs, at the prefill."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
            **extra,
        )
        logits: torch.Tensor = out.logits[:, -1, :]
        return logits

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Append the rows of ``cache`` to the running batch, left-padding the shorter side."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old, add in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width), _pad_left(add.keys, width)])
            old.values = torch.cat([_pad_left(old.values, width), _pad_left(add.values, width)])
        self._mask = torch.cat([_pad_left(self._mask, width, dim=1), _pad_left(mask, width, dim=1)])

    def _select(self, keep: list[int]) -> None:
        """Keep only these rows, and cut the cache columns that no row uses any more."""
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        assert self._mask is not None
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        start = int(mask.any(dim=0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self._mask = mask[:, start:]

    def _sample(self, rows: list[_Sequence], logits: torch.Tensor) -> list[_Event]:
        events: list[_Event] = []
        for q, row in zip(rows, logits.float(), strict=True):
            token = _choose(row, q)
            finish: str | None = None
            delta = ""
            if token in self.eos:
                finish = "stop"
            else:
                q.generated.append(token)
                q.pending = token
                delta = q.stops.feed(q.detokenizer.add(token))
                if q.stops.stopped:
                    finish = "stop"
                elif (
                    len(q.generated) >= q.request.settings.max_new_tokens
                    or len(q.prompt) + len(q.generated) >= self.max_length
                ):
                    finish = "length"
            if finish and not q.stops.stopped:
                delta += q.stops.feed(q.detokenizer.flush()) + q.stops.flush()
            if q.think is not None:
                thought, delta = _split_thinking(q, delta, finish)
                events += thought
            events += _reply_events(q, delta, finish)
        return events


# -- vision-language models (the media part of issue 8) ------------------------------------------


def _is_vision_model(name: str, from_pretrained: dict[str, Any]) -> bool:
    """Whether the model's config has a vision tower (a vision-language model)."""
    from transformers import AutoConfig

    if from_pretrained.get("gguf_file"):
        return False
    config = AutoConfig.from_pretrained(name, **from_pretrained)
    return getattr(config, "vision_config", None) is not None


def vision_inputs(processor: Any, messages: list[ChatMessage]) -> tuple[list[int], dict[str, Any]]:
    """A vision-language model's prompt ids and image inputs for ``messages``: each message's
    content as parts (its images first, then its text), rendered by the processor's chat
    template, then tokenized with the images (the processor expands the image tokens).

    Raises
    ------
    ModelError
        An image that cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    parts: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in messages:
        content: list[dict[str, str]] = []
        for image in message.get("images", []):
            try:
                images.append(Image.open(io.BytesIO(image["data"])).convert("RGB"))
            except (UnidentifiedImageError, OSError) as exc:
                raise ModelError(f"the image {image['name']!r} cannot be read: {exc}") from exc
            content.append({"type": "image"})
        content.append({"type": "text", "text": message["content"]})
        parts.append({"role": message["role"], "content": content})
    text = processor.apply_chat_template(parts, add_generation_prompt=True, tokenize=False)
    encoded = processor(text=[text], images=images or None, return_tensors="pt")
    ids = [int(i) for i in encoded["input_ids"][0]]
    extra = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    return ids, extra


def _joined_inputs(rows: list[_Sequence]) -> dict[str, torch.Tensor]:
    """The image inputs of the rows prefilled together, in row order (as their image tokens)."""
    names = {name for q in rows for name in q.inputs}
    return {name: torch.cat([q.inputs[name] for q in rows if name in q.inputs]) for name in names}


def _split_thinking(q: _Sequence, delta: str, finish: str | None) -> tuple[list[_Event], str]:
    """A delta of a reply still inside the think block its prompt opened: its reasoning as
    events, and the text after the ``</think>`` (if it came); past the block (or at the
    finish) the sequence stops splitting."""
    assert q.think is not None
    pieces = q.think.feed(delta) + (q.think.flush() if finish else [])
    if finish or not q.think.thinking:
        q.think = None
    events: list[_Event] = [(q.key, p, None) for p in pieces if isinstance(p, Reasoning)]
    return events, "".join(p for p in pieces if isinstance(p, str))


def _reply_events(q: _Sequence, delta: str, finish: str | None) -> list[_Event]:
    """A step's events for one sequence: its text delta, less any tool-call text when the
    request has tools, and at the finish the tool calls, before the finish event."""
    if q.tools is None:
        return [(q.key, delta, finish)] if delta or finish else []
    shown = q.tools.feed(delta)
    calls: list[ToolCall] = []
    if finish:
        rest, calls = q.tools.finish()
        shown += rest
    events: list[_Event] = [(q.key, shown, None)] if shown else []
    events += [(q.key, call, None) for call in calls]
    if finish:
        events.append((q.key, "", "tool_calls" if calls and finish == "stop" else finish))
    return events


def _has_tool_messages(messages: list[ChatMessage]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _choose(logits: torch.Tensor, q: _Sequence) -> int:
    """Pick the next token: repeat penalty, then greedy or temperature + top-p sampling."""
    s = q.request.settings
    if s.repeat_penalty != 1.0:
        recent = torch.tensor(
            sorted(set((q.prompt + q.generated)[-REPEAT_LAST_N:])), device=logits.device
        )
        values = logits[recent]
        logits[recent] = torch.where(
            values > 0, values / s.repeat_penalty, values * s.repeat_penalty
        )
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / s.temperature, dim=-1)
    if s.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > s.top_p
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=q.generator))


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


class TransformersStreamer(ChatStreamer):
    """The transformers backend: a Hugging Face causal chat LM by hub name or local path.

    Up to ``max_batch`` streams generate together; new streams join the running batch
    between decoding steps. ``system_prompt`` (default none, as every backend) is put first
    when a request has no system message. ``from_pretrained`` holds extra keyword arguments for
    ``from_pretrained`` (e.g. ``revision``, ``gguf_file``). The model is loaded in the worker,
    not here.
    """

    def __init__(
        self,
        model: str,
        *,
        max_batch: int = 16,
        device: str | None = None,
        dtype: str | None = None,
        system_prompt: str | None = None,
        threads: int | None = None,
        from_pretrained: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.max_batch = max_batch
        self.threads = threads
        self.engine_kwargs = {
            "device": device,
            "dtype": dtype,
            "system_prompt": system_prompt,
            **(from_pretrained or {}),
        }
        self.engine: TransformersEngine | None = None

    def worker(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        engine = TransformersEngine(self.model, max_batch=self.max_batch, **self.engine_kwargs)
        self.engine = engine
        streams: dict[int, Stream] = {}
        try:
            while True:
                self._admit(engine, streams)
                if streams:
                    self._step(engine, streams)
        finally:
            self.engine = None

    def _admit(self, engine: TransformersEngine, streams: dict[int, Stream]) -> None:
        """Join waiting streams to the batch (waiting for one when the batch is empty) and
        drop the streams whose callers went away."""
        if engine.size < self.max_batch:
            waiting = self.consume(
                minimum=0 if streams else 1, maximum=self.max_batch - engine.size
            )
            for stream in waiting:
                try:
                    engine.add(id(stream), stream.data)
                except Exception as exc:
                    stream.fail(exc)
                else:
                    streams[id(stream)] = stream
        for key, stream in list(streams.items()):
            if stream.closed:
                engine.remove(key)
                del streams[key]

    @staticmethod
    def _step(engine: TransformersEngine, streams: dict[int, Stream]) -> None:
        """One decoding step of the batch: write each stream's delta, close finished ones; a
        failed step fails every stream of the batch and starts afresh."""
        try:
            events = engine.step()
        except Exception as exc:
            engine.reset()
            for stream in streams.values():
                stream.fail(exc)
            streams.clear()
            return
        for key, delta, finish in events:
            stream = streams[key]
            if delta:
                stream.write(delta)
            if finish:
                stream.close()
                del streams[key]

    # -- token counting (context budgets in tokens) -----------------------------------------

    async def count_texts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with the model's Hugging Face tokenizer: the worker's when it runs
        in this process, else the same tokenizer loaded here once (in a thread).

        Parameters
        ----------
        texts:
            Plain texts (no chat template, no special tokens).
        """
        return await asyncio.to_thread(self._count_texts, texts)

    def _count_texts(self, texts: list[str]) -> list[int]:
        engine = self.engine
        tokenizer = engine.tokenizer if engine is not None else self._own_tokenizer()
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(row) for row in ids]

    def _own_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        skip = {"device", "dtype", "system_prompt"}
        extra = {k: v for k, v in self.engine_kwargs.items() if k not in skip}
        key = (self.model, repr(sorted(extra.items())))
        with _tokenizers_lock:
            if key not in _tokenizers:
                _tokenizers[key] = AutoTokenizer.from_pretrained(self.model, **extra)
            return _tokenizers[key]


#: Tokenizers loaded for counting in the caller's process, by model and loading arguments.
_tokenizers: dict[tuple[str, str], Any] = {}
_tokenizers_lock = threading.Lock()
