"""A small company driven against a real OpenBao with hvac: benign traffic, then labelled attacks.

Not a test module. ``Fleet(server, canary)`` sets the server up as an administrator would (with
the root token), runs AppRole services from Kubernetes addresses, userpass humans from the VPN and
a nightly rotation job, then one episode of each attack. Every client has its own loopback source
address, and ``SEGMENTS`` names those addresses as network segments for the pipeline's config.

Calls run one at a time, so an episode is exactly the audit entries logged between its first
and last call: ``Fleet.labels(audit_file)`` reads their request ids from the file device.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import hvac
import orjson
from hvac.exceptions import Forbidden, InvalidRequest, VaultError

from secretscope.events import AccessEvent
from secretscope.sources.files import replay

ADMIN = "127.0.0.1"
PODS = {"payments-api": ("127.0.0.10", "127.0.0.11"), "ledger-api": ("127.0.0.12",),
        "orders-api": ("127.0.0.13",)}
ROTATOR = "127.0.0.20"
HUMANS = {"alice": ("payments-dev", "127.0.0.30"), "bob": ("payments-dev", "127.0.0.31"),
          "carol": ("ledger-lead", "127.0.0.32"), "dave": ("orders-dev", "127.0.0.33"),
          "erin": ("platform-admin", "127.0.0.34")}
ATTACKERS = ("127.0.0.66", "127.0.0.67", "127.0.0.68")  # outside every segment: "unknown"
SEGMENTS = [
    {"name": "admin", "cidr": "127.0.0.1/32"},
    {"name": "k8s-prod", "cidr": "127.0.0.10/31"},
    {"name": "k8s-prod", "cidr": "127.0.0.12/31"},
    {"name": "batch", "cidr": "127.0.0.20/32"},
    {"name": "corp-vpn", "cidr": "127.0.0.30/31"},
    {"name": "corp-vpn", "cidr": "127.0.0.32/31"},
    {"name": "corp-vpn", "cidr": "127.0.0.34/32"},
]
TEAMS = {"payments": ("stripe", "db", "webhook-signing", "fraud-model"),
         "ledger": ("db", "signing-key", "reports"),
         "orders": ("db", "queue", "carrier-api")}
ATTACK_CLASSES = ("stolen_token_new_network", "enumeration", "policy_self_grant",
                  "root_token_use", "bruteforce_login", "audit_device_change")


def _policies() -> dict[str, str]:
    out = {}
    for team in TEAMS:
        out[f"{team}-read"] = f'path "secret/data/{team}/*" {{ capabilities = ["read"] }}'
        out[f"{team}-dev"] = (
            f'path "secret/data/{team}/*" {{ capabilities = ["read"] }}\n'
            f'path "secret/metadata/{team}/*" {{ capabilities = ["list", "read"] }}')
    # A team lead allowed to edit the policy she holds: the misconfiguration the attack uses.
    out["ledger-lead"] = out["ledger-dev"] + (
        '\npath "sys/policies/acl/ledger-lead" { capabilities = ["read", "update"] }')
    out["rotator"] = 'path "secret/data/*" { capabilities = ["create", "update", "read"] }'
    out["platform-admin"] = (
        'path "sys/policies/acl/*" { capabilities = ["read", "list"] }\n'
        'path "sys/audit" { capabilities = ["read", "sudo"] }\n'
        'path "sys/audit/*" { capabilities = ["create", "update", "delete", "sudo"] }')
    return out


@dataclass
class Episode:
    episode: str
    attack_class: str
    start: float
    end: float = 0.0
    request_ids: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict) -> Episode:
        return cls(d["episode"], d["class"], datetime.fromisoformat(d["start"]).timestamp(),
                   datetime.fromisoformat(d["end"]).timestamp(), list(d["request_ids"]))

    def to_json(self) -> dict:
        iso = lambda t: datetime.fromtimestamp(t).astimezone().isoformat()  # noqa: E731
        return {"episode": self.episode, "class": self.attack_class, "start": iso(self.start),
                "end": iso(self.end), "request_ids": self.request_ids}


class Fleet:
    def __init__(self, server, canary: str) -> None:
        self.server = server
        self.canary = canary
        self.root = server.client(source=ADMIN)
        self.episodes: list[Episode] = []
        self.benign_windows: list[Episode] = []
        self._secret_ids: dict[str, tuple[str, str]] = {}
        self._passwords = {name: f"pw-{name}-correct-horse" for name in HUMANS}
        self.pods: dict[str, hvac.Client] = {}
        self.humans: dict[str, hvac.Client] = {}
        self.break_glass = ""

    def client(self, token: str = "", source: str = ADMIN) -> hvac.Client:
        return self.server.client(token=token, source=source)

    @contextmanager
    def window(self, name: str, klass: str, into: list[Episode]):
        ep = Episode(name, klass, time.time())
        try:
            yield ep
        finally:
            ep.end = time.time()
            into.append(ep)

    # --- benign --------------------------------------------------------------------------------

    def bootstrap(self, started: float) -> None:
        """Set-up with the root token (and the dev server's own start-up, which uses a root token
        too): a labelled root-token episode of its own, not benign traffic."""
        ep = Episode("bootstrap", "root_token_use", started)
        r = self.root
        r.sys.enable_auth_method("approle")
        r.sys.enable_auth_method("userpass")
        # OpenBao locks a user out after 5 failed logins by default; this company allows more,
        # so the guessing below can end in a successful login.
        r.adapter.post("/v1/sys/auth/userpass/tune",
                       json={"user_lockout_config": {"lockout_threshold": "50"}})
        for name, body in _policies().items():
            r.sys.create_or_update_acl_policy(name, body)
        for role in PODS:
            team = role.split("-")[0]
            r.auth.approle.create_or_update_approle(role, token_policies=[f"{team}-read"],
                                                    token_ttl="1h")
        r.auth.approle.create_or_update_approle("secret-rotator", token_policies=["rotator"])
        for role in (*PODS, "secret-rotator"):
            role_id = r.auth.approle.read_role_id(role)["data"]["role_id"]
            secret_id = r.auth.approle.generate_secret_id(role)["data"]["secret_id"]
            self._secret_ids[role] = (role_id, secret_id)
        for name, (policy, _) in HUMANS.items():
            r.auth.userpass.create_or_update_user(name, password=self._passwords[name],
                                                  policies=[policy])
        for team, names in TEAMS.items():
            for n in names:
                r.secrets.kv.v2.create_or_update_secret(
                    f"{team}/{n}", secret={"value": f"{self.canary}-{team}-{n}-v1"})
        # a break-glass root token kept in a safe; the attacker finds it later
        self.break_glass = r.auth.token.create(policies=["root"], ttl="2h")["auth"]["client_token"]
        ep.end = time.time()
        self.episodes.append(ep)

    def benign(self, rounds: int = 110) -> None:
        with self.window("services-and-humans", "benign", self.benign_windows):
            for role, addrs in PODS.items():
                for i, addr in enumerate(addrs):
                    self.pods[f"{role}/{i}"] = self._approle_login(role, addr)
            for name, (_, addr) in HUMANS.items():
                self.humans[name] = self._userpass_login(name, addr)
            for k in range(rounds):
                self._benign_round(k)
                if k == rounds // 2:
                    self._rotation()

    def _benign_round(self, k: int) -> None:
        for key, c in self.pods.items():
            team = key.split("-")[0]
            names = TEAMS[team]
            _read(c, team, names[k % len(names)])
        for name, c in self.humans.items():
            policy = HUMANS[name][0]
            if policy == "platform-admin":
                if k % 10 == 0:
                    c.sys.list_acl_policies()
                continue
            team = policy.split("-")[0]
            names = TEAMS[team]
            if k % 25 == 0:
                c.secrets.kv.v2.list_secrets(team)
            _read(c, team, names[(k + len(name)) % len(names)])

    def _rotation(self) -> None:
        """The rotation job writes a new version of every secret (values carry the canary)."""
        c = self._approle_login("secret-rotator", ROTATOR)
        for team, names in TEAMS.items():
            for n in names:
                c.secrets.kv.v2.create_or_update_secret(
                    f"{team}/{n}", secret={"value": f"{self.canary}-{team}-{n}-v2"})

    def _approle_login(self, role: str, addr: str) -> hvac.Client:
        c = self.client(source=addr)
        role_id, secret_id = self._secret_ids[role]
        c.auth.approle.login(role_id, secret_id)
        return c

    def _userpass_login(self, name: str, addr: str, password: str | None = None) -> hvac.Client:
        c = self.client(source=addr)
        c.auth.userpass.login(name, password or self._passwords[name])
        return c

    # --- attacks -------------------------------------------------------------------------------

    def attacks(self) -> None:
        for klass in ATTACK_CLASSES:
            with self.window(klass, klass, self.episodes):
                getattr(self, f"_{klass}")()

    def _stolen_token_new_network(self) -> None:
        """payments-api's token replayed from outside the cluster."""
        c = self.client(self.pods["payments-api/0"].token, ATTACKERS[0])
        c.auth.token.lookup_self()
        for n in TEAMS["payments"]:
            _read(c, "payments", n)
        _expect_denied(lambda: _read(c, "ledger", "db"))

    def _enumeration(self) -> None:
        """dave walks other teams' folders: a burst of denials."""
        c = self.humans["dave"]
        for team in ("payments", "ledger"):
            _expect_denied(lambda: c.secrets.kv.v2.list_secrets(team))
            for n in (*TEAMS[team], "admin", "prod", "root-ca"):
                _expect_denied(lambda: _read(c, team, n))

    def _policy_self_grant(self) -> None:
        """carol widens her own policy to the payments folder, then reads it."""
        c = self.humans["carol"]
        body = _policies()["ledger-lead"] + '\npath "secret/data/payments/*" { capabilities = ["read"] }'
        c.sys.create_or_update_acl_policy("ledger-lead", body)
        for n in TEAMS["payments"][:3]:
            _read(c, "payments", n)

    def _root_token_use(self) -> None:
        c = self.client(self.break_glass, ATTACKERS[1])
        c.sys.list_acl_policies()
        c.secrets.kv.v2.read_secret_version("ledger/signing-key", raise_on_deleted_version=False)

    def _bruteforce_login(self) -> None:
        """Password guessing against bob from outside, then the right password and reads."""
        for i in range(12):
            try:
                self._userpass_login("bob", ATTACKERS[2], password=f"guess-{i}")
            except (InvalidRequest, VaultError):
                continue
            raise AssertionError("a wrong password logged in")
        c = self._userpass_login("bob", ATTACKERS[2])
        for n in TEAMS["payments"][:3]:
            _read(c, "payments", n)

    def _audit_device_change(self) -> None:
        """erin tries to blind the defenders: a new device to exfiltrate to, then disable the
        file device (OpenBao 2.x refuses both for declarative devices; the attempt is logged)."""
        c = self.humans["erin"]
        c.sys.list_enabled_audit_devices()
        _expect_refused(lambda: c.sys.enable_audit_device(
            "file", path="exfil", options={"file_path": "/tmp/exfil.log"}))
        _expect_refused(lambda: c.sys.disable_audit_device("file"))

    def tokens(self) -> list[str]:
        """Client tokens handed out: secrets as much as the values are."""
        return [self.server.root_token, self.break_glass,
                *(c.token for c in (*self.pods.values(), *self.humans.values()))]

    # --- labels --------------------------------------------------------------------------------

    def labels(self, audit_file: Path) -> list[Episode]:
        """Fill each episode's request ids: the calls logged between its first and last call,
        as the parser names them (so entries OpenBao logs without a request id, such as the dev
        server's own start-up calls, get the same derived id as in findings)."""
        events = [e for e in replay([audit_file]) if isinstance(e, AccessEvent)]
        for ep in (*self.episodes, *self.benign_windows):
            ep.request_ids = [e.event_id for e in events if ep.start <= e.ts <= ep.end]
        return self.episodes


def _read(c: hvac.Client, team: str, name: str) -> dict:
    return c.secrets.kv.v2.read_secret_version(f"{team}/{name}", raise_on_deleted_version=False)


def _expect_denied(call) -> None:
    try:
        call()
    except Forbidden:
        return
    raise AssertionError("expected permission denied")


def _expect_refused(call) -> None:
    try:
        call()
    except (InvalidRequest, Forbidden):
        return
    raise AssertionError("expected OpenBao to refuse the call")


# --- findings against labels --------------------------------------------------------------------


def current(findings) -> dict[str, dict]:
    """The last version of each finding (alerts files carry one line per version)."""
    out: dict[str, dict] = {}
    for f in findings:
        out[f["finding_info"]["uid"]] = f
    return out


def alerts_of(path: Path) -> dict[str, dict]:
    return current(orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())


def stored_findings(db: Path) -> dict[str, dict]:
    try:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("select ocsf from findings").fetchall()
    except sqlite3.Error:
        return {}
    return current(orjson.loads(r[0]) for r in rows)


def related(f: dict) -> set[str]:
    ids = {e["uid"] for e in f["finding_info"].get("related_events") or ()}
    return ids | {f["unmapped"]["secretscope"]["trigger_event_uid"]}


def by_episode(findings: dict[str, dict], episodes) -> dict[str, list[dict]]:
    owner = {rid: ep.episode for ep in episodes for rid in ep.request_ids}
    out: dict[str, list[dict]] = {ep.episode: [] for ep in episodes}
    out["benign"] = []
    for f in findings.values():
        hit = {owner[r] for r in related(f) if r in owner}
        for name in hit or {"benign"}:
            out[name].append(f)
    return out
