"""Profiles and places: which model and which per-reply settings answer in a channel.

The config file names models (``[models.NAME]``: a model definition, see
:data:`genbot.reload.MODEL_FIELDS`) and profiles (``[profiles.NAME]``: any of the per-reply
settings, :data:`genbot.settings.PROFILE_FIELDS`, and ``model = "NAME"``), and gives places
(``[[places]]``: a server, category, channel or thread ``id`` with a ``profile`` and/or a
``model``). The top-level settings are the profile and the model called ``default``.

Who answers in a channel is decided by :func:`resolve`, a pure function. The place chain of a
channel is, most specific first: the thread, its channel, the channel's category, the server (a
DM is its own chain). Choices made with ``/persona`` and ``/model`` (:class:`ChoiceStore`,
persisted) are kept for the channel or thread where they were made. At each place of the chain,
most specific first, a choice made there wins over the config file's place; the first place
that names a profile decides the profile. The model is the first one named walking the same
chain, where a place's profile that sets ``model`` names it at that place (after the place's own
``model``); else the default model. So ``/model`` in a channel beats the channel's profile's
model, and a thread without choices of its own follows its channel.

System prompts may hold placeholders, filled in per reply by :func:`format_prompt`:
:data:`PLACEHOLDERS`; a literal brace is written twice.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genbot.settings import _TOGETHER, MAX_ID, PROFILE_FIELDS, Settings, SettingsError, _coerce

if TYPE_CHECKING:
    from genbot.store import Store

__all__ = [
    "DEFAULT",
    "PLACEHOLDERS",
    "Choice",
    "ChoiceStore",
    "Place",
    "Resolved",
    "format_prompt",
    "model_settings",
    "profile_settings",
    "prompt_problem",
    "read_tables",
    "resolve",
]

_log = logging.getLogger(__name__)

#: The name of the top-level profile and model.
DEFAULT = "default"
#: The placeholders of a system prompt, and what each becomes.
PLACEHOLDERS = {
    "date": "today's date (UTC), e.g. 2026-11-27",
    "time": "the time (UTC), e.g. 14:05 UTC",
    "server": "the server's name (Direct Messages in a DM)",
    "channel": "the channel's (or thread's) name",
    "bot": "the bot's name",
}
#: A profile's or model's name: what Discord's autocomplete can show and a person can type.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PLACE_KEYS = ("id", "profile", "model")


# -- placeholders ------------------------------------------------------------------------------


def prompt_problem(template: str) -> str | None:
    """Why ``template`` is not a system prompt :func:`format_prompt` can fill in, or ``None``.

    Parameters
    ----------
    template:
        The system prompt, with ``{placeholder}`` fields and ``{{``/``}}`` for literal braces.
    """
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)]
    except ValueError as error:
        return f"has a stray brace ({error}); write {{{{ and }}}} for a literal brace"
    known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    for name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            return f"has an unknown placeholder {{{name}}} (known: {known}; {{{{ for a brace)"
        if spec or conversion:
            return f"placeholder {{{name}}} takes no format or conversion"
    return None


def format_prompt(template: str, values: Mapping[str, str]) -> str:
    """``template`` with its placeholders filled in from ``values`` (every name of
    :data:`PLACEHOLDERS`); ``{{`` and ``}}`` become single braces.

    Parameters
    ----------
    template:
        A system prompt checked by :func:`prompt_problem`.
    values:
        The text of each placeholder.

    Raises
    ------
    KeyError
        A placeholder missing from ``values``.
    """
    return template.format_map(values)


# -- the config file's tables ------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """A ``[[places]]`` entry: a server, category, channel or thread id and what it uses."""

    id: int
    profile: str | None = None
    model: str | None = None


def read_tables(settings: Settings, tables: Mapping[str, Any], source: str) -> Settings:
    """``settings`` with the config file's ``models``, ``profiles`` and ``places`` tables read
    and checked: every value as the top-level setting of that name is, names that exist, ids
    that are Discord ids, no place given twice.

    Parameters
    ----------
    settings:
        The checked top-level settings.
    tables:
        The raw tables from the file, by name.
    source:
        The file, first in error messages.

    Raises
    ------
    SettingsError
        One line naming the file and the key (``models.big.parallel``, ``places[2].id``).
    """
    models = _read_models(tables.get("models", {}), source)
    profiles = _read_profiles(tables.get("profiles", {}), models, source)
    places = _read_places(tables.get("places", []), profiles, models, source)
    return dataclasses.replace(settings, models=models, profiles=profiles, places=places)


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(Settings)}


def _named_tables(raw: Any, kind: str, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise SettingsError(f"{source}: '{kind}' must be tables [{kind}.NAME], got {raw!r}")
    for name, table in raw.items():
        where = f"{source}: '{kind}.{name}'"
        if not NAME.fullmatch(name):
            raise SettingsError(
                f"{where}: a name is 1 to 64 letters, digits, '_', '-' or '.', starting with a "
                "letter or digit"
            )
        if name == DEFAULT:
            raise SettingsError(f"{where}: 'default' is the top-level settings; pick another name")
        if not isinstance(table, dict):
            raise SettingsError(f"{where} must be a table, got {table!r}")
    return raw


def _unknown_key(where: str, key: str, allowed: Sequence[str]) -> SettingsError:
    return SettingsError(f"{where}: {key!r} cannot be set here (allowed: {', '.join(allowed)})")


def _read_models(raw: Any, source: str) -> dict[str, dict[str, Any]]:
    from genbot.reload import MODEL_FIELDS

    fields, models = _fields(), {}
    for name, table in _named_tables(raw, "models", source).items():
        values = {}
        for key, value in table.items():
            if key not in MODEL_FIELDS:
                raise _unknown_key(f"{source}: 'models.{name}'", key, MODEL_FIELDS)
            values[key] = _coerce(fields[key], value, source, f"models.{name}.{key}")
        defined = dataclasses.replace(Settings(), **values)
        for check in _TOGETHER:
            found = check(defined)
            if found is not None:
                key, problem = found
                shown = getattr(defined, key)
                raise SettingsError(
                    f"{source}: setting 'models.{name}.{key}': {problem}, got {shown!r}"
                )
        models[name] = values
    return models


def _read_profiles(raw: Any, models: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    fields, profiles = _fields(), {}
    allowed = (*PROFILE_FIELDS, "model")
    for name, table in _named_tables(raw, "profiles", source).items():
        values = {}
        for key, value in table.items():
            if key == "model":
                values[key] = _model_name(value, models, source, f"profiles.{name}.model")
            elif key in PROFILE_FIELDS:
                values[key] = _coerce(fields[key], value, source, f"profiles.{name}.{key}")
            else:
                raise _unknown_key(f"{source}: 'profiles.{name}'", key, allowed)
        profiles[name] = values
    return profiles


def _model_name(value: Any, models: Mapping[str, Any], source: str, key: str) -> str:
    return _name_in(value, models, "model", source, key)


def _name_in(value: Any, names: Mapping[str, Any], kind: str, source: str, key: str) -> str:
    if value != DEFAULT and value not in names:
        known = ", ".join([DEFAULT, *names])
        raise SettingsError(
            f"{source}: setting {key!r}: no {kind} named {value!r} (the {kind}s: {known})"
        )
    return str(value)


def _read_places(
    raw: Any, profiles: Mapping[str, Any], models: Mapping[str, Any], source: str
) -> tuple[Place, ...]:
    if not isinstance(raw, list):
        raise SettingsError(f"{source}: 'places' must be [[places]] tables, got {raw!r}")
    places: dict[int, Place] = {}
    for index, table in enumerate(raw):
        key = f"places[{index}]"
        if not isinstance(table, dict):
            raise SettingsError(f"{source}: {key!r} must be a table, got {table!r}")
        for name in table:
            if name not in _PLACE_KEYS:
                raise _unknown_key(f"{source}: {key!r}", name, _PLACE_KEYS)
        place = Place(
            _place_id(table.get("id"), source, f"{key}.id"),
            _optional(table, "profile", profiles, source, key),
            _optional(table, "model", models, source, key),
        )
        if place.profile is None and place.model is None:
            raise SettingsError(f"{source}: {key!r}: a place needs a profile or a model")
        if place.id in places:
            raise SettingsError(
                f"{source}: setting '{key}.id': the place {place.id} is given twice"
            )
        places[place.id] = place
    return tuple(places.values())


def _optional(
    table: Mapping[str, Any], name: str, names: Mapping[str, Any], source: str, key: str
) -> str | None:
    if name not in table:
        return None
    return _name_in(table[name], names, name, source, f"{key}.{name}")


def _place_id(value: Any, source: str, key: str) -> int:
    if value is None:
        raise SettingsError(
            f"{source}: setting {key!r}: missing: a place needs the id of a server, category, "
            "channel or thread"
        )
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise SettingsError(
            f"{source}: setting {key!r}: must be a Discord id (a server, category, channel or "
            f"thread id), got {value!r}"
        )
    return value


# -- resolving ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """What a place uses: a profile and/or a model, by name (``None``: not set there)."""

    profile: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class Resolved:
    """The profile and model of a place, and where each was decided (for ``/settings``):
    ``("chosen", id)`` with /persona or /model, ``("config", id)`` a ``[[places]]`` entry,
    ``("profile", id)`` the profile of that place, ``("default", 0)``."""

    profile: str = DEFAULT
    model: str = DEFAULT
    profile_from: tuple[str, int] = ("default", 0)
    model_from: tuple[str, int] = ("default", 0)


def resolve(
    chain: Sequence[int],
    places: Mapping[int, Choice],
    chosen: Mapping[int, Choice],
    profiles: Mapping[str, Mapping[str, Any]],
    models: Mapping[str, Any],
) -> Resolved:
    """The profile and model that answer at ``chain`` (see the module docstring).

    Parameters
    ----------
    chain:
        Place ids, most specific first: thread, channel, category, server (a DM: its id).
    places:
        The config file's places by id.
    chosen:
        The choices made with the commands, by the id of the channel or thread.
    profiles, models:
        The defined names (with their values); a name that is not (any more) defined is
        passed over, as if not set.
    """
    profile_names = {DEFAULT, *profiles}
    model_names = {DEFAULT, *models}
    profile, profile_from = DEFAULT, ("default", 0)
    for place in chain:
        found = _first(place, places, chosen, "profile", profile_names)
        if found is not None:
            profile, profile_from = found[0], (found[1], place)
            break
    for place in chain:
        found = _first(place, places, chosen, "model", model_names)
        if found is not None:
            return Resolved(profile, found[0], profile_from, (found[1], place))
        by_profile = profiles.get(profile, {}).get("model")
        if place == profile_from[1] and by_profile in model_names:
            return Resolved(profile, by_profile, profile_from, ("profile", place))
    return Resolved(profile, DEFAULT, profile_from)


def _first(
    place: int,
    places: Mapping[int, Choice],
    chosen: Mapping[int, Choice],
    what: str,
    names: set[str],
) -> tuple[str, str] | None:
    for origin, choices in (("chosen", chosen), ("config", places)):
        name = getattr(choices.get(place, Choice()), what)
        if name is not None and name in names:
            return name, origin
        if name is not None:
            _log.debug("the %s %r of place %s is not defined any more", what, name, place)
    return None


def profile_settings(settings: Settings, profile: str) -> Settings:
    """``settings`` with the per-reply values of ``profile`` (the top-level ones for
    ``default``)."""
    values = {k: v for k, v in settings.profiles.get(profile, {}).items() if k != "model"}
    return dataclasses.replace(settings, **values) if values else settings


def model_settings(settings: Settings, model: str) -> Settings:
    """``settings`` with the model definition ``model`` (the top-level one for ``default``):
    a named model's unset fields are the defaults, not the top-level values."""
    from genbot.reload import MODEL_FIELDS

    if model == DEFAULT:
        return settings
    defined = settings.models[model]
    defaults = Settings()
    values = {name: defined.get(name, getattr(defaults, name)) for name in MODEL_FIELDS}
    return dataclasses.replace(settings, **values)


# -- persisted choices -------------------------------------------------------------------------

#: The schema of the choices (component ``places`` of the store); append-only.
MIGRATIONS = [
    "CREATE TABLE place_choices ("
    " place INTEGER PRIMARY KEY, profile TEXT, model TEXT, user INTEGER, at REAL)",
]


class ChoiceStore:
    """The ``/persona`` and ``/model`` choices, by channel or thread id, in the bot's store.

    Parameters
    ----------
    store:
        The bot's :class:`genbot.store.Store`; opened by :meth:`load`.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self) -> dict[int, Choice]:
        """Open the store (migrating the ``places`` component) and read every choice."""
        if not self.store.is_open:
            await self.store.open()
        await self.store.migrate("places", MIGRATIONS)
        rows = await self.store.fetchall("SELECT place, profile, model FROM place_choices")
        return {int(place): Choice(profile, model) for place, profile, model in rows}

    async def save(self, place: int, choice: Choice, user: int, at: float) -> None:
        """Keep ``choice`` (both names, ``None`` for not chosen) for ``place``.

        Parameters
        ----------
        place:
            The channel or thread id.
        choice:
            What that place uses now.
        user, at:
            Who chose, and when (Unix time): kept for the record.
        """
        await self.store.execute(
            "INSERT INTO place_choices (place, profile, model, user, at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(place) DO UPDATE SET profile = excluded.profile,"
            " model = excluded.model, user = excluded.user, at = excluded.at",
            (place, choice.profile, choice.model, user, at),
        )
