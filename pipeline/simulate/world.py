"""The simulated fleet: constants, identities, mounts, secrets, and the ids and times they carry."""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

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
# The spec


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
    world: str = "default"  # or "drift" (secretscope.simulate.drift): which behaviours and attacks


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
