"""Synthetic, labelled HashiCorp Vault audit log of a company fleet.

The detector is measured by replaying this log: recall needs attacks whose every call is known
(the labels file), precision needs benign traffic that looks like a real fleet (periodic
Kubernetes workloads, humans in their own time zones, CI bursts, nightly batch jobs, and a few
benign look-alikes such as on-call night reads or platform engineers editing policies).

How it is built, and why:

* Every identity is an :class:`Actor` whose ids (entity id, token and accessor HMACs) are derived
  from the seed, so a replay can key on them and two runs agree byte for byte.
* The bulk of the traffic (service reads) is generated as numpy arrays per (service, secret)
  stream; everything else is a list of :class:`Call`. Both are merged by time and rendered in
  one pass; the serialized ``auth`` block is cached per (identity, token issue time, verdict)
  because it is the largest and most repetitive part of a line.
* Benign behaviours and attack classes are registries (:data:`BENIGN`, :data:`ATTACKS`): adding
  a trap or a class is one decorated function returning calls.
* No plaintext value is ever produced: every string under ``request.data`` or ``response.data``
  is an ``hmac-sha256:<hex>`` digest, as an audit device without ``log_raw`` writes it.

Benign traps (each a :func:`benign` generator; each looks like an attack to a naive detector):

* nightly batch jobs (``batch_runs``) reading many secrets at 02:00 UTC;
* humans in other time zones (``human_days``), including SREs' night incidents;
* deploys (``service_logins``): every pod of a redeployed service logs in from a new address and
  reads its secrets at once; a fifth of the services run 5-10 replicas, so some deploys are
  bursts of 5-10 logins;
* weekly rotation (``secret_rotation``): the ``secret-rotator`` AppRole writes new versions of
  40-120 secrets across all teams within 10-20 minutes, once a week on a fixed weekday and hour.
  On the six other days it rotates three fixed canary secrets at the same hour, so the
  identity has a daily history and only the weekly volume is unusual;
* dynamic database credentials (``dynamic_credentials``): some services fetch
  ``database/creds/<team>-app`` at pod start and again when two thirds of the lease has run;
* new services and new joiners (``World.new_services``, ``World.new_humans``): first seen on
  day 2 or later, with the team and policies of existing identities (so they have peers);
* legacy identities (``World.legacy_services``, ``World.legacy_humans``): active only in the
  first one or two days, then silent (the victims of ``dormant_reactivated``).

Attack classes (:data:`ATTACKS`): ``stolen_token_new_network``, ``offhours_bulk_read``,
``enumeration_denied_burst``, ``policy_change_then_reads``, ``audit_device_tampering``,
``root_token_use``, ``bruteforce_login``, ``slow_lateral_reads`` (the hard one: other teams'
secrets read at the insider's own pace, place and hours), ``dormant_reactivated`` and
``dynamic_credential_harvest``. Attackers and insiders are drawn from the steady fleet
(``World.services``, ``World.humans``), never from the joiners or legacy identities, except the
dormant victims.

A change-window feed (``windows_out``) lists the expected bursts a change-management system
would know of: each weekly rotation run and each planned deploy (not the rare reschedules).

Simplification: a token is per identity (stable accessor and token HMAC), only its issue time
changes with logins, so an identity keeps one accessor across the whole log.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import heapq
import random
import sys
import time as _time
from collections.abc import Callable, Iterator, Set
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np
import orjson

NS = 1_000_000_000
MINUTE = 60 * NS
HOUR = 3600 * NS
DAY = 86400 * NS

OK, DENIED, INVALID = "ok", "denied", "invalid"
# How the caller authenticates: with a token, by logging in, or not at all (OIDC auth_url).
TOKEN, LOGIN, ANON = "token", "login", "anon"

# Network segments the detector knows; attackers come from the documentation ranges.
K8S_PROD, K8S_STAGING, CI_RUNNERS, BATCH, CORP_VPN = "10.20", "10.21", "10.30", "10.40", "172.16"
OFFICE = "192.168.10"
STOLEN_TOKEN_NET = "203.0.113"
UNKNOWN_NETS = ("203.0.113", "198.51.100")

TEAMS = ("payments", "ledger", "checkout", "search", "identity", "notifications", "billing",
         "fraud", "catalog", "shipping", "analytics", "platform")
SRE_TEAM = "platform"
PRODUCT_TEAMS = tuple(t for t in TEAMS if t != SRE_TEAM)
SECRET_NAMES = ("db", "db-readonly", "redis", "kafka", "s3-uploads", "api-key", "stripe", "smtp",
                "jwt-signing", "oauth-client", "sentry-dsn", "datadog", "elastic", "rabbitmq",
                "grpc-tls", "webhook-secret", "encryption-key", "ldap-bind", "github-app",
                "pagerduty")
FIELDS = {
    "db": ("host", "username", "password"), "db-readonly": ("host", "username", "password"),
    "redis": ("url", "password"), "kafka": ("username", "password"), "rabbitmq": ("url",),
    "s3-uploads": ("access_key_id", "secret_access_key"), "grpc-tls": ("cert", "key"),
    "oauth-client": ("client_id", "client_secret"), "ldap-bind": ("bind_dn", "password"),
    "github-app": ("app_id", "private_key"),
}
SERVICE_APPS = ("api", "worker", "consumer", "web", "cron", "gateway", "scheduler", "indexer")
NEW_SERVICE_APPS = ("notifier", "exporter", "sync", "backfill", "router", "ingest")
LEGACY_APPS = ("migrator", "importer", "bridge", "poller")
ROTATOR_POLICY = "secret-rotator"
DB_LEASE_SECONDS = 4 * 3600  # default_ttl of the database roles
# Identity lifetimes are [first, last) ns ranges; the steady fleet's covers any log.
ALWAYS = (-(1 << 62), 1 << 62)
FIRST_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
               "judy", "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent",
               "uma", "victor", "walter", "xena", "yusuf", "zoe", "arjun", "mei", "lars",
               "ines", "kofi", "priya", "tomas")
BATCH_NAMES = ("nightly-reports", "ledger-reconcile", "billing-invoices", "search-reindex",
               "analytics-export", "fraud-model-refresh", "catalog-sync", "shipping-labels")
AUDIT_DEVICES = ("file-primary", "syslog-siem", "socket-splunk")
# (UTC offset in minutes, weight): Pacific, Eastern, UK, CET, India, Singapore.
TIME_ZONES = ((-480, 15), (-300, 15), (0, 15), (60, 35), (330, 15), (480, 5))

CLI_UA = "Vault/1.19.2 (+https://www.vaultproject.io/; go1.23.6)"
BROWSER_UAS = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/133.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:135.0) Gecko/20100101 Firefox/135.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/133.0.0.0 Safari/537.36 Edg/133.0.0.0",
)
SERVICE_UAS = ("vault-agent/1.19.0", "vault-agent/1.19.1", "vault-agent/1.19.2",
               "vault-agent/1.19.3", "Go-http-client/1.1", "vault-client-go/0.4.3",
               "Apache-HttpClient/4.5.14 (Java/17.0.10)")
SERVICE_UA_WEIGHTS = (15, 15, 20, 10, 15, 15, 10)
CI_UAS = (CLI_UA, "python-requests/2.32.3")
BATCH_UAS = ("python-requests/2.31.0", "Go-http-client/1.1")
ATTACKER_UAS = ("curl/8.5.0", "curl/7.88.1", "python-requests/2.32.3", "python-requests/2.28.1")
BRUTEFORCE_UAS = ATTACKER_UAS + ("Mozilla/5.0 (Hydra)",)

ROOT_NS = {"id": "root"}
_ERR_DENIED_REQUEST = b',"error":' + orjson.dumps("permission denied")
_ERR_DENIED = b',"error":' + orjson.dumps("1 error occurred:\n\t* permission denied\n\n")
_ERR_INVALID = b',"error":' + orjson.dumps("1 error occurred:\n\t* invalid credentials\n\n")
_ANON_AUTH = b'{"token_type":"default"}'
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class SimulationSpec:
    """Size and shape of the simulated fleet; see the module docstring for the behaviours."""

    days: int = 7
    seed: int = 7
    start: datetime = datetime(2026, 3, 2, tzinfo=timezone.utc)  # a Monday
    services: int = 40
    humans: int = 25
    ci_jobs: int = 8
    batch_jobs: int = 5
    attacks: bool = True
    target_calls: int | None = None  # scale service read rates so the log has about this many calls


@dataclass(frozen=True)
class SimulationSummary:
    calls: int
    lines: int
    benign_calls: int
    attack_calls: int
    episodes: dict[str, int]
    first_time: datetime | None
    last_time: datetime | None


def simulate(spec: SimulationSpec, out: Path | TextIO,
             labels_out: Path | TextIO | None = None,
             windows_out: Path | TextIO | None = None) -> SimulationSummary:
    """Write the audit log to ``out`` (gzip if the path ends in ``.gz``) and, if given, one label
    line per attack episode to ``labels_out`` and one line per expected-burst window (rotation
    runs, deploys) to ``windows_out``. Same spec, same bytes."""
    if spec.days < 1:
        raise ValueError("days must be at least 1")
    if spec.attacks and not (spec.services and spec.humans):
        raise ValueError("attack episodes need at least one service and one human")
    world = World(spec)
    calls = [c for gen in BENIGN for c in gen(world) if world.start_ns <= c.t < world.end_ns]
    n_benign = len(calls)
    episodes = _attack_episodes(world) if spec.attacks else []
    owner = [-1] * n_benign
    for k, ep in enumerate(episodes):
        calls.extend(ep.calls)
        owner.extend([k] * len(ep.calls))
    budget = None if spec.target_calls is None else spec.target_calls - len(calls)
    streams, bulk = _service_reads(world, budget)
    episode_ids: list[list[str]] = [[] for _ in episodes]
    with _sink(out) as write:
        first, last = _render(world, calls, owner, streams, bulk, episode_ids, write)
    if labels_out is not None:
        _write_labels(episodes, episode_ids, labels_out)
    if windows_out is not None:
        _write_windows(_change_windows(world), windows_out)
    total = len(calls) + len(bulk.t)
    attack_calls = len(calls) - n_benign
    counts = dict.fromkeys(ATTACKS, 0) if spec.attacks else {}
    for ep in episodes:
        counts[ep.cls] = counts.get(ep.cls, 0) + 1
    return SimulationSummary(
        calls=total, lines=2 * total, benign_calls=total - attack_calls,
        attack_calls=attack_calls, episodes=counts,
        first_time=None if first is None else _datetime(first),
        last_time=None if last is None else _datetime(last),
    )


# ---------------------------------------------------------------------------------------------
# Identities, mounts, secrets


class Mount:
    """A secrets engine or auth method; its fields are repeated in every request and response."""

    __slots__ = ("type", "request_fields", "response_fields", "ok", "denied", "invalid")

    def __init__(self, point: str, type_: str, accessor: str, klass: str | None,
                 version: str | None, seed: int) -> None:
        self.type = type_
        base = {"mount_point": point, "mount_type": type_, "mount_accessor": accessor}
        self.request_fields = dict(base)
        self.response_fields = dict(base)
        if version:
            self.request_fields["mount_running_version"] = version
            self.response_fields["mount_running_plugin_version"] = version
        if klass:
            self.request_fields["mount_class"] = klass
            self.response_fields["mount_class"] = klass
        self.ok = self.response()
        self.denied = self.response(data={"error": _hmac(seed, "error", "permission denied")})
        self.invalid = self.response(data={"error": _hmac(seed, "error", "invalid credentials")})

    def response(self, data: dict | None = None, auth: dict | None = None,
                 secret: dict | None = None) -> bytes:
        """Serialized ``response`` object; ``data`` must already hold only HMAC'd strings."""
        body = dict(self.response_fields)
        if secret is not None:
            body["secret"] = secret
        if data is not None:
            body["data"] = data
        if auth is not None:
            body["auth"] = auth
        return orjson.dumps(body)


@dataclass(frozen=True, eq=False)
class Actor:
    """An identity as Vault logs it. ``readable`` holds the teams whose secrets its policies grant
    ("*" for all); the simulator's ACL is per team, which is enough to decide denied or not."""

    key: str
    kind: str  # service, human, approle, root
    team: str
    display_name: str
    policies: tuple[str, ...]
    metadata: dict | None
    entity_id: str | None
    client_token: str
    request_token: str
    accessor: str
    client_id: str
    mount: Mount
    token_ttl: int
    readable: frozenset[str]

    def may(self, team: str) -> bool:
        return team in self.readable or "*" in self.readable


@dataclass(frozen=True, eq=False)
class Secret:
    team: str
    name: str
    path: str  # KV v2 read path, secret/data/<team>/<name>
    fields: tuple[str, ...]
    response: bytes  # serialized response of a successful read


@dataclass(frozen=True, eq=False)
class Service:
    """A Kubernetes workload. ``epochs`` are deploys and reschedules: (token issue time, pod IPs);
    ``deploys`` the issue times of the planned ones (what a change-window feed lists)."""

    actor: Actor
    secrets: tuple[Secret, ...]
    ua: str
    epochs: tuple[tuple[int, tuple[str, ...]], ...]
    deploys: frozenset[int] = frozenset()
    db_role: str | None = None  # database/creds/<db_role> fetched by every pod
    active: tuple[int, int] = ALWAYS

    def epoch_at(self, t: int) -> tuple[int, tuple[str, ...]]:
        current = self.epochs[0]
        for epoch in self.epochs:
            if epoch[0] > t:
                break
            current = epoch
        return current


@dataclass(frozen=True, eq=False)
class Human:
    actor: Actor  # the identity of their usual login method
    userpass: Actor  # userpass alias on the same entity (target of password guessing)
    tz_min: int
    uas: tuple[str, str]  # usual and occasional user agent
    office_ip: str | None
    sre: bool
    active: tuple[int, int] = ALWAYS


@dataclass(frozen=True, eq=False)
class Rotator:
    """The secret-rotation AppRole: a weekly mass rotation and a daily canary rotation."""

    actor: Actor
    host: str
    ua: str
    weekday: int
    hour: float  # UTC
    canaries: tuple[Secret, ...]


@dataclass(frozen=True, eq=False)
class Job:
    """A CI pipeline or nightly batch job authenticating with AppRole."""

    actor: Actor
    secrets: tuple[Secret, ...]
    ua: str
    host: str  # fixed host (batch); CI runners get a new address per run
    minute: int  # batch start offset after 02:00 UTC


class Session(NamedTuple):
    """The part of a call that stays fixed across a burst: who, which token, from where."""

    actor: Actor
    issued: int
    addr: str
    ua: str | None


class Call(NamedTuple):
    t: int
    kind: str  # TOKEN, LOGIN or ANON
    actor: Actor
    issued: int
    op: str
    path: str
    mount: Mount
    addr: str
    port: int
    ua: str | None
    outcome: str
    data: dict | None
    response: bytes | None  # successful response; denied/invalid ones come from the mount


@dataclass(frozen=True)
class Episode:
    cls: str
    hint: str
    calls: tuple[Call, ...]


class World:
    """The fleet: mounts, teams and their secrets, identities, and caches shared by generators."""

    def __init__(self, spec: SimulationSpec) -> None:
        self.seed = spec.seed
        self.days = spec.days
        self.start_ns = _ns(spec.start)
        self.end_ns = self.start_ns + spec.days * DAY
        self.weekday0 = spec.start.weekday()
        self.attack_day0 = min(2, spec.days - 1)
        self._auth: dict[tuple[str, int, bool], bytes] = {}
        self._secrets: dict[tuple[str, str], Secret] = {}
        # Keys of actors an episode made write a policy, so the next episode picks a first-timer.
        self.policy_writers: set[str] = set()
        self.reactivated: set[str] = set()  # dormant identities an episode already used
        # Legacy identities go silent after at most this many days, early enough that a dormant
        # episode on the last days follows at least 3 silent days (when the log is long enough).
        self.legacy_days = max(1, min(2, spec.days - 4))
        self.kv = self._mount("secret/", "kv", "secret", "v0.21.0+builtin")
        self.database = self._mount("database/", "database", "secret", "v1.19.2+builtin.vault")
        self.sys = self._mount("sys/", "system", None)
        self.token_mount = self._mount("auth/token/", "token", "auth")
        self.auth_mounts = {t: self._mount(f"auth/{t}/", t, "auth")
                            for t in ("kubernetes", "oidc", "userpass", "approle")}
        rng = self.rand("world")
        self.teams = {t: tuple(self.secret(t, n) for n in sorted(rng.sample(SECRET_NAMES,
                      rng.randint(10, 18)))) for t in TEAMS}
        self.root = self._actor("root", "root", "", "root", ("root",), None, None, 0,
                                frozenset("*"))
        self.services = [self._service(i) for i in range(spec.services)]
        self.humans = [self._human(i) for i in range(spec.humans)]
        self.ci = [self._ci_job(i) for i in range(spec.ci_jobs)]
        self.batch = [self._batch_job(i) for i in range(spec.batch_jobs)]
        self._extra_identities(spec)
        self.rotator = self._rotator()

    def _extra_identities(self, spec: SimulationSpec) -> None:
        """Joiners and legacy identities, a few per size of the fleet, kept apart from the steady
        fleet so that attack generators never pick someone who is not there."""
        n_new_s, n_old_s = -(-spec.services // 12), -(-spec.services // 20)
        n_new_h, n_old_h = -(-spec.humans // 10), -(-spec.humans // 12)
        self.new_services = [self._new_service(k) for k in range(n_new_s if self.services else 0)]
        self.legacy_services = [self._legacy_service(k) for k in range(n_old_s)]
        peers = [h for h in self.humans if not h.sre]
        self.new_humans = [self._new_human(spec.humans + k, k, peers)
                           for k in range(n_new_h if peers else 0)]
        first_legacy = spec.humans + len(self.new_humans)
        self.legacy_humans = [self._legacy_human(first_legacy + k, k) for k in range(n_old_h)]
        self.all_services = self.services + self.new_services + self.legacy_services
        self.all_humans = self.humans + self.new_humans + self.legacy_humans

    def rand(self, *tag: object) -> random.Random:
        """An independent, reproducible stream per component, so adding one shifts no other."""
        return random.Random(_digest(self.seed, *tag))

    def hmac(self, *parts: object) -> str:
        return _hmac(self.seed, *parts)

    def secret(self, team: str, name: str) -> Secret:
        key = (team, name)
        found = self._secrets.get(key)
        if found is None:
            path = f"secret/data/{team}/{name}"
            fields = FIELDS.get(name.rsplit("/", 1)[-1], ("value",))
            version = int(_digest(self.seed, "version", path)[:4], 16) % 9 + 1
            data = {"data": {f: self.hmac("value", path, f) for f in fields},
                    "metadata": {"created_time": self.hmac("created", path),
                                 "custom_metadata": None,
                                 "deletion_time": self.hmac(""), "destroyed": False,
                                 "version": version}}
            found = self._secrets[key] = Secret(team, name, path, fields,
                                                self.kv.response(data=data))
        return found

    def auth_block(self, actor: Actor, issued: int, allowed: bool) -> bytes:
        """Serialized ``auth`` of a token call, cached: it is the bulk of every line."""
        key = (actor.key, issued, allowed)
        block = self._auth.get(key)
        if block is None:
            block = self._auth[key] = orjson.dumps(self.auth_dict(actor, issued, allowed))
        return block

    def auth_dict(self, actor: Actor, issued: int, allowed: bool | None) -> dict:
        """``auth`` of a token call, or with ``allowed`` None the ``response.auth`` of a login
        (which has no issue time or policy verdict)."""
        d: dict = {"client_token": actor.client_token, "accessor": actor.accessor,
                   "display_name": actor.display_name, "policies": list(actor.policies),
                   "token_policies": list(actor.policies)}
        if actor.metadata is not None:
            d["metadata"] = actor.metadata
        if actor.entity_id:
            d["entity_id"] = actor.entity_id
        d["token_type"] = "service"
        if actor.token_ttl:
            d["token_ttl"] = actor.token_ttl
            if allowed is not None:
                d["token_issue_time"] = _iso_seconds(issued)
        if allowed is not None:
            d["policy_results"] = (
                {"allowed": True, "granting_policies": [
                    {"name": actor.policies[-1], "namespace_id": "root", "type": "acl"}]}
                if allowed else {"allowed": False})
        return d

    def weekday(self, day: int) -> int:
        return (self.weekday0 + day) % 7

    def _mount(self, point: str, type_: str, klass: str | None,
               version: str | None = None) -> Mount:
        accessor = f"{type_}_{_digest(self.seed, 'mount', point)[:8]}"
        return Mount(point, type_, accessor, klass, version, self.seed)

    def _actor(self, key: str, kind: str, team: str, display: str, policies: tuple[str, ...],
               metadata: dict | None, mount: str | None, ttl: int,
               readable: frozenset[str]) -> Actor:
        entity = None if kind == "root" else _uuid(self.seed, "entity", key)
        client_id = base64.b64encode(bytes.fromhex(_digest(self.seed, "client", key)[:32])).decode()
        return Actor(key, kind, team, display, policies, metadata, entity,
                     self.hmac("token", key), self.hmac("request-token", key),
                     self.hmac("accessor", key), client_id,
                     self.auth_mounts[mount] if mount else self.token_mount, ttl, readable)

    def _service(self, i: int) -> Service:
        rng = self.rand("service", i)
        team = TEAMS[i % len(TEAMS)]
        app = SERVICE_APPS[(i // len(TEAMS)) % len(SERVICE_APPS)]
        round_ = i // (len(TEAMS) * len(SERVICE_APPS))
        name = f"{team}-{app}" + (f"-{round_ + 1}" if round_ else "")
        return self._workload(rng, team, name, rng.random() < 0.2, self.teams[team])

    def _new_service(self, k: int) -> Service:
        """A service first deployed on day 2 or later, beside an existing one of the same team
        and policy (its peers), reading the secrets its peers read."""
        rng = self.rand("new-service", k)
        peer = rng.choice(self.services)
        staging = peer.actor.policies[-1].endswith("-staging-read")
        team = peer.actor.team
        app = NEW_SERVICE_APPS[k % len(NEW_SERVICE_APPS)]
        name = f"{team}-{app}" + (f"-{k // len(NEW_SERVICE_APPS) + 1}"
                                  if k >= len(NEW_SERVICE_APPS) else "")
        pool = sorted({s.name for p in self.services if p.actor.policies == peer.actor.policies
                       for s in p.secrets})
        pool_secrets = [self.secret(team, n.removeprefix("staging/")) for n in pool]
        first = self.start_ns + rng.randint(2, max(2, self.days - 2)) * DAY
        first += int(rng.uniform(9, 17) * HOUR)
        return self._workload(rng, team, name, staging, pool_secrets, (first, ALWAYS[1]))

    def _legacy_service(self, k: int) -> Service:
        """A workload decommissioned after the first day or two: a dormant identity."""
        rng = self.rand("legacy-service", k)
        team = rng.choice(PRODUCT_TEAMS)
        name = f"{team}-{LEGACY_APPS[k % len(LEGACY_APPS)]}" + (
            f"-{k // len(LEGACY_APPS) + 1}" if k >= len(LEGACY_APPS) else "")
        last = self.start_ns + rng.randint(1, self.legacy_days) * DAY
        last -= int(rng.uniform(0, 8) * HOUR)
        return self._workload(rng, team, name, False, self.teams[team], (ALWAYS[0], last))

    def _workload(self, rng: random.Random, team: str, name: str, staging: bool,
                  pool: list[Secret] | tuple[Secret, ...],
                  active: tuple[int, int] = ALWAYS) -> Service:
        ns = f"{team}-staging" if staging else team
        policy = f"{team}-staging-read" if staging else f"{team}-read"
        meta = {"role": name, "service_account_name": name, "service_account_namespace": ns,
                "service_account_uid": _uuid(self.seed, "sa", ns, name)}
        actor = self._actor(f"k8s:{ns}/{name}", "service", team, f"kubernetes-{ns}-{name}",
                            ("default", policy), meta, "kubernetes", 3600, frozenset((team,)))
        own = rng.sample(pool, min(len(pool), rng.randint(1, 4)))
        secrets = tuple(self.secret(team, f"staging/{s.name}") if staging else s for s in own)
        ua = rng.choices(SERVICE_UAS, SERVICE_UA_WEIGHTS)[0]
        epochs, planned = self._deploys(rng, staging, active)
        # Own stream: choosing database users shifts no other draw of the service.
        db_role = f"{team}-app" if self.rand("db-role", actor.key).random() < 0.35 else None
        return Service(actor, secrets, ua, epochs, planned, db_role, active)

    def _deploys(self, rng: random.Random, staging: bool,
                 active: tuple[int, int]) -> tuple[tuple, frozenset[int]]:
        """Pod IPs change at deploys (weekday working hours) and rare reschedules (any time). A
        fifth of the services run 5-10 replicas, so their deploys are bursts of logins. A service
        that appears mid-log starts with a deploy; one that is decommissioned stops deploying."""
        net = K8S_STAGING if staging else K8S_PROD
        pods = rng.randint(5, 10) if rng.random() < 0.2 else rng.randint(1, 3)
        first = active[0] if active[0] > self.start_ns else (
            self.start_ns - int(rng.uniform(1, 30) * HOUR))
        times, planned = [first], [first] if first > self.start_ns else []
        for day in range(self.days):
            base = self.start_ns + day * DAY
            if self.weekday(day) < 5 and rng.random() < 0.35:
                t = base + int(rng.uniform(8, 17) * HOUR)
                if first < t < active[1]:
                    times.append(t)
                    planned.append(t)
            if rng.random() < 0.05:
                t = base + int(rng.uniform(0, 24) * HOUR)
                if first < t < active[1]:
                    times.append(t)
        epochs = tuple((t, tuple(_ip(rng, net) for _ in range(pods))) for t in sorted(times))
        return epochs, frozenset(planned)

    def _human(self, i: int, team: str | None = None,
               active: tuple[int, int] = ALWAYS) -> Human:
        """Engineer ``i``; with ``team`` given, a non-SRE member of that team."""
        rng = self.rand("human", i)
        username = FIRST_NAMES[i % len(FIRST_NAMES)] + (
            str(i // len(FIRST_NAMES) + 1) if i >= len(FIRST_NAMES) else "")
        # One engineer in eight is an SRE who may read every team's secrets.
        sre = team is None and i % 8 == 0
        team = team or (SRE_TEAM if sre else rng.choice(PRODUCT_TEAMS))
        policies = (("default", "platform-admin", "sre-read-all") if sre
                    else ("default", f"{team}-dev"))
        readable = frozenset("*") if sre else frozenset((team,))
        email = f"{username}@corp.example"
        role = "sre" if sre else "engineer"
        oidc = self._actor(f"oidc:{username}", "human", team, f"oidc-{email}", policies,
                           {"email": email, "role": role}, "oidc", 43200, readable)
        userpass = replace(oidc, key=f"userpass:{username}", display_name=f"userpass-{username}",
                           metadata={"username": username}, mount=self.auth_mounts["userpass"])
        tz = rng.choices([z for z, _ in TIME_ZONES], [w for _, w in TIME_ZONES])[0]
        browser = rng.choice(BROWSER_UAS)
        uas = (CLI_UA, browser) if rng.random() < 0.5 else (browser, CLI_UA)
        in_office = tz in (0, 60) and rng.random() < 0.6  # the office is in Europe
        office = f"{OFFICE}.{rng.randint(10, 250)}" if in_office else None
        return Human(userpass if rng.random() < 0.2 else oidc, userpass, tz, uas,
                     office, sre, active)

    def _new_human(self, i: int, k: int, peers: list[Human]) -> Human:
        """A joiner, first seen on day 2 or later, in the team (and policies) of a colleague."""
        rng = self.rand("new-human", k)
        team = rng.choice(peers).actor.team
        first = self.start_ns + rng.randint(2, max(2, self.days - 2)) * DAY
        return self._human(i, team, (first, ALWAYS[1]))

    def _legacy_human(self, i: int, k: int) -> Human:
        """Someone who used Vault in the first day or two only (moved on, left)."""
        rng = self.rand("legacy-human", k)
        last = self.start_ns + rng.randint(1, self.legacy_days) * DAY
        return self._human(i, rng.choice(PRODUCT_TEAMS), (ALWAYS[0], last))

    def _rotator(self) -> Rotator:
        """Weekly mass rotation mid-week in the early UTC morning (a look-alike of an off-hours
        bulk operation); a fixed set of canary secrets rotated at that hour on other days."""
        rng = self.rand("rotator")
        actor = self._approle("secret-rotator", SRE_TEAM, ROTATOR_POLICY, 3600, frozenset("*"))
        every = [s for t in TEAMS for s in self.teams[t]]
        return Rotator(actor, _ip(rng, BATCH), rng.choice(BATCH_UAS), rng.randint(1, 3),
                       rng.randint(1, 5) + rng.choice((0, 0.25, 0.5)),
                       tuple(rng.sample(every, 3)))

    def _approle(self, role: str, team: str, policy: str, ttl: int,
                 readable: frozenset[str]) -> Actor:
        return self._actor(f"approle:{role}", "approle", team, "approle", ("default", policy),
                           {"role_name": role}, "approle", ttl, readable)

    def _ci_job(self, i: int) -> Job:
        rng = self.rand("ci", i)
        team = PRODUCT_TEAMS[(i * 5) % len(PRODUCT_TEAMS)]
        role = f"ci-{team}-{'deploy' if i % 2 == 0 else 'test'}" + (f"-{i}" if i >= 22 else "")
        actor = self._approle(role, team, f"ci-{team}", 1200, frozenset((team,)))
        pool = self.teams[team]
        secrets = tuple(rng.sample(pool, min(len(pool), rng.randint(5, 12))))
        return Job(actor, secrets, rng.choice(CI_UAS), "", 0)

    def _batch_job(self, i: int) -> Job:
        rng = self.rand("batch", i)
        name = BATCH_NAMES[i % len(BATCH_NAMES)] + (f"-{i}" if i >= len(BATCH_NAMES) else "")
        teams = rng.sample(PRODUCT_TEAMS, rng.randint(1, 3))
        actor = self._approle(name, teams[0], f"batch-{name}", 3600, frozenset(teams))
        pool = [s for t in teams for s in self.teams[t]]
        secrets = tuple(rng.sample(pool, min(len(pool), rng.randint(5, 20))))
        return Job(actor, secrets, rng.choice(BATCH_UAS), _ip(rng, BATCH),
                   rng.choice((0, 5, 15, 30)))


# ---------------------------------------------------------------------------------------------
# Building calls


def _call(s: Session, t: int, rng: random.Random, op: str, path: str, mount: Mount,
          outcome: str = OK, data: dict | None = None, response: bytes | None = None,
          kind: str = TOKEN) -> Call:
    return Call(t, kind, s.actor, s.issued, op, path, mount, s.addr, rng.randint(32768, 60999),
                s.ua, outcome, data, response)


def kv_read(w: World, s: Session, t: int, rng: random.Random, secret: Secret,
            force: bool = False) -> Call:
    """``force`` makes the read succeed whatever the ACL says (e.g. right after a policy edit)."""
    ok = force or s.actor.may(secret.team)
    return _call(s, t, rng, "read", secret.path, w.kv, OK if ok else DENIED,
                 response=secret.response)


def kv_read_metadata(w: World, s: Session, t: int, rng: random.Random, secret: Secret) -> Call:
    path = secret.path.replace("secret/data/", "secret/metadata/", 1)
    data = {"current_version": 1, "created_time": w.hmac("created", path),
            "updated_time": w.hmac("updated", path), "versions": {}}
    return _call(s, t, rng, "read", path, w.kv, OK if s.actor.may(secret.team) else DENIED,
                 response=w.kv.response(data=data))


def kv_list(w: World, s: Session, t: int, rng: random.Random, team: str | None) -> Call:
    """List one team's folder, or the mount root (team None), which only SREs may do."""
    if team is None:
        keys, path, ok = [f"{x}/" for x in TEAMS], "secret/metadata/", "*" in s.actor.readable
    else:
        keys = [x.name for x in w.teams[team]]
        path, ok = f"secret/metadata/{team}/", s.actor.may(team)
    data = {"keys": [w.hmac("key", k) for k in keys]}
    return _call(s, t, rng, "list", path, w.kv, OK if ok else DENIED,
                 response=w.kv.response(data=data))


def kv_write(w: World, s: Session, t: int, rng: random.Random, secret: Secret, op: str) -> Call:
    nonce = rng.getrandbits(64)
    data = {"data": {f: w.hmac("new-value", secret.path, f, nonce) for f in secret.fields},
            "options": {"cas": 0}}
    meta = {"created_time": w.hmac("created", secret.path, nonce), "custom_metadata": None,
            "deletion_time": w.hmac(""), "destroyed": False, "version": 1}
    return _call(s, t, rng, op, secret.path, w.kv, OK if s.actor.may(secret.team) else DENIED,
                 data=data, response=w.kv.response(data=meta))


def db_creds(w: World, s: Session, t: int, rng: random.Random, team: str,
             force: bool = False) -> Call:
    """Read of dynamic database credentials for ``<team>-app``: a new lease and a new user each
    time. Vault's audit device keeps ``secret.lease_id`` in clear (it is no credential); the
    lease length is added beside it so a replay can tell how long the credentials live."""
    role = f"{team}-app"
    lease = f"database/creds/{role}/{_digest(w.seed, 'lease', s.actor.key, t)[:24]}"
    data = {"username": w.hmac("db-user", lease), "password": w.hmac("db-password", lease)}
    response = w.database.response(data=data, secret={
        "lease_id": lease, "lease_duration": DB_LEASE_SECONDS, "renewable": True})
    ok = force or s.actor.may(team)
    return _call(s, t, rng, "read", f"database/creds/{role}", w.database, OK if ok else DENIED,
                 response=response)


def sys_call(w: World, s: Session, t: int, rng: random.Random, op: str, path: str,
             data: dict | None = None, response: dict | None = None) -> Call:
    """Administrative call; the simulator lets it succeed (the identities involved are admins
    or attackers who already hold enough rights)."""
    return _call(s, t, rng, op, path, w.sys, data=data,
                 response=w.sys.response(data=response) if response is not None else None)


def policy_write(w: World, s: Session, t: int, rng: random.Random, name: str) -> Call:
    return sys_call(w, s, t, rng, "update", f"sys/policies/acl/{name}",
                    data={"policy": w.hmac("policy", name, rng.getrandbits(64))})


def login(w: World, actor: Actor, t: int, rng: random.Random, addr: str, ua: str | None,
          ok: bool = True) -> list[Call]:
    """The calls of one login through the actor's auth method; the last one carries the new
    identity in ``response.auth`` (or fails with invalid credentials)."""
    method = actor.mount.type
    s = Session(actor, t, addr, ua)
    nonce = rng.getrandbits(64)
    if method == "oidc":
        start = _call(s, t, rng, "update", "auth/oidc/oidc/auth_url", actor.mount, kind=ANON,
                      data={"redirect_uri": w.hmac("redirect"), "role": w.hmac("role", "default")},
                      response=actor.mount.response(data={"auth_url": w.hmac("url", nonce)}))
        t += int(rng.uniform(4, 40) * NS)
        s = s._replace(issued=t)
        return [start, _login_call(w, s, t, rng, "read", "auth/oidc/oidc/callback",
                                   {"code": w.hmac("code", nonce), "state": w.hmac("state", nonce)},
                                   ok)]
    if method == "userpass":
        user = actor.metadata["username"] if actor.metadata else ""
        secret = "password" if ok else ("guess", nonce)
        return [_login_call(w, s, t, rng, "update", f"auth/userpass/login/{user}",
                            {"password": w.hmac("password", user, secret)}, ok)]
    if method == "approle":
        data = {"role_id": w.hmac("role_id", actor.key), "secret_id": w.hmac("secret_id", nonce)}
        return [_login_call(w, s, t, rng, "update", "auth/approle/login", data, ok)]
    data = {"jwt": w.hmac("jwt", actor.key, nonce), "role": w.hmac("role", actor.key)}
    return [_login_call(w, s, t, rng, "update", f"auth/{method}/login", data, ok)]


def _login_call(w: World, s: Session, t: int, rng: random.Random, op: str, path: str,
                data: dict, ok: bool) -> Call:
    mount = s.actor.mount
    response = mount.response(auth=w.auth_dict(s.actor, t, None)) if ok else None
    return _call(s, t, rng, op, path, mount, OK if ok else INVALID, data=data, response=response,
                 kind=LOGIN)


def _ip(rng: random.Random, net: str) -> str:
    if net.count(".") == 2:
        return f"{net}.{rng.randint(2, 254)}"
    return f"{net}.{rng.randint(0, 255)}.{rng.randint(2, 254)}"


def _seconds(rng: random.Random, lo: float, hi: float) -> int:
    return int(rng.uniform(lo, hi) * NS)


def _typo(rng: random.Random, word: str) -> str:
    i = rng.randrange(len(word) - 1)
    swapped = word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return swapped if swapped != word else word + word[-1]


# ---------------------------------------------------------------------------------------------
# Benign behaviour (besides the periodic service reads, which are generated in bulk)

BenignGen = Callable[[World], Iterator[Call]]
BENIGN: list[BenignGen] = []


def benign(fn: BenignGen) -> BenignGen:
    BENIGN.append(fn)
    return fn


@benign
def service_logins(w: World) -> Iterator[Call]:
    """Each pod of a redeployed (or newly deployed) service logs in and renders its secrets once
    at start-up; the first epoch of the steady fleet began before the log."""
    for svc in w.all_services:
        rng = w.rand("service-login", svc.actor.key)
        for issued, ips in svc.epochs:
            if issued < w.start_ns:
                continue
            for ip in ips:
                t = issued + _seconds(rng, 0.5, 30)
                yield from login(w, svc.actor, t, rng, ip, svc.ua)
                s = Session(svc.actor, issued, ip, svc.ua)
                for secret in svc.secrets:
                    t += _seconds(rng, 0.01, 0.5)
                    yield kv_read(w, s, t, rng, secret)


@benign
def human_days(w: World) -> Iterator[Call]:
    """Weekday sessions in local working hours, rare weekend check-ins, and (SREs on call)
    occasional night incidents: benign look-alikes of off-hours reads."""
    for h in w.all_humans:
        yield from _human_calls(w, h)


def _human_calls(w: World, h: Human) -> Iterator[Call]:
    """One engineer's sessions; a pure function of (world, engineer), so that an insider episode
    can slip into a real session of theirs."""
    rng = w.rand("human-days", h.actor.key)
    for day in range(-1, w.days + 1):
        midnight = w.start_ns + day * DAY - h.tz_min * MINUTE
        weekend = w.weekday(day) >= 5
        # A legacy identity surely worked on the first day: it must be dormant, not absent.
        sure = day == 0 and h.active[1] < w.end_ns
        if rng.random() < (0.06 if weekend else 0.92) or sure:
            yield from _active(h.active, list(_human_day(w, h, rng, midnight, weekend)))
        if h.sre and rng.random() < 0.1:
            yield from _active(h.active, list(_night_incident(w, h, rng, midnight)))


def _active(active: tuple[int, int], session: list[Call]) -> list[Call]:
    """A session of someone who has joined (none that began earlier: a joiner's first event is
    a login) and has not yet left (cut at the moment they did)."""
    if not session or session[0].t < active[0]:
        return []
    return [c for c in session if c.t < active[1]]


def _human_day(w: World, h: Human, rng: random.Random, midnight: int,
               weekend: bool) -> Iterator[Call]:
    if weekend:
        t = midnight + int(rng.uniform(10, 16) * HOUR)
        end, bursts = t + int(rng.uniform(0.5, 2) * HOUR), rng.randint(1, 2)
    else:
        t = midnight + int((9 + rng.gauss(0, 0.6)) * HOUR)
        end, bursts = midnight + int((17.75 + rng.gauss(0, 0.75)) * HOUR), rng.randint(2, 8)
    addr = h.office_ip if h.office_ip and rng.random() < 0.6 else _ip(rng, CORP_VPN)
    calls = []
    if h.actor.mount.type == "userpass" and rng.random() < 0.1:  # mistyped password
        calls += login(w, h.actor, t, rng, addr, h.uas[0], ok=False)
        t += _seconds(rng, 5, 25)
    calls += login(w, h.actor, t, rng, addr, h.uas[0])
    yield from calls
    issued = calls[-1].t
    for bt in sorted(rng.uniform(issued + MINUTE, max(end, issued + 2 * MINUTE))
                     for _ in range(bursts)):
        ua = h.uas[0] if rng.random() < 0.75 else h.uas[1]
        yield from _human_burst(w, h, Session(h.actor, issued, addr, ua), int(bt), rng)


def _human_burst(w: World, h: Human, s: Session, t: int, rng: random.Random) -> Iterator[Call]:
    """A few minutes of work on the team's secrets: list, read, sometimes add one, sometimes a
    typo in the path that the ACL denies. SREs also help other teams and edit policies."""
    team = h.actor.team
    if h.sre:
        team = rng.choice(TEAMS)
    if rng.random() < 0.5:
        yield kv_list(w, s, t, rng, team)
        t += _seconds(rng, 2, 30)
    for _ in range(rng.randint(1, 6)):
        secret = rng.choice(w.teams[team])
        if rng.random() < 0.15:
            yield kv_read_metadata(w, s, t, rng, secret)
            t += _seconds(rng, 1, 10)
        yield kv_read(w, s, t, rng, secret)
        t += _seconds(rng, 2, 40)
    if rng.random() < 0.04:
        new = w.secret(team, f"{rng.choice(SECRET_NAMES)}-v{rng.randint(2, 9)}")
        yield kv_write(w, s, t, rng, new, "create")
        yield kv_read(w, s, t + _seconds(rng, 3, 20), rng, new)
    elif rng.random() < 0.05 and not h.sre:
        typo = w.secret(_typo(rng, team), rng.choice(w.teams[team]).name)
        yield kv_read(w, s, t, rng, typo)
    if h.sre and rng.random() < 0.04:
        yield policy_write(w, s, t + _seconds(rng, 30, 300), rng, f"{rng.choice(TEAMS)}-read")


def _night_incident(w: World, h: Human, rng: random.Random, midnight: int) -> Iterator[Call]:
    t = midnight + int(rng.uniform(0, 5) * HOUR)
    addr = _ip(rng, CORP_VPN)
    calls = login(w, h.actor, t, rng, addr, h.uas[0])
    yield from calls
    s = Session(h.actor, calls[-1].t, addr, h.uas[0])
    t = calls[-1].t
    team = rng.choice(TEAMS)
    for _ in range(rng.randint(3, 10)):
        t += _seconds(rng, 10, 120)
        yield kv_read(w, s, t, rng, rng.choice(w.teams[team]))


@benign
def ci_runs(w: World) -> Iterator[Call]:
    """Pipelines run in working hours on fresh runners: login, then a quick burst of reads."""
    for job in w.ci:
        rng = w.rand("ci-runs", job.actor.key)
        for day in range(w.days):
            weekend = w.weekday(day) >= 5
            runs = (1 if rng.random() < 0.3 else 0) if weekend else rng.randint(2, 10)
            for _ in range(runs):
                t = w.start_ns + day * DAY + int(rng.uniform(6, 20) * HOUR)
                yield from _job_run(w, job, rng, t, _ip(rng, CI_RUNNERS),
                                    [rng.choice(job.secrets) for _ in range(rng.randint(5, 30))])


@benign
def batch_runs(w: World) -> Iterator[Call]:
    """Nightly jobs log in at about 02:00 UTC and read the same secrets in the same order."""
    for job in w.batch:
        rng = w.rand("batch-runs", job.actor.key)
        for day in range(w.days):
            t = w.start_ns + day * DAY + 2 * HOUR + job.minute * MINUTE + _seconds(rng, 0, 90)
            yield from _job_run(w, job, rng, t, job.host, list(job.secrets))


def _job_run(w: World, job: Job, rng: random.Random, t: int, addr: str,
             secrets: list[Secret]) -> Iterator[Call]:
    calls = login(w, job.actor, t, rng, addr, job.ua)
    yield from calls
    s = Session(job.actor, t, addr, job.ua)
    for secret in secrets:
        t += _seconds(rng, 0.05, 2)
        yield kv_read(w, s, t, rng, secret)


@benign
def dynamic_credentials(w: World) -> Iterator[Call]:
    """Pods of database users fetch credentials at start and again when about two thirds of the
    lease has run (as Vault Agent does), so each pod reads its role every ~2.5 hours."""
    for svc in w.all_services:
        if svc.db_role is None:
            continue
        rng = w.rand("db-creds", svc.actor.key)
        ends = [e[0] for e in svc.epochs[1:]] + [min(svc.active[1], w.end_ns)]
        for (issued, ips), end in zip(svc.epochs, ends):
            for ip in ips:
                s = Session(svc.actor, issued, ip, svc.ua)
                t = issued + _seconds(rng, 1, 40)
                while t < end:
                    if t >= w.start_ns:
                        yield db_creds(w, s, t, rng, svc.actor.team)
                    t += _seconds(rng, 0.6 * DB_LEASE_SECONDS, 0.72 * DB_LEASE_SECONDS)


@benign
def secret_rotation(w: World) -> Iterator[Call]:
    """The rotator's weekly mass rotation and its daily canary rotation (see the module doc)."""
    for day in range(w.days):
        yield from _rotation_run(w, day)


def _rotation_run(w: World, day: int) -> list[Call]:
    """One day's rotation, a pure function of (world, day) so the change-window feed can
    recompute the weekly runs' exact extent."""
    rot = w.rotator
    rng = w.rand("rotation", day)
    t = w.start_ns + day * DAY + int(rot.hour * HOUR) + _seconds(rng, 0, 90)
    calls = login(w, rot.actor, t, rng, rot.host, rot.ua)
    s = Session(rot.actor, calls[-1].t, rot.host, rot.ua)
    if w.weekday(day) == rot.weekday:
        every = [x for team in TEAMS for x in w.teams[team]]
        secrets = rng.sample(every, min(len(every), rng.randint(40, 120)))
        step = rng.uniform(10, 18) * 60 / len(secrets)
    else:
        secrets, step = list(rot.canaries), rng.uniform(1, 5)
    t = calls[-1].t
    for secret in secrets:
        t += _seconds(rng, 0.5 * step, 1.5 * step)
        calls.append(kv_write(w, s, t, rng, secret, "update"))
    return calls


class _Bulk(NamedTuple):
    t: np.ndarray  # int64 ns
    stream: np.ndarray
    epoch: np.ndarray
    pod: np.ndarray
    port: np.ndarray


def _service_reads(w: World, budget: int | None) -> tuple[list[tuple[Service, Secret]], _Bulk]:
    """Periodic reads of each service's own secrets (every 30-300 s, jittered), as arrays.

    With a ``budget`` (calls left for services after everything else) every period is divided
    by the same factor so the expected number of reads matches it."""
    streams = [(svc, sec) for svc in w.all_services for sec in svc.secrets]
    rngs = [np.random.default_rng([w.seed, 101, i]) for i in range(len(streams))]
    periods = [r.uniform(30, 300) for r in rngs]
    duration = w.days * 86400.0
    # Seconds of the log each stream's service is there (joiners and legacy ones: part of it).
    # A joiner's reads start a minute after its first deploy, once its pods have logged in.
    spans = [(max(0.0, (svc.active[0] - w.start_ns) / NS + 60),
              min(duration, (svc.active[1] - w.start_ns) / NS)) for svc, _ in streams]
    scale = 1.0
    if budget is not None and streams:
        scale = max(budget, len(streams)) / sum(max(0.0, hi - lo) / p
                                                for (lo, hi), p in zip(spans, periods))
    parts = []
    for i, ((svc, _), rng, period) in enumerate(zip(streams, rngs, periods)):
        p = period / scale
        n = int(duration / (0.8 * p)) + 2
        gaps = rng.uniform(0.8 * p, 1.2 * p, n)
        times = rng.uniform(0, p) + np.cumsum(gaps) - gaps[0]
        lo, hi = spans[i]
        times = times[(times >= lo) & (times < hi)]
        t = w.start_ns + (times * NS).astype(np.int64)
        starts = np.array([e[0] for e in svc.epochs], dtype=np.int64)
        k = len(t)
        parts.append((t, np.full(k, i, np.int32), np.searchsorted(starts, t, "right") - 1,
                      rng.integers(0, len(svc.epochs[0][1]), k),
                      rng.integers(32768, 61000, k)))
    if not parts:
        empty = np.zeros(0, np.int64)
        return streams, _Bulk(empty, empty, empty, empty, empty)
    return streams, _Bulk(*(np.concatenate(cols) for cols in zip(*parts)))


# ---------------------------------------------------------------------------------------------
# Attack episodes

EpisodeGen = Callable[[World, random.Random, int], tuple[str, list[Call]]]
ATTACKS: dict[str, EpisodeGen] = {}


def attack(cls: str) -> Callable[[EpisodeGen], EpisodeGen]:
    """Register an episode generator: (world, rng, day) -> (identity hint, calls)."""
    def register(fn: EpisodeGen) -> EpisodeGen:
        ATTACKS[cls] = fn
        return fn
    return register


def _attack_episodes(w: World) -> list[Episode]:
    """A few episodes per class, stratified over days 3..N so every identity has a history."""
    per_class = max(2, round(3 * w.days / 7))
    window = w.days - w.attack_day0
    episodes = []
    for cls, gen in ATTACKS.items():
        rng = w.rand("attack", cls)
        for k in range(per_class):
            day = w.attack_day0 + int((k + rng.random()) * window / per_class)
            hint, calls = gen(w, rng, day)
            episodes.append(Episode(cls, hint, tuple(calls)))
    episodes.sort(key=lambda e: (e.calls[0].t, e.cls))
    return episodes


def _when(w: World, rng: random.Random, day: int, lo_h: float, hi_h: float,
          tz_min: int = 0, span: int = 2 * HOUR) -> int:
    """A time on local day ``day`` between the given hours, moved by whole days into the attack
    window so the episode (at most ``span`` long) ends before the log does."""
    t = w.start_ns + day * DAY - tz_min * MINUTE + int(rng.uniform(lo_h, hi_h) * HOUR)
    lo, hi = w.start_ns + w.attack_day0 * DAY, w.end_ns - span
    while t < lo:
        t += DAY
    while t > hi:
        t -= DAY
    return t


def _other_team_secrets(w: World, team: str) -> list[Secret]:
    return [s for t in TEAMS if t != team for s in w.teams[t]]


def _human_session(w: World, h: Human, t: int, rng: random.Random) -> Session:
    """A human already logged in earlier that day, at their usual place."""
    addr = h.office_ip or _ip(rng, CORP_VPN)
    return Session(h.actor, t - _seconds(rng, 600, 4 * 3600), addr, h.uas[0])


def _service_session(svc: Service, t: int, rng: random.Random) -> Session:
    issued, ips = svc.epoch_at(t)
    return Session(svc.actor, issued, rng.choice(ips), svc.ua)


def _insider(w: World, rng: random.Random, t: int, sre_ok: bool,
             exclude: Set[str] = frozenset()) -> Session:
    """A human (non-SRE unless allowed) or a service session, half and half."""
    humans = [h for h in w.humans if (sre_ok or not h.sre) and h.actor.key not in exclude]
    services = [s for s in w.services if s.actor.key not in exclude]
    if not humans and not services:  # a tiny fleet ran out of fresh identities: reuse them
        humans, services = [h for h in w.humans if sre_ok or not h.sre], w.services
    if humans and (rng.random() < 0.5 or not services):
        return _human_session(w, rng.choice(humans), t, rng)
    return _service_session(rng.choice(services), t, rng)


@attack("root_token_use")
def root_token_use(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    t = _when(w, rng, day, 6, 22)
    s = Session(w.root, t - _seconds(rng, 60, 1800), _ip(rng, CORP_VPN), CLI_UA)
    calls = []
    for _ in range(rng.randint(1, 3)):
        secret = rng.choice(rng.choice(list(w.teams.values())))
        choice = rng.randrange(4)
        if choice == 0:
            calls.append(kv_read(w, s, t, rng, secret))
        elif choice == 1:
            calls.append(kv_write(w, s, t, rng, secret, "update"))
        elif choice == 2:
            calls.append(sys_call(w, s, t, rng, "read", "sys/mounts",
                                  response={"secret/": {"type": w.hmac("kv"),
                                                        "accessor": w.hmac("acc", "kv")}}))
        else:
            calls.append(sys_call(w, s, t, rng, "list", "sys/policies/acl",
                                  response={"keys": [w.hmac("key", "default")]}))
        t += _seconds(rng, 3, 120)
    return "root", calls


@attack("audit_device_tampering")
def audit_device_tampering(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    h = rng.choice(w.humans)
    t = _when(w, rng, day, 8, 20, h.tz_min)
    s = _human_session(w, h, t, rng)
    calls = []
    if rng.random() < 0.6:
        devices = {f"{d}/": {"type": w.hmac("type", d), "description": w.hmac("")}
                   for d in AUDIT_DEVICES}
        calls.append(sys_call(w, s, t, rng, "read", "sys/audit", response=devices))
        t += _seconds(rng, 5, 90)
    device = rng.choice(AUDIT_DEVICES)
    if rng.random() < 0.7:
        calls.append(sys_call(w, s, t, rng, "delete", f"sys/audit/{device}"))
    else:
        options = {"file_path": w.hmac("path", "/dev/null"), "log_raw": w.hmac("true")}
        calls.append(sys_call(w, s, t, rng, "update", f"sys/audit/{device}",
                              data={"type": w.hmac("type", device), "options": options}))
    return s.actor.display_name, calls


@attack("policy_change_then_reads")
def policy_change_then_reads(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """Widen one's own policy, then use it. The writer must never have written a policy: SREs
    (who edit policies legitimately) and earlier episodes' writers are excluded."""
    t = _when(w, rng, day, 7, 21)
    s = _insider(w, rng, t, sre_ok=False, exclude=w.policy_writers)
    w.policy_writers.add(s.actor.key)
    calls = [policy_write(w, s, t, rng, s.actor.policies[-1])]
    others = _other_team_secrets(w, s.actor.team)
    for secret in rng.sample(others, min(len(others), rng.randint(5, 15))):
        t += _seconds(rng, 3, 40)
        calls.append(kv_read(w, s, t, rng, secret, force=True))
    return s.actor.display_name, calls


@attack("enumeration_denied_burst")
def enumeration_denied_burst(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    t = _when(w, rng, day, 0, 24)
    s = _insider(w, rng, t, sre_ok=False)
    n = rng.randint(30, 80)
    step = rng.uniform(120, 290) / n
    calls = [kv_list(w, s, t, rng, None)]
    own = s.actor.team
    others = [x for x in TEAMS if x != own]
    while len(calls) < n:
        t += _seconds(rng, 0.3 * step, 1.7 * step)
        team = own if rng.random() < 0.1 else rng.choice(others)
        if rng.random() < 0.25:
            calls.append(kv_list(w, s, t, rng, team))
        else:
            calls.append(kv_read(w, s, t, rng, w.secret(team, rng.choice(SECRET_NAMES))))
    return s.actor.display_name, calls


@attack("bruteforce_login")
def bruteforce_login(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """Password guessing from one outside address, sometimes ending in a successful login and a
    few reads with the new token from that address."""
    h = rng.choice(w.humans)
    actor = h.userpass
    t = _when(w, rng, day, 0, 24)
    addr, ua = _ip(rng, rng.choice(UNKNOWN_NETS)), rng.choice(BRUTEFORCE_UAS)
    calls = []
    for _ in range(rng.randint(15, 40)):
        calls += login(w, actor, t, rng, addr, ua, ok=False)
        t += _seconds(rng, 1, 8)
    if rng.random() < 0.5:
        calls += login(w, actor, t, rng, addr, ua)
        s = Session(actor, t, addr, ua)
        for _ in range(rng.randint(2, 6)):
            t += _seconds(rng, 5, 60)
            calls.append(kv_read(w, s, t, rng, rng.choice(w.teams[actor.team])))
    return actor.display_name, calls


@attack("stolen_token_new_network")
def stolen_token_new_network(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """A service's token replayed from outside with a generic HTTP client."""
    svc = rng.choice(w.services)
    t = _when(w, rng, day, 0, 24)
    issued, _ = svc.epoch_at(t)
    s = Session(svc.actor, issued, _ip(rng, STOLEN_TOKEN_NET), rng.choice(ATTACKER_UAS))
    team = svc.actor.team
    lookup = {"accessor": svc.actor.accessor, "display_name": w.hmac("dn", svc.actor.key),
              "policies": [w.hmac("policy", p) for p in svc.actor.policies], "ttl": 2400}
    calls = [_call(s, t, rng, "read", "auth/token/lookup-self", w.token_mount,
                   response=w.token_mount.response(data=lookup))]
    others = _other_team_secrets(w, team)
    for _ in range(rng.randint(4, 29)):
        t += _seconds(rng, 5, 45)
        r = rng.random()
        if r < 0.55:
            calls.append(kv_read(w, s, t, rng, rng.choice(svc.secrets)))
        elif r < 0.7:
            calls.append(kv_list(w, s, t, rng, team))
        else:
            calls.append(kv_read(w, s, t, rng, rng.choice(others)))
    return svc.actor.display_name, calls


@attack("offhours_bulk_read")
def offhours_bulk_read(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """At 01:00-04:00 local time a human logs in and reads many distinct secrets of other teams
    within the hour (an SRE if there is one, whose policies allow it)."""
    sres = [h for h in w.humans if h.sre]
    h = rng.choice(sres or w.humans)
    t = _when(w, rng, day, 1, 2.5, h.tz_min)
    addr = _ip(rng, CORP_VPN)
    calls = login(w, h.actor, t, rng, addr, h.uas[0])
    t = calls[-1].t
    s = Session(h.actor, t, addr, h.uas[0])
    others = _other_team_secrets(w, h.actor.team)
    picked = rng.sample(others, min(len(others), rng.randint(40, 150)))
    step = rng.uniform(10, 50) * 60 / len(picked)
    for secret in picked:
        t += _seconds(rng, 0.2 * step, 1.8 * step)
        calls.append(kv_read(w, s, t, rng, secret, force=True))
    return h.actor.display_name, calls


@attack("slow_lateral_reads")
def slow_lateral_reads(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """An insider with an over-broad policy reads 6-20 other teams' secrets over 1-4 hours, at
    its own pace, from its usual place and client, in its usual hours. Nothing but the secrets
    is new, and they are new to its peers too (same policies), so the insider is picked among
    identities that have peers."""
    n = rng.randint(6, 20)
    span = int(rng.uniform(1, 4) * HOUR)
    offsets = sorted([0, span] + [rng.randrange(span) for _ in range(n - 2)])
    human = rng.random() < 0.5
    humans = _with_peers([h for h in w.humans if not h.sre])
    services = _with_peers(w.services)
    if human and humans or not services:
        h = rng.choice(humans or [h for h in w.humans if not h.sre] or w.humans)
        t = _when(w, rng, day, 9.5, max(9.6, 17 - span / HOUR), h.tz_min, span + HOUR)
        s, t = _work_session(w, h, t, span, rng)
        sessions = [s] * n
    else:
        svc = rng.choice(services)
        t = _when(w, rng, day, 0, 24, span=span + HOUR)
        sessions = [_service_session(svc, t + dt, rng) for dt in offsets]
    others = _other_team_secrets(w, sessions[0].actor.team)
    picked = rng.sample(others, min(len(others), n))
    calls = [kv_read(w, s, t + dt, rng, secret, force=True)
             for s, dt, secret in zip(sessions, offsets, picked)]
    return sessions[0].actor.display_name, calls


def _work_session(w: World, h: Human, t: int, span: int,
                  rng: random.Random) -> tuple[Session, int]:
    """The engineer's own session (token, address, client) next after ``t``, or the last one
    before it, with a start for reads that fits ``span`` before the log ends."""
    lo, hi = w.start_ns + w.attack_day0 * DAY, w.end_ns - span - 10 * MINUTE
    own = [c for c in _human_calls(w, h) if c.kind == TOKEN and lo <= c.t <= hi]
    if not own:
        return _human_session(w, h, t, rng), t
    later = [c for c in own if c.t >= t]
    c = later[0] if later else own[-1]
    return Session(c.actor, c.issued, c.addr, c.ua), c.t + _seconds(rng, 30, 300)


def _with_peers(idents: list) -> list:
    """The identities (services or humans) that share their policies with another one."""
    count: dict[tuple[str, ...], int] = {}
    for x in idents:
        count[x.actor.policies] = count.get(x.actor.policies, 0) + 1
    return [x for x in idents if count[x.actor.policies] > 1]


@attack("dormant_reactivated")
def dormant_reactivated(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """A legacy identity, silent since the first day or two, logs in again from outside with a
    generic client and reads a few secrets, mostly its own team's. Episodes fall on the last
    days, at least 3 days after the victim's last activity when the log is long enough."""
    pool = w.legacy_services + w.legacy_humans
    victim = rng.choice([x for x in pool if x.actor.key not in w.reactivated] or pool)
    w.reactivated.add(victim.actor.key)
    # Stretch the stratified day over the days left after the legacy identities went quiet.
    first = min(w.days - 1, w.legacy_days + 3)
    day = first + (day - w.attack_day0) * (w.days - first) // max(1, w.days - w.attack_day0)
    t = w.start_ns + day * DAY + int(rng.uniform(0, 24) * HOUR)
    t = max(t, victim.active[1] + 3 * DAY + _seconds(rng, 600, 6 * 3600))
    t = min(t, w.end_ns - 2 * HOUR)
    # Humans are reached through the password alias (no second factor), services by a leaked
    # service-account token presented to the Kubernetes login.
    actor = victim.userpass if isinstance(victim, Human) else victim.actor
    addr, ua = _ip(rng, rng.choice(UNKNOWN_NETS)), rng.choice(ATTACKER_UAS)
    calls = login(w, actor, t, rng, addr, ua)
    s = Session(actor, calls[-1].t, addr, ua)
    t = calls[-1].t
    own = list(victim.secrets) if isinstance(victim, Service) else list(w.teams[actor.team])
    others = _other_team_secrets(w, actor.team)
    for _ in range(rng.randint(3, 10)):
        t += _seconds(rng, 5, 90)
        calls.append(kv_read(w, s, t, rng, rng.choice(own if rng.random() < 0.75 else others)))
    return actor.display_name, calls


@attack("dynamic_credential_harvest")
def dynamic_credential_harvest(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """30-120 database credentials across several roles within minutes: stockpiling logins. The
    identity's policy grants ``database/creds/*`` (a common over-broad grant), so all succeed.
    A database-using service's token (from its own pod) or a human on their usual network."""
    db_users = [x for x in w.services if x.db_role]
    if db_users and (rng.random() < 0.6 or not w.humans):
        t = _when(w, rng, day, 0, 24)
        s = _service_session(rng.choice(db_users), t, rng)
    else:
        h = rng.choice([x for x in w.humans if not x.sre] or w.humans)
        t = _when(w, rng, day, 8, 20, h.tz_min)
        s = _human_session(w, h, t, rng)
    own = s.actor.team
    teams = [own] + rng.sample([x for x in TEAMS if x != own], rng.randint(2, 5))
    n = rng.randint(30, 120)
    step = rng.uniform(2, 8) * 60 / n
    calls = []
    for _ in range(n):
        t += _seconds(rng, 0.3 * step, 1.7 * step)
        calls.append(db_creds(w, s, t, rng, rng.choice(teams), force=True))
    return s.actor.display_name, calls


# ---------------------------------------------------------------------------------------------
# Rendering


def _render(w: World, calls: list[Call], owner: list[int], streams: list[tuple[Service, Secret]],
            bulk: _Bulk, episode_ids: list[list[str]],
            write: Callable[[list[bytes]], None]) -> tuple[int | None, int | None]:
    """Merge bulk reads and calls by time and write request/response lines in time order.

    Responses follow their request by 1-50 ms, so they wait in a small heap and are written
    once no earlier request remains."""
    nb = len(bulk.t)
    all_t = np.concatenate([bulk.t, np.fromiter((c.t for c in calls), np.int64, len(calls))])
    order = np.argsort(all_t, kind="stable").tolist()
    n = len(order)
    rng = np.random.default_rng([w.seed, 202])
    delays = np.minimum(1_000_000 + rng.exponential(4e6, n), 50e6).astype(np.int64).tolist()
    ids = rng.bytes(16 * n).hex()
    stream, epoch, pod, port = (a.tolist() for a in bulk[1:])
    all_t = all_t.tolist()
    kv = w.kv
    pending: list[tuple[int, int, bytes]] = []
    out: list[bytes] = []
    first = all_t[order[0]] if n else None
    last = None
    for k, idx in enumerate(order):
        t = all_t[idx]
        while pending and pending[0][0] <= t:
            out.append(heapq.heappop(pending)[2])
        h = ids[32 * k:32 * k + 32]
        rid = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
        if idx < nb:
            svc, secret = streams[stream[idx]]
            issued, ips = svc.epochs[epoch[idx]]
            req, resp = _lines(w, t, t + delays[k], rid, TOKEN, svc.actor, issued, "read",
                               secret.path, kv, ips[pod[idx]], port[idx], svc.ua, OK, None,
                               secret.response)
        else:
            c = calls[idx - nb]
            req, resp = _lines(w, t, t + delays[k], rid, c.kind, c.actor, c.issued, c.op, c.path,
                               c.mount, c.addr, c.port, c.ua, c.outcome, c.data, c.response)
            if owner[idx - nb] >= 0:
                episode_ids[owner[idx - nb]].append(rid)
        out.append(req)
        heapq.heappush(pending, (t + delays[k], k, resp))
        if len(out) >= 16384:
            write(out)
            out = []
    while pending:
        last, _, line = heapq.heappop(pending)
        out.append(line)
    write(out)
    return first, last



def _lines(w: World, t: int, t_resp: int, rid: str, kind: str, actor: Actor, issued: int,
           op: str, path: str, mount: Mount, addr: str, port: int, ua: str | None,
           outcome: str, data: dict | None, response: bytes | None) -> tuple[bytes, bytes]:
    """The request and response lines of one call. The request object is serialized once and
    shared by both lines, as Vault repeats it verbatim."""
    if kind == TOKEN:
        req = {"id": rid, "client_id": actor.client_id, "operation": op, **mount.request_fields,
               "client_token": actor.request_token, "client_token_accessor": actor.accessor,
               "namespace": ROOT_NS, "path": path}
        auth = w.auth_block(actor, issued, outcome != DENIED)
    else:
        req = {"id": rid, "operation": op, **mount.request_fields, "namespace": ROOT_NS,
               "path": path}
        auth = _ANON_AUTH
    if data is not None:
        req["data"] = data
    req["remote_address"] = addr
    req["remote_port"] = port
    if ua:
        req["headers"] = {"user-agent": [ua]}
    body = orjson.dumps(req)
    if outcome == OK:
        resp, err_req, err = response or mount.ok, b"", b""
    elif outcome == DENIED:
        resp, err_req, err = mount.denied, _ERR_DENIED_REQUEST, _ERR_DENIED
    else:
        resp, err_req, err = mount.invalid, b"", _ERR_INVALID
    return (b'{"time":"%s","type":"request","auth":%s,"request":%s%s}'
            % (_vault_time(t), auth, body, err_req),
            b'{"time":"%s","type":"response","auth":%s,"request":%s,"response":%s%s}'
            % (_vault_time(t_resp), auth, body, resp, err))


_DATE_PREFIX: dict[int, bytes] = {}


def _vault_time(t: int) -> bytes:
    """RFC 3339 with up to nine fractional digits, trailing zeros trimmed, as Go prints it."""
    sec, frac = divmod(t, NS)
    day, sod = divmod(sec, 86400)
    prefix = _DATE_PREFIX.get(day)
    if prefix is None:
        prefix = _DATE_PREFIX[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT").encode()
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    if frac:
        return b"%s%02d:%02d:%02d.%sZ" % (prefix, hh, mm, ss, (b"%09d" % frac).rstrip(b"0"))
    return b"%s%02d:%02d:%02dZ" % (prefix, hh, mm, ss)


def _write_labels(episodes: list[Episode], ids: list[list[str]], out: Path | TextIO) -> None:
    lines = [orjson.dumps({"episode": f"ep-{k + 1:04d}", "class": ep.cls,
                           "identity_hint": ep.hint,
                           "start": _vault_time(ep.calls[0].t).decode(),
                           "end": _vault_time(max(c.t for c in ep.calls)).decode(),
                           "request_ids": ids[k]})
             for k, ep in enumerate(episodes)]
    with _sink(out) as write:
        write(lines)


def _change_windows(w: World) -> list[dict]:
    """Expected bursts a change-management feed would announce, with a little slack: every
    weekly rotation run (by the rotator's policy) and every planned deploy (by the service's
    display name; unplanned reschedules are not announced)."""
    windows = []
    for day in range(w.days):
        if w.weekday(day) == w.rotator.weekday:
            calls = _rotation_run(w, day)
            windows.append((calls[0].t - 5 * MINUTE, calls[-1].t + 5 * MINUTE, "rotation",
                            [ROTATOR_POLICY], [],
                            f"weekly secret rotation ({len(calls) - 1} secrets)"))
    for svc in w.all_services:
        pods = {t: len(ips) for t, ips in svc.epochs}
        name = svc.actor.metadata["role"] if svc.actor.metadata else svc.actor.key
        for t in sorted(svc.deploys):
            note = f"deploy of {name} ({pods[t]} pod{'s' if pods[t] > 1 else ''})"
            # Pods log in within 30 s of the deploy and render their secrets right after.
            windows.append((t - MINUTE, t + 5 * MINUTE, "deploy", [], [svc.actor.display_name],
                            note))
    return [{"start": _iso_seconds(lo), "end": _iso_seconds(hi + NS - 1), "kind": kind,
             "policies": policies, "display_names": names, "note": note}
            for lo, hi, kind, policies, names, note in sorted(windows)
            if hi > w.start_ns and lo < w.end_ns]


def _write_windows(windows: list[dict], out: Path | TextIO) -> None:
    with _sink(out) as write:
        write([orjson.dumps(x) for x in windows])


@contextmanager
def _sink(out: Path | TextIO) -> Iterator[Callable[[list[bytes]], None]]:
    """A writer of line batches. Gzip output has a zero mtime and no file name in its header so
    that the compressed bytes are reproducible too; level 3 compresses about as well as the
    default 6 on these repetitive lines at twice the speed."""
    if isinstance(out, (str, Path)):
        path = Path(out)
        with open(path, "wb") as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                   compresslevel=3) as gz:
                    yield lambda lines: lines and gz.write(b"\n".join(lines) + b"\n")
            else:
                yield lambda lines: lines and raw.write(b"\n".join(lines) + b"\n")
    else:
        yield lambda lines: lines and out.write((b"\n".join(lines) + b"\n").decode())


# ---------------------------------------------------------------------------------------------
# Ids and time helpers


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}  # uuid4 variant nibble


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()


def _hmac(*parts: object) -> str:
    return "hmac-sha256:" + _digest(*parts)


def _uuid(*parts: object) -> str:
    h = _digest(*parts)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def _ns(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def _datetime(t: int) -> datetime:
    return _EPOCH + timedelta(microseconds=t // 1000)


def _iso_seconds(t: int) -> str:
    return _datetime(t - t % NS).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.simulate --out log.jsonl.gz [--labels labels.jsonl]
    [--windows windows.jsonl] [--target-calls N]`` (prints the summary and the elapsed time, for
    benchmarks)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", type=Path)
    p.add_argument("--windows", type=Path, help="expected-burst windows (JSONL)")
    p.add_argument("--days", type=int, default=SimulationSpec.days)
    p.add_argument("--seed", type=int, default=SimulationSpec.seed)
    p.add_argument("--target-calls", type=int)
    p.add_argument("--no-attacks", action="store_true")
    a = p.parse_args(argv)
    spec = SimulationSpec(days=a.days, seed=a.seed, target_calls=a.target_calls,
                          attacks=not a.no_attacks)
    began = _time.perf_counter()
    summary = simulate(spec, a.out, a.labels, a.windows)
    elapsed = _time.perf_counter() - began
    print(f"{summary.calls} calls, {summary.lines} lines ({summary.attack_calls} attack calls, "
          f"episodes {summary.episodes}) in {elapsed:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
