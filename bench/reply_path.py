"""Per-delta cost of the layers the ready-made bot wraps around a model's deltas.

Run: ``python bench/reply_path.py`` (``--quick`` for a short run). No model, no Discord: a
source async generator yields N plain-text deltas (no ``<``, no reasoning, no tool calls),
and a reader takes them as :func:`genbot.output.stream_reply` does (``await
asyncio.wait_for(anext(deltas), timeout)`` per delta, the text accumulated). Chains, read
alternately in the same run, CPU time (``time.process_time``) per delta:

- **bare**: the reader on the source: what ``stream_reply`` read before tools, reasoning and
  buttons (the baseline);
- **filter**: :class:`genbot.reasoning.ReplyFilter` (``reasoning = "hide"``);
- **tracker**: :class:`genbot.controls.RunningReply`, the Stop button's tracker
  (``buttons = true``);
- **toolloop**: :func:`genbot.toolloop.tool_loop` with one tool offered and not called
  (with no tool offered the bot does not wrap the deltas in it);
- **full**: tracker over filter, the bot's chain with the default settings and no tool;
- **full+tools**: tracker over filter over the tool loop (a tool offered).

Each figure is the median over rounds of its ratio to the bare chain of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from genbot.controls import RunningReply
from genbot.models import ChatRequest
from genbot.reasoning import ReplyFilter
from genbot.toolloop import NoStep, tool_loop
from genbot.tools import Tool

DELTA = "tok "


async def _source(n: int) -> AsyncIterator[Any]:
    for _ in range(n):
        yield DELTA


async def _read(deltas: AsyncIterable[Any]) -> int:
    """Read as stream_reply does; return the characters read."""
    iterator = aiter(deltas)
    text = ""
    while True:
        try:
            delta = await asyncio.wait_for(anext(iterator), 60.0)
        except StopAsyncIteration:
            break
        text += delta
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
    return len(text)


class _Stream:
    def close(self) -> None:
        pass


async def _never(_args: dict[str, Any]) -> str:
    raise AssertionError("the bench calls no tool")


_TOOL = Tool("clock", "The time.", {"type": "object", "properties": {}}, _never)


def _open_step(_request: ChatRequest) -> Any:
    raise NoStep


def _tools(deltas: AsyncIterable[Any]) -> AsyncIterable[Any]:
    request = ChatRequest([{"role": "user", "content": "hi"}], tools=[_TOOL.schema()])
    return tool_loop(deltas, request, [_TOOL], _open_step)


def _tracker(deltas: AsyncIterable[Any]) -> AsyncIterable[Any]:
    return RunningReply(1, _Stream(), deltas, lambda _r: None)


CHAINS: dict[str, Callable[[AsyncIterable[Any]], AsyncIterable[Any]]] = {
    "bare": lambda d: d,
    "filter": lambda d: ReplyFilter(d, "hide"),
    "tracker": _tracker,
    "toolloop": _tools,
    "full": lambda d: _tracker(ReplyFilter(d, "hide")),
    "full+tools": lambda d: _tracker(ReplyFilter(_tools(d), "hide")),
}


async def _measure(chain: str, n: int) -> float:
    """CPU seconds per delta for `n` deltas through `chain`."""
    start = time.process_time()
    read = await _read(CHAINS[chain](_source(n)))
    spent = time.process_time() - start
    assert read == n * len(DELTA), (chain, read)
    return spent / n


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-n", type=int, default=20000, help="deltas per chain per round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5000 deltas")
    args = parser.parse_args()
    rounds, n = (3, 5000) if args.quick else (args.rounds, args.n)
    print(f"reply path, {n} plain-text deltas per chain, {rounds} rounds; {os.cpu_count()} CPUs,")
    print(f"load average {os.getloadavg()[0]:.2f} at start")
    await _measure("full+tools", 500)  # warm up
    per: dict[str, list[float]] = {c: [] for c in CHAINS}
    ratios: dict[str, list[float]] = {c: [] for c in CHAINS}
    for _ in range(rounds):
        for chain in CHAINS:
            per[chain].append(await _measure(chain, n))
        for chain in CHAINS:
            ratios[chain].append(per[chain][-1] / per["bare"][-1])
    print(f"{'chain':<12} {'CPU/delta median':>17} {'vs bare, median':>16}  range")
    for chain in CHAINS:
        r = ratios[chain]
        print(
            f"{chain:<12} {statistics.median(per[chain]) * 1e6:>14.2f} µs"
            f" {statistics.median(r):>15.2f}x  {min(r):.2f}-{max(r):.2f}x"
        )


if __name__ == "__main__":
    asyncio.run(main())
