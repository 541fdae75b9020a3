"""Benchmark of genbot's OpenAI backend against a bare aiohttp SSE reader, on a local server.

Run: ``python bench/openai_path.py`` (``--quick`` for a short run). A local aiohttp server, in a
process of its own, answers ``POST /v1/chat/completions`` with ``max_tokens`` chat-completion
chunks as fast as it can (one token per event, then the finish event and ``[DONE]``). Two
clients read it, alternately, in the same run:

- **bare**: an aiohttp session in this process that reads the response line by line
  (``async for line in response.content``), decodes each event's JSON and takes
  ``choices[0].delta.content``: what a minimal client does, and the baseline of the targets;
- **chunks**: the same, reading the response a chunk at a time (``iter_any()``) and splitting
  the events itself, as genbot's reader does: a stricter floor, shown for information;
- **genbot**: :class:`genbot.models.openai.OpenAIStreamer` in its worker process (``spawn``),
  through the Streamer as the bot uses it: ``async with backend.stream() as s: async for delta
  in s(request)``.

Figures: the time to first token with one stream at a time (from opening the request, or the
stream, to the first text; connections are warm), and the CPU time per token with 64
concurrent streams. CPU counts every process on the client side and nothing of the server:
for bare, this process (``resource.getrusage(RUSAGE_SELF)``, user + system, all threads); for
genbot, this process plus the worker process (``utime + stime`` from ``/proc/<pid>/stat``, all
its threads). Targets (issue 9): genbot's time to first token within 2 ms of bare, and its CPU
per token within 3x of bare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from multiprocessing.connection import Connection

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import aiohttp
from aiohttp import web

from genbot.models import ChatRequest, GenerationSettings
from genbot.models.openai import OpenAIStreamer

MODEL = "bench"
TOKEN = "tok"  # every token's text
TTFT_TARGET = 2e-3  # seconds over bare
CPU_TARGET = 3.0  # times bare
PATHS = ("bare", "chunks", "genbot")


# -- the server (its own process) ------------------------------------------------------------------


def _event(**choice: object) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, **choice}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    token = _event(delta={"content": TOKEN}, finish_reason=None)
    await response.write(_event(delta={"role": "assistant", "content": ""}, finish_reason=None))
    for _ in range(int(body["max_tokens"])):
        await response.write(token)
    await response.write(_event(delta={}, finish_reason="length") + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "list", "data": [{"id": MODEL}]})


def serve(conn: Connection) -> None:
    """The server process: listen on a free loopback port, send its URL, serve until EOF."""

    async def run() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _chat)
        app.router.add_get("/v1/models", _models)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        conn.send(f"http://127.0.0.1:{port}/v1")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _wait_for_eof, conn)
        await runner.cleanup()

    asyncio.run(run())


def _wait_for_eof(conn: Connection) -> None:
    try:
        conn.recv()
    except EOFError:
        pass


# -- the clients ---------------------------------------------------------------------------------


def request_body(tokens: int) -> bytes:
    messages = [{"role": "user", "content": "Count."}]
    return json.dumps(
        {"model": MODEL, "messages": messages, "stream": True, "max_tokens": tokens}
    ).encode()


async def bare_one(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, int]:
    """One stream read by the bare reader: (seconds to the first text, tokens)."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    headers = {"Content-Type": "application/json"}
    async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            content = json.loads(data)["choices"][0]["delta"].get("content")
            if content:
                if not tokens:
                    first = time.perf_counter() - started
                tokens += 1
    return first, tokens


async def chunks_one(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, int]:
    """One stream read a chunk at a time: (seconds to the first text, tokens)."""
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    rest = b""
    headers = {"Content-Type": "application/json"}
    async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
        async for chunk in response.content.iter_any():
            *events, rest = (rest + chunk).split(b"\n\n")
            for event in events:
                data = event[6:]
                if data == b"[DONE]":
                    break
                if json.loads(data)["choices"][0]["delta"].get("content"):
                    if not tokens:
                        first = time.perf_counter() - started
                    tokens += 1
    return first, tokens


async def genbot_one(backend: OpenAIStreamer, request: ChatRequest) -> tuple[float, int]:
    """One stream through the Streamer: (seconds to the first text, tokens)."""
    started = time.perf_counter()
    first = 0.0
    text: list[str] = []
    async with backend.stream() as stream:
        async for delta in stream(request):
            if not text:
                first = time.perf_counter() - started
            text.append(delta)
    joined = "".join(text)
    assert joined == TOKEN * (len(joined) // len(TOKEN)), "garbled text"
    return first, len(joined) // len(TOKEN)


def worker_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Paths:
    """The two clients, each able to run one stream; genbot's also reports its worker's CPU."""

    def __init__(self, url: str, session: aiohttp.ClientSession, backend: OpenAIStreamer) -> None:
        self.url = url
        self.session = session
        self.backend = backend
        self.pid = 0

    async def one(self, path: str, tokens: int) -> tuple[float, int]:
        if path == "bare":
            return await bare_one(self.session, self.url, request_body(tokens))
        if path == "chunks":
            return await chunks_one(self.session, self.url, request_body(tokens))
        request = ChatRequest(
            [{"role": "user", "content": "Count."}], GenerationSettings(max_new_tokens=tokens)
        )
        return await genbot_one(self.backend, request)

    def cpu(self, path: str) -> float:
        return own_cpu() + (worker_cpu(self.pid) if path == "genbot" else 0.0)


async def ttft(paths: Paths, path: str, streams: int) -> list[float]:
    """Times to first token of ``streams`` streams, one after another (4 tokens each)."""
    firsts = []
    for _ in range(streams):
        first, tokens = await paths.one(path, 4)
        assert tokens == 4, f"{path}: {tokens} tokens, not 4"
        firsts.append(first)
    return firsts


async def cpu_per_token(paths: Paths, path: str, n: int, tokens: int) -> tuple[float, float]:
    """(CPU seconds per token, tokens per second) of ``n`` concurrent streams."""
    cpu = paths.cpu(path)
    started = time.perf_counter()
    results = await asyncio.gather(*(paths.one(path, tokens) for _ in range(n)))
    wall = time.perf_counter() - started
    cpu = paths.cpu(path) - cpu
    total = sum(count for _, count in results)
    assert total == n * tokens, f"{path}: {total} tokens, not {n * tokens}"
    return cpu / total, total / wall


# -- the run ---------------------------------------------------------------------------------------


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure(url: str, args: argparse.Namespace) -> None:
    backend = OpenAIStreamer(url, model=MODEL, max_concurrency=args.concurrency)
    handle = backend.start_process()
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
        ) as session:
            paths = Paths(url, session, backend)
            assert handle.pid is not None
            paths.pid = handle.pid
            firsts: dict[str, list[float]] = {path: [] for path in PATHS}
            cpus: dict[str, list[float]] = {path: [] for path in PATHS}
            rates: dict[str, list[float]] = {path: [] for path in PATHS}
            for path in firsts:  # warm: connections open, code paths run once
                await ttft(paths, path, 20)
                await cpu_per_token(paths, path, args.concurrency, 16)
            for _ in range(args.rounds):  # alternately, so that both see the same conditions
                for path in firsts:
                    firsts[path] += await ttft(paths, path, args.ttft_streams)
                    cpu, rate = await cpu_per_token(paths, path, args.concurrency, args.tokens)
                    cpus[path].append(cpu)
                    rates[path].append(rate)
    finally:
        backend.close()
    report(args, firsts, cpus, rates)


def report(
    args: argparse.Namespace,
    firsts: dict[str, list[float]],
    cpus: dict[str, list[float]],
    rates: dict[str, list[float]],
) -> None:
    n = args.concurrency
    print(
        f"{args.rounds} rounds, alternating; time to first token: {args.ttft_streams} streams "
        f"one at a time per round; CPU: {n} concurrent streams x {args.tokens} tokens per round"
    )
    header = (
        f"{'client':<8} {'TTFT p50':>9} {'TTFT p90':>9} {'CPU/token (N=' + str(n) + ')':>20}"
        f" {'tokens/s (N=' + str(n) + ')':>19}"
    )
    print(header)
    print("-" * len(header))
    summary = {}
    for path in firsts:
        p50, p90 = statistics.median(firsts[path]), quantile(firsts[path], 0.9)
        cpu, rate = statistics.median(cpus[path]), statistics.median(rates[path])
        summary[path] = (p50, cpu)
        print(
            f"{path:<8} {p50 * 1e3:>6.2f} ms {p90 * 1e3:>6.2f} ms {cpu * 1e6:>17.1f} us"
            f" {rate:>19,.0f}"
        )
    gap = summary["genbot"][0] - summary["bare"][0]
    ratio = summary["genbot"][1] / summary["bare"][1]
    print()
    print(
        f"TTFT genbot - bare: {gap * 1e3:+.2f} ms (target <= {TTFT_TARGET * 1e3:.0f} ms): "
        f"{'met' if gap <= TTFT_TARGET else 'NOT met'}"
    )
    print(
        f"CPU/token genbot / bare: {ratio:.2f}x (target <= {CPU_TARGET:.0f}x): "
        f"{'met' if ratio <= CPU_TARGET else 'NOT met'}"
    )
    per_round = ", ".join(
        f"{g / b:.2f}x" for g, b in zip(cpus["genbot"], cpus["bare"], strict=True)
    )
    print(f"CPU/token genbot / bare per round: {per_round}")
    floor_gap = (summary["genbot"][0] - summary["chunks"][0]) * 1e3
    floor_ratio = summary["genbot"][1] / summary["chunks"][1]
    print(f"against the chunk reader: TTFT {floor_gap:+.2f} ms, CPU/token {floor_ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ttft-streams", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream (CPU)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, fewer streams")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.ttft_streams, args.tokens = 2, 30, 64
    print(
        f"genbot OpenAI path vs bare aiohttp reader; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    server = context.Process(target=serve, args=(child,), daemon=True)
    server.start()
    child.close()
    try:
        if not parent.poll(60):
            raise SystemExit("the server did not start in 60 s")
        asyncio.run(measure(parent.recv(), args))
    finally:
        parent.close()  # the server sees EOF and stops
        server.join(10)
        if server.is_alive():
            server.kill()


if __name__ == "__main__":
    main()
