"""The Gateway half of the loopback server: one websocket per connected client, sessions that
outlive their connection so a client can RESUME and get the events it missed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .models import PRIVILEGED_INTENTS
from .sharding import IdentifyVerdict, parse_shard, receives

if TYPE_CHECKING:
    from .state import ServerState

__all__ = ["OPCODES", "Connection", "GatewaySession", "handle_gateway"]

_log = logging.getLogger(__name__)

DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE, RESUME, RECONNECT = 0, 1, 2, 3, 6, 7
REQUEST_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = 8, 9, 10, 11
# Close codes, as Discord sends them.
UNKNOWN_OPCODE, DECODE_ERROR, NOT_AUTHENTICATED, AUTHENTICATION_FAILED = 4001, 4002, 4003, 4004
ALREADY_AUTHENTICATED, INVALID_SHARD, INVALID_INTENTS, DISALLOWED_INTENTS = 4005, 4010, 4013, 4014
# The intent bits Discord defines (0..25); an IDENTIFY asking for others is closed with 4013.
KNOWN_INTENTS = (1 << 26) - 1
# How many past events a session keeps for RESUME; an older sequence is answered INVALID_SESSION.
REPLAY_LIMIT = 1000
# How long a close waits for the queued payloads to go out first.
FLUSH_TIMEOUT = 2.0


class Connection:
    """A gateway websocket, sending JSON as text or through the transport compression the client
    asked for in the URL (``compress=zlib-stream``: one zlib stream, each payload ending in a
    sync flush, which is what discord.py requests when zstd is unavailable). Any other value
    (``zstd-stream``) gets plain text frames, which discord.py reads just as well.

    `send` only queues (so a dispatch can be made from synchronous code and keeps its order);
    a writer task sends the queue in order. Payloads that can no longer be sent are dropped:
    the session keeps its events for a RESUME.
    """

    def __init__(self, ws: web.WebSocketResponse, compress: str | None) -> None:
        self.ws = ws
        self._compressor = zlib.compressobj() if compress == "zlib-stream" else None
        self._outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name="genbot-testing-gateway-writer")
        self.closed_by_server = False

    def send(self, payload: dict[str, Any]) -> None:
        self._outbox.put_nowait(payload)

    def send_all(self, payloads: list[dict[str, Any]]) -> None:
        """Queue in order, with nothing else interleaved (a RESUME's replay)."""
        for payload in payloads:
            self._outbox.put_nowait(payload)

    async def flush(self) -> None:
        """Wait until what is queued went out (or was dropped), at most `FLUSH_TIMEOUT` s."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.join(), FLUSH_TIMEOUT)

    async def close(self, code: int, message: bytes) -> None:
        """Close with `code` after what is queued went out."""
        self.closed_by_server = True
        await self.flush()
        await self.ws.close(code=code, message=message)

    async def stop(self) -> None:
        """End the writer (the websocket is gone)."""
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write(self) -> None:
        while True:
            payload = await self._outbox.get()
            try:
                if not self.ws.closed:
                    await self._send_now(payload)
            except (ConnectionError, RuntimeError):
                _log.debug("gateway peer went away; %s stays for a RESUME", payload.get("t"))
            finally:
                self._outbox.task_done()

    async def _send_now(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        if self._compressor is None:
            await self.ws.send_str(text)
        else:
            data = self._compressor.compress(text.encode())
            data += self._compressor.flush(zlib.Z_SYNC_FLUSH)
            await self.ws.send_bytes(data)


class GatewaySession:
    """What Discord keeps per session: the intents, the sequence, and recent events to replay."""

    def __init__(self, intents: int, shard: tuple[int, int] | None) -> None:
        self.id = secrets.token_hex(16)
        self.intents = intents
        self.shard = shard
        self.seq = 0
        self.events: deque[dict[str, Any]] = deque(maxlen=REPLAY_LIMIT)
        self.connection: Connection | None = None
        self.ready = False  # READY and every GUILD_CREATE went out

    def wants(self, intent: int) -> bool:
        return bool(self.intents & intent)

    def receives(self, guild_id: int | None) -> bool:
        """Whether this session's shard gets the events of `guild_id` (``None``: a DM)."""
        return receives(self.shard, guild_id)

    def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Number the event, keep it for a RESUME, and queue it on the live connection."""
        self.seq += 1
        payload = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.events.append(payload)
        if self.connection is not None:
            self.connection.send(payload)

    def missed_since(self, seq: int) -> list[dict[str, Any]] | None:
        """Events after `seq`, or None when some of them are no longer kept."""
        missed = [event for event in self.events if event["s"] > seq]
        if seq < self.seq and (not missed or missed[0]["s"] != seq + 1):
            return None
        return missed


async def handle_gateway(state: ServerState, request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
    await ws.prepare(request)
    state.gateway_queries.append(dict(request.query))
    connection = Connection(ws, request.query.get("compress"))
    if request.query.get("encoding", "json") != "json":
        await connection.close(DECODE_ERROR, b"only encoding=json is supported")
        await connection.stop()
        return ws
    state.connections.add(connection)
    session: GatewaySession | None = None
    try:
        interval_ms = int(state.heartbeat_interval * 1000)
        connection.send({"op": HELLO, "d": {"heartbeat_interval": interval_ms}})
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                break
            try:
                payload = json.loads(message.data)
                op, data = payload["op"], payload.get("d")
            except (ValueError, KeyError, TypeError):
                await connection.close(DECODE_ERROR, b"Error while decoding payload.")
                break
            handler = OPCODES.get(op)
            if handler is None:
                await connection.close(UNKNOWN_OPCODE, b"Unknown opcode.")
                break
            session = await handler(state, connection, session, data)
    finally:
        state.connections.discard(connection)
        if session is not None and session.connection is connection:
            session.connection = None
            if ws.close_code in (1000, 1001) and not connection.closed_by_server:
                # As on Discord, a clean close (1000/1001) ends the session: no RESUME after it.
                # (discord.py's close() races its reader and usually sends 4000: resumable.)
                state.end_session(session.id)
        state.changed()
        await connection.stop()
    return ws


async def _heartbeat(
    state: ServerState, connection: Connection, session: GatewaySession | None, data: Any
) -> GatewaySession | None:
    shard = None if session is None else session.shard
    delay = state.ack_delays.get(shard, 0.0) if session is not None else 0.0
    if delay > 0:  # a slow link for this shard: the client measures `delay` s of latency
        asyncio.get_running_loop().call_later(delay, _acknowledge, state, connection, shard)
    else:
        _acknowledge(state, connection, shard)
    return session


def _acknowledge(state: ServerState, connection: Connection, shard: tuple[int, int] | None) -> None:
    connection.send({"op": HEARTBEAT_ACK})
    state.heartbeat_acks[shard] = state.heartbeat_acks.get(shard, 0) + 1
    state.changed()


async def _identify(
    state: ServerState, connection: Connection, session: GatewaySession | None, data: Any
) -> GatewaySession | None:
    if session is not None:
        await connection.close(ALREADY_AUTHENTICATED, b"Already authenticated.")
        return session
    if data.get("token") != state.token:
        await connection.close(AUTHENTICATION_FAILED, b"Authentication failed.")
        return None
    intents = data.get("intents", 0)
    if not isinstance(intents, int) or intents < 0 or intents & ~KNOWN_INTENTS:
        await connection.close(INVALID_INTENTS, b"Invalid intent(s).")
        return None
    if intents & PRIVILEGED_INTENTS and not state.privileged_intents:
        await connection.close(DISALLOWED_INTENTS, b"Disallowed intent(s).")
        return None
    try:
        shard = parse_shard(data.get("shard"))
    except ValueError:
        await connection.close(INVALID_SHARD, b"Invalid shard.")
        return None
    verdict = state.session_start_limit.identify(0 if shard is None else shard[0])
    refusal = _IDENTIFY_REFUSALS.get(verdict)
    if refusal is not None:
        state.refused_identifies.append(shard)
        _log.info("IDENTIFY of shard %s refused: %s", shard, verdict.value)
        await refusal(connection)
        state.changed()
        return None
    session = GatewaySession(intents, shard)
    session.connection = connection
    state.open_session(session)
    _send_ready(state, session)
    await connection.flush()
    session.ready = True
    state.changed()
    return session


async def _identified_too_soon(connection: Connection) -> None:
    # As Discord: Invalid Session, not resumable; the client waits and identifies again.
    connection.send({"op": INVALID_SESSION, "d": False})
    await connection.flush()


async def _session_starts_exhausted(connection: Connection) -> None:
    # Discord resets the token of a bot that used up its session starts.
    await connection.close(AUTHENTICATION_FAILED, b"Authentication failed.")


_IDENTIFY_REFUSALS: dict[IdentifyVerdict, Callable[[Connection], Awaitable[None]]] = {
    IdentifyVerdict.TOO_SOON: _identified_too_soon,
    IdentifyVerdict.EXHAUSTED: _session_starts_exhausted,
}


def _send_ready(state: ServerState, session: GatewaySession) -> None:
    """READY and a GUILD_CREATE per guild, listing only the guilds of the session's shard."""
    guilds = [guild for guild in state.bot_guilds() if session.receives(guild.id)]
    ready = {
        "v": 10,
        "user": state.bot_user.to_json() | {"verified": True, "mfa_enabled": False},
        "guilds": [{"id": str(guild.id), "unavailable": True} for guild in guilds],
        "session_id": session.id,
        "session_type": "normal",
        "resume_gateway_url": state.gateway_url,
        "application": {"id": str(state.application_id), "flags": state.application_flags},
        "private_channels": [],
        "relationships": [],
        "presences": [],
        "user_settings": {},
        "geo_ordered_rtc_regions": [],
        "_trace": ["genbot-loopback"],
    }
    if session.shard is not None:
        ready["shard"] = list(session.shard)
    session.dispatch("READY", ready)
    for guild in guilds:
        session.dispatch("GUILD_CREATE", guild.to_json(state.bot_user.id))


async def _resume(
    state: ServerState, connection: Connection, session: GatewaySession | None, data: Any
) -> GatewaySession | None:
    found = state.sessions.get(str(data.get("session_id")))
    seq = int(data.get("seq") or 0)
    valid = found is not None and data.get("token") == state.token and session is None
    if found is None or not valid or found.missed_since(seq) is None:
        connection.send({"op": INVALID_SESSION, "d": False})
        return session
    if found.connection is not None and found.connection is not connection:
        await found.connection.close(4000, b"session resumed elsewhere")
    # Attach and take the missed events with no await in between, so none falls in a gap.
    missed = found.missed_since(seq) or []
    found.connection = connection
    state.resumes += 1
    connection.send_all(missed)
    found.dispatch("RESUMED", {"_trace": ["genbot-loopback"]})
    await connection.flush()
    state.changed()
    return found


async def _request_members(
    state: ServerState, connection: Connection, session: GatewaySession | None, data: Any
) -> GatewaySession | None:
    if session is None:
        await connection.close(NOT_AUTHENTICATED, b"Not authenticated.")
        return None
    guild = state.guilds.get(int(data["guild_id"]))
    members = [] if guild is None else list(guild.members.values())
    query = (data.get("query") or "").lower()
    user_ids = {int(user_id) for user_id in data.get("user_ids") or []}
    if user_ids:
        members = [m for m in members if m.user.id in user_ids]
    elif query:
        members = [m for m in members if m.user.name.lower().startswith(query)]
    limit = int(data.get("limit") or 0)
    if limit:
        members = members[:limit]
    found_ids = {m.user.id for m in members}
    chunk: dict[str, Any] = {
        "guild_id": str(data["guild_id"]),
        "members": [m.to_json() for m in members],
        "chunk_index": 0,
        "chunk_count": 1,
        "not_found": [str(user_id) for user_id in user_ids - found_ids],
    }
    if data.get("nonce") is not None:
        chunk["nonce"] = data["nonce"]
    session.dispatch("GUILD_MEMBERS_CHUNK", chunk)
    return session


async def _ignore(
    state: ServerState, connection: Connection, session: GatewaySession | None, data: Any
) -> GatewaySession | None:
    return session


OpHandler = Callable[
    ["ServerState", Connection, GatewaySession | None, Any], Awaitable[GatewaySession | None]
]

# What the client may send, by opcode; each handler returns the connection's session after it.
OPCODES: dict[int, OpHandler] = {
    HEARTBEAT: _heartbeat,
    IDENTIFY: _identify,
    PRESENCE: _ignore,
    RESUME: _resume,
    REQUEST_MEMBERS: _request_members,
}
