"""Tools the model may call: :class:`Tool`, the one shape every source of tools produces
(Python functions, MCP servers), and what the tool loop runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Tool"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tool:
    """One tool: a name the OpenAI API accepts (letters, digits, ``_`` and ``-``, at most 64
    characters), what it does (for the model), the JSON schema of its arguments (an object),
    and ``run(arguments) -> text``, given arguments already checked against that schema.

    ``admin_only``: only a bot admin's chats may use it.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[str]]
    admin_only: bool = False

    def schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry for this tool (what :class:`genbot.models.ChatRequest`
        carries)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }
