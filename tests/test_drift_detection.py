"""Detection on the drift world, end to end: every attack class is found, and the drift itself
(staging redeploys, autoscaling, a migration job, reorganisations, home working, a returning
engineer) raises no finding. One simulated fortnight replayed through the default pipeline."""

from __future__ import annotations

from collections import Counter

import pytest

from secretscope.models.evaluation import evaluate, load_episodes
from secretscope.config import load_settings
from secretscope.runner import Pipeline
from secretscope.simulate import simulate, world_spec
from secretscope.simulate.drift import MIGRATION_ROLE, DriftWorld
from secretscope.simulate.drift_attacks import DRIFT_ATTACKS
from secretscope.sources.files import replay
from secretscope.store import Store

pytestmark = pytest.mark.slow
SPEC = world_spec("drift", seed=3, target_calls=100_000)


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    d = tmp_path_factory.mktemp("drift-detection")
    log, labels = d / "audit.jsonl", d / "audit.jsonl.labels.jsonl"
    simulate(SPEC, log, labels, d / "audit.jsonl.windows.jsonl")
    settings = load_settings(None, store__url="sqlite://")
    versions = []
    store = Store(settings.store.url)
    try:
        stats = Pipeline(settings, store=store, on_version=versions.append).run(replay([str(log)]))
    finally:
        store.close()
    episodes = load_episodes(labels)
    attack_ids = {r for e in episodes for r in e.request_ids}
    latest = {}
    for v in versions:
        latest[v.id] = v
    false = [f for fid, f in latest.items()
             if not any(r in attack_ids for v in versions if v.id == fid
                        for r in v.related_event_ids)]
    return evaluate(versions, episodes, stats.events), false


def _identity(actor) -> str:
    if actor.mount.type == "kubernetes":
        meta = actor.metadata
        return f"kubernetes:{meta['service_account_namespace']}/{meta['service_account_name']}"
    if actor.mount.type == "approle":
        return f"approle:{actor.metadata['role_name']}"
    return f"entity:{actor.entity_id}"


def test_every_attack_class_is_found(outcome):
    report, _ = outcome
    assert {c.attack_class for c in report.classes} == set(DRIFT_ATTACKS)
    missed = {c.attack_class: f"{c.detected}/{c.episodes}" for c in report.classes
              if c.detected < c.episodes}
    assert not missed
    # Rates are the benchmark's (benchmarks/detection_quality.py, 200k calls); on this smaller
    # fortnight: a handful of false findings at most (before this work: 40 and more).
    assert report.precision >= 0.8 and report.false_findings <= 3, (
        report.precision, report.false_findings)


def test_drift_raises_no_finding(outcome):
    _, false = outcome
    world = DriftWorld(SPEC)
    drifting = {
        "staging redeploys": {_identity(s.actor) for s in world.staging},
        "autoscaled services": {_identity(s.actor) for s in world.services},
        "migration job": {f"approle:{MIGRATION_ROLE}"},
        "moved services": {_identity(s.actor) for s in world.moved_services},
        # Engineers changing team are left out: moving into a team that only other movers
        # form makes a young role whose reads of its own secrets are new to it (a documented
        # false positive of vault-role-new-secrets-burst). Into an existing team they are
        # judged against it: tests/test_drift_features.py::test_peers_follow_a_change_of_team.
        "returning engineer": {_identity(h.actor) for h in world.all_humans
                               if h.actor.key in world.away},
        "new services": {_identity(s.actor) for s in world.new_services},
        "CI pipelines": {_identity(j.actor) for j in world.ci},
    }
    raised = Counter()
    for f in false:
        for what, names in drifting.items():
            if f.identity in names:
                raised[what] += 1
    assert not raised, {what: n for what, n in raised.items()}
