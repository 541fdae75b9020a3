"""Settings of the ready-made bot: one dataclass is the single source for the TOML config file,
the environment variables, the CLI help and the README table.

Each field carries its description and default (:func:`setting`). Values come, later ones
winning, from the defaults, a TOML file, ``GENBOT_<NAME>`` environment variables and
``--set name=value`` on the command line. Every value is checked when it is loaded, and an error
names the field and where the bad value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The ready-made bot's system prompt (setting ``system_prompt``); no backend adds one of its own.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant chatting on Discord. Reply to the last message in one or two "
    "short sentences. Stay on its topic and do not make things up."
)

__all__ = ["BACKENDS", "Settings", "SettingsError", "settings_help", "settings_table"]

BACKENDS = ("llamacpp", "transformers", "openai")


class SettingsError(ValueError):
    """A setting has a bad value; the message names the field and its source."""


def setting(default: Any, help: str, *, check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field that carries its description (and an optional check) as metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default),
                     metadata={"help": help, "check": check})
    return field(default=default, metadata={"help": help, "check": check})


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _probability(value: Any) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _backend(value: Any) -> str | None:
    return None if value in BACKENDS else f"must be one of {', '.join(BACKENDS)}"


def _log_level(value: Any) -> str | None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    return None if value.upper() in levels else f"must be one of {', '.join(levels)}"


@dataclass
class Settings:
    """What `genbot run` and `genbot playground` can be told."""

    backend: str = setting("llamacpp", "Model runtime: llamacpp (embedded default), transformers, "
                           "or openai (any OpenAI-compatible server).", check=_backend)
    model: str = setting("", "GGUF path (llamacpp), Hugging Face name or local path "
                         "(transformers), or model name (openai). Empty: the embedded "
                         "SmolLM2-135M-Instruct (llamacpp), the server's first model (openai).")
    base_url: str = setting("http://127.0.0.1:8000/v1", "Base URL of the OpenAI-compatible "
                            "server (openai backend). The API key comes from GENBOT_API_KEY, "
                            "else OPENAI_API_KEY.")
    parallel: int = setting(4, "How many chats the model generates for at once "
                            "(llama.cpp slots, transformers batch, concurrent HTTP requests).",
                            check=_positive)
    system_prompt: str = setting(DEFAULT_SYSTEM_PROMPT, "The system prompt put before the chat "
                                 "(the default keeps even a tiny model short and on topic).")
    max_new_tokens: int = setting(256, "Most tokens generated for one reply.", check=_positive)
    temperature: float = setting(0.2, "Sampling temperature; 0 is greedy.", check=_non_negative)
    top_p: float = setting(0.9, "Nucleus sampling: keep the smallest token set with this "
                           "probability mass.", check=_probability)
    repeat_penalty: float = setting(1.1, "Penalty on repeated tokens (1 disables it).",
                                    check=_positive)
    stop: list[str] = setting([], "Strings that end a reply when generated.")
    seed: int = setting(-1, "Sampling seed; -1 picks a random one.")
    context_limit: int = setting(16, "Most chat messages read as the context of a reply.",
                                 check=_positive)
    context_chars: int = setting(6000, "Character budget of the context sent to the model "
                                 "(the newest messages are kept).", check=_positive)
    users: Any = setting(None, "Users allowed to chat: a list of ids (whitelist) or a table "
                         "with whitelist/blacklist. Empty: everyone.")
    roles: Any = setting(None, "Roles allowed to chat in servers, same format as users. "
                         "Empty: every member.")
    admins: Any = setting(None, "Users who may run admin commands (/shutdown). Empty: nobody.")
    channels: Any = setting(None, "Channels where every message wakes the bot (list of ids "
                            "or a whitelist/blacklist table). Empty: DMs, the bot's threads, "
                            "and messages that mention or reply to the bot.")
    ignore_prefix: str = setting("!", "Messages starting with this are invisible to the bot.")
    allow_bots: bool = setting(False, "Let other bots' messages wake the bot.")
    sync_commands: bool = setting(True, "Register the slash commands with Discord at start-up.")
    queue_timeout: float = setting(300.0, "Most seconds a chat waits for a free model slot; "
                                   "past it the user is told the bot is busy.", check=_positive)
    stall_timeout: float = setting(60.0, "Most seconds a reply may go without new text from the "
                                   "model; past it the reply ends with a visible note.",
                                   check=_positive)
    edit_interval: float = setting(1.0, "Seconds between edits of a streamed reply, per "
                                   "channel.", check=_positive)
    log_level: str = setting("INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.",
                             check=_log_level)

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def updated(self, values: Mapping[str, Any], source: str) -> Settings:
        """A copy with ``values`` applied; raises :class:`SettingsError` naming a bad field."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes = {}
        for name, raw in values.items():
            key = name.replace("-", "_")
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise SettingsError(f"{source}: unknown setting {name!r}{hint}")
            changes[key] = _coerce(fields[key], raw, source)
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *,
             environ: Mapping[str, str] | None = None,
             overrides: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then the TOML file, then ``GENBOT_*`` variables, then ``overrides``."""
        settings = cls()
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except OSError as error:
                raise SettingsError(f"cannot read config file {path}: {error}") from error
            except tomllib.TOMLDecodeError as error:
                raise SettingsError(f"{path}: not valid TOML: {error}") from error
            settings = settings.updated(data.get("genbot", data), str(path))
        environ = os.environ if environ is None else environ
        from_env = {name: environ[f"GENBOT_{name.upper()}"] for name in cls.names()
                    if f"GENBOT_{name.upper()}" in environ}
        for name, raw in from_env.items():
            settings = settings.updated({name: raw}, f"environment variable GENBOT_{name.upper()}")
        for name, raw in (overrides or {}).items():
            settings = settings.updated({name: raw}, f"--set {name}")
        return settings


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _coerce(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    """Turn ``raw`` (TOML value or string from the environment) into the field's type."""
    where = f"{source}: setting {f.name!r}"
    kind = type(_default(f))
    value = raw
    try:
        if kind is bool:
            value = _as_bool(raw)
        elif kind in (int, float):
            if isinstance(raw, bool):
                raise ValueError
            value = kind(raw)
            if kind is int and isinstance(raw, float) and raw != int(raw):
                raise ValueError
        elif kind is str:
            if not isinstance(raw, str):
                raise ValueError
        elif kind is list:
            value = _as_list(raw)
            if not all(isinstance(item, str) for item in value):
                raise ValueError
        else:  # access lists: validated by genbot.access
            value = _as_access(raw)
    except (TypeError, ValueError) as error:
        expected = {bool: "true or false", int: "a whole number", float: "a number",
                    str: "a string", list: "a list of strings"}.get(kind, "a list of ids or a "
                                                                   "whitelist/blacklist table")
        raise SettingsError(f"{where}: expected {expected}, got {raw!r}") from error
    if f.metadata.get("check") is not None and (problem := f.metadata["check"](value)):
        raise SettingsError(f"{where}: {problem}, got {raw!r}")
    return value


def _as_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _as_list(raw: Any) -> list[Any]:
    if isinstance(raw, list):
        return raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    raise TypeError(raw)


def _as_access(raw: Any) -> Any:
    from genbot.access import AccessList

    if isinstance(raw, str):
        text = raw.strip()
        raw = json.loads(text) if text.startswith(("[", "{")) else _as_list(text)
    if raw in ([], {}):
        return None
    AccessList.parse(raw)  # raises TypeError/ValueError with the reason
    return raw


def settings_table() -> str:
    """The Markdown table of every setting, as printed in the README."""
    rows = ["| setting | environment variable | default | description |",
            "| --- | --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        default = _default(f)
        shown = json.dumps(default) if not isinstance(default, str) else repr(default)
        if f.name == "system_prompt":
            shown = "(a short on-topic assistant prompt)"
        rows.append(f"| `{f.name}` | `GENBOT_{f.name.upper()}` | `{shown}` "
                    f"| {f.metadata['help']} |")
    return "\n".join(rows)


def settings_help() -> str:
    """The settings as plain text for ``--help``: name, default and description."""
    lines = ["Settings (config file key, GENBOT_<NAME> variable or --set NAME=VALUE):"]
    for f in dataclasses.fields(Settings):
        shown = "(see genbot settings)" if f.name == "system_prompt" else json.dumps(_default(f))
        lines.append(f"{f.name} = {shown}: {f.metadata['help']}")
    return "\n\n".join(lines)
