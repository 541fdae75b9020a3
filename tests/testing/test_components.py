"""Buttons on the loopback server: a discord.py View sends its components as Discord stores
them, bad components are refused as Discord does, and a user's press reaches the bot as a
MESSAGE_COMPONENT interaction whose answers (ephemeral reply, update, deferred update and a
later edit) land where Discord puts them."""

from __future__ import annotations

import asyncio
from typing import Any

import discord
import pytest
from loopback_world import Recorder, World

from genbot.testing import run_bot


class Buttons(discord.ui.View):
    """One button per way of answering a press."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Whisper", custom_id="t:whisper")
    async def whisper(
        self, interaction: discord.Interaction, button: discord.ui.Button[Any]
    ) -> None:
        await interaction.response.send_message(f"only for {interaction.user.name}", ephemeral=True)

    @discord.ui.button(label="Update", custom_id="t:update", style=discord.ButtonStyle.danger)
    async def update(
        self, interaction: discord.Interaction, button: discord.ui.Button[Any]
    ) -> None:
        await interaction.response.edit_message(content="updated", view=None)

    @discord.ui.button(label="Later", custom_id="t:later")
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.defer()  # DEFERRED_UPDATE_MESSAGE
        await interaction.edit_original_response(content="edited later")


class ButtonBot(Recorder):
    async def setup_hook(self) -> None:
        self.add_view(Buttons())


async def _send_with_buttons(world: World, bot: ButtonBot) -> dict[str, Any]:
    channel = bot.get_channel(world.channel.id)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("pick one", view=Buttons())
    return world.server.message(world.channel, sent.id)


async def test_buttons_are_stored_as_action_rows(world: World) -> None:
    bot = ButtonBot()
    async with run_bot(bot, world.server):
        message = await _send_with_buttons(world, bot)
    (row,) = message["components"]
    assert row["type"] == 1
    assert [(b["type"], b["custom_id"], b["label"]) for b in row["components"]] == [
        (2, "t:whisper", "Whisper"),
        (2, "t:update", "Update"),
        (2, "t:later", "Later"),
    ]
    assert world.server.buttons(world.channel, message["id"]) == ["Whisper", "Update", "Later"]


async def test_a_press_answered_ephemerally_is_seen_only_by_the_presser(world: World) -> None:
    server = world.server
    bot = ButtonBot()
    async with run_bot(bot, server):
        message = await _send_with_buttons(world, bot)
        before = len(server.messages(world.channel))
        press = await server.press(world.channel, message["id"], "t:whisper", world.bob)
        assert press.payload["type"] == 3
        assert press.payload["data"] == {"custom_id": "t:whisper", "component_type": 2}
        assert press.payload["message"]["id"] == message["id"]
        assert press.payload["member"]["user"]["id"] == str(world.bob.id)
        response = await press.wait_response()
    assert (response["type"], response["ephemeral"]) == (4, True)
    assert response["content"] == "only for bob"
    assert response["message"]["interaction_metadata"]["interacted_message_id"] == message["id"]
    assert len(server.messages(world.channel)) == before  # nobody else sees it


async def test_update_message_edits_the_pressed_message(world: World) -> None:
    server = world.server
    bot = ButtonBot()
    async with run_bot(bot, server):
        message = await _send_with_buttons(world, bot)
        # the client sees the edit as a MESSAGE_UPDATE
        seen = asyncio.ensure_future(
            bot.wait_for(
                "raw_message_edit", check=lambda e: e.message_id == int(message["id"]), timeout=5
            )
        )
        press = await server.press(world.channel, message["id"], "t:update", world.alice)
        response = await press.wait_response()
        edited = await seen
    assert response["type"] == 7 and response["message"]["id"] == message["id"]
    stored = server.message(world.channel, message["id"])
    assert stored["content"] == "updated" and stored["components"] == []
    assert edited.data["content"] == "updated"


async def test_a_deferred_update_then_an_edit_of_the_original(world: World) -> None:
    server = world.server
    bot = ButtonBot()
    async with run_bot(bot, server):
        message = await _send_with_buttons(world, bot)
        press = await server.press(world.channel, message["id"], "t:later", world.alice)
        deferred = await press.wait_response()
        edit = await press.wait_response(index=1)
    assert (deferred["type"], deferred["message"]) == (6, None)
    assert edit["kind"] == "edit" and edit["message"]["id"] == message["id"]
    assert server.message(world.channel, message["id"])["content"] == "edited later"


async def test_a_button_that_is_not_shown_cannot_be_pressed(world: World) -> None:
    server = world.server
    bot = ButtonBot()
    async with run_bot(bot, server):
        message = await _send_with_buttons(world, bot)
        with pytest.raises(LookupError, match="no button"):
            await server.press(world.channel, message["id"], "t:nope", world.alice)


@pytest.mark.parametrize(
    ("components", "field"),
    [
        ([{"type": 2, "style": 1, "label": "x", "custom_id": "a"}], "components.0.type"),
        ([{"type": 1, "components": []}], "components.0.components"),
        (
            [{"type": 1, "components": [{"type": 2, "style": 1, "custom_id": "a"}] * 6}],
            "components.0.components",
        ),
        (
            [{"type": 1, "components": [{"type": 2, "style": 1, "label": "x"}]}],
            "components.0.components.0.custom_id",
        ),
        (
            [
                {
                    "type": 1,
                    "components": [{"type": 2, "style": 1, "label": "x", "custom_id": "a" * 101}],
                }
            ],
            "components.0.components.0.custom_id",
        ),
        (
            [
                {
                    "type": 1,
                    "components": [{"type": 2, "style": 1, "label": "x" * 81, "custom_id": "a"}],
                }
            ],
            "components.0.components.0.label",
        ),
        (
            [
                {
                    "type": 1,
                    "components": [
                        {"type": 2, "style": 1, "label": "x", "custom_id": "a"},
                        {"type": 2, "style": 2, "label": "y", "custom_id": "a"},
                    ],
                }
            ],
            "components.0.components.1.custom_id",
        ),
        (
            [{"type": 1, "components": [{"type": 2, "style": 1, "label": "x", "custom_id": "a"}]}]
            * 6,
            "components",
        ),
    ],
)
async def test_bad_components_are_refused(
    world: World, components: list[dict[str, Any]], field: str
) -> None:
    bot = ButtonBot()
    async with run_bot(bot, world.server):
        route = discord.http.Route("POST", "/channels/{cid}/messages", cid=world.channel.id)
        with pytest.raises(discord.HTTPException) as error:
            await bot.http.request(route, json={"content": "x", "components": components})
    assert error.value.code == 50035
    assert field in str(error.value)
