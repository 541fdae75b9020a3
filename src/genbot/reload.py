"""Where the ready-made bot's settings come from, and what a reload of them changes.

``genbot run`` reads its settings from the config file, the environment (with a ``.env`` file of
the working directory, see :class:`DotEnv`) and ``--set`` overrides; a :class:`SettingsSource`
remembers those sources, so that a reload (``SIGHUP`` or ``/reload``) reads the same ones again.
:func:`compare` decides, without touching the bot, what the new settings change: most apply to
the next reply; a new model definition (:data:`MODEL_FIELDS`) needs a new model Streamer; a few
(:data:`RESTART_FIELDS`) only apply at the next start. Named models (``[models.NAME]``) whose
definition changed or is gone stop once their chats finish, and start anew at their next chat;
profiles and places apply at the next reply.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from genbot.settings import Settings, SettingsError

__all__ = [
    "MODEL_FIELDS",
    "RESTART_FIELDS",
    "Changes",
    "DotEnv",
    "ReloadError",
    "SettingsSource",
    "compare",
    "token_from_env",
]

_log = logging.getLogger(__name__)

#: The settings that define the model: a change starts a new model Streamer.
MODEL_FIELDS = (
    "backend",
    "model",
    "base_url",
    "parallel",
    # read when the backend is built (make_backend): a change needs a new model Streamer too
    "connect_timeout",
    "first_token_timeout",
    "token_timeout",
    "vision",  # whether the bot sends the model images
    "mmproj",  # the llamacpp backend's multimodal projector file
)
#: Settings a running bot cannot change: they apply at the next start.
RESTART_FIELDS = frozenset(
    {
        "sync_commands",
        "data_dir",
        "shard_count",
        "shard_ids",
        "cluster_redis",
        "metrics_port",
        "metrics_host",
        "mcp",  # the MCP servers start with the bot (genbot.mcp)
    }
)
#: The environment variables that hold the bot token, the first set one wins.
TOKEN_VARIABLES = ("DISCORD_TOKEN", "DISCORD_BOT_TOKEN")


class ReloadError(Exception):
    """The settings were not reloaded (the running ones stay); the message is one line."""


def token_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The bot token: ``DISCORD_TOKEN``, else ``DISCORD_BOT_TOKEN``; empty when neither is set.

    Parameters
    ----------
    environ:
        Where to look; default ``os.environ`` (after :class:`DotEnv` filled it in).
    """
    environ = os.environ if environ is None else environ
    for variable in TOKEN_VARIABLES:
        token = environ.get(variable, "").strip()
        if token:
            return token
    return ""


class DotEnv:
    """A ``.env`` file that fills in environment variables which are not set already.

    A variable set in the real environment always wins over the file. The variables the file
    did set are its own: :meth:`load` run again (at a reload) updates them to what the file says
    now, and removes those the file no longer has.

    Parameters
    ----------
    path:
        The file; a missing one sets nothing.
    environ:
        The environment to fill in; default ``os.environ``.
    """

    def __init__(
        self, path: str | os.PathLike[str] = ".env", environ: MutableMapping[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        self.environ = os.environ if environ is None else environ
        self.owned: set[str] = set()

    def load(self) -> list[str]:
        """Read the file (again) into the environment; returns the variables it sets."""
        from dotenv import dotenv_values

        try:
            values = dotenv_values(self.path, encoding="utf-8") if self.path.is_file() else {}
        except (OSError, UnicodeDecodeError) as error:
            reason = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else error.strerror
            raise SettingsError(f"{self.path}: cannot read the .env file: {reason}") from error
        for name in sorted(self.owned - values.keys()):
            self.environ.pop(name, None)
            self.owned.discard(name)
        for name, value in values.items():
            if value is None or (name in self.environ and name not in self.owned):
                continue  # a bare NAME without a value, or set in the real environment
            self.environ[name] = value
            self.owned.add(name)
        if self.owned:
            _log.debug("%s sets %s", self.path, ", ".join(sorted(self.owned)))
        return sorted(self.owned)


@dataclass(frozen=True)
class SettingsSource:
    """The sources of the settings, to read them again: see :meth:`Settings.load`.

    Parameters
    ----------
    config:
        The TOML config file, or ``None``.
    overrides:
        ``--set`` values by setting name; they keep winning at every reload.
    dotenv:
        The ``.env`` file, read again before the environment is.
    """

    config: Path | None = None
    overrides: Mapping[str, str] = dataclasses.field(default_factory=dict)
    dotenv: DotEnv | None = None

    def load(self) -> Settings:
        """The settings as the sources say now.

        Raises
        ------
        SettingsError
            A bad value, with its one-line message.
        """
        if self.dotenv is not None:
            self.dotenv.load()
        return Settings.load(self.config, overrides=self.overrides)


@dataclass(frozen=True)
class Changes:
    """What new settings change: the names of the changed settings, in field order."""

    changed: tuple[str, ...] = ()

    @property
    def model(self) -> bool:
        """The model definition changed: a new model Streamer is needed."""
        return any(name in MODEL_FIELDS for name in self.changed)

    @property
    def at_restart(self) -> tuple[str, ...]:
        """Changed settings that apply only at the next start."""
        return tuple(name for name in self.changed if name in RESTART_FIELDS)

    def describe(self, most: int = 12) -> str:
        """One short line for the log and the admin: what changed and when it applies."""
        if not self.changed:
            return "nothing changed"
        names = ", ".join(self.changed[:most])
        if len(self.changed) > most:
            names += f" and {len(self.changed) - most} more"
        line = f"changed {names}"
        if self.model:
            line += "; the new model is ready, the old one stops once its chats finish"
        if "models" in self.changed:
            line += "; a changed named model starts anew at its next chat"
        if self.at_restart:
            line += f"; {', '.join(self.at_restart)} applies at the next start"
        return line


def compare(old: Settings, new: Settings) -> Changes:
    """What changes from ``old`` to ``new``.

    Parameters
    ----------
    old, new:
        The running settings and the reloaded ones.
    """
    return Changes(
        tuple(
            f.name
            for f in dataclasses.fields(Settings)
            if getattr(old, f.name) != getattr(new, f.name)
        )
    )
