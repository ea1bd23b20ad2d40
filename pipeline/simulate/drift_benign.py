"""Benign behaviour of the drift world: the generators of :data:`DRIFT_BENIGN`."""

from __future__ import annotations

import random
from collections.abc import Iterator

from secretscope.simulate.benign import (BenignGen, _active, _human_burst, _job_run, batch_runs,
                                      team_firefight,
                                      dynamic_credentials, secret_rotation, service_logins)
from secretscope.simulate.calls import _call, kv_list, kv_read, login, policy_write, sys_call
from secretscope.simulate.world import (BATCH, CI_RUNNERS, CORP_VPN, K8S_PROD, SERVICE_UAS, Call,
                                     DAY, HOUR, MINUTE, Actor, Human, Session, TEAMS, World, _ip,
                                     _seconds)

DRIFT_BENIGN: list[BenignGen] = [service_logins, batch_runs, dynamic_credentials,
                                 secret_rotation]


def drift_benign(fn: BenignGen) -> BenignGen:
    DRIFT_BENIGN.append(fn)
    return fn


@drift_benign
def drift_human_days(w: World) -> Iterator[Call]:
    for h in w.all_humans:
        yield from _drift_human_calls(w, h)


def _drift_human_calls(w: World, h: Human) -> Iterator[Call]:
    """One engineer's sessions: a pure function of (world, engineer) so that attacks can use
    a real session of theirs (token, address, client)."""
    rng = w.rand("drift-human-days", h.actor.key)
    away = w.away.get(h.actor.key, (w.days, -1))
    for day in range(-1, w.days + 1):
        midnight = w.start_ns + day * DAY - h.tz_min * MINUTE
        weekend = w.weekday(day) >= 5
        rate = 0.06 if weekend else (0.04 if day == w.holiday else 0.92)
        back = away[1] < day <= away[1] + 3  # the first days back are worked from home
        home = back or rng.random() < w.home_rate[h.actor.key]
        if away[0] <= day <= away[1]:
            continue
        if rng.random() < rate or back and not weekend:
            yield from _active(h.active, list(_day(w, h, rng, midnight, weekend, home)))
        week = max(0, day) // 7
        if weekend and h.sre and w.on_call.get(week) is h:
            for _ in range(rng.randint(1, 3)):
                yield from _active(h.active, list(_page(w, h, rng, midnight)))


def _addresses(w: World, h: Human, rng: random.Random, home: bool) -> Iterator[str]:
    """Where each connection of the day comes from: one ISP address at home (it changes
    between days, not within one), the office, or a new VPN address per connection."""
    if home:
        addr = _ip(rng, w.home_net[h.actor.key])
        while True:
            yield addr
    in_office = h.office_ip is not None and rng.random() < 0.5
    while True:
        yield h.office_ip if in_office else _ip(rng, CORP_VPN)


def _day(w: World, h: Human, rng: random.Random, midnight: int, weekend: bool,
         home: bool) -> Iterator[Call]:
    if weekend:
        t = midnight + int(rng.uniform(10, 16) * HOUR)
        end, bursts = t + int(rng.uniform(0.5, 2) * HOUR), rng.randint(1, 2)
    else:
        t = midnight + int((9 + rng.gauss(0, 0.6)) * HOUR)
        end, bursts = midnight + int((17.75 + rng.gauss(0, 0.75)) * HOUR), rng.randint(2, 8)
    where = _addresses(w, h, rng, home)
    calls = login(w, h.actor, t, rng, next(where), h.uas[0])
    yield from calls
    issued = calls[-1].t
    for bt in sorted(rng.uniform(issued + MINUTE, max(end, issued + 2 * MINUTE))
                     for _ in range(bursts)):
        ua = h.uas[0] if rng.random() < 0.75 else h.uas[1]
        s = Session(h.actor, issued, next(where), ua)
        if not h.sre and rng.random() < 0.15:
            yield from _partner_burst(w, h, s, int(bt), rng)
        else:
            yield from _human_burst(w, h, s, int(bt), rng)


def _partner_burst(w: World, h: Human, s: Session, t: int, rng: random.Random) -> Iterator[Call]:
    """Work on the integration with the partner team: its shared secrets, sometimes after a
    look at its folder."""
    partner = w.partner[h.actor.team]
    if rng.random() < 0.3:
        yield kv_list(w, s, t, rng, partner)
        t += _seconds(rng, 2, 30)
    for _ in range(rng.randint(1, 3)):
        yield kv_read(w, s, t, rng, rng.choice(w.shared[partner]))
        t += _seconds(rng, 5, 60)


def _page(w: World, h: Human, rng: random.Random, midnight: int) -> Iterator[Call]:
    """A weekend page: the on-call SRE logs in at any hour, from home, and reads the
    secrets of the team whose service is failing."""
    t = midnight + int(rng.uniform(0, 24) * HOUR)
    addr = _ip(rng, w.home_net[h.actor.key]) if rng.random() < 0.7 else _ip(rng, CORP_VPN)
    yield from team_firefight(w, h, rng, t, addr, (3, 12), 300)


@drift_benign
def drift_ci_runs(w: World) -> Iterator[Call]:
    """Each pipeline of a team runs its CI jobs on fresh runners (a new address per run)."""
    for job in w.ci:
        rng = w.rand("drift-ci-runs", job.actor.key)
        for t in w.pipelines[job.actor.team]:
            if rng.random() < 0.85:
                secrets = [rng.choice(job.secrets) for _ in range(rng.randint(3, 15))]
                yield from _job_run(w, job, rng, t + _seconds(rng, 0, 120),
                                    _ip(rng, CI_RUNNERS), secrets)


@drift_benign
def autoscaling(w: World) -> Iterator[Call]:
    """Busy services scale out at peak hours: extra pods log in from new addresses, read their
    secrets every few minutes, and go away one to three hours later."""
    for svc in w.services:
        if len(svc.epochs[0][1]) < 2:
            continue
        rng = w.rand("autoscale", svc.actor.key)
        for day in range(w.days):
            if w.weekday(day) >= 5 or rng.random() > 0.3:
                continue
            t0 = w.start_ns + day * DAY + int(rng.uniform(9, 18) * HOUR)
            t1 = t0 + int(rng.uniform(1, 3) * HOUR)
            for _ in range(rng.randint(1, 4)):
                ip, t = _ip(rng, K8S_PROD), t0 + _seconds(rng, 0, 300)
                calls = login(w, svc.actor, t, rng, ip, svc.ua)
                yield from calls
                s = Session(svc.actor, calls[-1].t, ip, svc.ua)
                while t < t1:
                    for secret in svc.secrets:
                        yield kv_read(w, s, t, rng, secret)
                        t += _seconds(rng, 0.01, 0.5)
                    t += _seconds(rng, 300, 600)


@drift_benign
def migration_week(w: World) -> Iterator[Call]:
    """Unannounced: the platform job copies every team's secrets, each read once, to the
    ``kv-v2/`` mount, a few teams per working day."""
    rng = w.rand("migration")
    teams = list(TEAMS)
    rng.shuffle(teams)
    days = w.migration_days
    for k, day in enumerate(days):
        batch = teams[k * len(teams) // len(days):(k + 1) * len(teams) // len(days)]
        t = w.start_ns + day * DAY + int(rng.uniform(10, 15) * HOUR)
        calls = login(w, w.migrator, t, rng, w.migrator_host, "python-requests/2.32.3")
        yield from calls
        s = Session(w.migrator, calls[-1].t, w.migrator_host, "python-requests/2.32.3")
        t = calls[-1].t
        for team in batch:
            for secret in w.teams[team]:
                t += _seconds(rng, 0.2, 3)
                yield kv_read(w, s, t, rng, secret)
                t += _seconds(rng, 0.05, 0.5)
                yield _copy(w, s, t, rng, secret)


def _copy(w: World, s: Session, t: int, rng: random.Random, secret) -> Call:
    path = secret.path.replace("secret/data/", "kv-v2/data/", 1)
    data = {"data": {f: w.hmac("value", secret.path, f) for f in secret.fields}}
    meta = {"created_time": w.hmac("created", path), "version": 1}
    return _call(s, t, rng, "create", path, w.kv2, data=data, response=w.kv2.response(data=meta))


@drift_benign
def sre_admin_work(w: World) -> Iterator[Call]:
    """SREs edit policies (reorganisations, new services) on most working days, and one of
    them enables a new audit device once."""
    sres = [h for h in w.humans if h.sre]
    for h in sres:
        rng = w.rand("sre-admin", h.actor.key)
        for day in range(w.days):
            if w.weekday(day) >= 5 or day == w.holiday or rng.random() > 0.5:
                continue
            t = w.start_ns + day * DAY - h.tz_min * MINUTE + int(rng.uniform(10, 16) * HOUR)
            yield from _policy_session(w, h, rng, t)
    if sres:
        yield from _new_audit_device(w, sres[0])


def _policy_session(w: World, h: Human, rng: random.Random, t: int) -> Iterator[Call]:
    addr = h.office_ip or _ip(rng, CORP_VPN)
    calls = login(w, h.actor, t, rng, addr, h.uas[0])
    yield from calls
    s = Session(h.actor, calls[-1].t, addr, h.uas[0])
    t = calls[-1].t
    for _ in range(rng.randint(1, 3)):
        name = f"{rng.choice(TEAMS)}-{rng.choice(('read', 'dev', 'staging-read'))}"
        t += _seconds(rng, 20, 300)
        yield sys_call(w, s, t, rng, "read", f"sys/policies/acl/{name}",
                       response={"name": name, "policy": w.hmac("policy", name)})
        yield policy_write(w, s, t + _seconds(rng, 30, 600), rng, name)


def _new_audit_device(w: World, h: Human) -> Iterator[Call]:
    rng = w.rand("new-audit-device")
    day = next(d for d in range(3, w.days) if w.weekday(d) < 5 and d != w.holiday)
    t = w.start_ns + day * DAY - h.tz_min * MINUTE + int(rng.uniform(10, 15) * HOUR)
    addr = h.office_ip or _ip(rng, CORP_VPN)
    calls = login(w, h.actor, t, rng, addr, h.uas[0])
    yield from calls
    s = Session(h.actor, calls[-1].t, addr, h.uas[0])
    options = {"file_path": w.hmac("path", "/var/log/vault/archive.log")}
    yield sys_call(w, s, calls[-1].t + _seconds(rng, 30, 200), rng, "update",
                   "sys/audit/file-archive",
                   data={"type": w.hmac("type", "file"), "options": options})



ORCHESTRATOR_ROLE = "deploy-orchestrator"


def deploy_role(team: str) -> str:
    return f"deploy-{team}"


@drift_benign
def approle_secret_id_issuing(w: World) -> Iterator[Call]:
    """The look-alikes of secret-id minting. A deploy orchestrator (an AppRole of the platform
    team) set up its team's deploy AppRole before the log starts (its write is the first thing
    it does in the log) and issues that role a fresh secret id every working day, which the
    role logs in with from the deploy host. SREs look after the fleet's AppRoles: one tunes the
    rotator's role at the start of the log, and later another onboards a new service by
    creating its AppRole and issuing its first secret id."""
    rng = w.rand("approle-issuing")
    sres = [h for h in w.humans if h.sre and h.actor.key not in w.away]
    team = rng.choice([t for t in TEAMS if w.teams[t]])
    orchestrator = w._approle(ORCHESTRATOR_ROLE, "platform", ORCHESTRATOR_ROLE, 3600,
                              frozenset())
    deploy = w._approle(deploy_role(team), team, deploy_role(team), 1200, frozenset((team,)))
    host, ua = _ip(rng, BATCH), "python-requests/2.31.0"
    t = w.start_ns + _seconds(rng, 60, 900)
    yield from _issuer_session(w, orchestrator, deploy, t, rng, host, ua, mint=False)
    for day in range(1, w.days):
        if w.weekday(day) >= 5 or day == w.holiday:
            continue
        t = w.start_ns + day * DAY + int(rng.uniform(7, 9) * HOUR)
        calls = list(_issuer_session(w, orchestrator, deploy, t, rng, host, ua, mint=True))
        yield from calls
        yield from _role_run(w, deploy, calls[-1].t + _seconds(rng, 5, 60), rng, host, ua,
                             w.teams[team])
    if len(sres) >= 2:
        yield from _sre_role_work(w, sres[0], sres[1], rng)


def _issuer_session(w: World, issuer: Actor, role: Actor, t: int, rng: random.Random,
                    addr: str, ua: str, mint: bool) -> Iterator[Call]:
    """Log in; then either write the role and read its role id, or issue it a secret id."""
    calls = login(w, issuer, t, rng, addr, ua)
    yield from calls
    s = Session(issuer, calls[-1].t, addr, ua)
    t = calls[-1].t + _seconds(rng, 1, 20)
    name = role.metadata["role_name"]
    if not mint:
        yield sys_call(w, s, t, rng, "update", f"auth/approle/role/{name}",
                       data={"token_policies": w.hmac("policies", name)})
        yield sys_call(w, s, t + _seconds(rng, 1, 10), rng, "read",
                       f"auth/approle/role/{name}/role-id",
                       response={"role_id": w.hmac("role_id", role.key)})
        return
    yield sys_call(w, s, t, rng, "update", f"auth/approle/role/{name}/secret-id",
                   response={"secret_id": w.hmac("secret_id", role.key, t),
                             "secret_id_accessor": w.hmac("secret_id_accessor", role.key, t),
                             "secret_id_ttl": 86400})


def _role_run(w: World, role: Actor, t: int, rng: random.Random, addr: str, ua: str,
              pool) -> Iterator[Call]:
    calls = login(w, role, t, rng, addr, ua)
    yield from calls
    s = Session(role, calls[-1].t, addr, ua)
    t = calls[-1].t
    for secret in rng.sample(pool, min(len(pool), rng.randint(2, 4))):
        t += _seconds(rng, 1, 20)
        yield kv_read(w, s, t, rng, secret)


def _sre_role_work(w: World, tuner: Human, onboarder: Human,
                   rng: random.Random) -> Iterator[Call]:
    """The rotator's role tuned on day 0; a new service's AppRole created and given its first
    secret id on a working day of the second half, and the service logging in with it."""
    t = w.start_ns + int(rng.uniform(1, 3) * HOUR)
    yield from _sre_session(w, tuner, t, rng, [("update", "auth/approle/role/secret-rotator")])
    day = next(d for d in range(w.days // 2, w.days) if w.weekday(d) < 5 and d != w.holiday)
    t = w.start_ns + day * DAY - onboarder.tz_min * MINUTE + int(rng.uniform(10, 16) * HOUR)
    team = rng.choice([x for x in TEAMS if w.teams[x]])
    name = f"{team}-ledger-export"
    role = w._approle(name, team, f"{team}-read", 3600, frozenset((team,)))
    base = f"auth/approle/role/{name}"
    calls = list(_sre_session(w, onboarder, t, rng, [("update", base), ("read", base + "/role-id"),
                                                     ("update", base + "/secret-id")]))
    yield from calls
    yield from _role_run(w, role, calls[-1].t + _seconds(rng, 300, 1800), rng, _ip(rng, K8S_PROD),
                         rng.choice(SERVICE_UAS), w.teams[team])


def _sre_session(w: World, h: Human, t: int, rng: random.Random,
                 steps: list[tuple[str, str]]) -> Iterator[Call]:
    addr = h.office_ip or _ip(rng, CORP_VPN)
    calls = login(w, h.actor, t, rng, addr, h.uas[0])
    yield from calls
    s = Session(h.actor, calls[-1].t, addr, h.uas[0])
    t = calls[-1].t
    for op, path in steps:
        t += _seconds(rng, 20, 240)
        yield sys_call(w, s, t, rng, op, path)
