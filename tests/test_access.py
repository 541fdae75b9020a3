"""The four access rules, as a matrix and as a property over random lists."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from genbot.access import UNKNOWN_ROLES, Access, AccessList, MemberRoles, Roles

A, B, ADMIN = 11, 12, 99
MODS, BANNED = 501, 502


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, AccessList()),
        ([1, "2"], AccessList(whitelist=frozenset({1, 2}))),
        ((3,), AccessList(whitelist=frozenset({3}))),
        ({4, 5}, AccessList(whitelist=frozenset({4, 5}))),
        ({"blacklist": [" 7 "]}, AccessList(blacklist=frozenset({7}))),
        ({"whitelist": [], "blacklist": [8]}, AccessList(frozenset(), frozenset({8}))),
        ({}, AccessList()),
        (["09876789656789"], AccessList(whitelist=frozenset({9876789656789}))),
    ],
)
def test_parse_accepts(spec: object, expected: AccessList) -> None:
    assert AccessList.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("123", TypeError),
        (123, TypeError),
        ([1.5], TypeError),
        ([True], TypeError),
        ([None], TypeError),
        (["abc"], ValueError),
        (["-3"], ValueError),
        ([0], ValueError),
        ({"whitelist": [1], "allow": [2]}, ValueError),
        ({"blacklist": "12"}, TypeError),
    ],
)
def test_parse_rejects(spec: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="users"):
        Access(users=spec)  # type: ignore[arg-type]


def test_admins_default_empty_and_never_everyone() -> None:
    assert not Access().is_admin(A)
    assert not Access(admins={"blacklist": [B]}).is_admin(A)
    assert Access(admins=[A]).is_admin(A)
    assert not Access(admins={"whitelist": [A], "blacklist": [A]}).is_admin(A)


DM = None
GUILD_PLAIN: list[int] = []
GUILD_MOD = [MODS]
GUILD_BANNED = [BANNED]
GUILD_MOD_BANNED = [MODS, BANNED]

# (users, roles, user, roles held (None = DM), may chat)
MATRIX = [
    # defaults: everyone everywhere
    (None, None, A, DM, True),
    (None, None, A, GUILD_PLAIN, True),
    # users=[a] alone: DMs limited to a, servers open
    ([A], None, A, DM, True),
    ([A], None, B, DM, False),
    ([A], None, B, GUILD_PLAIN, True),
    # roles=[mods] alone: servers limited to mods, DMs open
    (None, [MODS], B, DM, True),
    (None, [MODS], B, GUILD_PLAIN, False),
    (None, [MODS], B, GUILD_MOD, True),
    # both: a anywhere, mods in their server
    ([A], [MODS], A, DM, True),
    ([A], [MODS], A, GUILD_PLAIN, True),
    ([A], [MODS], B, DM, False),
    ([A], [MODS], B, GUILD_MOD, True),
    ([A], [MODS], B, GUILD_PLAIN, False),
    # blacklisted user: nowhere
    ({"blacklist": [A]}, None, A, DM, False),
    ({"blacklist": [A]}, None, A, GUILD_MOD, False),
    ({"blacklist": [A]}, [MODS], A, GUILD_MOD, False),
    ({"whitelist": [A], "blacklist": [A]}, None, A, DM, False),
    # blacklisted role: not in that server, still in DMs
    (None, {"blacklist": [BANNED]}, A, GUILD_BANNED, False),
    (None, {"blacklist": [BANNED]}, A, DM, True),
    (None, {"blacklist": [BANNED]}, A, GUILD_PLAIN, True),
    ([A], {"blacklist": [BANNED]}, A, GUILD_BANNED, False),
    (None, {"whitelist": [MODS], "blacklist": [BANNED]}, A, GUILD_MOD_BANNED, False),
    # empty whitelists allow nobody (but the users whitelist is not consulted in servers)
    ([], None, A, DM, False),
    ([], None, A, GUILD_PLAIN, True),
    (None, [], A, GUILD_MOD, False),
]


@pytest.mark.parametrize(("users", "roles", "user", "held", "expected"), MATRIX)
def test_matrix(
    users: object, roles: object, user: int, held: list[int] | None, expected: bool
) -> None:
    access = Access(users=users, roles=roles)  # type: ignore[arg-type]
    assert access.may_chat(user, held) is expected


@pytest.mark.parametrize("held", [DM, GUILD_PLAIN, GUILD_BANNED, GUILD_MOD_BANNED])
def test_admin_always_chats(held: list[int] | None) -> None:
    access = Access(
        users={"whitelist": [B], "blacklist": [ADMIN]},
        roles={"whitelist": [MODS], "blacklist": [BANNED]},
        admins=[ADMIN],
    )
    assert access.may_chat(ADMIN, held)


ids = st.integers(min_value=1, max_value=8)
id_sets = st.frozensets(ids, max_size=4)
lists = st.builds(AccessList, whitelist=st.one_of(st.none(), id_sets), blacklist=id_sets)


def _as_spec(lst: AccessList, as_strings: bool) -> object:
    conv = (lambda s: [str(i) for i in sorted(s)]) if as_strings else sorted
    spec: dict[str, object] = {"blacklist": conv(lst.blacklist)}
    if lst.whitelist is not None:
        spec["whitelist"] = conv(lst.whitelist)
    return spec


@given(
    users=lists,
    roles=lists,
    admins=lists,
    user=ids,
    held=st.one_of(st.none(), st.just(UNKNOWN_ROLES), st.lists(ids, max_size=3)),
    as_strings=st.booleans(),
)
def test_property(
    users: AccessList,
    roles: AccessList,
    admins: AccessList,
    user: int,
    held: Roles,
    as_strings: bool,
) -> None:
    access = Access(
        users=_as_spec(users, as_strings),
        roles=_as_spec(roles, as_strings),
        admins=_as_spec(admins, as_strings),
    )
    got = access.may_chat(user, held)
    admin = (
        admins.whitelist is not None and user in admins.whitelist and user not in admins.blacklist
    )
    if admin:  # rule 1
        assert got
        return
    if user in users.blacklist:  # rule 2, users
        assert not got
        return
    if held is None:  # rule 3
        assert got == (users.whitelist is None or user in users.whitelist)
        return
    if held is UNKNOWN_ROLES:  # every blacklisted role, no whitelisted one
        held = sorted(roles.blacklist)
        if not held and roles.whitelist is not None:
            assert got == (users.whitelist is not None and user in users.whitelist)
            return
    assert held is not UNKNOWN_ROLES
    if set(held) & roles.blacklist:  # rule 2, roles
        assert not got
        return
    on_users = users.whitelist is not None and user in users.whitelist
    roles_allow = roles.whitelist is None or bool(set(held) & roles.whitelist)
    assert got == (on_users or roles_allow)  # rule 4


@given(
    users=lists,
    roles=lists,
    admins=lists,
    user=ids,
    held=st.lists(st.lists(ids, max_size=3), min_size=1, max_size=4),
)
def test_unknown_roles_never_allow_more_than_known_ones(
    users: AccessList, roles: AccessList, admins: AccessList, user: int, held: list[list[int]]
) -> None:
    """Unknown roles are the worst case; and when roles do not matter, they decide nothing."""
    access = Access(users=users, roles=roles, admins=admins)
    unknown = access.may_chat(user, UNKNOWN_ROLES)
    answers = {access.may_chat(user, h) for h in [*held, sorted(roles.blacklist), []]}
    assert unknown == min(answers)
    if not access.roles_matter(user):
        assert answers == {unknown}


def test_a_former_member_in_a_role_restricted_server() -> None:
    assert not Access(roles={"blacklist": [BANNED]}).may_chat(A, UNKNOWN_ROLES)
    assert not Access(roles=[MODS]).may_chat(A, UNKNOWN_ROLES)
    assert Access(users=[A], roles=[MODS]).may_chat(A, UNKNOWN_ROLES)  # roles do not matter
    assert not Access(users=[A], roles={"blacklist": [BANNED]}).may_chat(A, UNKNOWN_ROLES)
    assert Access().may_chat(A, UNKNOWN_ROLES)  # no roles list: anyone in the server
    assert Access(roles={"blacklist": [BANNED]}, admins=[A]).may_chat(A, UNKNOWN_ROLES)


def test_member_roles_expire_and_stay_bounded() -> None:
    now = [0.0]
    cache = MemberRoles(ttl=10.0, max_entries=2, clock=lambda: now[0])
    cache.put(1, A, [MODS])
    cache.put(1, B, None)
    assert cache.get(1, A) == (MODS,) and cache.get(1, B) is UNKNOWN_ROLES
    assert cache.get(2, A) is None
    cache.put(1, ADMIN, [])
    assert len(cache) == 2 and cache.get(1, A) is None  # the oldest went
    now[0] = 10.0
    assert cache.get(1, B) is None and cache.get(1, ADMIN) is None
    with pytest.raises(ValueError):
        MemberRoles(ttl=0)


@given(
    users=lists,
    roles=lists,
    user=ids,
    extra=ids,
    held=st.one_of(st.none(), st.lists(ids, max_size=3)),
)
def test_blacklisting_never_grants(
    users: AccessList, roles: AccessList, user: int, extra: int, held: list[int] | None
) -> None:
    before = Access(users=users, roles=roles).may_chat(user, held)
    more_users = AccessList(users.whitelist, users.blacklist | {extra})
    more_roles = AccessList(roles.whitelist, roles.blacklist | {extra})
    assert Access(users=more_users, roles=roles).may_chat(user, held) <= before
    assert Access(users=users, roles=more_roles).may_chat(user, held) <= before
