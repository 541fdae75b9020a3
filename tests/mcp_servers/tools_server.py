"""An MCP server for the tests, spoken to over stdio: ``python tools_server.py [MARKER]``.

Tools: ``echo``, ``add``, ``picture`` (text and an image), ``fail`` (an error result),
``crash`` (the process exits mid-call), ``hang`` (never answers), ``freeze`` (the process
stops) and ``dotted.name`` (a name the
OpenAI API refuses). ``starts`` tells how many times a server with this MARKER file started (the
file counts the starts), which shows a restart.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent

server = MCPServer("genbot-test-tools", log_level="WARNING")
MARKER = Path(sys.argv[1]) if len(sys.argv) > 1 else None


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return f"echo: {text}"


@server.tool()
def add(a: int, b: int) -> str:
    """Add two whole numbers."""
    return str(a + b)


@server.tool()
def picture() -> list[TextContent | ImageContent]:
    """A caption and a picture."""
    return [
        TextContent(type="text", text="a red dot"),
        ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
    ]


@server.tool()
def fail() -> str:
    """Always fails."""
    raise ToolError("the tool broke on purpose")


@server.tool()
def crash() -> str:
    """The server process exits in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


@server.tool()
async def hang() -> str:
    """Never answers."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
def freeze() -> str:
    """The whole server process stops (SIGSTOP): it answers nothing any more, not even pings."""
    os.kill(os.getpid(), signal.SIGSTOP)
    return "thawed"


@server.tool(name="dotted.name")
def dotted() -> str:
    """A tool whose name the OpenAI API refuses."""
    return "dotted"


@server.tool()
def starts() -> str:
    """How many times this server started (with a marker file)."""
    return MARKER.read_text() if MARKER else "0"


@server.tool()
def environment(name: str) -> str:
    """An environment variable of the server process."""
    return os.environ.get(name, "(unset)")


if __name__ == "__main__":
    if MARKER is not None:
        count = int(MARKER.read_text()) if MARKER.exists() else 0
        MARKER.write_text(str(count + 1))
    server.run()
