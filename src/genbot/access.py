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

A user is an admin when they are on the ``admins`` whitelist and not on its blacklist; with no
``admins`` whitelist nobody is (an admin list never defaults to "everyone").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["Access", "AccessList", "AccessSpec"]

_KEYS = ("whitelist", "blacklist")


def _parse_id(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what}: ids must be ints or numeric strings, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdecimal():
            raise ValueError(f"{what}: {value!r} is not a numeric id")
        value = int(text)
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
        return self.admins.whitelists(user_id) and not self.admins.blacklists(user_id)

    def may_chat(self, user_id: int, role_ids: Iterable[int] | None) -> bool:
        """Whether ``user_id`` may chat: ``role_ids`` is ``None`` in DMs, else their roles."""
        if self.is_admin(user_id):
            return True
        if self.users.blacklists(user_id):
            return False
        if role_ids is None:
            return self.users.allows(user_id)
        roles = set(role_ids)
        if roles & self.roles.blacklist:
            return False
        if self.users.whitelists(user_id):
            return True
        if self.roles.whitelist is None:
            return True
        return bool(roles & self.roles.whitelist)
