"""Who may chat with the bot and who administers it.

``users``, ``roles`` and ``admins`` are *access lists*: a list/set/tuple (a whitelist) or a
dict with ``whitelist`` and/or ``blacklist`` keys; ids are ints or numeric strings.

The policy, as a pure function of (user id, role ids or ``None`` in DMs, ...):

1. admins can always chat (even when blacklisted) and may run admin commands;
2. a user blacklisted in ``users`` can chat nowhere; a member holding a blacklisted role
   cannot chat in that server;
3. in DMs a user may chat when ``users`` allows them: everyone when ``users`` has no
   whitelist, else those on it;
4. in a server a member may chat when they are on the ``users`` whitelist, or when ``roles``
   allows them: every member when ``roles`` has no whitelist, else holders of a whitelisted role.

Roles are a member's *current* roles. Someone whose roles the bot cannot know -- they left the
server, or it could not look them up -- has :data:`UNKNOWN_ROLES`, which counts as holding every
blacklisted role and no whitelisted one: in a server whose ``roles`` has a whitelist or a
blacklist they may not chat, unless the answer does not depend on roles at all (admins, users
on the ``users`` blacklist, users on the ``users`` whitelist when ``roles`` has no blacklist).
:meth:`Access.roles_matter` tells when roles decide, so that a bot looks members up only then.

A user is an admin when they are on the ``admins`` whitelist and not on its blacklist; with no
``admins`` whitelist nobody is (an admin list never defaults to "everyone").
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

__all__ = ["UNKNOWN_ROLES", "Access", "AccessList", "AccessSpec", "MemberRoles", "Roles"]

_log = logging.getLogger(__name__)


class _Unknown(enum.Enum):
    ROLES = "unknown roles"


#: The roles of someone who is not (or not known to be) a member of the server: counts as
#: holding every blacklisted role and no whitelisted one.
UNKNOWN_ROLES: Final = _Unknown.ROLES

#: What :meth:`Access.may_chat` takes for "where": ``None`` in DMs, else the role ids the user
#: holds in that server, or :data:`UNKNOWN_ROLES`.
Roles: TypeAlias = Iterable[int] | Literal[_Unknown.ROLES] | None

_KEYS = ("whitelist", "blacklist")


def _parse_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what}: ids must be ints or numeric strings, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdecimal():
            raise ValueError(f"{what}: {value!r} is not a numeric id")
        value = int(text)
    assert isinstance(value, int)
    if value <= 0:
        raise ValueError(f"{what}: ids are positive integers, got {value!r}")
    return value


def _parse_ids(values: Any, what: str) -> frozenset[int]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, set, frozenset, tuple)):
        raise TypeError(f"{what}: expected a list, set or tuple of ids, got {values!r}")
    return frozenset(_parse_id(v, what) for v in values)


@dataclass(frozen=True)
class AccessList:
    """A parsed access list: ``whitelist`` is ``None`` when none was given."""

    whitelist: frozenset[int] | None = None
    blacklist: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, spec: Any, name: str = "access list") -> AccessList:
        """Parse ``spec``; raise :class:`TypeError`/:class:`ValueError` naming ``name``."""
        if spec is None:
            return cls()
        if isinstance(spec, AccessList):
            return spec
        if isinstance(spec, Mapping):
            unknown = set(spec) - set(_KEYS)
            if unknown:
                raise ValueError(
                    f"{name}: unknown keys {sorted(map(str, unknown))}; "
                    "use 'whitelist' and/or 'blacklist'"
                )
            white, black = spec.get("whitelist"), spec.get("blacklist")
            return cls(
                whitelist=None if white is None else _parse_ids(white, f"{name}['whitelist']"),
                blacklist=_parse_ids(() if black is None else black, f"{name}['blacklist']"),
            )
        return cls(whitelist=_parse_ids(spec, name))

    def whitelists(self, id_: int) -> bool:
        """``id_`` is on an explicit whitelist."""
        return self.whitelist is not None and id_ in self.whitelist

    def blacklists(self, id_: int) -> bool:
        return id_ in self.blacklist

    def allows(self, id_: int) -> bool:
        """Not blacklisted, and whitelisted when a whitelist exists."""
        if id_ in self.blacklist:
            return False
        return self.whitelist is None or id_ in self.whitelist


#: What ``users=``, ``roles=``, ``admins=`` and ``channels=`` accept.
AccessSpec: TypeAlias = AccessList | Iterable[int | str] | Mapping[str, Iterable[int | str]] | None


class Access:
    """The chat/admin policy of a bot (see the module docstring for the four rules)."""

    def __init__(
        self, users: AccessSpec = None, roles: AccessSpec = None, admins: AccessSpec = None
    ) -> None:
        self.users = AccessList.parse(users, "users")
        self.roles = AccessList.parse(roles, "roles")
        self.admins = AccessList.parse(admins, "admins")

    def __repr__(self) -> str:
        return f"Access(users={self.users}, roles={self.roles}, admins={self.admins})"

    def is_admin(self, user_id: int) -> bool:
        """On the ``admins`` whitelist and not on its blacklist."""
        return self.admins.whitelists(user_id) and not self.admins.blacklists(user_id)

    def roles_matter(self, user_id: int) -> bool:
        """Whether, in a server, the answer of :meth:`may_chat` for ``user_id`` depends on the
        roles they hold (when it does not, nobody needs to look their roles up)."""
        if self.is_admin(user_id) or self.users.blacklists(user_id):
            return False
        if self.roles.blacklist:
            return True
        return self.roles.whitelist is not None and not self.users.whitelists(user_id)

    def may_chat(self, user_id: int, role_ids: Roles) -> bool:
        """Whether ``user_id`` may chat.

        Parameters
        ----------
        user_id:
            The user.
        role_ids:
            ``None`` in DMs; in a server the ids of the roles they hold there now, or
            :data:`UNKNOWN_ROLES` when that is not known (e.g. they left the server).
        """
        if self.is_admin(user_id):
            return True
        if self.users.blacklists(user_id):
            return False
        if role_ids is None:
            return self.users.allows(user_id)
        if role_ids is UNKNOWN_ROLES:
            if self.roles.blacklist:
                return False
            role_ids = ()
        roles = set(role_ids)
        if roles & self.roles.blacklist:
            return False
        if self.users.whitelists(user_id):
            return True
        if self.roles.whitelist is None:
            return True
        return bool(roles & self.roles.whitelist)


class MemberRoles:
    """What a bot learned about members that discord.py's member cache does not hold:
    ``(guild id, user id)`` -> their role ids, or :data:`UNKNOWN_ROLES` for "not a member".

    Entries expire after ``ttl`` seconds (without the members intent no event says that a member
    left or changed roles); at most ``max_entries`` are kept (the least recently stored go).
    """

    def __init__(
        self,
        *,
        ttl: float = 600.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl > 0 or max_entries < 1:
            raise ValueError(f"ttl must be > 0 and max_entries >= 1, got {ttl!r}, {max_entries!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[int, int], tuple[float, Roles]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, guild_id: int, user_id: int, roles: Iterable[int] | None) -> None:
        """Remember ``user_id``'s roles in ``guild_id``; ``None``: not a member there."""
        key = (guild_id, user_id)
        value: Roles = UNKNOWN_ROLES if roles is None else tuple(roles)
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, guild_id: int, user_id: int) -> tuple[int, ...] | _Unknown | None:
        """The stored roles, :data:`UNKNOWN_ROLES` (not a member), or ``None``: nothing known."""
        entry = self._entries.get((guild_id, user_id))
        if entry is None:
            return None
        expires, roles = entry
        if self._clock() >= expires:
            del self._entries[(guild_id, user_id)]
            return None
        assert roles is UNKNOWN_ROLES or isinstance(roles, tuple)
        return roles

    def clear(self) -> None:
        self._entries.clear()
