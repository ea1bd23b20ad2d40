"""Attack shapes of the drift world (:data:`DRIFT_ATTACKS`): the ten default classes plus the
ones that hide in drift: reads that look like an engineer's or a pipeline's normal work."""

from __future__ import annotations

import random

from secretscope.simulate.attacks import (ATTACKS, EpisodeGen, _other_team_secrets, _service_session,
                                       _when)
from secretscope.simulate.calls import _call, kv_list, kv_read, login, sys_call
from secretscope.simulate.world import (ATTACKER_UAS, CI_RUNNERS, CORP_VPN, Call, DAY, HOUR,
                                     Human, SRE_TEAM, Session, TOKEN, UNKNOWN_NETS, World, _ip,
                                     _seconds)

DRIFT_ATTACKS: dict[str, EpisodeGen] = dict(ATTACKS)


def drift_attack(cls: str):
    def register(fn: EpisodeGen) -> EpisodeGen:
        DRIFT_ATTACKS[cls] = fn
        return fn
    return register


def _owner_session(w: World, h: Human, t: int, rng: random.Random) -> tuple[list[Call], int]:
    """The engineer's own token calls of the VPN working session nearest after ``t`` (the last
    one otherwise), and a time inside it: on a VPN day, not an office or home one, unless the
    engineer had none."""
    lo, hi = w.start_ns + w.attack_day0 * DAY, w.end_ns - 6 * HOUR
    mine = [c for c in w.human_calls(h) if c.kind == TOKEN and lo <= c.t <= hi]
    # An engineer who was never on the VPN in those days (always in the office, or a short
    # log) is attacked in an office or home session instead.
    own = [c for c in mine if c.addr.startswith(CORP_VPN + ".")] or mine
    later = [c for c in own if c.t >= t] or own[-1:]
    first = later[0]
    session = [c for c in own if c.issued == first.issued]
    return session, first.t + _seconds(rng, 60, 600)


def _steady_engineer(w: World, rng: random.Random) -> Human:
    return rng.choice([h for h in w.humans if not h.sre and h.actor.key not in w.away])


@drift_attack("insider_peer_team_read")
def insider_peer_team_read(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """An engineer reads a neighbouring team's secrets in working hours, inside their own
    session, from their usual VPN connection: only the secrets are new. Half the time the
    team is their partner team, whose folder they and their peers read anyway (the secrets
    taken are the ones not shared with them); otherwise another team."""
    h = _steady_engineer(w, rng)
    session, t = _owner_session(w, h, _when(w, rng, day, 9.5, 15, h.tz_min), rng)
    c = session[-1]
    s = Session(c.actor, c.issued, c.addr, c.ua)
    partner = w.partner[h.actor.team]
    if rng.random() < 0.5:
        peer, pool = partner, [x for x in w.teams[partner] if x not in w.shared[partner]]
    else:
        peer = rng.choice([x for x in w.teams if x not in (h.actor.team, partner, SRE_TEAM)])
        pool = list(w.teams[peer])
    calls = [kv_list(w, s, t, rng, peer)] if rng.random() < 0.4 else []
    for secret in rng.sample(pool, min(len(pool), rng.randint(3, 10))):
        t += _seconds(rng, 20, 240)
        calls.append(kv_read(w, s, t, rng, secret, force=True))
    return h.actor.display_name, calls


@drift_attack("concurrent_session_token_theft")
def concurrent_session_token_theft(w: World, rng: random.Random,
                                   day: int) -> tuple[str, list[Call]]:
    """A stolen OIDC token (same accessor, same issue time) used from an unknown address while
    its owner is working from the VPN with it. The thief keeps the owner's browser user agent
    (a stolen session cookie) or uses a scripting client."""
    oidc = [h for h in w.humans if not h.sre and h.actor.mount.type == "oidc"]
    h = rng.choice(oidc)
    session, t = _owner_session(w, h, _when(w, rng, day, 10, 15, h.tz_min), rng)
    c = session[0]
    ua = c.ua if rng.random() < 0.5 else rng.choice(ATTACKER_UAS)
    s = Session(c.actor, c.issued, _ip(rng, rng.choice(UNKNOWN_NETS)), ua)
    lookup = {"accessor": h.actor.accessor, "policies": list(h.actor.policies), "ttl": 30000}
    calls = [_call(s, t, rng, "read", "auth/token/lookup-self", w.token_mount,
                   response=w.token_mount.response(data=lookup))]
    own, others = list(w.teams[h.actor.team]), _other_team_secrets(w, h.actor.team)
    for _ in range(rng.randint(3, 15)):
        t += _seconds(rng, 5, 120)
        calls.append(kv_read(w, s, t, rng, rng.choice(own if rng.random() < 0.7 else others)))
    return h.actor.display_name, calls


@drift_attack("approle_secret_id_minting")
def approle_secret_id_minting(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """An engineer mints a secret-id for an AppRole they never managed (a batch job, another
    team's pipeline, or a role they create), then the role logs in with it from a new place
    and reads. Variant: the role is created first, so the logged-in identity is new too."""
    h = _steady_engineer(w, rng)
    t = _when(w, rng, day, 9, 17, h.tz_min, span=3 * HOUR)
    addr = h.office_ip or _ip(rng, CORP_VPN)
    s = Session(h.actor, t - _seconds(rng, 600, 7200), addr, h.uas[0])
    calls = []
    if rng.random() < 0.4:
        role = f"{rng.choice(list(w.teams))}-sync-{rng.randint(2, 9)}"
        target = w._approle(role, h.actor.team, f"{role}-policy", 3600, frozenset("*"))
        secrets = _other_team_secrets(w, h.actor.team)
        calls.append(sys_call(w, s, t, rng, "update", f"auth/approle/role/{role}",
                              data={"token_policies": w.hmac("policies", role)}))
        t += _seconds(rng, 10, 120)
    else:
        job = rng.choice([j for j in w.batch + w.ci if j.actor.team != h.actor.team])
        target, secrets = job.actor, list(job.secrets)
    role = target.metadata["role_name"]
    calls.append(sys_call(w, s, t, rng, "read", f"auth/approle/role/{role}/role-id",
                          response={"role_id": w.hmac("role_id", target.key)}))
    t += _seconds(rng, 5, 60)
    minted = {"secret_id": w.hmac("secret_id", target.key, t),
              "secret_id_accessor": w.hmac("secret_id_accessor", target.key, t),
              "secret_id_ttl": 0}
    calls.append(sys_call(w, s, t, rng, "update", f"auth/approle/role/{role}/secret-id",
                          response=minted))
    t += _seconds(rng, 120, 3600)
    net = rng.choice((UNKNOWN_NETS[0], UNKNOWN_NETS[1], CORP_VPN))
    where, ua = _ip(rng, net), rng.choice(ATTACKER_UAS)
    calls += login(w, target, t, rng, where, ua)
    s2 = Session(target, calls[-1].t, where, ua)
    t = calls[-1].t
    for secret in rng.sample(secrets, min(len(secrets), rng.randint(3, 12))):
        t += _seconds(rng, 2, 60)
        calls.append(kv_read(w, s2, t, rng, secret, force=True))
    return target.display_name + "-" + role, calls


@drift_attack("ci_runner_prod_read")
def ci_runner_prod_read(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """A compromised CI runner: a pipeline's AppRole logs in from the CI segment, reads its
    staging secrets as usual, then production secrets (its team's, or others')."""
    job = rng.choice(w.ci)
    runs = [t for t in w.pipelines[job.actor.team]
            if w.start_ns + day * DAY <= t < w.end_ns - HOUR] or [_when(w, rng, day, 7, 19)]
    t = runs[0] + _seconds(rng, 0, 300)
    addr = _ip(rng, CI_RUNNERS)
    calls = login(w, job.actor, t, rng, addr, job.ua)
    s = Session(job.actor, calls[-1].t, addr, job.ua)
    t = calls[-1].t
    for secret in rng.sample(job.secrets, min(len(job.secrets), rng.randint(1, 4))):
        t += _seconds(rng, 0.05, 2)
        calls.append(kv_read(w, s, t, rng, secret))
    team = job.actor.team if rng.random() < 0.6 else rng.choice(
        [x for x in w.teams if x != job.actor.team])
    # Production secrets the pipelines never need (deploys read one, for migrations).
    pool = [x for x in w.teams[team] if x not in job.secrets]
    for secret in rng.sample(pool, min(len(pool), rng.randint(3, 12))):
        t += _seconds(rng, 0.05, 5)
        calls.append(kv_read(w, s, t, rng, secret, force=True))
    return "approle-" + job.actor.metadata["role_name"], calls


@drift_attack("low_and_slow_campaign")
def low_and_slow_campaign(w: World, rng: random.Random, day: int) -> tuple[str, list[Call]]:
    """Two days of one extra secret of another team an hour, from the service's own pods at
    its normal read rate: each read alone is unremarkable, the campaign is one episode."""
    svc = rng.choice(w.services)
    span = 48 * HOUR
    t = _when(w, rng, day, 0, 24, span=span + HOUR)
    others = _other_team_secrets(w, svc.actor.team)
    picked = rng.sample(others, min(len(others), 48))
    calls = []
    for k, secret in enumerate(picked):
        at = t + k * HOUR + _seconds(rng, 0, 50 * 60)
        calls.append(kv_read(w, _service_session(svc, at, rng), at, rng, secret, force=True))
    return svc.actor.display_name, calls

