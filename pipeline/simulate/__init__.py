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

Modules: ``world`` (the fleet, its identities and secrets), ``calls`` (building one call),
``benign`` and ``attacks`` (the two registries), ``render`` (audit lines, labels, windows).
``drift``, ``drift_benign`` and ``drift_attacks`` are a second world (``SimulationSpec.world``
"drift", :func:`world_spec`) whose normal changes during the log, with five more attack classes.

Simplification: a token is per identity (stable accessor and token HMAC), only its issue time
changes with logins, so an identity keeps one accessor across the whole log.
"""

from __future__ import annotations

import argparse
import sys
import time as _time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from secretscope.simulate.attacks import ATTACKS, _attack_episodes
from secretscope.simulate.benign import BENIGN, _service_reads
from secretscope.simulate.render import _change_windows, _render, _sink, _write_labels, _write_windows
from secretscope.simulate.world import SimulationSpec, World, _datetime


# ---------------------------------------------------------------------------------------------
# Public API


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
    world, benign_gens, attacks, per_class = _profile(spec)
    calls = [c for gen in benign_gens for c in gen(world) if world.start_ns <= c.t < world.end_ns]
    n_benign = len(calls)
    episodes = _attack_episodes(world, attacks, per_class) if spec.attacks else []
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
    counts = dict.fromkeys(attacks, 0) if spec.attacks else {}
    for ep in episodes:
        counts[ep.cls] = counts.get(ep.cls, 0) + 1
    return SimulationSummary(
        calls=total, lines=2 * total, benign_calls=total - attack_calls,
        attack_calls=attack_calls, episodes=counts,
        first_time=None if first is None else _datetime(first),
        last_time=None if last is None else _datetime(last),
    )


WORLDS = ("default", "drift")


def world_spec(world: str = "default", days: int | None = None, seed: int = SimulationSpec.seed,
               target_calls: int | None = None, attacks: bool = True) -> SimulationSpec:
    """The spec of a named world; ``days`` None is that world's usual length."""
    if world == "drift":
        from secretscope.simulate.drift import MIN_DAYS, drift_spec
        return drift_spec(days or MIN_DAYS, seed, target_calls, attacks)
    if world != "default":
        raise ValueError(f"unknown world {world!r}; one of {', '.join(WORLDS)}")
    return SimulationSpec(days=days or SimulationSpec.days, seed=seed, target_calls=target_calls,
                          attacks=attacks)


def _profile(spec: SimulationSpec) -> tuple[World, list, dict, int | None]:
    """The world of ``spec.world``, its benign generators, attack classes and episodes per
    class (None: the default count for the length of the log)."""
    if spec.world == "default":
        return World(spec), BENIGN, ATTACKS, None
    if spec.world == "drift":
        from secretscope.simulate.drift import DriftWorld
        from secretscope.simulate.drift_attacks import DRIFT_ATTACKS
        from secretscope.simulate.drift_benign import DRIFT_BENIGN
        # Fifteen classes: three episodes each keeps attacks rare among ~200k calls.
        return DriftWorld(spec), DRIFT_BENIGN, DRIFT_ATTACKS, 3
    raise ValueError(f"unknown world {spec.world!r}; one of {', '.join(WORLDS)}")


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    """``python -m secretscope.simulate --out log.jsonl.gz [--labels labels.jsonl]
    [--windows windows.jsonl] [--target-calls N]`` (prints the summary and the elapsed time, for
    benchmarks)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", type=Path)
    p.add_argument("--windows", type=Path, help="expected-burst windows (JSONL)")
    p.add_argument("--days", type=int, help="default 7 (default world), 14 (drift world)")
    p.add_argument("--seed", type=int, default=SimulationSpec.seed)
    p.add_argument("--target-calls", type=int)
    p.add_argument("--no-attacks", action="store_true")
    p.add_argument("--world", choices=WORLDS, default="default")
    a = p.parse_args(argv)
    spec = world_spec(a.world, a.days, a.seed, a.target_calls, not a.no_attacks)
    began = _time.perf_counter()
    try:
        summary = simulate(spec, a.out, a.labels, a.windows)
    except ValueError as e:
        p.error(str(e))
    elapsed = _time.perf_counter() - began
    print(f"{summary.calls} calls, {summary.lines} lines ({summary.attack_calls} attack calls, "
          f"episodes {summary.episodes}) in {elapsed:.2f} s", file=sys.stderr)
    return 0
