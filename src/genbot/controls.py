"""Stop and Regenerate: the buttons of the ready-made bot's replies.

While a reply streams, its last message carries a **Stop** button; once it is done,
**Regenerate**. The decisions are pure functions here (what a button's ``custom_id`` says,
who may press it, the note a stopped reply ends with, which older replies lose their
buttons); :class:`Controls` is the thin wiring a :class:`genbot.chatbot.ChatBot` owns: the
registry of running replies that Stop reaches, and the handlers of a press.

The buttons are persistent: a ``custom_id`` (``genbot:stop:<question id>:<asker id>``,
``genbot:regen:...``) says everything a press needs, and :class:`ControlButton` is a
:class:`discord.ui.DynamicItem` the bot registers in ``setup_hook``, so a reply's buttons
keep working after the bot restarts.

One writer per reply: a reply's messages are written by its first answer, a regeneration or
an edited question's new answer, never by two at once. A Regenerate press while another one
writes or waits, or while an edit's new answer is under way, is refused (:attr:`busy_text`);
an edit of the question supersedes a regeneration (the question changed: the regeneration
would answer the old text): the regeneration is cancelled, or stopped when it already
streams, and the new answer waits for it to end (:meth:`Controls.supersede`). While a
regeneration waits for a model slot its message shows Stop, which cancels it (the old text
stays and Regenerate comes back). Once it has its slot (a long reply's later messages are
deleted then), a Stop before it writes ends it as it starts writing, as a Stop while it
streams does: its first message shows :func:`stopped_suffix` of no text and Regenerate.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import discord

from genbot.output import _CLOSE, ReplyButtons, _unclosed, is_visible

__all__ = [
    "REGENERATE",
    "STOP",
    "Control",
    "ControlButton",
    "Controls",
    "RunningReply",
    "carries_controls",
    "decode",
    "may_press",
    "stale_replies",
    "stopped_suffix",
]

_log = logging.getLogger(__name__)

STOP, REGENERATE = "stop", "regen"
_PATTERN = r"genbot:(?P<action>stop|regen):(?P<question>[0-9]+):(?P<asker>[0-9]+)"
_CUSTOM_ID = re.compile(_PATTERN)
_LABELS = {STOP: "Stop", REGENERATE: "Regenerate"}
_STYLES = {STOP: discord.ButtonStyle.danger, REGENERATE: discord.ButtonStyle.secondary}


@dataclass(frozen=True)
class Control:
    """What one button does: `action` (:data:`STOP` or :data:`REGENERATE`) to the reply to the
    message `question_id`, asked by `asker_id`."""

    action: str
    question_id: int
    asker_id: int

    @property
    def custom_id(self) -> str:
        """The button's ``custom_id`` (at most 100 characters, as Discord requires)."""
        return f"genbot:{self.action}:{self.question_id}:{self.asker_id}"

    @property
    def label(self) -> str:
        return _LABELS[self.action]


def decode(custom_id: str) -> Control | None:
    """The :class:`Control` a ``custom_id`` encodes, or ``None`` when it is not one of ours."""
    match = _CUSTOM_ID.fullmatch(custom_id)
    if match is None:
        return None
    return Control(match["action"], int(match["question"]), int(match["asker"]))


def may_press(presser_id: int, control: Control, *, admin: bool) -> bool:
    """Whether the user `presser_id` may press `control`: the asker or an admin."""
    return admin or presser_id == control.asker_id


#: The note (in italics) a stopped reply ends with.
STOPPED_TEXT = "Stopped."


def stopped_suffix(text: str, note: str = STOPPED_TEXT) -> str:
    """What to append to a reply's `text` so far when it is stopped: the note in italics,
    after a closing fence when the text stops inside a code block."""
    if not is_visible(text):
        return f"*{note}*"
    closing = _CLOSE if _unclosed(text) else ""
    return f"{closing}\n\n*{note}*"


def carries_controls(components: Iterable[Any]) -> bool:
    """Whether a message's components (discord.py's ``Message.components``) include one of
    our buttons."""
    for row in components:
        for child in getattr(row, "children", [row]):
            custom_id = getattr(child, "custom_id", None)
            if isinstance(custom_id, str) and decode(custom_id) is not None:
                return True
    return False


def stale_replies(
    history: Iterable[discord.Message], me_id: int, keep: Iterable[int] = ()
) -> list[discord.Message]:
    """The bot's messages in `history` that still show our buttons, but for those in `keep`:
    they are no longer the latest answer once a new reply starts, and lose their buttons.
    Usually one message (the previous reply); after a restart, whatever the context shows."""
    kept = set(keep)
    return [
        message
        for message in history
        if message.author.id == me_id
        and message.id not in kept
        and carries_controls(message.components)
    ]


# --------------------------------------------------------------------------------------------
# The running replies Stop reaches


class _Closable(Protocol):
    def close(self) -> None: ...


class RunningReply:
    """The deltas of one reply, stoppable: :meth:`stop` ends them at once (the model's stream
    is closed, so its slot is free) and the reply ends with :func:`stopped_suffix`.

    Iterate it in place of the deltas; closing it (``aclose``, as :func:`stream_reply` does)
    closes the deltas and takes it out of the registry (`forget`).
    """

    def __init__(
        self,
        question_id: int,
        stream: _Closable,
        deltas: AsyncIterable[Any],
        forget: Callable[[RunningReply], None],
    ) -> None:
        self.question_id = question_id
        self._stream = stream
        self._inner = aiter(deltas)
        self._forget = forget
        self._stopped = False
        self._marked = False
        self._parts: list[str] = []
        # The task reading a delta now (inside __anext__), which stop() interrupts. The read
        # runs in the reader's own task: no task per delta to race a stop against.
        self._reader: asyncio.Task[Any] | None = None
        self._interrupted = False

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        """End the reply now: close the model's stream (its slot frees at once), and interrupt
        a read under way (a tool call, a wait for the model)."""
        self._stopped = True
        self._stream.close()
        reader = self._reader
        if reader is not None and reader is not _current_task() and not self._interrupted:
            self._interrupted = True
            reader.cancel()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._stopped:
            return self._mark()
        self._reader = asyncio.current_task()
        try:
            delta = await self._inner.__anext__()
        except asyncio.CancelledError:
            if not self._interrupted:  # a cancel from elsewhere
                raise
            _uncancel(self._reader)
            return self._mark()
        except StopAsyncIteration:
            raise
        except Exception:
            if self.stopped:  # closing the stream fails the read: that is the stop
                return self._mark()
            raise
        finally:
            self._reader = None
        if isinstance(delta, str):
            self._parts.append(delta)
        return delta

    def _mark(self) -> str:
        if self._marked:
            raise StopAsyncIteration
        self._marked = True
        _log.info("a reply was stopped by a button press")
        return stopped_suffix("".join(self._parts))

    async def aclose(self) -> None:
        self._forget(self)
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _uncancel(task: asyncio.Task[Any] | None) -> None:
    """Undo the cancel that :meth:`RunningReply.stop` made (Python 3.11+ counts them)."""
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()


# --------------------------------------------------------------------------------------------
# The Discord wiring


class _Bot(Protocol):
    """What :class:`Controls` needs of its bot (a :class:`genbot.chatbot.ChatBot`)."""

    @property
    def user(self) -> discord.ClientUser | None: ...

    def is_admin(self, user: discord.abc.User) -> bool: ...

    async def regenerate(
        self,
        channel: discord.abc.Messageable,
        question: discord.Message,
        reply: list[discord.Message],
        *,
        presser: discord.abc.User | None = None,
        notify: Callable[[str], Awaitable[object]] | None = None,
        on_slot: Callable[[], object] | None = None,
    ) -> None: ...


class ControlButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=_PATTERN):
    """A Stop or Regenerate button; persistent (its ``custom_id`` says what it does)."""

    def __init__(self, control: Control) -> None:
        super().__init__(
            discord.ui.Button(
                label=control.label, style=_STYLES[control.action], custom_id=control.custom_id
            )
        )
        self.control = control

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
    ) -> ControlButton:
        return cls(Control(match["action"], int(match["question"]), int(match["asker"])))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        controls = getattr(interaction.client, "controls", None)
        if isinstance(controls, Controls):
            await controls.press(interaction, self.control)


def view_of(control: Control) -> discord.ui.View:
    """A view with the one button `control`."""
    view = discord.ui.View(timeout=None)
    view.add_item(ControlButton(control))
    return view


class Controls:
    """The buttons of one bot's replies: the views to attach, the registry of running replies
    (question id -> :class:`RunningReply`) that Stop reaches, and the press handlers.

    Parameters
    ----------
    bot: the bot whose replies carry the buttons.
    """

    #: What someone other than the asker or an admin is told (ephemerally).
    refused_text = "Only the person who asked, or an admin, can use these buttons."
    #: What a Stop press on a reply that is no longer being written is told.
    done_text = "This reply is already done."
    #: What a Regenerate press on a reply that is still being written is told.
    busy_text = "This reply is still being written; stop it first."
    #: What a press on a reply whose question is gone is told.
    gone_text = "The question of this reply is gone, so it cannot be answered again."
    #: Seconds a Regenerate press waits for the previous regeneration's bookkeeping (its new
    #: text and Regenerate button already show) before it is told the reply is busy.
    finish_timeout = 2.0

    def __init__(self, bot: _Bot) -> None:
        self.bot = bot
        self.running: dict[int, RunningReply] = {}
        #: The regenerations under way (question id -> the press's task), running or waiting.
        self.regenerating: dict[int, asyncio.Task[Any]] = {}
        #: The questions an edit is answering again (see :meth:`claim`).
        self.reanswering: set[int] = set()
        # question id -> replies tracked since its regeneration began (only while one is
        # under way: an entry per answered question would grow for as long as the bot runs)
        self._started: dict[int, int] = {}
        # question id -> whether Stop was pressed, for a regeneration that has its model slot
        # but is not tracked yet (between the two, Stop must not cancel it: see _stop)
        self._slotted: dict[int, bool] = {}
        # question id -> replies tracked since an edit's new answer claimed it (only while the
        # claim lasts), and an event set at its release
        self._reanswered: dict[int, int] = {}
        self._released: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[
            str, Callable[[discord.Interaction[Any], Control], Awaitable[None]]
        ] = {STOP: self._stop, REGENERATE: self._regenerate}

    def buttons(self, question: discord.Message) -> ReplyButtons:
        """The buttons of the reply to `question`: Stop while it streams, then Regenerate."""
        asker = question.author.id
        return ReplyButtons(
            streaming=view_of(Control(STOP, question.id, asker)),
            done=view_of(Control(REGENERATE, question.id, asker)),
        )

    def track(
        self, question: discord.Message, stream: _Closable, deltas: AsyncIterable[Any]
    ) -> RunningReply:
        """Register the reply to `question` as running (until its deltas are closed)."""
        running = RunningReply(question.id, stream, deltas, self._forget)
        self.running[question.id] = running
        if self._slotted.pop(question.id, False):  # Stop came while it had its slot
            running.stop()
        if question.id in self._started:  # a regeneration is under way: it writes now
            self._started[question.id] += 1
        if question.id in self._reanswered:  # an edit's new answer is under way
            self._reanswered[question.id] += 1
        return running

    def busy(self, question_id: int) -> bool:
        """Whether the reply to `question_id` has a writer now (a reply, a regeneration or an
        edit's new answer), running or waiting for a model slot.

        Parameters
        ----------
        question_id: the question whose reply is asked about.
        """
        return (
            question_id in self.running
            or question_id in self.regenerating
            or question_id in self.reanswering
        )

    async def supersede(self, question_id: int, timeout: float = 30.0) -> None:
        """End a regeneration of the reply to `question_id`, if one is under way, and wait
        (at most `timeout` seconds, then log) until it has stopped writing: an edit of the
        question answers it again instead. A waiting regeneration is cancelled; a streaming one
        is stopped (:meth:`RunningReply.stop`).

        Parameters
        ----------
        question_id: the edited question.
        timeout: the most seconds to wait for the regeneration to end.
        """
        task = self.regenerating.get(question_id)
        if task is None or task is asyncio.current_task():
            return
        running = self.running.get(question_id)
        if running is not None:
            running.stop()
        else:
            task.cancel()
        _log.info("an edit of the question supersedes the regeneration of its reply")
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            _log.warning("a superseded regeneration did not end within %.0f s", timeout)

    def claim(self, question_id: int) -> None:
        """Mark the reply to `question_id` as being answered again after an edit (until
        :meth:`release`): a Regenerate press meanwhile is told it is busy.

        Parameters
        ----------
        question_id: the edited question.
        """
        self.reanswering.add(question_id)
        self._reanswered[question_id] = 0
        self._released[question_id] = asyncio.Event()

    def release(self, question_id: int | None) -> None:
        """End a :meth:`claim`.

        Parameters
        ----------
        question_id: the question claimed; ``None``: nothing was claimed.
        """
        if question_id is not None:
            self.reanswering.discard(question_id)
            self._reanswered.pop(question_id, None)
            released = self._released.pop(question_id, None)
            if released is not None:
                released.set()

    def _written(self, question_id: int, writes: dict[int, int], other: Container[int]) -> bool:
        """Whether a writer of the reply to `question_id` (a regeneration: `writes` is
        ``_started``; an edit's new answer: ``_reanswered``) has written its text (its
        Regenerate button shows again) and only finishes its bookkeeping; `other`: the other
        kind of writer."""
        return (
            writes.get(question_id, 0) > 0
            and question_id not in self.running
            and question_id not in other
        )

    async def _let_finish(self, question_id: int) -> None:
        """Wait (at most :attr:`finish_timeout`) for the bookkeeping of a regeneration or an
        edit's new answer of the reply to `question_id` whose text already shows."""
        waits: set[asyncio.Future[Any]] = set()
        earlier = self.regenerating.get(question_id)
        if earlier is not None and self._written(question_id, self._started, self.reanswering):
            waits.add(earlier)
        released = self._released.get(question_id)
        if released is not None and self._written(question_id, self._reanswered, self.regenerating):
            waits.add(asyncio.ensure_future(released.wait()))
        if not waits:
            return
        await asyncio.wait(waits, timeout=self.finish_timeout)
        for waited in waits - {earlier}:
            waited.cancel()

    def _forget(self, running: RunningReply) -> None:
        if self.running.get(running.question_id) is running:
            del self.running[running.question_id]

    def retire(self, history: Iterable[discord.Message], keep: Iterable[int] = ()) -> None:
        """Remove the buttons of the bot's older replies in `history` (see
        :func:`stale_replies`), in the background: one edit per such message."""
        if self.bot.user is None:
            return
        for message in stale_replies(history, self.bot.user.id, keep):
            task = asyncio.create_task(_strip(message), name="genbot: remove old buttons")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def press(self, interaction: discord.Interaction[Any], control: Control) -> None:
        """Handle a press of `control`: refused ephemerally unless by the asker or an admin."""
        if not may_press(interaction.user.id, control, admin=self.bot.is_admin(interaction.user)):
            _log.info("%s pressed %s of someone else's reply: refused", interaction.user, control)
            await interaction.response.send_message(self.refused_text, ephemeral=True)
            return
        await self._handlers[control.action](interaction, control)

    async def _stop(self, interaction: discord.Interaction[Any], control: Control) -> None:
        running = self.running.get(control.question_id)
        waiting = self.regenerating.get(control.question_id)
        # a regeneration waiting for a slot (not one that wrote and now ends its last edit)
        if running is None and waiting is not None and not self._started.get(control.question_id):
            self._stop_unwritten(control.question_id, waiting)
            await interaction.response.defer()
            return
        if running is None or running.stopped:
            await interaction.response.send_message(self.done_text, ephemeral=True)
            return
        running.stop()
        await interaction.response.defer()  # the reply's own final edit shows the stop

    def _stop_unwritten(self, question_id: int, task: asyncio.Task[Any]) -> None:
        """Stop a regeneration that has not written: one waiting for a model slot is cancelled
        (the old text stays; its task puts Regenerate back); one that has its slot (a long
        reply's later messages are deleted by then) stops as it starts writing, as a streaming
        one does (its first message shows the note and Regenerate)."""
        if question_id in self._slotted:
            _log.info("a regeneration that has its model slot is stopped before it writes")
            self._slotted[question_id] = True
            return
        _log.info("a regeneration that waited for a model slot is cancelled")
        task.cancel()

    async def _regenerate(self, interaction: discord.Interaction[Any], control: Control) -> None:
        question_id = control.question_id
        task = asyncio.current_task()
        await self._let_finish(question_id)  # a sample that shows Regenerate is not busy
        if self.busy(question_id) or task is None:
            await interaction.response.send_message(self.busy_text, ephemeral=True)
            return
        self.regenerating[question_id] = task  # a second press meanwhile is told it is busy
        self._started[question_id] = 0
        try:
            await self._answer_again(interaction, control)
        finally:
            if self.regenerating.get(question_id) is task:
                del self.regenerating[question_id]
                self._started.pop(question_id, None)
                self._slotted.pop(question_id, None)

    async def _answer_again(self, interaction: discord.Interaction[Any], control: Control) -> None:
        pressed, channel = interaction.message, interaction.channel
        if pressed is None or not isinstance(channel, discord.abc.Messageable):
            return
        question = await _question_of(pressed, channel, control.question_id)
        if question is None:
            await interaction.response.send_message(self.gone_text, ephemeral=True)
            return
        # Stop shows while it waits for a model slot (a press cancels the regeneration)
        stop = Control(STOP, control.question_id, control.asker_id)
        started = self._started.get(control.question_id, 0)
        reply = [pressed]  # the reply's messages, first first (once looked up)
        restored = False

        def slotted() -> None:  # the later messages are deleted now, and Stop must not cancel
            self._slotted.setdefault(control.question_id, False)

        async def privately(text: str) -> None:  # a refusal (rate limit, quota): to the presser
            nonlocal restored
            await _restore(control, pressed)  # Regenerate is back before the notice shows
            restored = True
            await interaction.followup.send(text, ephemeral=True)

        try:  # a Stop may cancel it from the moment Stop shows, before edit_message returns
            await interaction.response.edit_message(view=view_of(stop))
            reply = await _reply_of(pressed, channel, control.question_id)
            # the presser pays (their rate limit and quota): the asker, or an admin (exempt)
            await self.bot.regenerate(
                channel,
                question,
                reply,
                presser=interaction.user,
                notify=privately,
                on_slot=slotted,
            )
        finally:
            if not restored and self._started.get(control.question_id, 0) == started:
                # it wrote nothing; a long reply's later messages may be deleted by now (it had
                # its slot, or gave up waiting for one), its first one stays
                await _restore(control, pressed, reply[0])


async def _restore(control: Control, *messages: discord.Message) -> None:
    """Put the Regenerate button back on a reply whose regeneration ended before it wrote: on
    the first of `messages` that is not deleted."""
    for message in messages:
        try:
            await message.edit(view=view_of(control))
            return
        except discord.NotFound:  # deleted (a long reply's later message): the next one
            continue
        except Exception as exc:  # a Stop left behind answers that the reply is done
            _log.warning("putting the Regenerate button back failed: %r", exc)
            return
    _log.warning("putting the Regenerate button back failed: the reply's messages are gone")


async def _strip(message: discord.Message) -> None:
    try:
        await message.edit(view=None)
    except Exception as exc:  # a leftover button is harmless: a press is checked anyway
        _log.warning("removing the buttons of an older reply failed: %r", exc)


async def _question_of(
    pressed: discord.Message, channel: discord.abc.Messageable, question_id: int
) -> discord.Message | None:
    """The question a reply answers: from the reference when Discord sent it along, else
    fetched (one request); ``None`` when it was deleted."""
    reference = pressed.reference
    if reference is not None and reference.message_id == question_id:
        if isinstance(reference.resolved, discord.Message):
            return reference.resolved
    try:
        return await channel.fetch_message(question_id)
    except discord.NotFound:
        pass
    # a thread opened from a message (thread mode) has its id; the message is in the parent
    if not isinstance(channel, discord.Thread) or channel.id != question_id:
        return None
    parent = channel.parent
    if not isinstance(parent, discord.abc.Messageable):
        return None
    try:
        return await parent.fetch_message(question_id)
    except discord.NotFound:
        return None


#: How many messages back a long reply's first message is looked for.
_REPLY_LOOKBACK = 20


async def _reply_of(
    pressed: discord.Message, channel: discord.abc.Messageable, question_id: int
) -> list[discord.Message]:
    """The messages of the reply whose last message is `pressed`, first first: just
    `pressed` when it replies to the question itself, else the bot's messages back to the one
    that does (a reply longer than one message)."""
    reference = pressed.reference
    if reference is not None and reference.message_id == question_id:
        return [pressed]
    reply = [pressed]
    async for message in channel.history(limit=_REPLY_LOOKBACK, before=pressed):
        if message.id <= question_id or not _part_of(message, pressed):
            break
        reply.insert(0, message)
        if message.reference is not None and message.reference.message_id == question_id:
            break
    return reply


def _part_of(message: discord.Message, pressed: discord.Message) -> bool:
    """Whether `message` may be an earlier part of the reply ending with `pressed`: the bot's,
    and not a system message (e.g. the THREAD_STARTER_MESSAGE of a thread the bot opened)."""
    return message.author.id == pressed.author.id and message.type in _REPLY_TYPES


_REPLY_TYPES = (discord.MessageType.default, discord.MessageType.reply)
