"""The JSON schema of a ``get_weather`` call, for the tests that hold the real SmolLM2 to it.

SmolLM2-135M does not call tools by itself with greedy decoding; held to this schema
(llama.cpp's ``json_schema``, a grammar), it writes a bare JSON call, which the backend's parser
makes a ToolCall. Free of other test modules, so that tests/ can import it too
(``from models.call_schema import CALL_SCHEMA``).
"""

from __future__ import annotations

from typing import Any

CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
        },
    },
    "required": ["name", "arguments"],
}
