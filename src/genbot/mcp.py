"""Tools from MCP servers: the ``[mcp.NAME]`` config tables (:func:`parse_servers`) and
:class:`McpServers`, which starts each server once, turns its tools into
:class:`genbot.tools.Tool` objects named ``NAME__tool``, restarts a server that dies and stops
them all on shutdown.

A server is a subprocess spoken to over stdio (``command``, ``args``, ``env``, ``cwd``) or a
streamable-HTTP endpoint (``url``, ``headers``). Values of ``env`` and ``headers`` may name
environment variables as ``${NAME}``, read when the server starts, so that secrets stay out of
the config file.

The official ``mcp`` SDK (``pip install 'genbot[mcp]'``) is imported only when servers start:
reading a config never needs it.

Each server has one long-lived task that owns its session (the SDK's anyio task groups must be
entered and left in the same task); tool calls are sent through that session from the callers'
tasks, each bounded by the server's ``timeout``. A call never raises: a failure (a timeout, the
server dying mid-call, a server that is down) is a one-line text the model can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genbot.settings import SettingsError
from genbot.tools import Tool, ToolFailed

if TYPE_CHECKING:
    from mcp import ClientSession

__all__ = [
    "McpServerConfig",
    "McpServers",
    "expand_variables",
    "parse_servers",
    "result_text",
    "tool_names",
]

_log = logging.getLogger(__name__)

#: A server's name: what ``NAME__tool`` starts with (no ``__`` in it, so that the separator is
#: unambiguous and two servers' tool names never collide).
_SERVER_NAME = re.compile(r"[A-Za-z0-9-]+(_[A-Za-z0-9-]+)*")
_MAX_SERVER_NAME = 32
_MAX_TOOL_NAME = 64
#: ``${NAME}`` in ``env`` and ``headers`` values.
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The most characters of one tool result kept (the tool loop may cap it further).
MAX_RESULT_CHARS = 100_000


# -- the config --------------------------------------------------------------------------------


@dataclass(frozen=True)
class McpServerConfig:
    """One ``[mcp.NAME]`` table: a stdio server (``command``) or a streamable-HTTP one (``url``).

    ``env`` and ``headers`` hold the values as written (``${VAR}`` not yet expanded).
    """

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""
    url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    #: Most seconds one tool call may take.
    timeout: float = 60.0
    #: Most seconds to start the server and list its tools.
    start_timeout: float = 30.0
    #: The server's tools offered to the model (by their MCP names); ``None``: all of them.
    tools: tuple[str, ...] | None = None
    #: Only a bot admin's chats may use this server's tools.
    admin_only: bool = False

    @property
    def transport(self) -> str:
        """``"stdio"`` or ``"http"``."""
        return "http" if self.url else "stdio"


def _check_seconds(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "expected a number of seconds"
    if not math.isfinite(value) or not 0 < value <= 3600:
        return "must be in (0, 3600] seconds"
    return None


def _check_string(value: Any) -> str | None:
    if not isinstance(value, str):
        return "expected a string"
    return "must not contain NUL characters" if "\x00" in value else None


def _check_command(value: Any) -> str | None:
    problem = _check_string(value)
    return problem or (None if value.strip() else "must name a program")


def _check_strings(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return "expected a list of strings"
    return "must not contain NUL characters" if any("\x00" in v for v in value) else None


def _check_table(value: Any) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return "expected a table of strings"
    for key, item in value.items():
        if not key or "\x00" in key or "\x00" in item:
            return "must not have empty names or NUL characters"
        if (problem := _variables_problem(item)) is not None:
            return f"{key}: {problem}"
    return None


def _check_env(value: Any) -> str | None:
    problem = _check_table(value)
    if problem is None and any("=" in key for key in value):
        return "variable names must not contain '='"
    return problem


def _check_headers(value: Any) -> str | None:
    problem = _check_table(value)
    if problem is None and any(not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", k) for k in value):
        return "header names must be letters, digits and -"
    if problem is None and any(re.search(r"[\r\n]", v) for v in value.values()):
        return "header values must not contain line breaks"
    return problem


def _check_url(value: Any) -> str | None:
    from genbot.settings import _base_url

    problem = _check_string(value)
    if problem is None and _base_url(value) is not None:
        return "must be an http(s) URL such as http://127.0.0.1:8000/mcp"
    return problem


def _check_bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


#: Each key of a ``[mcp.NAME]`` table: its check, and how the value is stored.
_KEYS: dict[str, tuple[Callable[[Any], str | None], Callable[[Any], Any]]] = {
    "command": (_check_command, str),
    "args": (_check_strings, tuple),
    "env": (_check_env, lambda v: tuple(sorted(v.items()))),
    "cwd": (_check_string, str),
    "url": (_check_url, str),
    "headers": (_check_headers, lambda v: tuple(sorted(v.items()))),
    "timeout": (_check_seconds, float),
    "start_timeout": (_check_seconds, float),
    "tools": (_check_strings, tuple),
    "admin_only": (_check_bool, bool),
}
_STDIO_ONLY = ("args", "env", "cwd")
_HTTP_ONLY = ("headers",)


def _variables_problem(text: str) -> str | None:
    """Why ``${...}`` references in ``text`` are malformed, or ``None``."""
    for match in _VARIABLE.finditer(text):
        if not _VARIABLE_NAME.fullmatch(match.group(1)):
            return f"{match.group(0)!r} is not a variable reference such as ${{API_KEY}}"
    rest = _VARIABLE.sub("", text)
    return "'${' without a closing '}'" if "${" in rest else None


def expand_variables(text: str, environ: Mapping[str, str]) -> str:
    """``text`` with every ``${NAME}`` replaced by that environment variable.

    Parameters
    ----------
    text:
        A value of ``env`` or ``headers``; a ``$`` not followed by ``{`` stays as it is.
    environ:
        The environment to read.

    Raises
    ------
    KeyError
        Naming the first variable that is not set.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise KeyError(name)
        return environ[name]

    return _VARIABLE.sub(value, text)


def parse_servers(raw: Any, source: str) -> dict[str, McpServerConfig]:
    """The ``mcp`` setting: ``[mcp.NAME]`` tables (or the same as JSON text, from
    ``GENBOT_MCP`` or ``--set mcp=...``), checked.

    Parameters
    ----------
    raw:
        A table of tables, or a JSON object as text.
    source:
        Where the value comes from (the config file, the variable), first in error messages.

    Raises
    ------
    SettingsError
        One line naming the source, the key (``mcp.NAME.key``) and the reason.
    """
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            raise SettingsError(f"{source}: setting 'mcp': not valid JSON ({error})") from error
    if not isinstance(raw, dict):
        raise SettingsError(
            f"{source}: setting 'mcp': expected [mcp.NAME] tables, got {_shown(raw)}"
        )
    return {str(name): _parse_server(str(name), table, source) for name, table in raw.items()}


def _parse_server(name: str, table: Any, source: str) -> McpServerConfig:
    where = f"{source}: setting 'mcp.{name}'"
    if not _SERVER_NAME.fullmatch(name) or len(name) > _MAX_SERVER_NAME:
        raise SettingsError(
            f"{where}: a server name is letters, digits, '-' and single '_' (at most "
            f"{_MAX_SERVER_NAME} characters; it starts its tools' names, NAME__tool)"
        )
    if not isinstance(table, dict):
        raise SettingsError(f"{where}: expected a [mcp.{name}] table, got {_shown(table)}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _KEYS:
            close = [k for k in _KEYS if k.startswith(str(key)[:3])]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SettingsError(f"{where}: unknown key {key!r}{hint}; keys: {', '.join(_KEYS)}")
        check, convert = _KEYS[key]
        if (problem := check(value)) is not None:
            raise SettingsError(
                f"{source}: setting 'mcp.{name}.{key}': {problem}, got {_shown(value)}"
            )
        values[key] = convert(value)
    _check_kind(where, values)
    return McpServerConfig(name=name, **values)


def _check_kind(where: str, values: Mapping[str, Any]) -> None:
    if ("command" in values) == ("url" in values):
        raise SettingsError(
            f"{where}: needs either command (a stdio server) or url (a streamable-HTTP server)"
        )
    wrong = _HTTP_ONLY if "command" in values else _STDIO_ONLY
    for key in wrong:
        if key in values:
            kind = "a stdio server (command)" if "command" in values else "an HTTP server (url)"
            raise SettingsError(f"{where}: {key} does not apply to {kind}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- tool names and results --------------------------------------------------------------------


def tool_names(server: str, tools: Sequence[str]) -> dict[str, str]:
    """The name the model sees for each of a server's tools: ``server__tool``, with every
    character the OpenAI API refuses replaced by ``_`` and cut to 64 characters. Names that
    end up equal get ``_2``, ``_3``... in the order of the MCP names (so the result does not
    depend on the order the server lists them in).

    Parameters
    ----------
    server:
        The server's name (already valid: letters, digits, ``-`` and ``_``).
    tools:
        The MCP names of its tools.
    """
    prefix = f"{server}__"
    names: dict[str, str] = {}
    taken: set[str] = set()
    for tool in sorted(set(tools)):
        base = (prefix + (re.sub(r"[^A-Za-z0-9_-]", "_", tool) or "tool"))[:_MAX_TOOL_NAME]
        name, number = base, 1
        while name in taken:
            number += 1
            suffix = f"_{number}"
            name = base[: _MAX_TOOL_NAME - len(suffix)] + suffix
        taken.add(name)
        names[tool] = name
    return names


def _text_part(part: Any) -> str:
    return str(part.text)


def _image_part(part: Any) -> str:
    return f"[image ({part.mime_type}) not shown]"


def _audio_part(part: Any) -> str:
    return f"[audio ({part.mime_type}) not shown]"


def _link_part(part: Any) -> str:
    return f"[resource link: {part.uri}]"


def _resource_part(part: Any) -> str:
    resource = part.resource
    text = getattr(resource, "text", None)
    if isinstance(text, str):
        return text
    return f"[resource {resource.uri} ({resource.mime_type or 'binary'}) not shown]"


#: How each kind of MCP content becomes text for the model.
_PARTS: dict[str, Callable[[Any], str]] = {
    "text": _text_part,
    "image": _image_part,
    "audio": _audio_part,
    "resource_link": _link_part,
    "resource": _resource_part,
}


def result_text(result: Any) -> str:
    """A tool call's result (an MCP ``CallToolResult``) as text for the model: text parts as
    they are, other parts as short notes, the structured content as JSON when there is no
    other content, and ``error: ...`` for a result the server flagged as an error.

    Parameters
    ----------
    result:
        The ``CallToolResult``.
    """
    parts = [
        _PARTS.get(part.type, lambda p: f"[{p.type} content not shown]")(part)
        for part in result.content
    ]
    if not parts and result.structured_content is not None:
        parts = [json.dumps(result.structured_content, ensure_ascii=False, default=str)]
    text = "\n".join(parts) if parts else "(no output)"
    if result.is_error:
        text = f"error: {text}"
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + " [cut]"
    return text


# -- the servers -------------------------------------------------------------------------------

#: What the text of a failed call starts with (:meth:`McpServers.call`).
_ERROR = "error: "
#: The JSON-RPC error code of a connection that closed (mcp_types.CONNECTION_CLOSED).
_CONNECTION_CLOSED = -32000
#: The JSON-RPC "invalid request" code, which an unknown HTTP session is answered with.
_INVALID_REQUEST = -32600
#: A session that lasted this long was healthy: the restart back-off starts over.
_HEALTHY_SECONDS = 60.0
#: The longest wait between two restarts.
_MAX_RESTART_DELAY = 30.0


def _reason(error: BaseException) -> str:
    """One line for an error, looking inside exception groups (anyio task groups raise them)."""
    while getattr(error, "exceptions", None):  # an ExceptionGroup (no such name on 3.10)
        error = error.exceptions[0]  # type: ignore[attr-defined]
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _first_of(*events: asyncio.Event) -> None:
    """Wait until one of ``events`` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def _errlog() -> Any:
    """Where a stdio server's stderr goes: the process's own stderr (not a replaced
    ``sys.stderr``, which may have no file descriptor), else nowhere."""
    global _DEVNULL
    stream = sys.__stderr__
    try:
        if stream is not None:
            stream.fileno()
            return stream
    except (OSError, ValueError):
        pass
    if _DEVNULL is None:
        _DEVNULL = open(os.devnull, "w")
    return _DEVNULL


_DEVNULL: Any = None


class _Server:
    """One configured server: the task that owns its session, and calls through it."""

    def __init__(
        self,
        config: McpServerConfig,
        environ: Mapping[str, str],
        restart_delay: float,
        max_restarts: int,
        ping_timeout: float,
    ) -> None:
        self.config = config
        self.ping_timeout = ping_timeout
        self.environ = environ
        self.restart_delay = restart_delay
        self.max_restarts = max_restarts
        self.state = "stopped"
        self.problem = ""
        self.tools: list[Tool] = []
        self.restarts = 0
        self._session: ClientSession | None = None
        self._ready = asyncio.Event()
        self._broken = asyncio.Event()
        self._stopping = asyncio.Event()
        self._settled = asyncio.Event()
        #: Set when the server is given up or stopped: waiting calls end.
        self._gone = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        self.state = "starting"
        self._task = asyncio.create_task(self._own(), name=f"mcp server {self.name}")

    async def started(self) -> None:
        """Wait (bounded by the start timeout) until the first start succeeded or failed."""
        bound = self.config.start_timeout + 10.0
        try:
            await asyncio.wait_for(self._settled.wait(), bound)
        except asyncio.TimeoutError:
            _log.warning("MCP server %r: not started after %g s", self.name, bound)

    async def stop(self, timeout: float) -> None:
        self._stopping.set()
        for check in self._checks:
            check.cancel()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            _log.warning("MCP server %r: not stopped after %g s, cancelling", self.name, timeout)
            task.cancel()
            await asyncio.wait({task}, timeout=timeout)
        self.state = "stopped"

    # -- the owner task ------------------------------------------------------------------

    async def _own(self) -> None:
        failures = 0
        ran = False
        try:
            while not self._stopping.is_set():
                began = time.monotonic()
                try:
                    await self._session_once()
                except Exception as error:
                    self.problem = _reason(error)
                ran = ran or self.state == "running"
                if self._stopping.is_set():
                    break
                if not ran:
                    self.give_up("cannot start (%s); its tools are left out")
                    break
                failures = 0 if time.monotonic() - began >= _HEALTHY_SECONDS else failures
                failures += 1
                if failures > self.max_restarts:
                    self.give_up(f"stopped {failures} times in a row (%s); giving up")
                    break
                await self._back_off(failures)
        finally:
            self._ready.clear()
            self._session = None
            self._gone.set()
            self._settled.set()

    def give_up(self, message: str) -> None:
        """Mark the server failed (its tools are left out) and log ``message % problem``."""
        self.state = "failed"
        self.tools = []
        _log.error("MCP server %r: " + message, self.name, self.problem or "no reason given")
        self._gone.set()
        self._settled.set()

    async def _back_off(self, failures: int) -> None:
        delay = min(self.restart_delay * 2 ** (failures - 1), _MAX_RESTART_DELAY)
        self.state = "restarting"
        self.restarts += 1
        _log.warning(
            "MCP server %r stopped (%s); restarting in %.1f s",
            self.name,
            self.problem or "connection closed",
            delay,
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _session_once(self) -> None:
        """Start the server, list its tools, serve calls until it dies, breaks or stops."""
        import anyio
        from mcp import ClientSession

        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport(stack))
            ended = asyncio.Event()
            send, relayed = anyio.create_memory_object_stream[Any](0)
            stack.push_async_callback(relayed.aclose)
            stack.push_async_callback(send.aclose)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            group.start_soon(_relay, read, send, ended)
            session = await stack.enter_async_context(ClientSession(relayed, write))
            try:
                listing = await asyncio.wait_for(_handshake(session), self.config.start_timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    f"no answer within start_timeout ({self.config.start_timeout:g} s)"
                ) from None
            self.tools = self._make_tools(listing)
            self._session = session
            self._broken.clear()
            self.state, self.problem = "running", ""
            self._ready.set()
            self._settled.set()
            _log.info("MCP server %r: running, %d tools", self.name, len(self.tools))
            await _first_of(ended, self._broken, self._stopping)
            self._ready.clear()
            self._session = None

    def _transport(self, stack: contextlib.AsyncExitStack) -> Any:
        config = self.config
        if config.url:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            headers = {k: expand_variables(v, self.environ) for k, v in config.headers}
            client = create_mcp_http_client(headers=headers)
            stack.push_async_callback(client.aclose)
            return streamable_http_client(config.url, http_client=client)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        parameters = StdioServerParameters(
            command=config.command,
            args=list(config.args),
            env={k: expand_variables(v, self.environ) for k, v in config.env} or None,
            cwd=config.cwd or None,
        )
        return stdio_client(parameters, errlog=_errlog())

    def _make_tools(self, listing: Sequence[Any]) -> list[Tool]:
        offered = {tool.name: tool for tool in listing}
        allowed = self.config.tools
        if allowed is not None:
            missing = sorted(set(allowed) - set(offered))
            if missing:
                _log.warning("MCP server %r has no tools named %s", self.name, ", ".join(missing))
            offered = {name: tool for name, tool in offered.items() if name in allowed}
        names = tool_names(self.name, list(offered))
        return [self._tool(names[name], offered[name]) for name in sorted(offered)]

    def _tool(self, name: str, tool: Any) -> Tool:
        schema = dict(tool.input_schema) if isinstance(tool.input_schema, dict) else {}
        schema.setdefault("type", "object")
        if schema["type"] == "object":
            schema.setdefault("properties", {})
        description = tool.description or tool.title or f"The tool {tool.name} of {self.name}."

        async def run(arguments: dict[str, Any]) -> str:
            text = await self.call(tool.name, arguments)
            if text.startswith(_ERROR):  # a failed call: shown as one (genbot.tools.run_call)
                raise ToolFailed(text[len(_ERROR) :])
            return text

        return Tool(name, description, schema, run, admin_only=self.config.admin_only)

    # -- calls -----------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        """Call ``tool`` with ``arguments``; always returns text (an ``error: ...`` line when
        the call failed). A call an HTTP server refused because it no longer knows the session
        (it restarted) is sent once more on a new session: the server did not run it."""
        where = f"the MCP server {self.name!r}"
        timeout = self.config.timeout
        for attempt in range(2):
            session = await self._usable_session()
            if isinstance(session, str):
                return session
            try:
                result = await asyncio.wait_for(session.call_tool(tool, arguments), timeout)
            except asyncio.TimeoutError:
                self._check_alive(session)
                return f"error: the tool {tool!r} of {where} gave no result within {timeout:g} s"
            except Exception as error:
                if attempt == 0 and _session_lost(error) and session is self._session:
                    _log.info("MCP server %r lost the session; connecting again", self.name)
                    self._mark_broken(session)
                    continue
                return self._failed(session, tool, error)
            return result_text(result)
        return f"error: {where} lost the session again"  # pragma: no cover - a second loss

    async def _usable_session(self) -> ClientSession | str:
        """The running session, waiting for a (re)start bounded by ``start_timeout``; or the
        error text when there is none."""
        where = f"the MCP server {self.name!r}"
        if self.state in ("failed", "stopped"):
            return f"error: {where} is not running ({self.problem or self.state})"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.start_timeout
        session = self._session if self._ready.is_set() else None
        while session is None:  # (the session may end between ready and here: wait again)
            try:
                wait = _first_of(self._ready, self._gone)
                await asyncio.wait_for(wait, max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return f"error: {where} is restarting; try again later"
            if self._gone.is_set():
                return f"error: {where} is not running ({self.problem or self.state})"
            session = self._session
        return session

    def _failed(self, session: ClientSession, tool: str, error: Exception) -> str:
        from mcp import MCPError

        where = f"the MCP server {self.name!r}"
        if isinstance(error, MCPError) and error.code != _CONNECTION_CLOSED:
            return f"error: {where} refused the call of {tool!r}: {error.message}"
        if self._stopping.is_set():
            return f"error: {where} is shutting down"
        self._mark_broken(session)
        _log.warning("MCP server %r: the call of %r failed: %s", self.name, tool, _reason(error))
        return f"error: {where} stopped during the call of {tool!r} (it is being restarted)"

    def _mark_broken(self, session: ClientSession) -> None:
        """``session`` no longer works: no call may use it, its owner starts a new one."""
        if session is self._session:
            self._ready.clear()
            self._session = None
            self._broken.set()

    def _check_alive(self, session: ClientSession) -> None:
        """After a timeout: ping the server in the background; one that does not answer
        either is restarted."""

        async def ping() -> None:
            try:
                await asyncio.wait_for(session.send_ping(), self.ping_timeout)
            except Exception as error:
                if session is self._session:
                    _log.warning("MCP server %r does not answer (%s)", self.name, _reason(error))
                    self._mark_broken(session)

        task = asyncio.create_task(ping())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)


def _session_lost(error: Exception) -> bool:
    """Whether a streamable-HTTP server refused a call because it does not know the session
    (HTTP 404: the server restarted, or expired the session)."""
    from mcp import MCPError

    lost = ("Session not found", "Session terminated")
    return isinstance(error, MCPError) and error.code == _INVALID_REQUEST and error.message in lost


async def _handshake(session: ClientSession) -> list[Any]:
    """Initialize the session and list every tool (following pages, at most 100)."""
    await session.initialize()
    tools: list[Any] = []
    cursor: str | None = None
    for _ in range(100):
        if cursor is None:
            page = await session.list_tools()
        else:
            from mcp.types import PaginatedRequestParams

            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor))
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


async def _relay(read: Any, send: Any, ended: asyncio.Event) -> None:
    """Pass the transport's messages on to the session; ``ended`` is set when the transport
    closes (the server died, or closed its output)."""
    import anyio

    try:
        async with send:
            async for item in read:
                await send.send(item)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
        pass
    finally:
        ended.set()


@dataclass
class McpServers:
    """The configured MCP servers and their tools.

    :meth:`start` starts every server at once, each bounded by its ``start_timeout``; one that
    cannot start is logged and left out. :meth:`tools` are the running servers' tools, as
    :class:`~genbot.tools.Tool` objects named ``NAME__tool``. A server that dies is restarted
    (waiting ``restart_delay`` seconds, doubling up to 30 s, and giving up after
    ``max_restarts`` failures in a row); :meth:`stop` stops them all, bounded. After a call
    times out the server is pinged: one that does not answer within ``ping_timeout`` is
    restarted too.

    Parameters
    ----------
    configs:
        The servers, by name (the ``mcp`` setting).
    environ:
        Where ``${VAR}`` in ``env`` and ``headers`` is read, when a server starts; default
        ``os.environ``.
    """

    configs: Mapping[str, McpServerConfig]
    environ: Mapping[str, str] | None = None
    restart_delay: float = 1.0
    max_restarts: int = 5
    stop_timeout: float = 15.0
    ping_timeout: float = 5.0
    _servers: dict[str, _Server] = field(default_factory=dict, init=False)

    async def start(self) -> None:
        """Start every server (at once) and wait until each is running or has failed.

        Raises
        ------
        RuntimeError
            When called a second time.
        """
        if self._servers:
            raise RuntimeError("McpServers.start() was called twice")
        environ = os.environ if self.environ is None else self.environ
        for name, config in self.configs.items():
            server = _Server(
                config, environ, self.restart_delay, self.max_restarts, self.ping_timeout
            )
            self._servers[name] = server
            problem = _missing_variable(config, environ)
            if problem:
                server.problem = problem
                server.give_up("%s; its tools are left out")
                continue
            server.start()
        await asyncio.gather(*(s.started() for s in self._servers.values()))

    def tools(self) -> list[Tool]:
        """The tools of the servers that run (or are being restarted), in config order."""
        return [tool for server in self._servers.values() for tool in server.tools]

    def status(self) -> dict[str, str]:
        """One line per server: ``running, 3 tools``, ``failed: ...``..."""
        lines: dict[str, str] = {}
        for name, server in self._servers.items():
            line = f"{server.state} ({server.config.transport})"
            if server.state in ("running", "restarting"):
                count = len(server.tools)
                line += f", {count} tool{'' if count == 1 else 's'}"
            if server.restarts:
                line += f", restarts: {server.restarts}"
            lines[name] = f"{line}: {server.problem}" if server.problem else line
        return lines

    async def call(self, server: str, tool: str, arguments: dict[str, Any]) -> str:
        """Call a server's tool by its MCP name (what :class:`Tool.run` does).

        Parameters
        ----------
        server:
            The server's name.
        tool:
            The tool's name on that server.
        arguments:
            The arguments (not checked here).

        Raises
        ------
        KeyError
            ``server`` is not configured.
        """
        return await self._servers[server].call(tool, arguments)

    async def stop(self) -> None:
        """Stop every server, each bounded by ``stop_timeout`` (the SDK closes a stdio
        server's input, then terminates and kills it)."""
        servers = list(self._servers.values())
        await asyncio.gather(*(s.stop(self.stop_timeout) for s in servers))

    async def __aenter__(self) -> McpServers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _missing_variable(config: McpServerConfig, environ: Mapping[str, str]) -> str:
    for key, pairs in (("env", config.env), ("headers", config.headers)):
        for name, value in pairs:
            try:
                expand_variables(value, environ)
            except KeyError as error:
                return (
                    f"{key}.{name} names the environment variable {error.args[0]}, which is not set"
                )
    return ""
