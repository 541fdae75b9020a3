"""Batching benchmark: N concurrent chats through the full path (Streamer + backend, no Discord)
against the same N chats served one after another (batch 1), in the same run.

    python bench/batching.py                          # llama.cpp, the default SmolLM2-135M
    python bench/batching.py --backend transformers   # SmolLM2 dequantised for transformers
    python bench/batching.py --backend openai --base-url http://127.0.0.1:8080/v1

Each chat asks for a different story with greedy decoding, so the sequential and concurrent
runs generate the same text and the same number of tokens. Tokens are counted as streamed
deltas (one per generated token, except where one character spans tokens). Time to first
token (TTFT) runs from the chat's start: for N concurrent chats, all start at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from genbot.models import ChatRequest, GenerationSettings, default_model_path
from genbot.models.base import ChatStreamer

# Requests for long replies, so that most chats generate all their tokens.
QUESTIONS = [
    "Tell me a long story about a dragon.",
    "Tell me a long story about the sea.",
    "Tell me a long story about a lost cat.",
    "Tell me a long story about a robot.",
    "Tell me a long story about a small town.",
    "Tell me a long story about a wizard.",
    "Tell me a long story about a train journey.",
    "Tell me a long story about the moon.",
    "Tell me a long story about a busy kitchen.",
    "Tell me a long story about a forest.",
    "Tell me a long story about a football match.",
    "Tell me a long story about a snowstorm.",
    "Tell me a long story about a city at night.",
    "Tell me a long story about a pirate ship.",
    "Tell me a long story about a garden.",
    "Tell me a long story about a mountain climb.",
]


@dataclass
class Run:
    tokens: int
    wall: float
    ttfts: list[float]

    @property
    def rate(self) -> float:
        return self.tokens / self.wall


async def chat(streamer: ChatStreamer, request: ChatRequest, start: float) -> tuple[int, float]:
    """One chat: (deltas, seconds from ``start`` to the first delta)."""
    first = None
    count = 0
    async for _ in streamer.chat(request):
        if first is None:
            first = time.perf_counter() - start
        count += 1
    return count, first if first is not None else float("nan")


async def concurrent(streamer: ChatStreamer, requests: list[ChatRequest]) -> Run:
    start = time.perf_counter()
    results = await asyncio.gather(*(chat(streamer, r, start) for r in requests))
    wall = time.perf_counter() - start
    return Run(sum(n for n, _ in results), wall, [t for _, t in results])


async def sequential(streamer: ChatStreamer, requests: list[ChatRequest]) -> Run:
    start = time.perf_counter()
    results = [await chat(streamer, r, time.perf_counter()) for r in requests]
    wall = time.perf_counter() - start
    return Run(sum(n for n, _ in results), wall, [t for _, t in results])


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, -(-99 * len(ordered) // 100) - 1))]


def make_streamer(args: argparse.Namespace, batch: int) -> tuple[ChatStreamer, str]:
    if args.backend == "llamacpp":
        from genbot.models.llamacpp import LlamaCppStreamer

        model = args.model or default_model_path()
        # no prompt cache: the sequential run must not warm it up for the concurrent one
        streamer = LlamaCppStreamer(
            model, n_parallel=batch, n_threads=args.threads, extra_body={"cache_prompt": False}
        )
        return streamer, f"llama.cpp, {Path(model).name}"
    if args.backend == "transformers":
        from genbot.models.transformers import TransformersStreamer, gguf_to_hf

        model = args.model
        if model is None:
            model = os.path.join(tempfile.gettempdir(), "genbot-bench-smollm2-135m-hf")
            if not os.path.isfile(os.path.join(model, "config.json")):
                print(f"dequantising the default GGUF into {model} ...", file=sys.stderr)
                gguf_to_hf(default_model_path(), model)
        streamer = TransformersStreamer(model, max_batch=batch, threads=args.threads)
        return streamer, f"transformers, {model}"
    from genbot.models.openai import OpenAIStreamer

    streamer = OpenAIStreamer(args.base_url, args.model, max_concurrency=batch)
    return streamer, f"OpenAI-compatible server at {args.base_url}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--backend", choices=["llamacpp", "transformers", "openai"], default="llamacpp"
    )
    parser.add_argument("--model", help="model path or name (default: the embedded SmolLM2)")
    parser.add_argument("--base-url", help="for --backend openai, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("-n", type=int, nargs="+", default=[1, 4, 16], help="concurrent chats")
    parser.add_argument("--tokens", type=int, default=64, help="max new tokens per chat")
    parser.add_argument("--threads", type=int, help="compute threads (default: the backend's)")
    args = parser.parse_args()
    if args.backend == "openai" and not args.base_url:
        parser.error("--backend openai needs --base-url")
    if max(args.n) > len(QUESTIONS):
        parser.error(f"at most {len(QUESTIONS)} concurrent chats")

    streamer, what = make_streamer(args, max(args.n))
    streamer.start_process()
    try:
        settings = GenerationSettings(max_new_tokens=args.tokens, temperature=0.0)
        warm = ChatRequest([{"role": "user", "content": "Hello!"}], settings)
        await concurrent(streamer, [warm])
        print(
            f"backend: {what}; batch up to {max(args.n)}; max {args.tokens} new tokens, greedy;"
            f" {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
        )
        head = (
            f"{'N':>3} {'mode':<11} {'tokens':>6} {'wall s':>7} {'tok/s':>7}"
            f" {'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'vs seq':>7}"
        )
        print(head)
        print("-" * len(head))
        for n in args.n:
            requests = [
                ChatRequest([{"role": "user", "content": q}], settings) for q in QUESTIONS[:n]
            ]
            base = await sequential(streamer, requests)
            runs = [("sequential", base), ("concurrent", await concurrent(streamer, requests))]
            for mode, run in runs:
                print(
                    f"{n:>3} {mode:<11} {run.tokens:>6} {run.wall:>7.2f} {run.rate:>7.1f}"
                    f" {statistics.median(run.ttfts) * 1e3:>11.0f} {p99(run.ttfts) * 1e3:>11.0f}"
                    f" {run.rate / base.rate:>6.2f}x"
                )
    finally:
        streamer.close()


if __name__ == "__main__":
    asyncio.run(main())
