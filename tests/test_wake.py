"""The default wake rules and the `channels` allow/block list, as pure functions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from genbot.access import AccessList
from genbot.wake import Incoming, WakeRules, is_ignored

BOT, USER, OTHER_BOT = 1, 2, 3
CHAN, THREAD, OTHER_CHAN = 100, 101, 102

plain = Incoming(
    author_id=USER, author_is_bot=False, content="hi", chat=True, place="channel", channel_id=CHAN
)
dm = replace(plain, place="dm", channel_id=200)
thread = replace(plain, place="thread", channel_id=THREAD, parent_id=CHAN)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (plain, False),
        (replace(plain, mentions_bot=True), True),
        (replace(plain, replies_to_bot=True), True),
        (dm, True),
        (thread, False),
        (replace(thread, bot_in_thread=True), True),
        (replace(thread, mentions_bot=True), True),
        (replace(dm, author_id=BOT), False),
        (replace(dm, author_id=OTHER_BOT, author_is_bot=True), False),
        (replace(dm, content="!not for you"), False),
        (replace(plain, mentions_bot=True, content="!psst"), False),
        (replace(dm, chat=False), False),
        (replace(dm, content=""), True),
    ],
)
def test_defaults(message: Incoming, expected: bool) -> None:
    assert WakeRules().wakes(message, BOT) is expected


def test_allow_bots_but_never_itself() -> None:
    rules = WakeRules(allow_bots=True)
    assert rules.wakes(replace(dm, author_id=OTHER_BOT, author_is_bot=True), BOT)
    assert not rules.wakes(replace(dm, author_id=BOT, author_is_bot=True), BOT)


def test_ignore_prefix_configurable() -> None:
    assert WakeRules(ignore_prefix="//").wakes(replace(dm, content="!bang"), BOT)
    assert not WakeRules(ignore_prefix="//").wakes(replace(dm, content="// note"), BOT)
    assert WakeRules(ignore_prefix=None).wakes(replace(dm, content="!bang"), BOT)
    assert not is_ignored("hi", "") and is_ignored("!x", "!")


def test_channel_whitelist_listens_to_every_message_there() -> None:
    rules = WakeRules(channels=AccessList(whitelist=frozenset({CHAN})))
    assert rules.wakes(plain, BOT)
    assert rules.wakes(thread, BOT)  # threads under a listed channel too
    assert not rules.wakes(replace(plain, channel_id=OTHER_CHAN), BOT)
    assert rules.wakes(replace(plain, channel_id=OTHER_CHAN, mentions_bot=True), BOT)
    assert rules.wakes(dm, BOT)


def test_channel_blacklist_silences_even_mentions() -> None:
    rules = WakeRules(channels=AccessList(blacklist=frozenset({CHAN, 200})))
    assert not rules.wakes(replace(plain, mentions_bot=True), BOT)
    assert not rules.wakes(replace(thread, bot_in_thread=True), BOT)
    assert not rules.wakes(dm, BOT)
    assert rules.wakes(replace(plain, channel_id=OTHER_CHAN, mentions_bot=True), BOT)
