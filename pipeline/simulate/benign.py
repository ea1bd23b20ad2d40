"""Benign behaviour: the generators of :data:`BENIGN`, and the periodic service reads, which
are generated in bulk as arrays (they are most of the log)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from secretscope.simulate.calls import (db_creds, kv_list, kv_read, kv_read_metadata, kv_write, login,
                                     policy_write)
from secretscope.simulate.world import (CI_RUNNERS, CORP_VPN, Call, DAY, DB_LEASE_SECONDS, HOUR,
                                     Human, Job, MINUTE, NS, SECRET_NAMES, Secret, Service,
                                     Session, TEAMS, World, _ip, _seconds, _typo)


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
    yield from team_firefight(w, h, rng, t, _ip(rng, CORP_VPN), (3, 10), 120)


def team_firefight(w: World, h: Human, rng: random.Random, t: int, addr: str,
                   reads: tuple[int, int], max_gap: int) -> Iterator[Call]:
    """An engineer logs in at ``t`` and reads secrets of one team whose service is failing."""
    calls = login(w, h.actor, t, rng, addr, h.uas[0])
    yield from calls
    s = Session(h.actor, calls[-1].t, addr, h.uas[0])
    t = calls[-1].t
    team = rng.choice(TEAMS)
    for _ in range(rng.randint(*reads)):
        t += _seconds(rng, 10, max_gap)
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
