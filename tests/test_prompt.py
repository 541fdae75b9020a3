"""Pure tests of genbot.prompt on message stand-ins (the attributes the module reads)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import discord
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genbot.models.base import prepare_messages
from genbot.prompt import context_to_messages, conversation_order, embed_label

BOT = SimpleNamespace(id=1, display_name="Genbot")
ALICE = SimpleNamespace(id=2, display_name="Alice")
BOB = SimpleNamespace(id=3, display_name="Bob the Builder")
_ids = itertools.count(100)


def msg(
    author: SimpleNamespace,
    text: str,
    attachments: tuple[str, ...] = (),
    reply_to: SimpleNamespace | None = None,
    stickers: tuple[str, ...] = (),
    embeds: tuple[dict[str, object], ...] = (),
) -> SimpleNamespace:
    return SimpleNamespace(
        id=next(_ids),
        author=author,
        clean_content=text,
        attachments=[SimpleNamespace(filename=name) for name in attachments],
        stickers=[SimpleNamespace(name=name) for name in stickers],
        embeds=[discord.Embed.from_dict(data) for data in embeds],
        reference=SimpleNamespace(message_id=reply_to.id) if reply_to else None,
    )


def test_a_reply_follows_the_message_it_answers_even_when_others_came_between() -> None:
    question = msg(ALICE, "what is 2+2?")
    meanwhile = [msg(BOB, "and 3+3?"), msg(ALICE, "also 4+4")]
    reply = msg(BOT, "2+2 is 4", reply_to=question)
    continued = msg(BOT, "(continued)")
    newer = msg(BOB, "thanks")
    history = [question, *meanwhile, reply, continued, newer]
    assert [m.clean_content for m in conversation_order(reversed(history), BOT)] == [
        "what is 2+2?",
        "2+2 is 4",
        "(continued)",
        "and 3+3?",
        "also 4+4",
        "thanks",
    ]
    chat = context_to_messages(history, BOT)
    assert chat[-1] == {
        "role": "user",
        "content": "Bob the Builder: and 3+3?\nAlice: also 4+4\nBob the Builder: thanks",
    }


def test_a_reply_to_a_message_outside_the_window_stays_in_time_order() -> None:
    gone = msg(ALICE, "old question")
    late = msg(BOB, "hello")
    reply = msg(BOT, "old answer", reply_to=gone)
    assert [m.clean_content for m in conversation_order([reply, late], BOT)] == [
        "hello",
        "old answer",
    ]


def test_roles_names_and_order() -> None:
    history = [msg(ALICE, "hi @Genbot"), msg(BOT, "Hello Alice!"), msg(BOB, "and me?")]
    chat = context_to_messages(reversed(history), BOT, system_prompt="Be brief.")
    assert chat == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Alice: hi @Genbot"},
        {"role": "assistant", "content": "Hello Alice!"},
        {"role": "user", "content": "Bob the Builder: and me?"},
    ]


def test_consecutive_turns_of_one_role_merge() -> None:
    history = [
        msg(ALICE, "one"),
        msg(ALICE, "two"),
        msg(BOT, "part 1"),
        msg(BOT, "part 2"),
        msg(ALICE, "three"),
        msg(BOB, "four"),
    ]
    assert context_to_messages(history, BOT) == [
        {"role": "user", "content": "Alice: one\nAlice: two"},
        {"role": "assistant", "content": "part 1\npart 2"},
        {"role": "user", "content": "Alice: three\nBob the Builder: four"},
    ]


def test_attachments_show_and_empty_messages_are_skipped() -> None:
    history = [msg(ALICE, "", ("cat.png",)), msg(ALICE, "  "), msg(ALICE, "look", ("a.txt",))]
    assert [m["content"] for m in context_to_messages(history, BOT)] == [
        "Alice: [attachment: cat.png]\nAlice: look\n[attachment: a.txt]"
    ]


def test_a_message_of_only_a_sticker_or_an_embed_is_a_turn_for_the_model() -> None:
    history = [
        msg(ALICE, "", stickers=("Wave",)),
        msg(BOT, "Hi Alice!"),
        msg(BOB, "", embeds=({"title": "Weekly   report", "description": "All green"},)),
        msg(BOB, "", embeds=({"description": "\n  First line\nsecond"}, {"type": "image"})),
        msg(ALICE, "see", embeds=({"url": "https://example.com/x"},)),
    ]
    assert context_to_messages(history, BOT) == [
        {"role": "user", "content": "Alice: [sticker: Wave]"},
        {"role": "assistant", "content": "Hi Alice!"},
        {
            "role": "user",
            "content": "Bob the Builder: [embed: Weekly report]\n"
            "Bob the Builder: [embed: First line]\n[embed: image]\n"
            "Alice: see\n[embed: https://example.com/x]",
        },
    ]


def test_an_embed_label_is_bounded() -> None:
    label = embed_label(discord.Embed(title="x" * 500))
    assert len(label) == 100 and label.endswith("\u2026")


def test_no_name_field_so_backends_do_not_prefix_twice() -> None:
    user = SimpleNamespace(id=9, display_name="\u0416\u0435\u043d\u044f")
    chat = context_to_messages([msg(user, "hi")], BOT)
    assert chat == [{"role": "user", "content": "\u0416\u0435\u043d\u044f: hi"}]
    assert prepare_messages(chat) == chat


def test_char_budget_keeps_the_newest_whole_messages() -> None:
    history = [msg(ALICE, "a" * 50), msg(BOT, "b" * 30), msg(ALICE, "c" * 10)]
    chat = context_to_messages(history, BOT, max_chars=60, system_prompt="s" * 500)
    assert chat == [
        {"role": "system", "content": "s" * 500},
        {"role": "assistant", "content": "b" * 30},
        {"role": "user", "content": "Alice: " + "c" * 10},
    ]


def test_budget_leaves_no_hole_for_a_small_older_message() -> None:
    history = [msg(ALICE, "old"), msg(BOB, "x" * 100), msg(ALICE, "new")]
    assert [m["content"] for m in context_to_messages(history, BOT, max_chars=50)] == ["Alice: new"]


def test_only_a_single_overlong_newest_message_is_cut_keeping_its_end() -> None:
    history = [msg(ALICE, "older"), msg(BOT, "start " + "x" * 100 + " the end")]
    chat = context_to_messages(history, BOT, max_chars=20)
    assert chat == [{"role": "assistant", "content": "\u2026" + ("x" * 100 + " the end")[-19:]}]


def test_token_budget_with_a_counter() -> None:
    def words(text: str) -> int:
        return len(text.split())

    history = [msg(ALICE, "one two three"), msg(BOT, "four five"), msg(ALICE, "six")]
    chat = context_to_messages(history, BOT, max_chars=None, max_tokens=5, count_tokens=words)
    assert [m["content"] for m in chat] == ["four five", "Alice: six"]
    chat = context_to_messages([msg(BOT, "a b c d e f g")], BOT, max_tokens=3, count_tokens=words)
    assert chat == [{"role": "assistant", "content": "\u2026e f g"}]


def test_max_tokens_needs_a_counter() -> None:
    with pytest.raises(ValueError, match="count_tokens"):
        context_to_messages([], BOT, max_tokens=10)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([BOT, ALICE, BOB]),
            st.text(st.characters(exclude_characters="\n"), max_size=40),
        ),
        max_size=20,
    ),
    st.integers(min_value=0, max_value=200),
)
def test_budget_properties(entries: list[tuple[SimpleNamespace, str]], budget: int) -> None:
    history = [msg(author, text) for author, text in entries]
    chat = context_to_messages(history, BOT, max_chars=budget)
    assert all(a["role"] != b["role"] for a, b in itertools.pairwise(chat))
    rendered = [
        text.strip() if author is BOT else f"{author.display_name}: {text.strip()}"
        for author, text in entries
        if text.strip()
    ]
    lines = [line for m in chat for line in m["content"].split("\n")]
    assert sum(map(len, lines)) <= budget
    if lines and lines[0].startswith("\u2026"):  # the newest message alone, cut
        assert len(lines) == 1 and len(rendered[-1]) > budget
        assert rendered[-1].endswith(lines[0][1:])
        return
    # the newest messages, whole, oldest first, and as many as fit
    assert lines == rendered[len(rendered) - len(lines) :]
    if len(lines) < len(rendered):
        assert len(rendered[-len(lines) - 1]) > budget - sum(map(len, lines))
    if rendered and budget >= 2:
        assert lines
