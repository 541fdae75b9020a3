"""Opt-in memory (the ``memory`` setting): what the bot keeps across restarts, and for how long.

Two kinds of memory, both in the bot's one SQLite database (:class:`genbot.store.Store`,
tables ``memory_*``):

- **A rolling summary per channel or thread.** When a reply's context does not fit its budget
  (``context_chars``, or ``context_tokens``), the messages that fell out of it are summarised by
  the same model, in the background after the reply (a short generation that takes a fair turn
  at the model like any chat, bounded by :data:`SUMMARY_TIMEOUT` and :data:`SUMMARY_TOKENS`); the
  summary then comes before the context, in the system message, and the messages it covers are
  left out of the context. Each new overflow extends it: the model gets the old summary and the
  newly dropped messages. A summary is built only from what :class:`genbot.context.Context`
  yields, so it holds only what a context may hold (no blacklisted user's text, nothing ignored,
  nothing before a ``/reset``). The ids of the messages it covers are stored; deleting one of
  them deletes the summary (it is rebuilt from the messages still there at the next overflow).
  A ``/reset`` newer than the summary deletes it. A summarisation that fails or times out
  leaves the summary as it was and is only logged: it never holds up a reply.
- **Facts a user asked the bot to remember**, per user and per place (one server, or the DMs):
  a message to the bot that starts with "remember that" or "remember:" (see
  :func:`remembered_fact`), or ``/memory remember:...``. The facts of the user being answered
  go into the system message. At most :data:`MAX_FACTS` per user and place (the oldest go), at
  most :data:`FACT_CHARS` characters each. Deleting the message a fact came from deletes the
  fact.

Facts older than ``memory_days`` are deleted, and summaries first written longer ago than that
(however often extended since); checked by replies (every :data:`PRUNE_EVERY` seconds) and by
every ``/memory``.
``/memory`` shows a user their facts and the channel's summary, ``/memory forget:all`` (or a
number) deletes their facts; admins clear a channel's summary with ``/memory channel:true``.

The decisions are pure functions; :class:`MemoryStore` keeps the rows and :class:`Memory` does
the bot's side (a reply's :meth:`Memory.recall`, deletions, background summaries).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from genbot.context import is_reset
from genbot.models.base import ChatMessage, ChatRequest, GenerationSettings, estimate_tokens
from genbot.prompt import budget_texts, fitting, message_text
from genbot.reasoning import answer_text

if TYPE_CHECKING:
    from genbot.settings import Settings
    from genbot.store import Store

__all__ = [
    "FACT_CHARS",
    "MAX_FACTS",
    "SUMMARY_INSTRUCTION",
    "Fact",
    "Memory",
    "MemoryStore",
    "Recall",
    "Summary",
    "TokenCounter",
    "expired",
    "facts_note",
    "remembered_fact",
    "scope_of",
    "summary_note",
    "summary_request",
]

_log = logging.getLogger(__name__)

#: Most facts kept per user and place; a new one past it replaces the oldest.
MAX_FACTS = 20
#: Most characters of one fact (longer ones are cut).
FACT_CHARS = 300
#: Most characters of a stored summary.
SUMMARY_CHARS = 2000
#: Most tokens the model may write for a summary.
SUMMARY_TOKENS = 200
#: Seconds a summarisation may take, waiting for its turn at the model included.
SUMMARY_TIMEOUT = 120.0
#: Characters of transcript one summarisation reads at most (the newest dropped ones).
TRANSCRIPT_CHARS = 12000
#: Seconds between two deletions of expired rows by replies (``/memory`` always deletes them).
PRUNE_EVERY = 600.0
#: The system message of a summarisation request.
SUMMARY_INSTRUCTION = (
    "You keep a short running summary of a chat. Given the summary so far and the messages "
    "that follow it, write the updated summary: who said what, decisions and open questions, "
    "in at most 120 words. Write only the summary."
)
_DAY = 86400.0

_SCHEMA = [
    """
    CREATE TABLE memory_facts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user INTEGER NOT NULL,
        scope INTEGER NOT NULL,
        text TEXT NOT NULL,
        source INTEGER UNIQUE,
        created REAL NOT NULL
    );
    CREATE INDEX memory_facts_user ON memory_facts (user, scope);
    CREATE TABLE memory_summaries (
        channel INTEGER PRIMARY KEY,
        text TEXT NOT NULL,
        covered INTEGER NOT NULL,
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE memory_covered (
        channel INTEGER NOT NULL,
        message INTEGER NOT NULL,
        PRIMARY KEY (channel, message)
    )
    """,
]

# "remember that ...", "remember: ...", after mentions and an optional "please"
_REMEMBER = re.compile(
    r"^(?:(?:<@!?\d+>|@\S+)[\s,:]*)*(?:please[\s,]+)?remember(?:\s+that\b|\s*:)\s*(?P<fact>.+)$",
    re.IGNORECASE | re.DOTALL,
)


# -- pure decisions ----------------------------------------------------------------------------


def remembered_fact(text: str) -> str | None:
    """The fact in a message that asks the bot to remember something, or ``None``.

    ``"@genbot remember that I prefer Python"`` and ``"please remember: my name is Al"`` ask;
    mentions and "please" may come first, case does not matter. The fact is cut to
    :data:`FACT_CHARS` characters, its whitespace collapsed.

    Parameters
    ----------
    text:
        The message's content (raw mentions like ``<@123>`` or shown ones like ``@genbot``).
    """
    found = _REMEMBER.match(text.strip())
    if found is None:
        return None
    fact = " ".join(found["fact"].split())
    if not fact:
        return None
    return fact if len(fact) <= FACT_CHARS else fact[: FACT_CHARS - 1] + "\u2026"


def expired(stamp: float, now: float, days: int) -> bool:
    """Whether something stored at ``stamp`` (seconds) is older than ``days`` at ``now``."""
    return now - stamp > days * _DAY


def facts_note(name: str, facts: Sequence[str]) -> str:
    """The system-message note with the facts ``name`` asked the bot to remember."""
    lines = "\n".join(f"- {fact}" for fact in facts)
    return f"Facts {name} asked you to remember:\n{lines}"


def summary_note(summary: str) -> str:
    """The system-message note with the summary of the earlier conversation."""
    return f"Summary of the earlier conversation here:\n{summary}"


def transcript(messages: Iterable[discord.Message], bot_user: discord.abc.Snowflake) -> str:
    """The messages as ``name: text`` lines, oldest first, at most :data:`TRANSCRIPT_CHARS`
    characters (the newest kept)."""
    lines = []
    for message in sorted(messages, key=lambda m: m.id):
        text = message_text(message)
        if text:
            who = "assistant" if message.author.id == bot_user.id else message.author.display_name
            lines.append(f"{who}: {text}")
    return "\n".join(lines)[-TRANSCRIPT_CHARS:]


def summary_request(previous: str | None, lines: str) -> ChatRequest:
    """The model request that extends ``previous`` (or starts a summary) with ``lines``."""
    so_far = previous or "(none yet)"
    messages: list[ChatMessage] = [
        {"role": "system", "content": SUMMARY_INSTRUCTION},
        {"role": "user", "content": f"Summary so far:\n{so_far}\n\nMessages that follow:\n{lines}"},
    ]
    return ChatRequest(messages, GenerationSettings(max_new_tokens=SUMMARY_TOKENS, temperature=0.2))


class TokenCounter:
    """A synchronous token counter for :func:`genbot.prompt.context_to_messages`, from counts
    made beforehand (the backend counts asynchronously); a text it was not given (the cut end
    of an over-long message) is estimated at the largest tokens-per-character ratio seen."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        ratios = [n / len(text) for text, n in counts.items() if text]
        self.ratio = max(ratios, default=0.25)

    def __call__(self, text: str) -> int:
        known = self.counts.get(text)
        return known if known is not None else math.ceil(len(text) * self.ratio)


# -- the rows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One stored fact: its row id, text, and when it was stored."""

    id: int
    text: str
    created: float


@dataclass(frozen=True)
class Summary:
    """A channel's stored summary."""

    channel: int
    text: str
    covered: int  # the newest message id it covers
    created: float  # when it was first written: it expires memory_days later
    updated: float


class MemoryStore:
    """The memory's rows in the bot's :class:`~genbot.store.Store` (component ``memory``).

    Parameters
    ----------
    store:
        The bot's store; opened by its owner. The tables are made at the first use.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ready = False
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        """Make the tables if needed (once)."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await self.store.migrate("memory", _SCHEMA)
                self._ready = True

    async def add_fact(
        self, user: int, scope: int, text: str, now: float, source: int | None
    ) -> bool:
        """Store a fact (at most :data:`MAX_FACTS` per user and place: the oldest go);
        ``False`` when the message ``source`` gave one already."""
        await self.ready()
        async with self.store.transaction() as db:
            added = await db.execute(
                "INSERT OR IGNORE INTO memory_facts (user, scope, text, source, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (user, scope, text[:FACT_CHARS], source, now),
            )
            await db.execute(
                "DELETE FROM memory_facts WHERE user = ? AND scope = ? AND id NOT IN "
                "(SELECT id FROM memory_facts WHERE user = ? AND scope = ? "
                "ORDER BY id DESC LIMIT ?)",
                (user, scope, user, scope, MAX_FACTS),
            )
        return added > 0

    async def facts(self, user: int, scope: int) -> list[Fact]:
        """The user's facts in ``scope``, oldest first."""
        await self.ready()
        rows = await self.store.fetchall(
            "SELECT id, text, created FROM memory_facts WHERE user = ? AND scope = ? ORDER BY id",
            (user, scope),
        )
        return [Fact(int(i), str(t), float(c)) for i, t, c in rows]

    async def forget_facts(self, user: int, scope: int, ids: Sequence[int] | None = None) -> int:
        """Delete the user's facts in ``scope`` (``ids``: only those); returns how many."""
        await self.ready()
        if ids is None:
            return await self.store.execute(
                "DELETE FROM memory_facts WHERE user = ? AND scope = ?", (user, scope)
            )
        gone = 0
        for fact_id in ids:
            gone += await self.store.execute(
                "DELETE FROM memory_facts WHERE user = ? AND scope = ? AND id = ?",
                (user, scope, fact_id),
            )
        return gone

    async def summary(self, channel: int) -> Summary | None:
        await self.ready()
        row = await self.store.fetchone(
            "SELECT channel, text, covered, created, updated FROM memory_summaries "
            "WHERE channel = ?",
            (channel,),
        )
        if row is None:
            return None
        return Summary(int(row[0]), str(row[1]), int(row[2]), float(row[3]), float(row[4]))

    async def put_summary(
        self, channel: int, text: str, covered: Iterable[int], now: float
    ) -> None:
        """Store the channel's summary and add ``covered`` to the ids it covers."""
        await self.ready()
        ids = sorted(set(covered))
        async with self.store.transaction() as db:
            row = await db.fetchone(
                "SELECT MAX(message) FROM memory_covered WHERE channel = ?", (channel,)
            )
            newest = max([*ids, int(row[0]) if row and row[0] is not None else 0])
            await db.execute(
                "INSERT INTO memory_summaries (channel, text, covered, created, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (channel) DO UPDATE SET "
                "text = excluded.text, covered = excluded.covered, updated = excluded.updated",
                (channel, text[:SUMMARY_CHARS], newest, now, now),
            )
            await db.executemany(
                "INSERT OR IGNORE INTO memory_covered (channel, message) VALUES (?, ?)",
                [(channel, i) for i in ids],
            )

    async def drop_summary(self, channel: int) -> bool:
        """Delete the channel's summary; ``True`` if there was one."""
        await self.ready()
        async with self.store.transaction() as db:
            gone = await db.execute("DELETE FROM memory_summaries WHERE channel = ?", (channel,))
            await db.execute("DELETE FROM memory_covered WHERE channel = ?", (channel,))
        return gone > 0

    async def deleted(self, channel: int, messages: Iterable[int]) -> None:
        """Messages were deleted: drop the summary that covers any, and facts they gave."""
        await self.ready()
        ids = list(messages)
        marks = ",".join("?" * len(ids))
        if not ids:
            return
        row = await self.store.fetchone(
            f"SELECT 1 FROM memory_covered WHERE channel = ? AND message IN ({marks})",
            (channel, *ids),
        )
        if row is not None:
            await self.drop_summary(channel)
        await self.store.execute(f"DELETE FROM memory_facts WHERE source IN ({marks})", ids)

    async def prune(self, now: float, days: int) -> None:
        """Delete facts and summaries older than ``days`` (a summary by when it was first
        written: what it holds may be that old, however often it was extended since)."""
        await self.ready()
        oldest = now - days * _DAY
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM memory_facts WHERE created < ?", (oldest,))
            await db.execute(
                "DELETE FROM memory_covered WHERE channel IN "
                "(SELECT channel FROM memory_summaries WHERE created < ?)",
                (oldest,),
            )
            await db.execute("DELETE FROM memory_summaries WHERE created < ?", (oldest,))

    async def rows(self) -> list[str]:
        """Every stored text (facts and summaries), for checks and tests."""
        await self.ready()
        facts = await self.store.fetchall("SELECT text FROM memory_facts")
        summaries = await self.store.fetchall("SELECT text FROM memory_summaries")
        return [str(r[0]) for r in facts + summaries]


# -- the bot's side ----------------------------------------------------------------------------


@dataclass
class Recall:
    """What :meth:`Memory.recall` decided for one reply: the history to put in the prompt (the
    messages a summary covers left out), the system prompt with the memory notes, and the
    budget (``max_tokens`` with ``count_tokens`` when ``context_tokens`` is set)."""

    history: list[discord.Message]
    system_prompt: str | None
    max_chars: int | None
    max_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None
    dropped: list[discord.Message] = field(default_factory=list)


OpenTurn = Callable[[], AbstractAsyncContextManager[Any]]
CountTexts = Callable[[list[str]], Awaitable[list[int]]]


def scope_of(channel: object) -> int:
    """Where facts apply: the server's id, or 0 for DMs."""
    guild = getattr(channel, "guild", None)
    return int(guild.id) if guild is not None else 0


class Memory:
    """The bot's memory (see the module docstring).

    Parameters
    ----------
    store:
        The bot's store (opened by the bot).
    clock:
        Seconds since the epoch (tests pass their own).
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.rows = MemoryStore(store)
        self.clock = clock
        self._summarising: dict[int, asyncio.Task[None]] = {}
        self._epoch: dict[int, int] = {}  # bumped when a channel's summary is dropped
        self._pruned = -math.inf  # when expired rows were last deleted
        #: Set each time a deletion was applied (:meth:`deleted`), for whoever waits on it.
        self.forgot = asyncio.Event()

    async def recall(
        self,
        settings: Settings,
        channel: discord.abc.Messageable,
        question: discord.Message,
        history: list[discord.Message],
        bot_user: discord.abc.Snowflake,
        *,
        cached: Sequence[discord.Message] = (),
        count_texts: CountTexts | None = None,
        open_turn: OpenTurn | None = None,
    ) -> Recall:
        """Decide one reply's prompt: token budget, summary and facts (when ``settings.memory``).

        Never raises for the memory's sake: a failing database is logged and the reply goes
        on without memory.

        Parameters
        ----------
        settings:
            The reply's settings.
        channel, question, history, bot_user:
            Where, the message answered, the context read (newest first, as a Context yields),
            and the bot.
        cached:
            The channel's cached messages (to see a ``/reset`` newer than the summary).
        count_texts:
            Counts tokens of texts with the backend's tokenizer (for ``context_tokens``).
        open_turn:
            Opens a turn at the model, for a background summary.
        """
        recall = Recall(history, settings.system_prompt or None, settings.context_chars)
        if settings.context_tokens:
            recall.max_chars, recall.max_tokens = None, settings.context_tokens
            recall.count_tokens = await _counter(history, bot_user, count_texts)
        if not settings.memory:
            return recall
        try:
            await self._remember(settings, channel, question, recall, bot_user, cached)
        except Exception:
            _log.exception("memory: reading it for a reply failed; replying without it")
            return recall
        if recall.dropped and open_turn is not None:
            self._summarise_later(_channel_id(channel), recall, bot_user, open_turn)
        return recall

    async def _remember(
        self,
        settings: Settings,
        channel: discord.abc.Messageable,
        question: discord.Message,
        recall: Recall,
        bot_user: discord.abc.Snowflake,
        cached: Sequence[discord.Message],
    ) -> None:
        now, scope = self.clock(), scope_of(channel)
        if now - self._pruned >= PRUNE_EVERY or now < self._pruned:
            await self.rows.prune(now, settings.memory_days)
            self._pruned = now
        fact = remembered_fact(question.content)
        if fact is not None:
            await self.rows.add_fact(question.author.id, scope, fact, now, question.id)
        notes = []
        summary = await self._summary(_channel_id(channel), cached, bot_user)
        if summary is not None:
            recall.history = [m for m in recall.history if m.id > summary.covered]
            notes.append(summary_note(summary.text))
        facts = await self.rows.facts(question.author.id, scope)
        if facts:
            notes.append(facts_note(question.author.display_name, [f.text for f in facts]))
        if notes:
            recall.system_prompt = "\n\n".join(filter(None, [recall.system_prompt, *notes]))
        kept = fitting(
            recall.history, bot_user, recall.max_chars, recall.max_tokens, recall.count_tokens
        )
        ids = {m.id for m in kept}
        oldest = min(ids, default=0)
        recall.dropped = [m for m in recall.history if m.id not in ids and m.id < oldest]

    async def _summary(
        self, channel: int, cached: Sequence[discord.Message], bot_user: discord.abc.Snowflake
    ) -> Summary | None:
        """The channel's summary, unless a ``/reset`` came after what it covers (then it is
        deleted)."""
        summary = await self.rows.summary(channel)
        if summary is None:
            return None
        if any(m.id > summary.covered and is_reset(m, bot_user.id) for m in cached):
            await self.drop_channel(channel)
            return None
        return summary

    def _summarise_later(
        self, channel: int, recall: Recall, bot_user: discord.abc.Snowflake, open_turn: OpenTurn
    ) -> None:
        running = self._summarising.get(channel)
        if running is not None and not running.done():
            return  # the next overflow extends it
        job = self._summarise(channel, recall.dropped, bot_user, open_turn)
        task = asyncio.create_task(job, name=f"genbot: summary of {channel}")
        self._summarising[channel] = task
        task.add_done_callback(lambda done: self._finished(channel, done))

    def _finished(self, channel: int, task: asyncio.Task[None]) -> None:
        if self._summarising.get(channel) is task:
            del self._summarising[channel]

    async def _summarise(
        self,
        channel: int,
        dropped: list[discord.Message],
        bot_user: discord.abc.Snowflake,
        open_turn: OpenTurn,
    ) -> None:
        epoch = self._epoch.get(channel, 0)
        try:
            previous = await self.rows.summary(channel)
            lines = transcript(dropped, bot_user)
            if not lines:
                return
            request = summary_request(previous.text if previous else None, lines)
            text = await asyncio.wait_for(_generate(open_turn, request), SUMMARY_TIMEOUT)
            if not text.strip():
                raise ValueError("the model wrote an empty summary")
            if self._epoch.get(channel, 0) != epoch:
                return  # reset or deleted meanwhile: what it read may be gone
            await self.rows.put_summary(
                channel, text.strip(), [m.id for m in dropped], self.clock()
            )
            _log.info("memory: summarised %d messages of channel %d", len(dropped), channel)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            _log.warning(
                "memory: summarising channel %d failed, it stays as it was: %r", channel, error
            )

    async def drop_channel(self, channel: int) -> bool:
        """Forget the channel's summary (a ``/reset``, an admin's ``/memory``)."""
        self._epoch[channel] = self._epoch.get(channel, 0) + 1
        return await self.rows.drop_summary(channel)

    async def deleted(self, channel: int, messages: Iterable[int]) -> None:
        """Messages were deleted (a gateway event); logged, never raised."""
        ids = list(messages)
        try:
            if await self.rows.summary(channel) is not None:
                self._epoch[channel] = self._epoch.get(channel, 0) + 1
            await self.rows.deleted(channel, ids)
        except Exception:
            _log.exception("memory: forgetting deleted messages in %d failed", channel)
        self.forgot.set()

    async def idle(self, timeout: float = SUMMARY_TIMEOUT) -> None:
        """Wait (bounded) until no summary is being made."""
        running = [t for t in self._summarising.values() if not t.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)

    async def close(self) -> None:
        """Cancel the summaries being made (at shutdown, before the store closes)."""
        running = [t for t in self._summarising.values() if not t.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=5.0)
        self._summarising.clear()


async def _generate(open_turn: OpenTurn, request: ChatRequest) -> str:
    """The model's answer to ``request``: its text, less any reasoning (``Reasoning`` items
    and ``<think>`` blocks), which a summary never keeps."""
    parts: list[str] = []
    async with open_turn() as stream:
        async for delta in stream(request):
            if isinstance(delta, str):
                parts.append(delta)
    return answer_text("".join(parts))


async def _counter(
    history: list[discord.Message],
    bot_user: discord.abc.Snowflake,
    count_texts: CountTexts | None,
) -> TokenCounter:
    """Count the texts the budget will weigh, with the backend (falling back to the estimate
    when it cannot)."""
    texts = budget_texts(history, bot_user)
    counts: list[int] | None = None
    if count_texts is not None and texts:
        try:
            counts = await count_texts(texts)
        except Exception as error:
            _log.warning("counting tokens failed, estimating them: %r", error)
    if counts is None or len(counts) != len(texts):
        counts = [estimate_tokens(t) for t in texts]
    return TokenCounter(dict(zip(texts, counts, strict=True)))


def _channel_id(channel: object) -> int:
    return int(getattr(channel, "id", 0))
