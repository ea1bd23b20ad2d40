"""Attack episodes: the generators of :data:`ATTACKS`, one per attack class."""

from __future__ import annotations

import random
from collections.abc import Callable, Set

from secretscope.simulate.benign import _human_calls
from secretscope.simulate.calls import (_call, db_creds, kv_list, kv_read, kv_write, login,
                                     policy_write, sys_call)
from secretscope.simulate.world import (ATTACKER_UAS, AUDIT_DEVICES, BRUTEFORCE_UAS, CLI_UA, CORP_VPN,
                                     Call, DAY, Episode, HOUR, Human, MINUTE, SECRET_NAMES,
                                     STOLEN_TOKEN_NET, Secret, Service, Session, TEAMS, TOKEN,
                                     UNKNOWN_NETS, World, _ip, _seconds)


EpisodeGen = Callable[[World, random.Random, int], tuple[str, list[Call]]]
ATTACKS: dict[str, EpisodeGen] = {}


def attack(cls: str) -> Callable[[EpisodeGen], EpisodeGen]:
    """Register an episode generator: (world, rng, day) -> (identity hint, calls)."""
    def register(fn: EpisodeGen) -> EpisodeGen:
        ATTACKS[cls] = fn
        return fn
    return register


def _attack_episodes(w: World, attacks: dict[str, EpisodeGen] | None = None,
                     per_class: int | None = None) -> list[Episode]:
    """A few episodes per class, stratified over days 3..N so every identity has a history."""
    per_class = per_class or max(2, round(3 * w.days / 7))
    window = w.days - w.attack_day0
    episodes = []
    for cls, gen in (ATTACKS if attacks is None else attacks).items():
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
    # A world whose engineers behave otherwise (the drift world) says how they do.
    sessions = w.human_calls(h) if hasattr(w, "human_calls") else _human_calls(w, h)
    own = [c for c in sessions if c.kind == TOKEN and lo <= c.t <= hi]
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
