"""Message components as Discord has them: the checks of a message body's ``components``
(action rows of buttons), and the INTERACTION_CREATE payload of a user pressing a button
(a MESSAGE_COMPONENT interaction, type 3), answered through the routes of ``interactions``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .models import FakeInteraction
from .payloads import form_error

__all__ = [
    "ACTION_ROW",
    "BUTTON",
    "FakeComponentInteraction",
    "find_component",
    "validate_components",
]

_log = logging.getLogger(__name__)

# Component types (https://discord.com/developers/docs/components/reference).
ACTION_ROW, BUTTON = 1, 2
# Button styles: primary, secondary, success, danger take a custom_id; link a url; premium a sku.
LINK, PREMIUM = 5, 6
MAX_ROWS, MAX_PER_ROW = 5, 5
MAX_CUSTOM_ID, MAX_LABEL = 100, 80
MESSAGE_COMPONENT = 3  # the interaction type of a pressed button


@dataclass(eq=False)
class FakeComponentInteraction(FakeInteraction):
    """A button press made by `DiscordServer.press`: as :class:`FakeInteraction`, plus the
    message the button is on (``message``), which UPDATE_MESSAGE and DEFERRED_UPDATE_MESSAGE
    answers edit; ``name`` is the pressed button's ``custom_id``."""

    message: dict[str, Any] = field(default_factory=dict)


def _check_button(where: str, button: dict[str, Any], seen: set[str]) -> None:
    style = int(button.get("style") or 0)
    if not 1 <= style <= PREMIUM:
        raise form_error(f"{where}.style", "BASE_TYPE_CHOICES", "Value must be one of 1..6.")
    label = button.get("label")
    if label is not None and len(str(label)) > MAX_LABEL:
        raise form_error(
            f"{where}.label", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_LABEL} or fewer in length."
        )
    custom_id = button.get("custom_id")
    if style == LINK:
        if not button.get("url") or custom_id is not None:
            raise form_error(
                f"{where}.url", "BUTTON_COMPONENT_LINK_REQUIRES_URL", "A link button needs a url"
            )
        return
    if style == PREMIUM:
        return
    if not custom_id:
        raise form_error(
            f"{where}.custom_id",
            "BUTTON_COMPONENT_CUSTOM_ID_REQUIRED",
            "A custom id is required",
        )
    if len(str(custom_id)) > MAX_CUSTOM_ID:
        raise form_error(
            f"{where}.custom_id",
            "BASE_TYPE_MAX_LENGTH",
            f"Must be {MAX_CUSTOM_ID} or fewer in length.",
        )
    if custom_id in seen:
        raise form_error(
            f"{where}.custom_id",
            "COMPONENT_CUSTOM_ID_DUPLICATED",
            "Component custom id cannot be duplicated",
        )
    seen.add(str(custom_id))
    if not (label or button.get("emoji")):
        raise form_error(
            f"{where}.label", "BUTTON_COMPONENT_LABEL_REQUIRED", "A label or an emoji is required"
        )


def _check_row(where: str, row: dict[str, Any], seen: set[str]) -> None:
    if int(row.get("type") or 0) != ACTION_ROW:
        raise form_error(
            f"{where}.type",
            "UNION_TYPE_CHOICES",
            'Value of field "type" must be one of (1,) at the top level.',
        )
    children = row.get("components") or []
    if not 1 <= len(children) <= MAX_PER_ROW:
        raise form_error(
            f"{where}.components",
            "BASE_TYPE_BAD_LENGTH",
            f"Must be between 1 and {MAX_PER_ROW} in length.",
        )
    for index, child in enumerate(children):
        kind = int(child.get("type") or 0)
        check = _CHILDREN.get(kind)
        if check is None:
            raise form_error(
                f"{where}.components.{index}.type",
                "UNION_TYPE_CHOICES",
                'Value of field "type" must be one of (2,).',
            )
        check(f"{where}.components.{index}", child, seen)


# What may go in an action row, and how each is checked (only buttons for now).
_CHILDREN: dict[int, Callable[[str, dict[str, Any], set[str]], None]] = {BUTTON: _check_button}


def validate_components(body: dict[str, Any]) -> None:
    """Discord's checks of a message body's ``components`` (absent or ``null``: nothing).

    Raises
    ------
    ApiError
        50035 for a top-level component that is not an action row, more than 5 rows, a row
        of 0 or over 5 buttons, a button without a custom_id (or a link button without a url),
        a custom_id over 100 characters or used twice, a label over 80 characters.
    """
    rows = body.get("components")
    if rows is None:
        return
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise form_error(
            "components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length."
        )
    seen: set[str] = set()
    for index, row in enumerate(rows):
        _check_row(f"components.{index}", row, seen)


def find_component(message: dict[str, Any], custom_id: str) -> dict[str, Any] | None:
    """The component of `message` with `custom_id`, or ``None``."""
    for row in message.get("components") or []:
        for component in row.get("components") or []:
            if component.get("custom_id") == custom_id:
                return dict(component)
    return None
