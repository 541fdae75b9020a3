"""Fairness benchmark: one user floods the bot, five others ask once; fair turns against
first come, first served, in the same run.

Run: ``python bench/fairness.py`` (``--rounds 1`` runs each mode once instead of three times).

A fake model (:class:`PacedModel`, a Streamer with ``--slots`` slots that decodes all its busy
slots together at a fixed ``--token-ms`` per token; replies of 60 % to 140 % of ``--tokens``
tokens, fixed by the question, so slots come free at different times) serves the real
:class:`genbot.ChatBot` on the loopback Discord server (:mod:`genbot.testing`). The scene: the
user ``flood`` sends 50 messages in 10 channels (5 each, mentioning the bot), then the users
``u0``..``u4`` ask one question each in channels of their own. The model records, for each
reply, who asked (the last user line of its prompt) and when its first and last tokens went
out. Printed per mode: when each of the five got its first token, when the flood's 6th reply
started, and the throughput (tokens generated / seconds from the flood's first message until
the last token), with the run's tail: the seconds at the end with a slot idle and no chat
waiting, which depend on which replies happen to run last. "first come" is the same bot with
its scheduler in first-come-first-served order (``FairScheduler(fair=False)``), and "ungated"
lets every chat straight into the model's own first-come queue, as the bot did before fair
turns; the three run alternately.

Targets: with fair turns, the five get their first token before the flood's 6th reply starts;
the throughput is within 5 % of first come.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import genbot
from genbot.chatbot import ChatBot
from genbot.fairness import FairScheduler
from genbot.settings import Settings
from genbot.streaming import Stream
from genbot.testing import DiscordServer, run_bot

FLOOD_MESSAGES = 50
FLOOD_CHANNELS = 10
OTHERS = 5


@dataclass
class Reply:
    """One stream the model served: who asked, its first and last token times, its tokens."""

    author: str
    first: float
    last: float = 0.0
    tokens: int = 0


class PacedModel(genbot.Streamer):
    """A fake model: ``slots`` slots decoded together, ``token_time`` seconds per step, each
    step one token (``" tok"``) for every busy slot, 60 % to 140 % of ``tokens`` tokens per
    reply (1 for the bot's one-token warm-up). Runs on a thread (``start_thread``);
    :attr:`replies` is what it served, in the order the replies started."""

    def __init__(self, slots: int, token_time: float, tokens: int) -> None:
        self.slots = slots
        self.token_time = token_time
        self.tokens = tokens
        self.replies: list[Reply] = []
        self.lock = threading.Lock()

    def worker(self) -> None:
        active: dict[Stream, tuple[Reply, int]] = {}
        while True:
            free = self.slots - len(active)
            for stream in self.consume(minimum=0 if active else 1, maximum=free):
                said = _last_line(stream)
                wanted = min(_length(said, self.tokens), stream.data.settings.max_new_tokens)
                active[stream] = (Reply(said.split(": ", 1)[0], 0.0), wanted)
            time.sleep(self.token_time)  # one decoding step for the whole batch
            now = time.perf_counter()
            for stream, (reply, wanted) in list(active.items()):
                if stream.closed:
                    del active[stream]
                    continue
                if reply.tokens == 0:
                    reply.first = now
                    if wanted > 1:  # not the warm-up
                        with self.lock:
                            self.replies.append(reply)
                stream.write(" tok")
                reply.tokens += 1
                reply.last = now
                if reply.tokens == wanted:
                    stream.close()
                    del active[stream]


def _last_line(stream: Stream) -> str:
    """The last line of the last user message: ``"<who asked>: <text>"``."""
    users = [m["content"] for m in stream.data.messages if m["role"] == "user"]
    return users[-1].splitlines()[-1] if users else ""


def _length(said: str, tokens: int) -> int:
    """Replies differ in length, as a model's do: 60 % to 140 % of ``tokens``, fixed by the
    question (so both modes generate the same replies for the same questions)."""
    return max(1, round(tokens * (0.6 + 0.8 * (zlib.crc32(said.encode()) % 1000) / 1000)))


@dataclass
class Run:
    mode: str
    started: float
    asked: float  # when the five had asked (after the flood's 50 messages)
    ended: float
    replies: list[Reply] = field(default_factory=list)

    def flood(self) -> list[Reply]:
        return sorted((r for r in self.replies if r.author == "flood"), key=lambda r: r.first)

    def firsts(self) -> dict[str, float]:
        """Each of the five: seconds from the start to their first token."""
        found: dict[str, float] = {}
        for reply in sorted(self.replies, key=lambda r: r.first):
            if reply.author != "flood":
                found.setdefault(reply.author, reply.first - self.started)
        return found

    def sixth(self) -> float:
        flood = self.flood()
        return flood[5].first - self.started if len(flood) > 5 else float("inf")

    def tail(self, slots: int) -> float:
        """Seconds at the end with a slot idle and no chat waiting: from when the slots were
        last all busy until the last token (the end of a run: luck of which reply is last)."""
        events = sorted([(r.first, 1) for r in self.replies] + [(r.last, -1) for r in self.replies])
        busy, full_until = 0, self.started
        for when, change in events:
            if busy == slots and change < 0:
                full_until = when
            busy += change
        return self.ended - full_until

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.replies)

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def rate(self) -> float:
        return self.tokens / self.wall


async def settle(bot: ChatBot, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while running := bot.attending():
        if loop.time() > deadline:
            raise TimeoutError("the bot still attends")
        await asyncio.wait(running, timeout=deadline - loop.time())


#: The modes run alternately: the scheduler a ChatBot gets for each.
MODES = {
    "fair": lambda model: FairScheduler(model),
    "first come": lambda model: FairScheduler(model, fair=False),
    # No gate: every chat goes straight into the model's own first-come queue, as before fair
    # turns existed (the scheduler lets everyone through at once).
    "ungated": lambda model: FairScheduler(model, slots=1_000_000, fair=False),
}


async def one_run(model: PacedModel, mode: str, data_dir: str) -> Run:
    settings = Settings().updated({"data_dir": data_dir, "queue_timeout": 600.0}, "bench")
    async with DiscordServer() as server:
        guild = server.create_guild("Bench")
        flooder = server.create_user("flood")
        others = [server.create_user(f"u{i}") for i in range(OTHERS)]
        for user in (flooder, *others):
            server.add_member(guild, user)
        flood_channels = [server.create_channel(guild, f"flood-{i}") for i in range(10)]
        own = [server.create_channel(guild, f"ask-{i}") for i in range(OTHERS)]
        bot = ChatBot(
            settings,
            backend=model,
            guild_ready_timeout=0.05,
            shutdown_timeout=5.0,
            close_streamers=False,
        )
        bot.turns = MODES[mode](model)
        async with run_bot(bot, server, timeout=60):
            with model.lock:
                model.replies.clear()
            started = time.perf_counter()
            for i in range(FLOOD_MESSAGES):
                channel = flood_channels[i % FLOOD_CHANNELS]
                await server.send_message(channel, flooder, f"flood {i}", mentions_bot=True)
            for user, channel in zip(others, own, strict=True):
                await server.send_message(channel, user, "one question", mentions_bot=True)
            asked = time.perf_counter()
            await asyncio.sleep(0.5)  # the last attends start
            await settle(bot, timeout=600)
            ended = max(r.last for r in model.replies)
            with model.lock:
                replies = list(model.replies)
    return Run(mode, started, asked, ended, replies)


def report(runs: list[Run], model: PacedModel) -> None:
    print(
        f"\nfake model: {model.slots} slots, {model.token_time * 1000:.0f} ms per token, "
        f"{model.tokens} tokens a reply (60-140 %); flood: {FLOOD_MESSAGES} messages in "
        f"{FLOOD_CHANNELS} channels, then {OTHERS} users ask once\n"
    )
    print(
        "| run | mode | flood replies | the 5 asked by (s) | the 5's first token (s) "
        "| flood's 6th reply starts (s) | 5 before 6th | tokens | wall (s) | tail (s) | tok/s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, run in enumerate(runs, 1):
        firsts = run.firsts()
        shown = ", ".join(f"{firsts[u]:.2f}" for u in sorted(firsts)) or "-"
        before = len(firsts) == OTHERS and max(firsts.values()) < run.sixth()
        print(
            f"| {(i + len(MODES) - 1) // len(MODES)} | {run.mode} | {len(run.flood())} "
            f"| {run.asked - run.started:.2f} "
            f"| {shown} | {run.sixth():.2f} "
            f"| {'yes' if before else 'NO'} | {run.tokens} | {run.wall:.2f} "
            f"| {run.tail(model.slots):.2f} | {run.rate:.1f} |"
        )
    rates = {mode: statistics.median(r.rate for r in runs if r.mode == mode) for mode in MODES}
    print("\nthroughput (median tok/s): " + ", ".join(f"{m} {v:.1f}" for m, v in rates.items()))
    ratios = {base: rates["fair"] / rates[base] for base in ("first come", "ungated")}
    print(", ".join(f"fair / {base}: {ratio:.3f}" for base, ratio in ratios.items()))
    met = all(
        len(r.firsts()) == OTHERS and max(r.firsts().values()) < r.sixth()
        for r in runs
        if r.mode == "fair"
    )
    print(
        f"targets: the 5 before the flood's 6th reply: {'met' if met else 'MISSED'}; "
        "throughput no more than 5 % below both: "
        f"{'met' if min(ratios.values()) >= 0.95 else 'MISSED'}"
    )


async def main(args: argparse.Namespace) -> None:
    model = PacedModel(args.slots, args.token_ms / 1000, args.tokens)
    model.start_thread()
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            for _ in range(args.rounds):
                for mode in MODES:
                    run = await one_run(model, mode, data_dir)
                    print(f"{run.mode}: {run.tokens} tokens in {run.wall:.2f} s", flush=True)
                    runs.append(run)
    finally:
        model.close()
    report(runs, model)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4, help="the model's slots")
    parser.add_argument("--token-ms", type=float, default=20.0, help="ms per decoding step")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--rounds", type=int, default=3, help="times each mode runs (alternately)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parse()))
