"""Who manages each AppRole, and whether the latest secret-id was minted by one of them.

An AppRole login proves only that the caller holds a role id and a secret id; whoever can mint a
secret id (``auth/approle/role/<R>/secret-id``) can become the role. So the tracker keeps a
lineage per role: the identities (and peer groups) that managed it, that is created, changed,
deleted it, minted its secret ids or read its role id, and when each first did; and the role's
latest mint. A mint is *unmanaged* when neither the minter nor an identity with the same
policies managed the role more than :data:`STANDING` seconds of event time before: creating a
role a minute before minting for it gives no standing. A role nobody managed before has no
lineage to compare with, so there the question becomes whether the minter (or its peers) looked
after *any* AppRole before: that is the job of a platform team, not of a product engineer.
Minting as an outsider earns no such general standing. Mints in the tracker's first
:data:`STANDING` seconds of event time are not judged: nobody can have standing yet (a replay
or a new deployment starts with the set-up of roles and their first secret ids).

Logins of the role within :data:`LOGIN_FOLLOW` after an unmanaged mint are suspect (the audit log
does not say which secret id a login used). The reads of such a session (same role, same address,
within :data:`READ_FOLLOW`) are flagged when it came from a network segment the role had not
logged in from outside those hours: the role's own scheduled runs log in then too, from home.

The tracker is fed every event (``FeatureExtractor.observe_windows``), whether or not it raised a
finding: a mint is evidence either way. It answers in the same call, so a verdict depends only on
the events before it. State is a few entries per role, and roles are capped at
:data:`MAX_ROLES` (the least recently touched role is forgotten first).
"""

from __future__ import annotations

from collections import OrderedDict

STANDING = 86400.0  # management older than this (event time) counts as standing over a role
LOGIN_FOLLOW = 86400.0  # logins this long after an unmanaged mint are suspect
READ_FOLLOW = 3600.0  # reads this long after such a login are suspect
MAX_ROLES = 10_000
MAX_MANAGERS = 64  # per role: identities and peer groups kept (oldest standing first)
MAX_SESSIONS = 8  # per role: suspect login sessions followed at once
MAX_HOMES = 16  # per role: network segments it logs in from
_WRITE_OPS = frozenset({"create", "update", "delete"})
_MINT_TAILS = frozenset({"secret-id", "custom-secret-id"})

# Verdict bits of one event, as observe() returns them.
MINT_UNMANAGED, LOGIN_AFTER_UNMANAGED_MINT, READ_AFTER_SUCH_LOGIN = 1, 2, 4
# The features secret_id_mint_unmanaged, login_minted_by_outsider, seq_outsider_mint_then_read
# for each combination of verdict bits.
FEATURE_VALUES = tuple(tuple(1.0 if bits & bit else 0.0 for bit in (
    MINT_UNMANAGED, LOGIN_AFTER_UNMANAGED_MINT, READ_AFTER_SUCH_LOGIN)) for bits in range(8))


class RoleLineage:
    """One role: first management time per identity and per peer group, and its latest mint."""

    __slots__ = ("managers", "peers", "mint_ts", "mint_unmanaged", "sessions", "homes")

    def __init__(self) -> None:
        self.managers: dict[str, float] = {}
        self.peers: dict[str, float] = {}
        self.mint_ts = -1e18
        self.mint_unmanaged = False
        # address -> time of the latest login from it after an unmanaged mint: the role's own
        # runs log in too in those hours, and must not hide the suspect session's reads
        self.sessions: dict[str, float] = {}
        # segments the role logged in from outside those hours: where its own runs come from
        self.homes: dict[str, None] = {}

    def to_state(self) -> list:
        return [self.managers, self.peers, self.mint_ts, self.mint_unmanaged, self.sessions,
                list(self.homes)]

    @classmethod
    def from_state(cls, state: list) -> "RoleLineage":
        r = cls()
        managers, peers, r.mint_ts, r.mint_unmanaged, sessions, homes = state
        r.managers, r.peers, r.sessions = dict(managers), dict(peers), dict(sessions)
        r.homes = dict.fromkeys(homes)
        return r


def role_call(path: str, mount_type: str) -> tuple[str, str] | None:
    """(role, what follows it) for ``auth/<mount>/role/<R>[/...]`` on an AppRole mount."""
    if not path.startswith("auth/"):
        return None
    parts = path.split("/", 5)
    if len(parts) < 4 or parts[2] != "role" or not parts[3]:
        return None
    if parts[1] != "approle" and mount_type != "approle":
        return None
    return parts[3], parts[4] if len(parts) > 4 else ""


def _stood_before(first: dict[str, float], key: str, ts: float) -> bool:
    return first.get(key, ts) <= ts - STANDING


def _note(first: dict[str, float], key: str, ts: float) -> None:
    if key not in first and len(first) < MAX_MANAGERS:
        first[key] = ts


class LineageTracker:
    """Per-role lineage; :meth:`observe` is called once per event, in event order."""

    def __init__(self, max_roles: int = MAX_ROLES) -> None:
        self.max_roles = max_roles
        self.roles: OrderedDict[str, RoleLineage] = OrderedDict()
        # Identities and peer groups that had any AppRole role in their care, and since when;
        # those that minted as outsiders earn no such standing from it (an attacker's second
        # role, or a colleague's, must not look managed because of the first).
        self.admins: dict[str, float] = {}
        self.admin_peers: dict[str, float] = {}
        self.outsiders: set[str] = set()
        self.outsider_peers: set[str] = set()
        self.since: float | None = None  # event time of the first event observed

    def observe(self, identity: str, peer: str, path: str, operation: str, mount_type: str,
                succeeded: bool, is_login: bool, secret_access: bool, address: str,
                segment: str, ts: float) -> int:
        """Record one event; return its verdict bits (0 for almost every event)."""
        if self.since is None:
            self.since = ts
        if not succeeded:
            return 0
        call = role_call(path, mount_type)
        if call is not None:
            return self._manage(identity, peer, operation, call, ts)
        if not identity.startswith("approle:"):
            return 0
        if is_login:
            return self._login(self._role(identity[8:]), address, segment, ts)
        role = self.roles.get(identity[8:])
        # The session a suspect login opened: same role, same address, within the hour.
        if role is not None and role.sessions and secret_access and operation == "read":
            if 0.0 <= ts - role.sessions.get(address, -1e18) <= READ_FOLLOW:
                return READ_AFTER_SUCH_LOGIN
        return 0

    @staticmethod
    def _login(role: RoleLineage, address: str, segment: str, ts: float) -> int:
        homes = role.homes
        if role.mint_unmanaged and 0.0 <= ts - role.mint_ts <= LOGIN_FOLLOW:
            if segment not in homes:  # the role's own runs come from its usual segments
                sessions = role.sessions
                sessions.pop(address, None)
                sessions[address] = ts
                if len(sessions) > MAX_SESSIONS:
                    del sessions[next(iter(sessions))]
            return LOGIN_AFTER_UNMANAGED_MINT
        if segment not in homes and len(homes) < MAX_HOMES:
            homes[segment] = None
        return 0

    def _manage(self, identity: str, peer: str, operation: str, call: tuple[str, str],
                ts: float) -> int:
        name, tail = call
        if not (operation in _WRITE_OPS or (operation == "read" and tail == "role-id")):
            return 0  # reading a role's settings or listing its secret ids manages nothing
        role = self._role(name)
        verdict = 0
        if operation in ("create", "update") and tail in _MINT_TAILS:
            unmanaged = (ts - self.since >= STANDING
                         and not self._standing(role, identity, peer, ts))
            role.mint_ts, role.mint_unmanaged = ts, unmanaged
            role.sessions.clear()
            if unmanaged:
                verdict = MINT_UNMANAGED
                self._outsider(identity, peer, ts)
        _note(role.managers, identity, ts)
        _note(role.peers, peer, ts)
        if len(self.admins) < self.max_roles and identity not in self.outsiders:
            self.admins.setdefault(identity, ts)
        if len(self.admin_peers) < self.max_roles and peer not in self.outsider_peers:
            self.admin_peers.setdefault(peer, ts)
        return verdict

    def _outsider(self, identity: str, peer: str, ts: float) -> None:
        """Undo the general standing the minter's episode just earned (its role-id read or role
        write came first); standing from before it stays."""
        for first, key, marked in ((self.admins, identity, self.outsiders),
                                   (self.admin_peers, peer, self.outsider_peers)):
            if first.get(key, -1e18) > ts - STANDING:
                del first[key]
            if len(marked) < self.max_roles:
                marked.add(key)

    def _standing(self, role: RoleLineage, identity: str, peer: str, ts: float) -> bool:
        if _stood_before(role.managers, identity, ts) or _stood_before(role.peers, peer, ts):
            return True
        if any(t <= ts - STANDING for t in role.managers.values()):
            return False  # the role has keepers, and the minter is not one of them
        # A new role: standing comes from looking after AppRoles at all.
        return (_stood_before(self.admins, identity, ts)
                or _stood_before(self.admin_peers, peer, ts))

    def _role(self, name: str) -> RoleLineage:
        roles = self.roles
        role = roles.get(name)
        if role is None:
            role = roles[name] = RoleLineage()
            if len(roles) > self.max_roles:
                roles.popitem(last=False)
        else:
            roles.move_to_end(name)
        return role

    def to_state(self) -> dict:
        return {"roles": [[k, r.to_state()] for k, r in self.roles.items()],
                "admins": self.admins, "admin_peers": self.admin_peers,
                "outsiders": sorted(self.outsiders), "outsider_peers": sorted(self.outsider_peers),
                "since": self.since}

    @classmethod
    def from_state(cls, state: dict | None, max_roles: int = MAX_ROLES) -> "LineageTracker":
        t = cls(max_roles)
        if state:
            t.roles.update((k, RoleLineage.from_state(v)) for k, v in state["roles"])
            t.admins, t.admin_peers = dict(state["admins"]), dict(state["admin_peers"])
            t.outsiders, t.outsider_peers = set(state["outsiders"]), set(state["outsider_peers"])
            t.since = state["since"]
        return t
