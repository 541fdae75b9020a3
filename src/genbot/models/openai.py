"""OpenAI-compatible HTTP backend: vLLM, TGI, SGLang, Ollama, llama.cpp's server, OpenAI, ...

The worker runs an asyncio loop with the official ``openai`` client (``AsyncOpenAI``) and
serves each stream it takes as one streaming chat completion; at most ``max_concurrency``
requests are in flight (the worker takes no more streams than that). Timeouts and retries
with exponential back-off on connection errors, 408, 409, 429 and 5xx (honouring
``Retry-After``) are the client's own; a request is only retried before its first delta,
since a retry after that would repeat text. A caller that goes away closes its HTTP
response, which stops the generation on servers that watch the connection (most do).

The API key comes from ``api_key=``, else ``GENBOT_API_KEY``, else ``OPENAI_API_KEY`` (local
servers that need none get a placeholder). The OpenAI API has no repetition penalty, so
``GenerationSettings.repeat_penalty`` is not sent; pass server-specific parameters (e.g.
``{"repeat_penalty": 1.1}`` for llama.cpp, ``{"repetition_penalty": 1.1}`` for vLLM) as
``extra_body``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, cast

from genbot.models.base import ChatRequest, ChatStreamer, ModelError, prepare_messages

if TYPE_CHECKING:
    from openai import AsyncOpenAI, AsyncStream
    from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

    from genbot.streaming.worker import Stream

__all__ = ["OpenAIStreamer", "api_key_from_env"]

_log = logging.getLogger(__name__)


def api_key_from_env() -> str | None:
    """``GENBOT_API_KEY``, else ``OPENAI_API_KEY``, else ``None``."""
    return os.environ.get("GENBOT_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


class OpenAIStreamer(ChatStreamer):
    """A chat model behind an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``base_url`` defaults to ``OPENAI_BASE_URL`` or OpenAI's API; ``model=None`` uses the
    first model the server lists (handy for single-model local servers). ``system_prompt``
    (default none, as every backend) is put first when a request has no system message.

    Raises
    ------
    ValueError
        ``max_concurrency`` is less than 1.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        max_concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 3,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, not {max_concurrency}")
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})

    def worker(self) -> None:
        asyncio.run(self._serve())

    def _client(self) -> AsyncOpenAI:
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key or api_key_from_env() or "none",
            timeout=self.timeout,
            max_retries=self.max_retries,
        )

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        free = self.max_concurrency
        slot_freed = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        def done(task: asyncio.Task[None]) -> None:
            nonlocal free
            tasks.discard(task)
            free += 1
            slot_freed.set()

        async with self._client() as client:
            model = self.model or await self._first_model(client)
            try:
                while True:
                    while free == 0:
                        slot_freed.clear()
                        await slot_freed.wait()
                    # consume() blocks: run it off the loop so the requests keep streaming
                    streams = await loop.run_in_executor(None, self.consume, 1, free)
                    for stream in streams:
                        free -= 1
                        task = loop.create_task(self._complete(client, model, stream))
                        tasks.add(task)
                        task.add_done_callback(done)
            finally:
                for task in tasks:
                    task.cancel()

    async def _first_model(self, client: AsyncOpenAI) -> str:
        async for listed in client.models.list():
            return listed.id
        raise ModelError("the server lists no model; pass model=")

    async def _complete(self, client: AsyncOpenAI, model: str, stream: Stream) -> None:
        try:
            request = stream.data
            if not isinstance(request, ChatRequest):
                raise ModelError(f"expected a ChatRequest, got {type(request).__name__}")
            s = request.settings
            optional: dict[str, Any] = {}  # unset ones are left out, not sent as null
            if s.stop:
                optional["stop"] = list(s.stop)
            if s.seed is not None:
                optional["seed"] = s.seed
            if self.extra_body:
                optional["extra_body"] = self.extra_body
            # ChatMessage dicts are valid message params (role, content, no name left);
            # stream=True makes the response a stream, which **optional hides from mypy.
            messages = prepare_messages(request.messages, self.system_prompt)
            response = await client.chat.completions.create(
                model=model,
                messages=cast("list[ChatCompletionMessageParam]", messages),
                stream=True,
                max_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                **optional,
            )
            response = cast("AsyncStream[ChatCompletionChunk]", response)
            async with response:
                async for chunk in response:
                    if stream.closed:
                        return  # leaving the block closes the response: the server stops
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            stream.write(choice.delta.content)
        except Exception as exc:
            stream.fail(exc)
        else:
            stream.close()
