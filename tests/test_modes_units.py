"""The pure decisions behind the ways to converse: thread names, when an edit is answered again,
and which message is a message's parent in a reply chain."""

from __future__ import annotations

import datetime

import pytest

from genbot.chains import Link, parent
from genbot.modes import opens_thread, reanswer_due, thread_name
from genbot.settings import Settings, SettingsError

BOT = 1
ALICE = 2
BOB = 3
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


# -- thread names ----------------------------------------------------------------------------------


def test_a_thread_is_named_after_the_question_without_mentions() -> None:
    assert thread_name("<@123>  what is\n a <#456> thread?", "alice") == "what is a thread?"


def test_a_question_of_only_mentions_names_the_thread_after_its_author() -> None:
    assert thread_name("<@!123> <@&9>", "alice") == "Chat with alice"


def test_a_long_question_is_cut_to_discords_limit_with_an_ellipsis() -> None:
    name = thread_name("word " * 60, "alice")
    assert len(name) == 100 and name.endswith("\u2026")


def test_reply_mode_reply_never_opens_threads() -> None:
    assert not opens_thread("reply", object())
    assert not opens_thread("thread", object())  # not a text channel: a DM, a thread


# -- re-answering ---------------------------------------------------------------------------------


def due(**changes: object) -> bool:
    values: dict[str, object] = {
        "window": 600.0,
        "old_content": "old",
        "new_content": "new",
        "created": at(0),
        "edited": at(30),
        "answered": at(5),
    }
    values.update(changes)
    return reanswer_due(**values)  # type: ignore[arg-type]


def test_an_edit_within_the_window_is_answered_again() -> None:
    assert due()


@pytest.mark.parametrize(
    "changes",
    [
        {"edited": at(601)},  # outside the window
        {"window": 0.0},  # off
        {"old_content": "new"},  # the text did not change: a link preview, a pin, a thread
        {"edited": None},  # never edited
        {"old_content": None, "edited": at(4)},  # not cached, and older than the answer
    ],
)
def test_updates_that_are_no_fresh_edit_are_not_answered_again(changes: dict[str, object]) -> None:
    assert not due(**changes)


def test_an_uncached_edit_newer_than_the_answer_is_answered_again() -> None:
    assert due(old_content=None, edited=at(6))


# -- reply chains ---------------------------------------------------------------------------------


def test_a_reply_continues_from_what_it_replies_to() -> None:
    assert parent(Link(10, ALICE, reply_to=4), Link(9, BOB), BOT, conversation=False) == 4


def test_a_long_reply_continues_from_its_previous_part() -> None:
    assert parent(Link(10, BOT), Link(9, BOT, reply_to=8), BOT, conversation=False) == 9
    assert parent(Link(10, BOT), Link(9, ALICE), BOT, conversation=False) is None


def test_a_question_in_several_messages_is_one_chain() -> None:
    assert parent(Link(10, ALICE), Link(9, ALICE), BOT, conversation=False) == 9
    assert parent(Link(10, ALICE), Link(9, BOB), BOT, conversation=False) is None


def test_a_mention_starts_a_new_chain() -> None:
    assert parent(Link(10, ALICE, mentions_bot=True), Link(9, ALICE), BOT, False) is None


def test_in_a_dm_or_thread_the_conversation_goes_on_without_replies() -> None:
    assert parent(Link(10, ALICE), Link(9, BOT), BOT, conversation=True) == 9
    assert parent(Link(10, ALICE), Link(9, BOT), BOT, conversation=False) is None


def test_the_first_message_of_a_channel_has_no_parent() -> None:
    assert parent(Link(10, ALICE), None, BOT, conversation=True) is None


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("reply_mode", "threads"), ("context_mode", "chain"), ("reanswer_window", -1)],
)
def test_bad_mode_settings_are_refused_at_load(key: str, value: object) -> None:
    with pytest.raises(SettingsError, match=key):
        Settings().updated({key: value}, "test")


def test_the_defaults_converse_as_before() -> None:
    settings = Settings()
    assert (settings.reply_mode, settings.context_mode) == ("reply", "history")
    assert settings.reanswer_window == 600.0
