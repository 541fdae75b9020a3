"""Pure tests of genbot.output: splitting, write planning, pacing, and stream_reply on fakes."""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Generator
from types import SimpleNamespace

import discord
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from genbot.output import (
    DEFAULT_EMPTY_TEXT,
    DEFAULT_ERROR_TEXT,
    DEFAULT_STALL_TEXT,
    SAFE_MENTIONS,
    ChannelPacer,
    RequestBudget,
    RetryBudget,
    Write,
    final_text,
    is_visible,
    keep_typing,
    plan_writes,
    split_message,
    stream_reply,
)

_REOPEN = re.compile(r"```[A-Za-z0-9_+\-.#]{0,16}\n")
_CLOSE = "\n```"

pieces = st.sampled_from(
    [
        "word",
        "Hello",
        "a",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        ". ",
        "! ",
        "?",
        "```",
        "```py\n",
        "```c++\n",
        "```\n",
        "`",
        "``",
        "`" * 40,
        "é",
        "<@123>",
        "x" * 70,
        "y = 1\n",
        "    indented\n",
    ]
)
prose = st.lists(st.sampled_from(["Word", "Hi.", "ok", "end!", "x" * 30]), min_size=1, max_size=40)
code = st.tuples(
    st.sampled_from(["", "py", "c++"]),
    st.lists(st.sampled_from(["x = 1", "    y = x", "", "print(x) " * 5]), max_size=40),
)
documents = st.lists(
    st.one_of(
        prose.map(" ".join),
        code.map(lambda c: f"```{c[0]}\n" + "\n".join(c[1]) + "\n```"),
    ),
    max_size=12,
).map("\n\n".join)
texts = st.one_of(
    st.lists(pieces, max_size=120).map("".join),
    st.text(alphabet=" \n.`abpy", max_size=500),
    documents,
)
limits = st.integers(min_value=64, max_value=240)


def unsplit(text: str, chunks: list[str]) -> bool:
    """Whether `chunks` are `text` cut up, with fences closed and reopened at some cuts."""

    @functools.cache
    def fits(index: int, pos: int, reopened: bool) -> bool:
        if index == len(chunks):
            return pos == len(text) and not reopened
        body = chunks[index]
        if reopened:
            header = _REOPEN.match(body)
            if header is None:
                return False
            body = body[header.end() :]
        if text.startswith(body, pos) and fits(index + 1, pos + len(body), False):
            return True
        segment = body[: -len(_CLOSE)]
        return (
            body.endswith(_CLOSE)
            and text.startswith(segment, pos)
            and fits(index + 1, pos + len(segment), True)
        )

    return fits(0, 0, False)


@settings(max_examples=300, deadline=None)
@given(texts, limits)
def test_split_properties(text: str, limit: int) -> None:
    chunks = split_message(text, limit)
    assert all(len(chunk) <= limit for chunk in chunks)
    assert all(chunk for chunk in chunks)
    assert unsplit(text, chunks)
    for chunk in chunks[:-1]:
        assert chunk.count("```") % 2 == 0, chunk
    if chunks:
        assert chunks[-1].count("```") % 2 == text.count("```") % 2


@settings(max_examples=200, deadline=None)
@given(texts, limits, st.data())
def test_split_only_grows_as_text_grows(text: str, limit: int, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    before, after = split_message(text[:cut], limit), split_message(text, limit)
    assert len(before) <= len(after)
    assert sum(1 for c in before if c.strip()) <= sum(1 for c in after if c.strip())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["word", "Hi.", "a" * 30, "\n", "```"]), max_size=80), limits)
def test_split_makes_no_blank_chunk_without_long_whitespace(words: list[str], limit: int) -> None:
    text = " ".join(words)
    chunks = split_message(text, limit)
    assert all(chunk.strip() for chunk in chunks[:-1])
    if text[-1:].strip():
        assert chunks[-1].strip()


def test_short_text_is_one_message_and_empty_is_none() -> None:
    assert split_message("hello") == ["hello"]
    assert split_message("x" * 2000) == ["x" * 2000]
    assert split_message("") == []


def test_limit_below_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        split_message("text", 10)


def test_split_prefers_paragraphs_then_sentences_then_words() -> None:
    first, second = "A" * 50 + ".", "B" * 60 + "."
    assert split_message(f"{first}\n\n{second}", 100) == [f"{first}\n\n", second]
    words = "w " * 25
    assert split_message(f"{words}Done. " + "more " * 20, 64)[0] == f"{words}Done. "
    assert split_message(f"{words[:-1]}\n\nDone. " + "more " * 20, 64)[0] == f"{words[:-1]}\n\n"
    chunks = split_message("word " * 30, 64)
    assert all(chunk.endswith(" ") for chunk in chunks[:-1])
    assert all(not chunk.startswith(" ") for chunk in chunks)


def test_split_keeps_messages_nearly_full_rather_than_cut_at_an_early_paragraph() -> None:
    text = "Short intro.\n\n" + "A sentence that goes on. " * 10
    assert len(split_message(text, 200)[0]) >= 150


def test_split_keeps_a_code_block_whole_when_it_fits() -> None:
    code = "```python\n" + "print('hello')\n" * 80 + "```"
    text = "Intro " * 170 + "\n\n" + code + "\n\n" + "Outro " * 300  # a cut at 2000 hits code
    chunks = split_message(text)
    assert sum(code in chunk for chunk in chunks) == 1
    assert len(chunks) == 3


def test_split_closes_and_reopens_a_long_code_block_with_its_language() -> None:
    text = "```rust\n" + "let x = 1;\n" * 400 + "```"
    chunks = split_message(text)
    assert len(chunks) == 3
    for chunk in chunks:
        assert chunk.startswith("```rust\n")
        assert chunk.endswith("\n```")
        assert "let x = 1;\n" in chunk
    # cuts fall between lines of code
    assert all(chunk[: -len(_CLOSE)].endswith(";\n") for chunk in chunks[:-1])


def test_split_keeps_an_opening_fence_with_its_language_line() -> None:
    # The best cut by tier would be the newline ending "```py\n", leaving an empty code block.
    assert split_message("x" * 40 + " ```py\n" + "y" * 100, 64)[0] == "x" * 40 + " "


def test_split_hard_cuts_a_word_longer_than_a_message() -> None:
    assert split_message("x" * 4500) == ["x" * 2000, "x" * 2000, "x" * 500]


# --- plan_writes -------------------------------------------------------------------------------


def apply(shown: list[str], writes: list[Write]) -> None:
    for write in writes:
        if write.delete:
            assert write.index == len(shown) - 1  # the last message first
            del shown[write.index]
        elif write.new:
            assert write.index == len(shown)
            shown.append(write.content)
        else:
            shown[write.index] = write.content


@settings(max_examples=200, deadline=None)
@given(texts, limits, st.lists(st.integers(min_value=0), max_size=8))
@example(  # a prefix that splits into three messages where the whole text makes two
    text="wordwordwordaaaa```py\n    indented\nwordHello"
    + "`" * 43
    + "\n<@123>"
    + "x" * 70
    + "aaa",
    limit=86,
    flushes=[116],
)
def test_plan_writes_reaches_the_final_split_from_any_flushes(
    text: str, limit: int, flushes: list[int]
) -> None:
    shown: list[str] = []
    for flush in sorted(f % (len(text) + 1) for f in flushes):
        writes = plan_writes(text[:flush], shown, final=False, limit=limit)
        assert all(len(w.content) <= limit and w.content.strip() for w in writes)
        apply(shown, writes)
    apply(shown, plan_writes(text, shown, final=True, limit=limit))
    assert shown == [chunk for chunk in split_message(text, limit) if chunk.strip()]
    assert plan_writes(text, shown, final=True, limit=limit) == []


def test_plan_writes_edits_only_what_changed() -> None:
    assert plan_writes("Hello", [], final=False) == [Write(0, "Hello", new=True)]
    assert plan_writes("Hello", ["Hello"], final=False) == []
    assert plan_writes("Hello there", ["Hello"], final=False) == [Write(0, "Hello there", False)]
    assert plan_writes("   ", [], final=True) == []


def test_plan_writes_closes_an_open_code_block_until_final() -> None:
    text = "Look:\n```py\nx = 1"
    assert plan_writes(text, [], final=False) == [Write(0, text + "\n```", True)]
    assert plan_writes(text, [text + "\n```"], final=True) == [Write(0, text, False)]


def test_plan_writes_continues_past_the_limit() -> None:
    text = "a " * 1500
    writes = plan_writes(text, ["a " * 900], final=True)
    assert [(w.index, w.new) for w in writes] == [(0, False), (1, True)]


# --- ChannelPacer ------------------------------------------------------------------------------


def test_pacer_spaces_turns_per_channel() -> None:
    now = [100.0]
    pacer = ChannelPacer(clock=lambda: now[0])
    assert pacer.reserve(1, 1.0) == 0.0
    assert pacer.reserve(1, 1.0) == 1.0  # a second reply in the same channel waits its turn
    assert pacer.reserve(1, 1.0) == 2.0
    assert pacer.reserve(2, 1.0) == 0.0  # other channels are not held up
    now[0] = 110.0
    assert pacer.reserve(1, 1.0) == 0.0  # turns long past do not accumulate
    now[0] = 110.25
    assert pacer.reserve(1, 1.0) == pytest.approx(0.75)


def test_pacer_forgets_old_channels() -> None:
    now = [0.0]
    pacer = ChannelPacer(clock=lambda: now[0])
    for channel in range(1100):
        pacer.reserve(channel, 1.0)
    now[0] = 5.0
    pacer.reserve(5000, 1.0)
    assert len(pacer._next) == 1


# --- stream_reply on a fake channel ------------------------------------------------------------


def http_error(status: int) -> discord.HTTPException:
    return discord.HTTPException(SimpleNamespace(status=status, reason="fake"), "fake")


ME = SimpleNamespace(id=1, name="genbot")


class FakeMessage:
    def __init__(self, channel: FakeChannel, content: str, reference: object) -> None:
        self.channel, self.content, self.reference = channel, content, reference
        self.id = 1000 + len(channel.messages)
        self.author = ME

    async def edit(self, *, content: str, allowed_mentions: discord.AllowedMentions) -> FakeMessage:
        assert allowed_mentions is SAFE_MENTIONS
        self.channel.requests.append(("edit", self.index))
        if self.channel.edit_failures:
            raise self.channel.edit_failures.pop(0)
        assert len(content) <= 2000
        self.content = content
        return self

    @property
    def index(self) -> int:
        return self.channel.messages.index(self)


class FakeTyping:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    async def __aenter__(self) -> None:
        if self.channel.typing_fails:
            raise http_error(403)
        self.channel.typing_now = True

    async def __aexit__(self, *exc: object) -> None:
        self.channel.typing_now = False

    def __await__(self) -> Generator[None, None, None]:
        return self._once().__await__()

    async def _once(self) -> None:
        """One typing request, as ``await channel.typing()`` sends."""
        if self.channel.typing_fails:
            raise http_error(403)
        self.channel.typed.append(len(self.channel.messages))


class FakeChannel:
    """A channel of discord.py's shape: send (with failures that may happen after Discord
    created the message, as a 502 can), edit, history, typing; ``me`` is the bot."""

    def __init__(self) -> None:
        self.id = 42
        self.name = "general"
        self.me = ME
        self.messages: list[FakeMessage] = []
        self.requests: list[tuple[str, int]] = []
        self.edit_failures: list[Exception] = []
        # (error, created): the next sends fail with error, after creating the message if created
        self.send_failures: list[tuple[Exception | None, bool]] = []
        self.nonces: list[object] = []
        self.typing_now = False
        self.typing_fails = False
        self.typed: list[int] = []  # one-shot typing requests: how many messages there were

    def typing(self) -> FakeTyping:
        return FakeTyping(self)

    async def send(
        self,
        content: str,
        *,
        reference: object = None,
        allowed_mentions: discord.AllowedMentions,
        nonce: object = None,
    ) -> FakeMessage:
        assert allowed_mentions is SAFE_MENTIONS
        assert content.strip() and len(content) <= 2000
        self.requests.append(("send", len(self.messages)))
        self.nonces.append(nonce)
        failure, created = self.send_failures.pop(0) if self.send_failures else (None, True)
        message = FakeMessage(self, content, reference)
        if created:
            self.messages.append(message)
        if failure is not None:
            raise failure
        return message

    async def history(
        self, *, limit: int, after: FakeMessage | FakeReference
    ) -> AsyncIterator[FakeMessage]:
        self.requests.append(("history", -1))
        for message in [m for m in self.messages if m.id > after.id][:limit]:
            yield message

    def contents(self) -> list[str]:
        return [m.content for m in self.messages]


class FakeReference:
    """The message replied to."""

    id = 7

    def to_reference(self, *, fail_if_not_exists: bool) -> SimpleNamespace:
        assert fail_if_not_exists is False
        return SimpleNamespace(message_id=self.id)


async def deltas_of(*parts: str) -> AsyncIterator[str]:
    for part in parts:
        yield part


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    async def poll() -> None:  # asyncio.timeout() would need Python 3.11
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def test_stream_reply_writes_the_whole_text() -> None:
    channel = FakeChannel()
    messages = await stream_reply(
        channel, deltas_of("Hel", "lo", " world"), interval=0.01, pacer=ChannelPacer()
    )
    assert channel.contents() == ["Hello world"]
    assert messages == channel.messages


async def test_stream_reply_types_until_the_first_visible_delta() -> None:
    channel = FakeChannel()
    go = asyncio.Event()

    async def deltas() -> AsyncIterator[str]:
        yield "\n"  # whitespace alone does not make a message
        await go.wait()
        yield "Hi"

    task = asyncio.create_task(stream_reply(channel, deltas(), interval=0.01, pacer=ChannelPacer()))
    await wait_until(lambda: channel.typed)
    assert channel.messages == []
    go.set()
    await asyncio.wait_for(task, 5)
    assert channel.typed == [0]  # typed once, before the message; not after it
    assert channel.contents() == ["\nHi"]


async def test_stream_reply_coalesces_deltas_into_one_edit() -> None:
    channel = FakeChannel()

    async def deltas() -> AsyncIterator[str]:
        yield "First."
        await wait_until(lambda: channel.messages)
        for n in range(50):  # no awaits: all of these arrive before the writer's next turn
            yield f" {n}"

    await stream_reply(channel, deltas(), interval=0.01, timeout=None, pacer=ChannelPacer())
    assert channel.requests == [("send", 0), ("edit", 0)]
    assert channel.contents() == ["First." + "".join(f" {n}" for n in range(50))]


async def test_stream_reply_paces_by_channel_id() -> None:
    keys: list[int] = []

    class Recording(ChannelPacer):
        def reserve(self, channel_id: int, interval: float) -> float:
            keys.append(channel_id)
            return super().reserve(channel_id, interval)

    channel = FakeChannel()

    async def deltas() -> AsyncIterator[str]:
        yield "a"
        await wait_until(lambda: channel.messages)
        yield "b"

    await stream_reply(channel, deltas(), interval=0.01, pacer=Recording())
    assert keys and set(keys) == {42}


async def test_stream_reply_continues_in_new_messages_replying_with_the_first() -> None:
    channel = FakeChannel()
    text = "".join(f"Sentence number {n} is here. " for n in range(200))
    parts = [text[i : i + 7] for i in range(0, len(text), 7)]
    await stream_reply(
        channel, deltas_of(*parts), reference=FakeReference(), interval=0.01, pacer=ChannelPacer()
    )
    assert channel.contents() == split_message(text)
    assert [getattr(m.reference, "message_id", None) for m in channel.messages] == [7, None, None]


async def test_stream_reply_survives_rate_limited_and_failing_edits() -> None:
    channel = FakeChannel()
    channel.edit_failures = [http_error(429), http_error(503), asyncio.TimeoutError()]

    async def deltas() -> AsyncIterator[str]:
        yield "one"
        await wait_until(lambda: channel.messages)
        yield " two"
        yield " three"

    await stream_reply(channel, deltas(), interval=0.01, pacer=ChannelPacer())
    assert channel.contents() == ["one two three"]
    assert channel.requests.count(("edit", 0)) == 4


async def test_stream_reply_raises_a_discord_error_that_retrying_cannot_fix() -> None:
    channel = FakeChannel()
    channel.edit_failures = [http_error(403)]
    closed = asyncio.Event()

    async def deltas() -> AsyncIterator[str]:
        try:
            yield "one"
            await wait_until(lambda: channel.messages)
            while True:
                yield " more"
                await asyncio.sleep(0.01)
        finally:
            closed.set()
            raise OSError("cleanup failed too")  # logged; the Discord error is what is raised

    with pytest.raises(discord.HTTPException) as info:
        await stream_reply(channel, deltas(), interval=0.01, pacer=ChannelPacer())
    assert info.value.status == 403
    assert closed.is_set()


async def test_stream_reply_shows_a_generation_failure_and_reraises() -> None:
    channel = FakeChannel()

    async def deltas() -> AsyncIterator[str]:
        yield "Partial answer:\n```py\nx = "
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        await stream_reply(
            channel, deltas(), interval=0.01, error_text="It broke.", pacer=ChannelPacer()
        )
    assert channel.contents() == ["Partial answer:\n```py\nx = \n```\n\n*It broke.*"]


async def test_stream_reply_shows_a_failure_before_any_text() -> None:
    channel = FakeChannel()

    async def deltas() -> AsyncIterator[str]:
        raise RuntimeError("no model")
        yield ""

    with pytest.raises(RuntimeError):
        await stream_reply(channel, deltas(), error_text="Oops.", pacer=ChannelPacer())
    assert channel.contents() == ["*Oops.*"]


async def test_stream_reply_bounds_the_wait_for_the_next_delta() -> None:
    channel = FakeChannel()
    closed = asyncio.Event()

    async def deltas() -> AsyncIterator[str]:
        try:
            yield "Thinking"
            await asyncio.Event().wait()
            yield "never"
        finally:
            closed.set()

    with pytest.raises(asyncio.TimeoutError):
        await stream_reply(channel, deltas(), timeout=0.2, stall_text="Timed out.", interval=0.01)
    assert channel.contents() == ["Thinking\n\n*Timed out.*"]
    assert closed.is_set()


EMPTY_NOTE = f"*{DEFAULT_EMPTY_TEXT}*"

INVISIBLE = [
    (),
    (" ", "\n\t"),
    ("\u200b", "\u200c\u200d"),  # zero-width space, non-joiner, joiner
    ("\u2060\ufeff",),  # word joiner, byte order mark
    ("\u0301\u0308\u20dd",),  # combining marks with nothing to combine with
    ("\u3164", "\u2800", "\u00a0\u3000"),  # Hangul filler, blank Braille, wide spaces
    ("\u200e\u202e", "\U000e0041"),  # bidi marks, a tag character
]


@pytest.mark.parametrize("parts", INVISIBLE)
async def test_an_empty_or_invisible_generation_gets_a_visible_note(parts: tuple[str]) -> None:
    channel = FakeChannel()
    messages = await stream_reply(
        channel, deltas_of(*parts), reference=FakeReference(), interval=0.01, pacer=ChannelPacer()
    )
    assert channel.contents() == [EMPTY_NOTE]
    assert messages == channel.messages and messages[0].reference.message_id == 7


async def test_without_an_empty_text_an_empty_generation_sends_nothing() -> None:
    channel = FakeChannel()
    parts = ("\u200b", " ")
    assert await stream_reply(channel, deltas_of(*parts), empty_text=None) == []
    assert channel.requests == []


async def test_invisible_deltas_do_not_send_a_message_before_visible_text() -> None:
    channel = FakeChannel()
    await stream_reply(channel, deltas_of("\u200b", "\u200d", "Hi"), interval=0.01)
    assert channel.requests == [("send", 0)]
    assert channel.contents() == ["\u200b\u200dHi"]


@pytest.mark.parametrize("parts", INVISIBLE)
def test_is_visible_is_false_for_invisible_text(parts: tuple[str]) -> None:
    assert not is_visible("".join(parts))


@pytest.mark.parametrize("text", ["a", "\u200b.", " \u00e9", "e\u0301", "\U0001f600", "\u3164x"])
def test_is_visible_is_true_for_text_with_a_visible_character(text: str) -> None:
    assert is_visible(text)


def test_final_text_chooses_the_note_by_outcome() -> None:
    assert final_text("Hi", None) == "Hi"
    assert final_text(" \u200b", None) == EMPTY_NOTE
    assert final_text(" \u200b", None, empty_text=None) == " \u200b"
    assert final_text("Hi", RuntimeError()) == f"Hi\n\n*{DEFAULT_ERROR_TEXT}*"
    assert final_text("\u200b", asyncio.TimeoutError()) == f"*{DEFAULT_STALL_TEXT}*"
    assert final_text("```py\nx", TimeoutError(), stall_text="S") == "```py\nx\n```\n\n*S*"


# --- Discord failures: retried by time, never doubled ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_retry_budget_backs_off_doubling_until_the_budget_is_spent() -> None:
    clock = Clock()
    retry = RetryBudget(10.0, first=0.5, cap=2.0, clock=clock)
    assert not retry.failing and retry.remaining() == 10.0
    delays = []
    while (delay := retry.failed()) is not None:
        delays.append(delay)
        clock.now += delay
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5]  # the last try falls on the deadline
    assert retry.failing and retry.elapsed() == 10.0
    retry.succeeded()
    assert not retry.failing and retry.failed() == 0.5  # a new streak starts afresh


def test_retry_budget_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        RetryBudget(-1.0, first=0.5)
    with pytest.raises(ValueError):
        RetryBudget(1.0, first=0.0)


async def test_a_send_failing_more_often_than_before_is_retried_within_the_budget() -> None:
    """Five failed writes in a row used to drop the reply; now only time counts."""
    channel = FakeChannel()
    channel.send_failures = [(http_error(503), False)] * 6 + [(asyncio.TimeoutError(), False)]
    await stream_reply(channel, deltas_of("Hello", " world"), interval=0.01, pacer=ChannelPacer())
    assert channel.contents() == ["Hello world"]
    assert [kind for kind, _ in channel.requests].count("send") == 8
    assert len(set(channel.nonces)) == 1 and channel.nonces[0] is not None  # one message


async def test_a_reply_that_cannot_be_written_within_the_budget_is_logged_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = FakeChannel()
    channel.send_failures = [(http_error(502), False)] * 1000
    text = "A reply that Discord never takes. " * 3
    with pytest.raises(discord.HTTPException) as info:
        await stream_reply(
            channel, deltas_of(text), interval=0.01, retry_budget=0.3, pacer=ChannelPacer()
        )
    assert info.value.status == 502
    assert channel.messages == []
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.name == "genbot.output"
    assert f"{len(text)} characters" in record.getMessage()
    assert "#general (42)" in record.getMessage()


@pytest.mark.parametrize("error", [http_error(502), asyncio.TimeoutError()])
async def test_a_send_that_failed_after_creating_its_message_is_not_sent_again(
    error: Exception,
) -> None:
    channel = FakeChannel()
    channel.send_failures = [(error, True)]  # Discord created the message, then failed

    async def deltas() -> AsyncIterator[str]:
        yield "Hello"
        await wait_until(lambda: channel.messages)
        yield " world"

    await stream_reply(
        channel, deltas(), reference=FakeReference(), interval=0.01, pacer=ChannelPacer()
    )
    assert channel.contents() == ["Hello world"]
    assert [kind for kind, _ in channel.requests] == ["send", "history", "edit"]
    assert channel.messages[0].reference.message_id == 7


async def test_a_continuation_that_failed_after_being_created_is_not_sent_again() -> None:
    channel = FakeChannel()
    channel.send_failures = [(None, True), (http_error(502), True)]
    text = "".join(f"Sentence number {n} is here. " for n in range(80))
    await stream_reply(
        channel, deltas_of(text), reference=FakeReference(), interval=0.01, pacer=ChannelPacer()
    )
    assert channel.contents() == split_message(text)
    assert [kind for kind, _ in channel.requests] == ["send", "send", "history"]


async def test_a_send_lost_before_discord_created_it_is_sent_again() -> None:
    channel = FakeChannel()
    channel.send_failures = [(http_error(500), False)]
    await stream_reply(channel, deltas_of("Hi"), reference=FakeReference(), interval=0.01)
    assert channel.contents() == ["Hi"]
    assert [kind for kind, _ in channel.requests] == ["send", "history", "send"]
    assert channel.nonces[0] == channel.nonces[1]


async def test_a_placeholder_becomes_the_reply() -> None:
    channel = FakeChannel()
    placeholder = await channel.send(
        "*queued*",
        reference=FakeReference().to_reference(fail_if_not_exists=False),
        allowed_mentions=SAFE_MENTIONS,
    )
    messages = await stream_reply(
        channel,
        deltas_of("The", " answer"),
        reference=FakeReference(),
        placeholder=placeholder,  # type: ignore[arg-type]
        interval=0.01,
        pacer=ChannelPacer(),
    )
    assert channel.contents() == ["The answer"]
    assert messages == [placeholder]


async def test_an_empty_generation_turns_a_placeholder_into_the_note() -> None:
    channel = FakeChannel()
    placeholder = await channel.send("*queued*", allowed_mentions=SAFE_MENTIONS)
    await stream_reply(channel, deltas_of(), placeholder=placeholder, interval=0.01)  # type: ignore[arg-type]
    assert channel.contents() == [EMPTY_NOTE]


async def test_cancelling_stream_reply_closes_the_generation() -> None:
    channel = FakeChannel()
    closed = asyncio.Event()

    async def deltas() -> AsyncIterator[str]:
        try:
            yield "start"
            await asyncio.Event().wait()
        finally:
            closed.set()

    task = asyncio.create_task(stream_reply(channel, deltas(), pacer=ChannelPacer()))
    await wait_until(lambda: channel.messages)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert closed.is_set()
    assert channel.contents() == ["start"]


async def test_typing_takes_only_a_turn_the_budget_can_spare() -> None:
    channel = FakeChannel()
    budget = RequestBudget(rate=1)
    async with budget.turn():  # the budget's only turn is taken
        task = asyncio.create_task(keep_typing(channel, budget))
        await asyncio.sleep(0)
        assert channel.typed == []  # skipped, not queued behind the writes
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    other = RequestBudget(rate=1)
    task = asyncio.create_task(keep_typing(channel, other))
    await wait_until(lambda: channel.typed)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert channel.typed == [0] and other.free() == 0  # it took the spare turn


async def test_a_failing_typing_indicator_does_not_fail_the_reply() -> None:
    channel = FakeChannel()
    channel.typing_fails = True
    await stream_reply(channel, deltas_of("still", " here"), interval=0.01, pacer=ChannelPacer())
    assert channel.contents() == ["still here"]
