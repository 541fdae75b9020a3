"""``genbot doctor``: check a set-up before running the bot, one line per check.

The checks, in order: the config is valid; the token logs in; the application has the Message
Content and Server Members intents switched on (its flags); in every server the bot is in, it
has the permissions it needs in the text channels it will use; the model, and each named model
(``[models.NAME]``, a line ``model NAME`` each), loads or its server answers ``/models``.
Then the invite URL with exactly the permissions genbot needs.

Every check ends in a :class:`Finding`: ``OK``, ``WARN`` (worth a look, not an error), ``FAIL``
(with what to do) or ``INFO``. The decisions are pure functions of what Discord and the model
server answered (:func:`missing_intents`, :func:`missing_permissions`, :func:`guild_finding`);
:func:`diagnose` only fetches, over Discord's REST API (no gateway connection: the bot's
running instance, if any, is not disturbed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from genbot.access import AccessList
from genbot.profiles import model_settings
from genbot.reload import SettingsSource, token_from_env
from genbot.settings import Settings, SettingsError

if TYPE_CHECKING:
    from genbot.streaming import Streamer

__all__ = [
    "NEEDED_PERMISSIONS",
    "ChannelView",
    "Finding",
    "Report",
    "Status",
    "check_model",
    "diagnose",
    "guild_finding",
    "invite_url",
    "missing_intents",
    "missing_permissions",
    "models_finding",
    "needed_permissions",
]

_log = logging.getLogger(__name__)

#: What a failed request to Discord raises (asyncio's TimeoutError is its own class on 3.10).
_REQUEST_FAILURES = (
    discord.HTTPException,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
)

PORTAL = "https://discord.com/developers/applications"

#: What the bot needs in a channel it chats in: discord.Permissions flag -> the name Discord's
#: settings show.
NEEDED_PERMISSIONS: dict[str, str] = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "read_message_history": "Read Message History",
    "create_public_threads": "Create Public Threads",
    "send_messages_in_threads": "Send Messages in Threads",
    "attach_files": "Attach Files",
}

#: The privileged intents genbot asks for: (ApplicationFlags flags that grant it, its name).
NEEDED_INTENTS: tuple[tuple[tuple[str, str], str], ...] = (
    (("gateway_message_content", "gateway_message_content_limited"), "Message Content Intent"),
    (("gateway_guild_members", "gateway_guild_members_limited"), "Server Members Intent"),
)

#: Channel names shown per problem before "and N more".
_SHOWN = 5


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"
    INFO = "INFO"


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``STATUS check: text``."""

    status: Status
    check: str
    text: str

    def line(self) -> str:
        return f"{self.status.value:<4} {self.check}: {self.text}"


@dataclass
class Report:
    """Every finding, in order; ``exit_code`` is 1 when one failed, else 0."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status is Status.FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def find(self, check: str) -> Finding | None:
        """The first finding of ``check`` (e.g. ``"token"``), or ``None``."""
        return next((f for f in self.findings if f.check == check), None)


@dataclass(frozen=True)
class ChannelView:
    """A text channel and the bot's permissions there."""

    id: int
    name: str
    permissions: discord.Permissions


# -- the decisions -------------------------------------------------------------------------------


def needed_permissions() -> discord.Permissions:
    """The permissions genbot needs (and its invite URL asks for)."""
    return discord.Permissions(**dict.fromkeys(NEEDED_PERMISSIONS, True))


def invite_url(application_id: int) -> str:
    """The URL that adds the bot to a server with exactly :func:`needed_permissions`, and its
    slash commands (scopes ``bot applications.commands``).

    Parameters
    ----------
    application_id:
        The application's id (its client id).
    """
    return discord.utils.oauth_url(
        application_id,
        permissions=needed_permissions(),
        scopes=("bot", "applications.commands"),
    )


def missing_intents(flags: discord.ApplicationFlags) -> list[str]:
    """The names of the privileged intents genbot needs that ``flags`` do not grant."""
    return [
        name
        for granting, name in NEEDED_INTENTS
        if not any(getattr(flags, flag) for flag in granting)
    ]


def missing_permissions(permissions: discord.Permissions) -> list[str]:
    """The names of the needed permissions that ``permissions`` lack."""
    return [name for flag, name in NEEDED_PERMISSIONS.items() if not getattr(permissions, flag)]


def _names(channels: Sequence[ChannelView]) -> str:
    shown = ", ".join(f"#{c.name}" for c in channels[:_SHOWN])
    more = len(channels) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def guild_finding(
    guild: str, channels: Iterable[ChannelView], listed: AccessList | None = None
) -> Finding:
    """What the bot's permissions in a server's text channels mean.

    The channels it will use are those it can see, and those the ``channels`` setting
    whitelists (seen or not), except the ones it blacklists: in each it needs every permission
    of :data:`NEEDED_PERMISSIONS`. A server where it sees no channel at all fails too.

    Parameters
    ----------
    guild:
        The server's name.
    channels:
        Its text channels, with the bot's permissions in each.
    listed:
        The ``channels`` setting, parsed.
    """
    listed = listed or AccessList()
    check = f"server {guild!r}"
    channels = [c for c in channels if not listed.blacklists(c.id)]
    used = [c for c in channels if c.permissions.view_channel or listed.whitelists(c.id)]
    if not used:
        return Finding(
            Status.FAIL,
            check,
            "the bot can see no text channel: give its role View Channel in the channels it "
            "should chat in",
        )
    lacking: dict[tuple[str, ...], list[ChannelView]] = {}
    for channel in used:
        missing = tuple(missing_permissions(channel.permissions))
        if missing:
            lacking.setdefault(missing, []).append(channel)
    if lacking:
        problems = "; ".join(
            f"{_names(where)} {'lacks' if len(where) == 1 else 'lack'} {', '.join(missing)}"
            for missing, where in lacking.items()
        )
        return Finding(
            Status.FAIL,
            check,
            f"{problems}: allow them to the bot's role (Server Settings > Roles) and remove "
            "channel overwrites that deny them (Edit Channel > Permissions)",
        )
    hidden = len(channels) - len(used)
    note = f"; {hidden} hidden from it" if hidden else ""
    return Finding(Status.OK, check, f"the bot can chat in {_names(used)}{note}")


def unknown_channels(listed: AccessList, seen: set[int]) -> Finding | None:
    """A failure naming the whitelisted channels that no server of the bot's has."""
    missing = sorted((listed.whitelist or frozenset()) - seen)
    if not missing:
        return None
    ids = ", ".join(map(str, missing))
    return Finding(
        Status.FAIL,
        "channels",
        f"{ids}: not a text channel of any server the bot is in; fix the 'channels' setting, "
        "or invite the bot to that server",
    )


# -- fetching --------------------------------------------------------------------------------------


async def diagnose(
    source: SettingsSource,
    *,
    token: str | None = None,
    load_model: bool = False,
    timeout: float = 20.0,
    echo: Callable[[Finding], None] | None = None,
) -> Report:
    """Run every check; each finding is passed to ``echo`` as soon as it is known.

    Parameters
    ----------
    source:
        Where the settings come from (reading it also reads the ``.env`` file).
    token:
        The bot token; default: ``DISCORD_TOKEN`` or ``DISCORD_BOT_TOKEN``.
    load_model:
        Load the model and generate one token (a local model may take minutes), instead of
        asking its server for ``/models`` (openai) or trusting the settings check (local file).
    timeout:
        Seconds each request (login, each server's look-up, the model server) may take.
    """
    report = Report()

    def add(finding: Finding) -> None:
        report.findings.append(finding)
        if echo is not None:
            echo(finding)

    settings: Settings | None = None
    try:
        settings = source.load()
        where = source.config or "defaults and environment"
        add(Finding(Status.OK, "config", f"{where}: valid"))
    except SettingsError as error:
        add(Finding(Status.FAIL, "config", f"bad configuration: {error}"))
    await _check_discord(token if token is not None else token_from_env(), settings, add, timeout)
    if settings is None:
        add(Finding(Status.INFO, "model", "not checked: the configuration is not valid"))
    else:
        add(await check_model(settings, load_model=load_model, timeout=timeout))
        for name in settings.models:  # each [models.NAME] a profile or /model may pick
            named = await check_model(
                model_settings(settings, name), load_model=load_model, timeout=timeout
            )
            add(dataclasses.replace(named, check=f"model {name}"))
        for finding in await check_mcp(settings):  # MCP servers (issue 11, part 2)
            add(finding)
    return report


async def _check_discord(
    token: str, settings: Settings | None, add: Callable[[Finding], None], timeout: float
) -> None:
    if not token:
        add(
            Finding(
                Status.FAIL,
                "token",
                f"set DISCORD_TOKEN to your bot's token (from its Bot page at {PORTAL}), in the "
                "environment or in a .env file here",
            )
        )
        return
    client = discord.Client(intents=discord.Intents.default())
    try:
        user = await _login(client, token, add, timeout)
        if user is None:
            return
        app = await asyncio.wait_for(client.application_info(), timeout)
        add(_intents_finding(app))
        await _check_guilds(client, user.id, settings, add, timeout)
        add(Finding(Status.INFO, "invite", invite_url(app.id)))
    except _REQUEST_FAILURES as error:
        add(Finding(Status.FAIL, "discord", f"a request failed ({_reason(error)}): run it again"))
    finally:
        await client.close()


def _reason(error: BaseException) -> str:
    if isinstance(error, (TimeoutError, asyncio.TimeoutError)):
        return "no answer in time"
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


async def _login(
    client: discord.Client, token: str, add: Callable[[Finding], None], timeout: float
) -> discord.ClientUser | None:
    try:
        await asyncio.wait_for(client.login(token), timeout)
    except discord.LoginFailure:
        line = (
            "Discord refused the token (401 Unauthorized): set DISCORD_TOKEN to the token from "
            f"your application's Bot page at {PORTAL} (Reset Token makes a new one)"
        )
        add(Finding(Status.FAIL, "token", line))
        return None
    except _REQUEST_FAILURES as error:
        line = f"cannot reach Discord ({_reason(error)}): check the network connection"
        add(Finding(Status.FAIL, "token", line))
        return None
    assert client.user is not None
    add(Finding(Status.OK, "token", f"logs in as {client.user} (id {client.user.id})"))
    return client.user


def _intents_finding(app: discord.AppInfo) -> Finding:
    missing = missing_intents(app.flags)
    if missing:
        return Finding(
            Status.FAIL,
            "intents",
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} off: switch "
            f"{'it' if len(missing) == 1 else 'them'} on at {PORTAL}/{app.id}/bot "
            "(Privileged Gateway Intents)",
        )
    names = " and ".join(name for _, name in NEEDED_INTENTS)
    return Finding(Status.OK, "intents", f"{names} are on")


async def _check_guilds(
    client: discord.Client,
    bot_id: int,
    settings: Settings | None,
    add: Callable[[Finding], None],
    timeout: float,
) -> None:
    listed = AccessList.parse(None if settings is None else settings.channels, "channels")
    partial = [g async for g in client.fetch_guilds(limit=None)]
    if not partial:
        add(Finding(Status.WARN, "servers", "the bot is in no server yet: invite it (URL below)"))
    seen: set[int] = set()
    for each in partial:
        try:
            views = await asyncio.wait_for(_channel_views(client, each.id, bot_id), timeout)
        except _REQUEST_FAILURES as error:
            why = f"its channels could not be read ({_reason(error)}): run it again"
            add(Finding(Status.FAIL, f"server {each.name!r}", why))
            continue
        seen.update(view.id for view in views)
        add(guild_finding(each.name, views, listed))
    unknown = unknown_channels(listed, seen)
    if unknown is not None:
        add(unknown)


async def _channel_views(client: discord.Client, guild_id: int, bot_id: int) -> list[ChannelView]:
    """The guild's text channels with the bot's permissions there, as discord.py computes
    them (roles, administrator, owner, overwrites)."""
    guild = await client.fetch_guild(guild_id, with_counts=False)
    channels = await guild.fetch_channels()
    member = await guild.fetch_member(bot_id)
    return [
        ChannelView(channel.id, channel.name, channel.permissions_for(member))
        for channel in sorted(channels, key=lambda c: (c.position, c.id))
        if isinstance(channel, discord.TextChannel)
    ]


# -- the model -------------------------------------------------------------------------------------


async def check_model(settings: Settings, *, load_model: bool, timeout: float) -> Finding:
    """Whether the configured model can be used: loaded with ``load_model``; else its server's
    ``/models`` (openai), or the settings check's word for a local model.

    Parameters
    ----------
    settings:
        The loaded settings (backend, model, base_url).
    load_model:
        Start the model and generate one token.
    timeout:
        Seconds the model server may take to answer ``/models``.
    """
    if load_model:
        return await _load_model(settings)
    if settings.backend == "openai":
        return await _ask_models(settings, timeout)
    what = repr(settings.model) if settings.model else "the embedded SmolLM2"
    return Finding(
        Status.OK,
        "model",
        f"{settings.backend}: {what} is there (--load-model loads it and generates a token)",
    )


async def _ask_models(settings: Settings, timeout: float) -> Finding:
    from genbot.models.openai import api_key_from_env

    url = settings.base_url.rstrip("/") + "/models"
    key = api_key_from_env()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        http_session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout), trust_env=True
        )
        async with http_session as http:
            async with http.get(url, headers=headers) as response:
                status = response.status
                body: Any = await response.json(content_type=None) if status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError, ValueError) as error:
        return Finding(
            Status.FAIL,
            "model",
            f"nothing answers at {settings.base_url} ({_reason(error)}): start the model "
            "server, or set base_url to where it listens",
        )
    return models_finding(settings, status, body)


def models_finding(settings: Settings, status: int, body: Any) -> Finding:
    """What a model server's answer to ``GET /models`` means.

    Parameters
    ----------
    settings:
        The settings (base_url, model).
    status, body:
        The HTTP status and the JSON body (``None`` when there was none).
    """
    url = settings.base_url
    if status in (401, 403):
        why = "refused the API key: set GENBOT_API_KEY (or OPENAI_API_KEY)"
        return Finding(Status.FAIL, "model", f"the model server at {url} {why}")
    data = body.get("data") if isinstance(body, dict) else None
    if status != 200 or not isinstance(data, list):
        return Finding(
            Status.FAIL,
            "model",
            f"{url}/models answered {status} without a model list: set base_url to the "
            "server's OpenAI-compatible address (usually ending in /v1)",
        )
    ids = [str(m.get("id")) for m in data if isinstance(m, dict)]
    served = ", ".join(ids[:_SHOWN]) or "none"
    if settings.model and settings.model not in ids:
        return Finding(
            Status.WARN,
            "model",
            f"the model server at {url} answers but does not list model {settings.model!r} "
            f"(it serves: {served}); most servers refuse a model they do not list",
        )
    return Finding(Status.OK, "model", f"the model server at {url} answers (serves: {served})")


async def _load_model(settings: Settings) -> Finding:
    from genbot.chatbot import make_backend, warm_up
    from genbot.cli import model_problem
    from genbot.streaming import StreamError

    backend: Streamer = make_backend(settings)
    try:
        backend.start_process()
        seconds = await warm_up(backend)
    except (StreamError, TimeoutError) as error:
        return Finding(Status.FAIL, "model", model_problem(settings, error))
    finally:
        await asyncio.to_thread(backend.close)
    what = settings.model or "the embedded SmolLM2"
    return Finding(Status.OK, "model", f"{what} loaded and answered in {seconds:.1f} s")


async def check_mcp(settings: Settings) -> list[Finding]:
    """Start each MCP server of ``settings.mcp`` (bounded by its ``start_timeout``), list its
    tools and stop it: one finding per server, ``mcp NAME``.

    Parameters
    ----------
    settings:
        The settings naming the servers.
    """
    from genbot.mcp import McpServers

    async with McpServers(settings.mcp, max_restarts=0) as servers:
        status = servers.status()
        names = [tool.name for tool in servers.tools()]
    findings = []
    for name in settings.mcp:
        if not status[name].startswith("running"):
            findings.append(Finding(Status.FAIL, f"mcp {name}", status[name]))
            continue
        tools = [tool for tool in names if tool.startswith(f"{name}__")]
        shown = ", ".join(tools[:_SHOWN]) + (
            f" and {len(tools) - _SHOWN} more" if len(tools) > _SHOWN else ""
        )
        findings.append(Finding(Status.OK, f"mcp {name}", f"{status[name]}: {shown or 'no tools'}"))
    return findings
