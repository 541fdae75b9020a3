"""Settings of the ready-made bot: one dataclass is the single source for the TOML config file,
the environment variables, the CLI help and the README table.

Each field carries its description, default and check (:func:`setting`). Values come, later
ones winning, from the defaults, a TOML file, ``GENBOT_<NAME>`` environment variables and
``--set name=value`` on the command line. Every value the running bot could not use is refused
when it is loaded (:meth:`Settings.load`), with a one-line :class:`SettingsError` that names
where the value came from, the setting and the reason: ``<source>: setting 'x': <reason>, got
<value>``. The checks that need several settings (a llama.cpp model must be a GGUF file, the
transformers backend needs a model) run once every source is applied.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from genbot.mcp import McpServerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

#: The ready-made bot's system prompt (setting ``system_prompt``); no backend adds one of its own.
#: Chosen by bench/reply_quality.py: the embedded SmolLM2-135M answered on topic 77 % of the time
#: with it, against 56 % with the longer Discord-specific prompt it replaced (see the README).
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's question."

__all__ = [
    "BACKENDS",
    "DEFAULT_SYSTEM_PROMPT",
    "Settings",
    "SettingsError",
    "sees_images",
    "settings_help",
    "settings_table",
]

_log = logging.getLogger(__name__)

BACKENDS = ("llamacpp", "transformers", "openai")

#: The packages each backend imports, and how to install them.
BACKEND_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "llamacpp": (("xllamacpp",), "pip install 'genbot[llama]'"),
    "transformers": (("transformers", "torch"), "pip install 'genbot[transformers]'"),
    "openai": (("openai",), "pip install 'genbot[openai]'"),
}

#: ``GENBOT_*`` environment variables that are not settings (read by a backend).
OTHER_VARIABLES = frozenset(
    # the model server's key, and the variables of the repository's own scripts/install
    {"GENBOT_API_KEY", "GENBOT_PYTHON", "GENBOT_PYTHONS", "GENBOT_VENV", "GENBOT_TORCH_VERSION"}
)

#: The largest Discord id (a snowflake is an unsigned 64-bit integer).
MAX_ID = 2**64 - 1
#: llama.cpp reads the seed 2**32 - 1 as "random", so the largest fixed seed is one less.
MAX_SEED = 2**32 - 2
#: The largest daily token quota.
MAX_TOKENS = 10**12
#: The config file's tables (not settings with a value): see genbot.profiles.
TABLES = ("models", "profiles", "places")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

Check = Callable[[Any], "str | None"]


class SettingsError(ValueError):
    """A setting has a bad value; the one-line message names the source and the setting."""


def setting(
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    parse: Callable[[Any, str], Any] | None = None,
    table: bool = False,
) -> Any:
    """A dataclass field that carries its description (and an optional check) as metadata.

    Parameters
    ----------
    default:
        The default value; a list or dict is copied for each instance.
    help:
        The description shown by ``--help``, ``genbot settings`` and the README table.
    check:
        Returns the reason a (coerced) value is refused, or ``None`` when it is fine.
    parse:
        For a structured setting (``mcp``): ``parse(raw, source)`` returns the value or
        raises :class:`SettingsError` itself (instead of the type's coercion and ``check``).
    table:
        Read only from tables of the config file (``[profiles.NAME]``...), not an environment
        variable, ``--set`` value or row of the settings table; checked by
        :func:`genbot.profiles.read_tables`.
    """
    metadata = {"help": help, "check": check, "parse": parse, "table": table}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# -- checks of one value: each returns the reason it is refused, or None ---------------------


def _between(low: float, high: float, *, low_open: bool = False) -> Check:
    """Accept ``low <= value <= high`` (``low < value`` with ``low_open``)."""
    shown = f"in ({low:g}, {high:g}]" if low_open else f"from {low:g} to {high:g}"

    def check(value: Any) -> str | None:
        above = value > low if low_open else value >= low
        return None if above and value <= high else f"must be {shown}"

    return check


def _choice(choices: tuple[str, ...], *, fold: bool = False) -> Check:
    def check(value: Any) -> str | None:
        ok = (value.upper() if fold else value) in choices
        return None if ok else f"must be one of {', '.join(choices)}"

    return check


#: The values of the ``reasoning`` setting (see :mod:`genbot.reasoning`).
REASONING_MODES = ("hide", "spoiler", "file")


def _seed(value: Any) -> str | None:
    return None if value == -1 or 0 <= value <= MAX_SEED else f"must be -1 or 0 to {MAX_SEED}"


def _base_url(value: Any) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as error:
        return f"must be an http(s) URL ({error})"
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        return "must be an http(s) URL such as http://127.0.0.1:8000/v1"
    return None


def _ignore_prefix(value: Any) -> str | None:
    if value[:1].isspace():
        return "must not start with a space or line break (Discord strips them from messages)"
    return None if len(value) <= 100 else "must be at most 100 characters"


def _stop(value: Any) -> str | None:
    if any(item == "" for item in value):
        return "must not hold an empty string (it would end every reply at once)"
    return None if len(value) <= 32 else "must hold at most 32 strings"


def _shard_ids(value: Any) -> str | None:
    if any(item < 0 for item in value):
        return "must be shard numbers from 0"
    return None if len(set(value)) == len(value) else "must not repeat a shard"


def _redis_url(value: Any) -> str | None:
    if not value or (urlsplit(value).scheme in ("redis", "rediss", "unix") and " " not in value):
        return None
    return "must be a redis://, rediss:// or unix:// URL, or empty"


#: A host name: dot-separated labels of letters, digits and inner hyphens, 63 at most each.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def _host(value: Any) -> str | None:
    """An IP address (v4 or v6, no brackets) or a host name: refused here rather than when the
    server binds (a port, a scheme, brackets or a dotted quad out of range)."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    numeric = re.fullmatch(r"[0-9.]+", value) is not None  # a dotted quad that is no address
    if len(value) <= 253 and not numeric and _HOST_NAME.fullmatch(value):
        return None
    return "must be an IP address or host name such as 127.0.0.1"


def _max_chars(limit: int) -> Check:
    return lambda value: None if len(value) <= limit else f"must be at most {limit} characters"


def _tool_names(value: Any) -> str | None:
    from genbot.tools import ALL_TOOLS, NAME_PATTERN

    bad = [n for n in value if n != ALL_TOOLS and NAME_PATTERN.fullmatch(n) is None]
    if bad:
        return (
            f"must be tool names (letters, digits, '_', '-'; at most 64) or \"*\", not {bad[0]!r}"
        )
    return None


def _rate(value: Any) -> str | None:
    from genbot.quota import Rate

    try:
        Rate.parse(value)
    except ValueError as error:
        return str(error)
    return None


def _tokens(value: Any) -> str | None:
    return None if 0 <= value <= MAX_TOKENS else f"must be from 0 (no quota) to {MAX_TOKENS}"


def _data_dir(value: Any) -> str | None:
    """A folder that exists and is writable, or can be created (its nearest existing parent
    is a writable folder)."""
    if not value.strip():
        return "must name a folder"
    path = Path(value).expanduser()
    if path.exists():
        if not path.is_dir():
            return "is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "is a folder the bot cannot write"
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not a folder the bot can write"
    return None


def _parse_mcp(raw: Any, source: str) -> dict[str, McpServerConfig]:
    from genbot.mcp import parse_servers

    return parse_servers(raw, source)


def _prompt(value: Any) -> str | None:
    """At most 100000 characters, and only the known placeholders (genbot.profiles)."""
    from genbot.profiles import prompt_problem

    return _max_chars(100_000)(value) or prompt_problem(value)


def _permission(value: Any) -> str | None:
    import discord

    if not value or value in discord.Permissions.VALID_FLAGS:
        return None
    return "must be a Discord permission such as manage_channels, or empty (admins only)"


#: The per-reply settings: the keys a ``[profiles.NAME]`` table may set (with ``model``, which
#: names a ``[models.NAME]`` table there). A new per-reply setting is one more name here.
PROFILE_FIELDS = (
    "system_prompt",
    "max_new_tokens",
    "temperature",
    "top_p",
    "repeat_penalty",
    "stop",
    "seed",
    "context_limit",
    "context_chars",
    "stall_timeout",
    "edit_interval",
    "buttons",
    "reply_mode",
    "context_mode",
    "reanswer_window",
    "tools",
    "admin_tools",
    "max_tool_steps",
    "tool_timeout",
    "tool_output_chars",
    "reasoning",
    "attachment_max_bytes",
    "reasoning_hold",
    "memory",
    "context_tokens",
)


# -- the settings ----------------------------------------------------------------------------


@dataclass
class Settings:
    """What `genbot run` and `genbot playground` can be told.

    Constructing it directly checks nothing; :meth:`load` and :meth:`updated` check every value.
    """

    backend: str = setting(
        "llamacpp",
        "Model runtime: llamacpp (embedded default), transformers, "
        "or openai (any OpenAI-compatible server).",
        check=_choice(BACKENDS),
    )
    model: str = setting(
        "",
        "GGUF file (llamacpp; checked at start), Hugging Face name or local folder "
        "(transformers; required), or model name (openai). Empty: the embedded "
        "SmolLM2-135M-Instruct (llamacpp), the server's first model (openai).",
    )
    base_url: str = setting(
        "http://127.0.0.1:8000/v1",
        "Base URL (http or https) of the OpenAI-compatible server (openai backend). The API "
        "key comes from GENBOT_API_KEY, else OPENAI_API_KEY.",
        check=_base_url,
    )
    parallel: int = setting(
        4,
        "How many chats the model generates for at once "
        "(llama.cpp slots, transformers batch, concurrent HTTP requests); 1 to 64.",
        check=_between(1, 64),
    )
    system_prompt: str = setting(
        DEFAULT_SYSTEM_PROMPT,
        "The system prompt put before the chat (the default is the one that kept the embedded "
        "model most on topic in bench/reply_quality.py); empty: none. Placeholders: {date}, "
        "{time}, {server}, {channel}, {bot}; write {{ and }} for literal braces.",
        check=_prompt,
    )
    max_new_tokens: int = setting(
        256, "Most tokens generated for one reply; 1 to 8192.", check=_between(1, 8192)
    )
    temperature: float = setting(
        0.2, "Sampling temperature, 0 to 2; 0 is greedy.", check=_between(0, 2)
    )
    top_p: float = setting(
        0.9,
        "Nucleus sampling: keep the smallest token set with this probability mass; (0, 1].",
        check=_between(0, 1, low_open=True),
    )
    repeat_penalty: float = setting(
        1.1,
        "Penalty on repeated tokens, (0, 2]; 1 disables it.",
        check=_between(0, 2, low_open=True),
    )
    stop: list[str] = setting(
        [], "Strings that end a reply when generated (at most 32, none empty).", check=_stop
    )
    seed: int = setting(-1, f"Sampling seed, 0 to {MAX_SEED}; -1 picks a random one.", check=_seed)
    context_limit: int = setting(
        16,
        "Most chat messages read as the context of a reply; 1 to 1000.",
        check=_between(1, 1000),
    )
    context_chars: int = setting(
        6000,
        "Character budget of the context sent to the model (the newest messages are kept); "
        "1 to 1000000.",
        check=_between(1, 1_000_000),
    )
    users: Any = setting(
        None,
        "Users allowed to chat: a list of ids (whitelist) or a table "
        "with whitelist/blacklist. Empty: everyone.",
    )
    roles: Any = setting(
        None, "Roles allowed to chat in servers, same format as users. Empty: every member."
    )
    admins: Any = setting(
        None, "Users who may run admin commands (/shutdown, /reload). Empty: nobody."
    )
    channels: Any = setting(
        None,
        "Channels where every message wakes the bot (list of ids "
        "or a whitelist/blacklist table). Empty: DMs, the bot's threads, "
        "and messages that mention or reply to the bot.",
    )
    ignore_prefix: str = setting(
        "!",
        "Messages starting with this are invisible to the bot (at most 100 characters, no "
        "leading space). Empty: no message is ignored.",
        check=_ignore_prefix,
    )
    allow_bots: bool = setting(False, "Let other bots' messages wake the bot.")
    sync_commands: bool = setting(True, "Register the slash commands with Discord at start-up.")
    queue_timeout: float = setting(
        300.0,
        "Most seconds a chat waits for a free model slot; past it the user is told the bot is "
        "busy. (0, 86400].",
        check=_between(0, 86400, low_open=True),
    )
    stall_timeout: float = setting(
        60.0,
        "Most seconds a reply may go without new text from the model; past it the reply ends "
        "with a visible note. 1 to 86400.",
        check=_between(1, 86400),
    )
    edit_interval: float = setting(
        1.0,
        "Seconds between edits of a streamed reply, per channel; 0.2 to 10 (Discord allows "
        "about 5 edits per 5 s in a channel).",
        check=_between(0.2, 10),
    )
    log_level: str = setting(
        "INFO",
        "Logging level: DEBUG (also shows the traceback of a failed start), INFO, WARNING or "
        "ERROR.",
        check=_choice(LOG_LEVELS, fold=True),
    )
    connect_timeout: float = setting(
        10.0,
        "Most seconds to open a connection to the model server (openai backend). (0, 3600].",
        check=_between(0, 3600, low_open=True),
    )
    first_token_timeout: float = setting(
        60.0,
        "Most seconds from sending a chat to the model server to the first token of its reply, "
        "retries included (openai backend). (0, 86400].",
        check=_between(0, 86400, low_open=True),
    )
    token_timeout: float = setting(
        30.0,
        "Most seconds between two tokens from the model server once a reply streams (openai "
        "backend); past it the request is closed and the reply ends with a note. (0, 86400].",
        check=_between(0, 86400, low_open=True),
    )
    discord_requests_per_second: int = setting(
        40,
        "Budget of Discord requests per second for the replies of the whole bot process, "
        "shared fairly by the channels streaming (each edits less often as more stream); 1 to "
        "1000. Discord allows a bot about 50 in all.",
        check=_between(1, 1000),
    )
    # -- sharding (see genbot.cluster) --
    shard_count: int = setting(
        0,
        "Shards of the whole bot (discord.py's AutoShardedClient); 0: one unsharded connection. "
        "Only the process running shard 0 syncs the slash commands.",
        check=_between(0, 100_000),
    )
    shard_ids: tuple[int, ...] = setting(
        (),
        "The shards this process runs, e.g. [0, 1] (needs shard_count); empty: all of them.",
        check=_shard_ids,
    )
    cluster_redis: str = setting(
        "",
        "Redis URL (redis://host:port/db, rediss:// or unix://) of an identify lock shared by "
        "the bot's processes, so that starting together they keep Discord's identify rate "
        "limit (needs genbot[cluster]); empty: none.",
        check=_redis_url,
    )
    data_dir: str = setting(
        "./genbot-data",
        "Folder of the bot's SQLite database (usage counts, /model and /persona choices, "
        "memory; created at start if missing); a relative path is from the working directory.",
        check=_data_dir,
    )
    user_rate: str = setting(
        "",
        "Most chats one user may start per period, '<count>/<period>' with period second, "
        "minute, hour or day (e.g. '6/minute'); past it the user is told once. Empty: no "
        "limit. Admins are exempt.",
        check=_rate,
    )
    user_tokens_per_day: int = setting(
        0,
        "Most tokens of replies one user may get per UTC day (all servers and DMs); past it "
        "the user is told once. 0: no quota; up to 10^12. Admins are exempt.",
        check=_tokens,
    )
    server_tokens_per_day: int = setting(
        0,
        "Most tokens of replies per server per UTC day; past it each user asking is told "
        "once. 0: no quota; up to 10^12. Admins are exempt.",
        check=_tokens,
    )
    metrics_port: int = setting(
        0,
        "TCP port serving Prometheus metrics at /metrics (chats, model, Discord requests, "
        "errors; see the README); 1 to 65535, 0: off.",
        check=_between(0, 65535),
    )
    metrics_host: str = setting(
        "127.0.0.1",
        "Address the metrics are served on: 127.0.0.1 is this machine only; 0.0.0.0 (all "
        "interfaces) lets a Prometheus elsewhere, or outside a container, scrape them.",
        check=_host,
    )
    # -- Stop and Regenerate (issue 8, buttons) --
    buttons: bool = setting(
        True,
        "Show a Stop button under a reply while it is written, and Regenerate once it is done "
        "(for the asker and admins).",
    )
    # -- ways to converse (issue 8, section 3): per-reply settings --
    reply_mode: str = setting(
        "reply",
        "Where an answer goes: reply (in place, replying to the question) or thread (a "
        "question in a server's text channel opens a thread from its message and the bot "
        "answers there; in its threads every message wakes it). DMs and threads: in place.",
        check=_choice(("reply", "thread")),
    )
    context_mode: str = setting(
        "history",
        "What the model sees: history (the channel's recent messages) or reply_chain (the "
        "chain of replies the question belongs to, followed back through Discord replies).",
        check=_choice(("history", "reply_chain")),
    )
    reanswer_window: float = setting(
        600.0,
        "Seconds after a question was sent during which editing it makes the bot answer it "
        "again, replacing its reply in place; 0: off. 0 to 86400.",
        check=_between(0, 86400),
    )
    # -- tools (issue 11, the tool loop): per reply --
    tools: list[str] = setting(
        ["*"],
        "Names of the tools the model may call (Python tools of the bot, MCP tools as "
        'NAME__tool); "*" (the default): every registered tool; empty: none.',
        check=_tool_names,
    )
    admin_tools: list[str] = setting(
        [],
        "Names of tools only the bot's admins may use (besides tools made admin-only in "
        "code); a non-admin's chat is not offered them.",
        check=_tool_names,
    )
    max_tool_steps: int = setting(
        4,
        "Most rounds of tool calls in one reply, 1 to 32; then the model is asked once more "
        "without tools, to answer with what it has.",
        check=_between(1, 32),
    )
    tool_timeout: float = setting(
        30.0,
        "Most seconds one tool call may run; past it the call fails (a line in the reply and "
        "an error the model reads). (0, 3600]; at most 90% of stall_timeout applies.",
        check=_between(0, 3600, low_open=True),
    )
    tool_output_chars: int = setting(
        4000,
        "Most characters of one tool call's result the model gets (the rest is cut, saying "
        "so); 100 to 1000000.",
        check=_between(100, 1_000_000),
    )
    # -- MCP servers (issue 11, part 2: genbot.mcp) --
    mcp: dict[str, McpServerConfig] = setting(
        {},
        "MCP servers whose tools the model may call: one [mcp.NAME] table each, a stdio server "
        "(command, args, env, cwd) or a streamable-HTTP one (url, headers), with timeout, "
        "start_timeout, tools and admin_only; ${VAR} in env and headers reads the environment "
        "(see the README). Applies at the next start.",
        parse=_parse_mcp,
    )
    # -- attachments, images and reasoning models (issue 8, the media part) --
    reasoning: str = setting(
        "hide",
        "What a reply shows of a reasoning model's thinking (<think> blocks, "
        "reasoning_content), never posted as the answer: hide, spoiler (a ||spoiler|| of at "
        "most 1500 characters before the answer) or file (reasoning.txt attached to the reply).",
        check=_choice(REASONING_MODES),
    )
    attachment_max_bytes: int = setting(
        100_000,
        "Largest text attachment (txt, md, py, json, csv, log, ...) put into the context with "
        "its file name, in bytes; larger or binary files get a short note. 0 to 10^7.",
        check=_between(0, 10_000_000),
    )
    vision: bool = setting(
        False,
        "The model can see images (openai backend: image_url parts; transformers: a "
        "vision-language model). Off: images show as [image: name] in the text. Set by "
        "configuration, never guessed from names.",
    )
    # -- profiles and places (issue 8: profiles, places, /model, /persona; genbot.profiles) --
    choose_permission: str = setting(
        "manage_channels",
        "The Discord permission (in the channel) that lets a member pick the channel's model "
        "and persona with /model and /persona, besides the admins; empty: admins only.",
        check=_permission,
    )
    models: dict[str, dict[str, Any]] = setting(
        {},
        "Named models: [models.NAME] tables of backend, model, base_url, parallel, timeouts.",
        table=True,
    )
    profiles: dict[str, dict[str, Any]] = setting(
        {},
        "Named profiles: [profiles.NAME] tables of per-reply settings and a model name.",
        table=True,
    )
    places: tuple[Any, ...] = setting(
        (),
        "[[places]]: a server, category, channel or thread id with its profile and/or model.",
        table=True,
    )
    # -- memory and token budgets (issue 11, part 3) --
    memory: bool = setting(
        False,
        "Remember across restarts (per reply): a rolling summary of each channel's older "
        "messages and the facts users ask the bot to remember, in the database in data_dir "
        "(see the README's Memory section).",
    )
    memory_days: int = setting(
        30,
        "Days memory is kept: facts and summaries older than this are deleted; 1 to 3650.",
        check=_between(1, 3650),
    )
    context_tokens: int = setting(
        0,
        "Token budget of the context sent to the model, counted with the backend's tokenizer "
        "(an estimate for OpenAI-compatible servers without one); 0: off, context_chars "
        "applies; up to 10000000.",
        check=_between(0, 10_000_000),
    )
    # -- llama.cpp multimodal projector (issue 8, the media part: images to llama.cpp) --
    mmproj: str = setting(
        "",
        "The llamacpp backend's multimodal projector: a GGUF file (e.g. mmproj-model-f16.gguf, "
        "published with the vision model's GGUF). Set: the model sees images (vision need not "
        "be set); empty: images show as [image: name] in the text. Only the llamacpp backend "
        "takes one.",
    )
    # -- issue 8's rough edges (edges8): a think block the prompt opened --
    reasoning_hold: int = setting(
        0,
        "For OpenAI-compatible servers whose reasoning models (Qwen3, DeepSeek-R1) start inside "
        "a <think> the template opened and that do not separate reasoning_content: hold back up "
        "to this many characters of a reply's start (typing shows) until a </think> makes them "
        "reasoning, never posted; more characters or the end make them the answer. 0: off, "
        "replies stream from their first character (llamacpp and transformers read the template "
        "and need no hold). 0 to 100000.",
        check=_between(0, 100_000),
    )

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def names(cls) -> list[str]:
        """The settings a value can be given for (not the config file's tables)."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("table")]

    def updated(self, values: Mapping[str, Any], source: str) -> Settings:
        """A copy with ``values`` applied, each coerced to its field's type and checked.

        Parameters
        ----------
        values:
            Setting names (``-`` may stand for ``_``) to TOML values or environment strings.
        source:
            Where the values come from, put first in error messages.

        Raises
        ------
        SettingsError
            An unknown setting, one given twice, or a value of the wrong type or range.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        spelled: dict[str, str] = {}
        for name, raw in values.items():
            key = str(name).replace("-", "_")
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SettingsError(f"{source}: unknown setting {name!r}{hint}")
            if fields[key].metadata.get("table"):
                raise SettingsError(
                    f"{source}: {name!r} is a table of the config file ([{key}...]), "
                    "not a setting with a value"
                )
            if key in spelled:
                raise SettingsError(
                    f"{source}: setting {key!r} is given twice ({spelled[key]!r} and {name!r})"
                )
            spelled[key] = str(name)
            changes[key] = _coerce(fields[key], raw, source)
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
    ) -> Settings:
        """Defaults, then the TOML file, then ``GENBOT_*`` variables, then ``overrides``.

        The file holds the settings at its top level or in a ``[genbot]`` table; with a
        ``[genbot]`` table nothing else may be at the top level. Every ``GENBOT_*`` variable
        must be a setting (or ``GENBOT_API_KEY``).

        Parameters
        ----------
        path:
            The TOML config file, or ``None`` for none.
        environ:
            The environment to read ``GENBOT_*`` from; default ``os.environ``.
        overrides:
            ``--set`` values by setting name (strings, read as environment variables are).

        Raises
        ------
        SettingsError
            With one line naming the source, the setting and the reason.
        """
        settings = cls()
        sources: dict[str, str] = {}
        tables: dict[str, Any] = {}
        if path is not None:
            data = read_config(path)
            tables = {key: data.pop(key) for key in TABLES if key in data}
            settings = settings.updated(data, str(path))
            sources.update({str(k).replace("-", "_"): str(path) for k in data})
        environ = os.environ if environ is None else environ
        known = {f"GENBOT_{name.upper()}": name for name in cls.names()}
        for variable in sorted(environ):
            if not variable.startswith("GENBOT_") or variable in OTHER_VARIABLES:
                continue
            name = known.get(variable)
            if name is None:
                close = difflib.get_close_matches(variable, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise SettingsError(f"environment variable {variable}: not a genbot setting{hint}")
            source = f"environment variable {variable}"
            settings = settings.updated({name: environ[variable]}, source)
            sources[name] = source
        for name, raw in (overrides or {}).items():
            source = f"--set {name}"
            settings = settings.updated({name: raw}, source)
            sources[str(name).replace("-", "_")] = source
        settings.check_together(sources)
        if tables:
            from genbot.profiles import read_tables

            settings = read_tables(settings, tables, str(path))
        return settings

    def check_together(self, sources: Mapping[str, str] | None = None) -> None:
        """Check what depends on several settings or on the machine: the backend's packages
        are installed, a llama.cpp model is a readable GGUF file (the embedded one is
        installed when ``model`` is empty), the transformers backend has a model.

        Parameters
        ----------
        sources:
            Where each setting came from, for the message; unnamed ones are defaults.

        Raises
        ------
        SettingsError
            Naming the setting, its source and what to do.
        """
        for check in _TOGETHER:
            found = check(self)
            if found is not None:
                name, problem = found
                # a setting left at its default is wrong because of the backend chosen
                given = sources or {}
                source = given.get(name) or given.get("backend") or "default settings"
                raise SettingsError(
                    f"{source}: setting {name!r}: {problem}, got {getattr(self, name)!r}"
                )


# -- reading values --------------------------------------------------------------------------


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings table of a TOML config file: its top level, or its ``[genbot]`` table.

    Parameters
    ----------
    path:
        The file; UTF-8 (a byte-order mark is allowed). An empty file holds no settings.

    Raises
    ------
    SettingsError
        A file that cannot be read, is not UTF-8 or not TOML, or a misshapen ``[genbot]``.
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as error:
        raise SettingsError(f"{path}: no such config file") from error
    except IsADirectoryError as error:
        raise SettingsError(f"{path}: is a directory, not a config file") from error
    except OSError as error:
        raise SettingsError(f"{path}: cannot read the config file: {error.strerror}") from error
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise SettingsError(
            f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "save the config file as UTF-8"
        ) from error
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not valid TOML: {error}") from error
    return data if "genbot" not in data else _genbot_section(path, data)


def _genbot_section(path: str | os.PathLike[str], data: dict[str, Any]) -> dict[str, Any]:
    """The ``[genbot]`` table, with the config's tables beside it (``[mcp.NAME]``,
    ``[models.NAME]``, ``[profiles.NAME]``, ``[[places]]``) added."""
    section = data["genbot"]
    if not isinstance(section, dict):
        raise SettingsError(
            f"{path}: 'genbot' must be a [genbot] table of settings, got {section!r}"
        )
    section = dict(section)
    for key in data:
        if key in _TABLES_BESIDE and key not in section:
            section[key] = data[key]
        elif key != "genbot":
            raise SettingsError(
                f"{path}: top-level key {key!r} beside the [genbot] table: put every setting "
                "inside [genbot] (or [mcp.NAME], [models.NAME], [profiles.NAME] and [[places]] "
                "tables beside it), or drop the [genbot] header"
            )
    return section


#: The tables a config file may have beside its ``[genbot]`` table.
_TABLES_BESIDE = frozenset({"mcp", "models", "profiles", "places"})


def _default(f: dataclasses.Field[Any]) -> Any:
    factory = f.default_factory
    return factory() if callable(factory) else f.default


_EXPECTED = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a string",
    list: "a list of strings",
    tuple: "a list of whole numbers",
}


def _coerce(f: dataclasses.Field[Any], raw: Any, source: str, name: str = "") -> Any:
    """Turn ``raw`` (TOML value or string from the environment) into the field's type;
    ``name`` is the key shown in errors (default: the field's name)."""
    where = f"{source}: setting {name or f.name!r}"
    if (parse := f.metadata.get("parse")) is not None:
        return parse(raw, source)
    kind = type(_default(f))
    try:
        value = _COERCE.get(kind, _as_access)(raw, f.name)
    except (TypeError, ValueError, OverflowError) as error:
        if kind in _EXPECTED:
            raise SettingsError(f"{where}: expected {_EXPECTED[kind]}, got {raw!r}") from error
        raise SettingsError(f"{where}: {error}, got {raw!r}") from error
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{where}: must be a finite number, got {raw!r}")
    if any("\x00" in item for item in _strings(value)):
        raise SettingsError(f"{where}: must not contain NUL characters, got {raw!r}")
    check = f.metadata.get("check")
    if check is not None and (problem := check(value)):
        raise SettingsError(f"{where}: {problem}, got {raw!r}")
    return value


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _as_bool(raw: Any, name: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _as_number(kind: type[int] | type[float]) -> Callable[[Any, str], Any]:
    def coerce(raw: Any, name: str) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise TypeError(raw)
        value = kind(raw)
        if kind is int and isinstance(raw, float) and raw != value:
            raise ValueError(raw)
        return value

    return coerce


def _as_str(raw: Any, name: str) -> str:
    if not isinstance(raw, str):
        raise TypeError(raw)
    return raw


def _as_strings(raw: Any, name: str) -> list[str]:
    value = _as_list(raw)
    if not all(isinstance(item, str) for item in value):
        raise TypeError(raw)
    return value


def _as_ints(raw: Any, name: str) -> tuple[int, ...]:
    value = list(raw) if isinstance(raw, tuple) else _as_list(raw)
    if isinstance(raw, str):
        value = [int(item) if isinstance(item, str) else item for item in value]
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise TypeError(raw)
    return tuple(value)


def _as_list(raw: Any) -> list[Any]:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            value = json.loads(text)
            if not isinstance(value, list):  # pragma: no cover - "[" starts a JSON list
                raise TypeError(raw)
            return value
        return [item.strip() for item in text.split(",") if item.strip()]
    raise TypeError(raw)


def _as_access(raw: Any, name: str) -> Any:
    """An access list (ids, or a whitelist/blacklist table), checked by genbot.access."""
    from genbot.access import AccessList

    if isinstance(raw, str):
        text = raw.strip()
        try:
            raw = json.loads(text) if text.startswith(("[", "{")) else _as_list(text)
        except ValueError as error:
            raise ValueError(f"not valid JSON ({error})") from error
    if raw is None or (isinstance(raw, (list, dict)) and not raw):
        return None
    if not isinstance(raw, (list, dict)):
        raise TypeError("expected a list of ids or a whitelist/blacklist table")
    try:
        parsed = AccessList.parse(raw, name)
    except (TypeError, ValueError) as error:
        raise ValueError(str(error).removeprefix(f"{name}: ")) from error
    too_big = [i for i in (*(parsed.whitelist or ()), *parsed.blacklist) if i > MAX_ID]
    if too_big:
        raise ValueError(f"{too_big[0]} is not a Discord id (at most {MAX_ID})")
    return raw


_COERCE: dict[type, Callable[[Any, str], Any]] = {
    bool: _as_bool,
    int: _as_number(int),
    float: _as_number(float),
    str: _as_str,
    list: _as_strings,
    tuple: _as_ints,
}


# -- checks across settings: each returns (setting, problem) or None -------------------------


def _backend_installed(settings: Settings) -> tuple[str, str] | None:
    packages, install = BACKEND_PACKAGES[settings.backend]
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        return "backend", f"needs the package {missing[0]}, which is not installed: {install}"
    return None


def _llamacpp_model(settings: Settings) -> tuple[str, str] | None:
    if settings.backend != "llamacpp":
        return None
    if not settings.model:
        from genbot.models import ModelError, default_model_path

        try:
            default_model_path()
        except ModelError as error:
            return "model", f"empty means the embedded SmolLM2, but {error}"
        return None
    return _gguf_problem(Path(settings.model))


def _gguf_problem(path: Path, name: str = "model") -> tuple[str, str] | None:
    what = "model" if name == "model" else "projector"
    if not path.exists():
        return name, f"no such file (the llamacpp backend needs a GGUF {what} file)"
    if not path.is_file():
        return name, f"not a file (the llamacpp backend needs a GGUF {what} file)"
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as error:
        return name, f"cannot read the {what} file: {error.strerror}"
    if magic != b"GGUF":
        return (
            name,
            "not a GGUF file (it does not start with 'GGUF'); convert it or pick a .gguf",
        )
    return None


#: A Hugging Face repository id: ``name`` or ``owner/name``.
_HF_NAME = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def _transformers_model(settings: Settings) -> tuple[str, str] | None:
    if settings.backend != "transformers":
        return None
    if not settings.model:
        return "model", (
            "the transformers backend needs a model: a Hugging Face name such as "
            "HuggingFaceTB/SmolLM2-360M-Instruct or a local model folder"
        )
    path = Path(settings.model)
    if path.is_dir():
        return None
    if path.exists():
        return "model", "a local transformers model is a folder (with config.json), not a file"
    if not _HF_NAME.fullmatch(settings.model) or ".." in settings.model:
        return "model", "neither a local model folder nor a Hugging Face name (owner/name)"
    return None


def _vision_backend(settings: Settings) -> tuple[str, str] | None:
    if settings.vision and settings.backend == "llamacpp" and not settings.mmproj:
        return "vision", (
            "the llamacpp backend sees images through a multimodal projector: set mmproj to "
            "the vision model's projector GGUF file (or turn vision off)"
        )
    return None


def _mmproj_file(settings: Settings) -> tuple[str, str] | None:
    if not settings.mmproj:
        return None
    if settings.backend != "llamacpp":
        return "mmproj", (
            f"only the llamacpp backend takes a projector file, not {settings.backend} "
            "(set vision = true for a model of another backend that sees images)"
        )
    return _gguf_problem(Path(settings.mmproj), "mmproj")


def sees_images(settings: Settings) -> bool:
    """Whether the model of ``settings`` is sent images: ``vision`` is set, or the llamacpp
    backend has a multimodal projector (``mmproj``). Decided by configuration only."""
    return settings.vision or bool(settings.mmproj and settings.backend == "llamacpp")


def _sharding(settings: Settings) -> tuple[str, str] | None:
    if settings.shard_ids and not settings.shard_count:
        return "shard_ids", "needs shard_count (the shards of the whole bot)"
    if any(shard >= settings.shard_count for shard in settings.shard_ids):
        return "shard_ids", f"must be below shard_count ({settings.shard_count})"
    if settings.cluster_redis and importlib.util.find_spec("redis") is None:
        return "cluster_redis", "needs the package redis: pip install 'genbot[cluster]'"
    return None


def _mcp_installed(settings: Settings) -> tuple[str, str] | None:
    if settings.mcp and importlib.util.find_spec("mcp") is None:
        return "mcp", "needs the package mcp, which is not installed: pip install 'genbot[mcp]'"
    return None


_TOGETHER: tuple[Callable[[Settings], tuple[str, str] | None], ...] = (
    _sharding,
    _mcp_installed,
    _backend_installed,
    _llamacpp_model,
    _transformers_model,
    _vision_backend,
    _mmproj_file,
)


# -- documentation ---------------------------------------------------------------------------


def settings_table() -> str:
    """The Markdown table of every setting, as printed in the README."""
    rows = [
        "| setting | environment variable | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for f in dataclasses.fields(Settings):
        if f.metadata.get("table"):
            continue
        default = _default(f)
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        rows.append(
            f"| `{f.name}` | `GENBOT_{f.name.upper()}` | `{shown}` | {f.metadata['help']} |"
        )
    return "\n".join(rows)


def settings_help() -> str:
    """The settings as plain text for ``--help``: name, default and description."""
    lines = ["Settings (config file key, GENBOT_<NAME> variable or --set NAME=VALUE):"]
    for f in dataclasses.fields(Settings):
        if f.metadata.get("table"):
            continue
        shown = json.dumps(_default(f))
        lines.append(f"{f.name} = {shown}: {f.metadata['help']}")
    return "\n\n".join(lines)
