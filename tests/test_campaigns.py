"""Slow campaigns: a finding closed after quiet is reopened when the same activity resumes within
``triage.campaign_hours``, so one extra read an hour for a day is one finding that grows."""

from __future__ import annotations

from datetime import timedelta
from itertools import cycle, islice

import numpy as np

from secretscope.models.base import ScoreBatch
from secretscope.config import TriageSettings, load_settings
from secretscope.delivery.renderings import validate_ocsf
from secretscope.events import DENIED
from secretscope.findings import CLOSE, CREATE, IN_PROGRESS, NEW, RESOLVED, UPDATE, to_ocsf
from secretscope.runner import Pipeline
from secretscope.store import Store

from helpers import T0, created, make_event
from test_triage import RULES, hst_firing, make_triage

START = T0 + timedelta(days=2)
GAPS = (70, 95, 110, 80, 105, 75, 90, 100)  # minutes between firings: each past the incident


def campaign_events(hours=24.0, identity="entity:svc-1"):
    """One read of a new secret every 70-110 minutes for ``hours``, then a quiet event of
    another identity three hours later that moves event time past the last close."""
    at, events = START, []
    for i, gap in enumerate(cycle(GAPS)):
        if at > START + timedelta(hours=hours):
            break
        events.append(make_event(at=at, identity=identity, display_name="kubernetes-payments-api",
                                 path=f"secret/data/ledger/campaign-{i}"))
        at += timedelta(minutes=gap)
    events.append(make_event(at=at + timedelta(hours=3), identity="entity:bystander"))
    return events


def silent(fvs):
    n = len(fvs)
    return ScoreBatch("hst", np.zeros(n), np.ones(n, bool), np.zeros(n, bool))


def run(triage, fx, events, batch_size=1):
    """Feed ``events`` in batches; the last one (the bystander) fires nothing."""
    out = []
    for start in range(0, len(events), batch_size):
        rows = [fx.observe(e) for e in events[start:start + batch_size]]
        firing = np.array([e.identity != "entity:bystander"
                           for e in events[start:start + batch_size]])
        n = len(rows)
        scores = ScoreBatch("hst", np.where(firing, 0.98, 0.0), np.ones(n, bool), firing)
        out += triage.decide(rows, [()] * n, [scores])
    return out


def test_a_campaign_over_a_day_is_one_finding_reopened_after_each_quiet_spell():
    events = campaign_events()
    fx, triage = make_triage()
    versions = run(triage, fx, events)
    firings = len(events) - 1
    assert firings >= 14
    assert {v.id for v in versions} == {versions[0].id}
    assert [v.activity_id for v in versions] == (
        [CREATE] + [CLOSE, UPDATE] * (firings - 1) + [CLOSE])
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    gaps = list(islice(cycle(GAPS), firings - 1))
    reopens = [v for v in versions if v.activity_id == UPDATE]
    for reopen, gap, trigger in zip(reopens, gaps, events[1:]):
        assert (reopen.status_id, reopen.closed_time) == (NEW, None)
        assert reopen.status_note == (
            f"reopened: the same activity resumed after {gap} minutes of quiet")
        assert reopen.last_time == trigger.time and trigger.event_id in reopen.related_event_ids
    closes = [v for v in versions if v.activity_id == CLOSE]
    for close, trigger in zip(closes, events[:-1]):
        assert close.status_id == RESOLVED and close.status_note == ""
        assert close.closed_time == trigger.time + timedelta(minutes=60)
    last = versions[-1]
    assert last.merged == firings - 1 and last.time == events[0].time
    assert {e.event_id for e in events[:-1]} <= set(last.related_event_ids)
    assert triage.open_findings() == [] and triage.reopenable_findings() == [last.id]


def test_a_reopen_version_is_valid_ocsf_with_status_new_and_no_end_time():
    fx, triage = make_triage()
    versions = run(triage, fx, campaign_events(hours=2))
    reopen = next(v for v in versions if v.activity_id == UPDATE)
    doc = to_ocsf(reopen)
    validate_ocsf(doc)
    assert (doc["activity_name"], doc["status"], doc["type_uid"]) == ("Update", "New", 200402)
    assert "end_time" not in doc and doc["comment"].startswith("reopened:")
    closed = to_ocsf(versions[-1])
    validate_ocsf(closed)
    assert closed["status"] == "Resolved" and "end_time" in closed and "comment" not in closed


def test_campaign_hours_zero_makes_every_firing_its_own_finding():
    events = campaign_events()
    fx, triage = make_triage(TriageSettings(campaign_hours=0))
    versions = run(triage, fx, events)
    opened = created(versions)
    assert len(opened) == len(events) - 1 == len({v.id for v in opened})
    assert [v.activity_id for v in versions] == [CREATE, CLOSE] * len(opened)
    assert triage.reopenable_findings() == []


def test_a_firing_after_the_campaign_window_opens_a_new_finding():
    fx, triage = make_triage(TriageSettings(campaign_hours=2))
    first = [fx.observe(make_event(at=START, display_name="kubernetes-payments-api"))]
    (opened,) = triage.decide(first, [()], [hst_firing(first)])
    # closed at +60 min; +3h30 is 2h30 after the close: outside the two-hour window
    late = [fx.observe(make_event(at=START + timedelta(hours=3, minutes=30)))]
    closed, second = triage.decide(late, [()], [hst_firing(late)])
    assert (closed.id, closed.activity_id) == (opened.id, CLOSE)
    assert second.activity_id == CREATE and second.id != opened.id
    # the window has passed: the memory of the closed finding is gone
    assert triage.reopenable_findings() == [] and triage.open_findings() == [second.id]


def test_the_reopen_memory_is_dropped_as_event_time_passes_the_window():
    fx, triage = make_triage(TriageSettings(campaign_hours=3))
    first = [fx.observe(make_event(at=START, display_name="kubernetes-payments-api"))]
    (opened,) = triage.decide(first, [()], [hst_firing(first)])
    quiet = [fx.observe(make_event(at=START + timedelta(hours=3, minutes=59),
                                   identity="entity:bystander"))]
    (closed,) = triage.decide(quiet, [()], [silent(quiet)])
    assert closed.activity_id == CLOSE and triage.reopenable_findings() == [opened.id]
    later = [fx.observe(make_event(at=START + timedelta(hours=4), identity="entity:bystander"))]
    assert triage.decide(later, [()], [silent(later)]) == []
    assert triage.reopenable_findings() == [] and triage.closed == {}


def test_different_reason_codes_and_detectors_do_not_reopen():
    fx, triage = make_triage()
    root = [fx.observe(make_event(at=START, path="auth/token/create"))]
    (first,) = triage.decide(root, [(RULES["vault-root-token-use"],)], [])
    later = START + timedelta(minutes=100)
    audit = [fx.observe(make_event(at=later, operation="delete", path="sys/audit/file-primary"))]
    closed, second = triage.decide(audit, [(RULES["vault-audit-device-change"],)], [])
    assert (closed.id, closed.activity_id) == (first.id, CLOSE)
    assert second.activity_id == CREATE and second.id != first.id
    assert second.reasons[0].code == "AUDIT_DEVICE_CHANGED"
    # the same rule again after quiet does reopen the newest finding
    again = [fx.observe(make_event(at=later + timedelta(minutes=100), operation="delete",
                                   path="sys/audit/file-secondary"))]
    closed2, reopened = triage.decide(again, [(RULES["vault-audit-device-change"],)], [])
    assert (closed2.id, reopened.id, reopened.activity_id) == (second.id, second.id, UPDATE)
    assert reopened.status_id == NEW


def test_an_analyst_closed_finding_is_not_reopened():
    fx, triage = make_triage()
    events = campaign_events(hours=2)
    (opened,) = run(triage, fx, events[:1])
    triage.closed_by_analyst({opened.id})
    assert triage.open_findings() == [] and triage.reopenable_findings() == []
    out = run(triage, fx, events[1:2])
    assert [(v.activity_id, v.id != opened.id) for v in out] == [(CREATE, True)]
    # closed by the pipeline first, then reported closed by an analyst (the store had the
    # analyst's close before the pipeline's): forgotten too
    fx, triage = make_triage()
    opened, closed = run(triage, fx, events[:1] + [make_event(
        at=events[1].time - timedelta(minutes=1), identity="entity:bystander")])
    assert closed.activity_id == CLOSE and triage.reopenable_findings() == [opened.id]
    triage.closed_by_analyst({opened.id})
    assert triage.reopenable_findings() == []
    (new,) = run(triage, fx, events[1:2])
    assert new.activity_id == CREATE and new.id != opened.id


def test_the_same_versions_however_the_campaign_is_batched():
    events = campaign_events()
    outputs = []
    for size in (1, 3, len(events)):
        fx, triage = make_triage()
        versions = run(triage, fx, events, batch_size=size)
        outputs.append([(v.id, v.version, v.activity_id, v.status_id, v.closed_time,
                         v.last_time, v.merged, v.status_note) for v in versions])
    assert outputs[0] == outputs[1] == outputs[2]
    assert {row[2] for row in outputs[0]} == {CREATE, UPDATE, CLOSE}


def test_a_restored_triage_reopens_the_finding_its_snapshot_remembers():
    events = campaign_events(hours=2)
    fx, triage = make_triage()
    opened, closed = run(triage, fx, events[:1] + [make_event(
        at=events[1].time - timedelta(minutes=1), identity="entity:bystander")])
    assert closed.activity_id == CLOSE and triage.reopenable_findings() == [opened.id]
    fx2, restored = make_triage()
    restored.load_state(triage.to_state())
    assert restored.reopenable_findings() == [opened.id]
    (reopened,) = run(restored, fx2, events[1:2])
    assert (reopened.id, reopened.version, reopened.activity_id, reopened.status_id) == (
        opened.id, 3, UPDATE, NEW)
    assert events[0].event_id in reopened.related_event_ids and reopened.merged == 1
    # a snapshot written before campaigns (clock and open incidents only) still loads
    fx3, old = make_triage()
    old.load_state(triage.to_state()[:2])
    assert old.reopenable_findings() == [] and old.clock == triage.clock


def burst(at, n=8):
    return [make_event(at=at + timedelta(seconds=5 * i), outcome=DENIED,
                       path=f"secret/data/ledger/s{i}") for i in range(n)]


def fleet_pipeline(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    pipeline = Pipeline(load_settings(triage__labels_refresh_seconds=0), store=store)
    pipeline.process_batch([make_event(at=T0 + timedelta(minutes=5 * i),
                                       path=f"secret/data/team/s{i % 5}") for i in range(300)])
    return store, pipeline


def test_the_store_takes_a_reopen_after_the_close(tmp_path):
    store, pipeline = fleet_pipeline(tmp_path)
    try:
        (first,) = created(pipeline.process_batch(burst(START)))
        pipeline.process_batch(burst(START + timedelta(minutes=90)))
        docs = store.versions(first.id)
        # the burst's merges (one coalesced Update), the Close after quiet, the reopen
        assert [(d["activity_id"], d["status_id"]) for d in docs] == [
            (CREATE, NEW), (UPDATE, NEW), (CLOSE, RESOLVED), (UPDATE, NEW)]
        for d in docs:
            validate_ocsf(d)
        assert "end_time" in docs[2] and "end_time" not in docs[3]
        assert docs[3]["comment"].startswith("reopened: the same activity resumed after")
        with store.engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT status_id, version, ocsf FROM findings "
                                       "WHERE id = ?", (first.id,)).one()
        assert (row.status_id, row.version) == (NEW, 4) and '"end_time"' not in row.ocsf
        # reopened, it can be closed by an analyst again
        assert store.set_status(first.id, "close", "contained") == 5
    finally:
        store.close()


def test_an_acknowledged_finding_closed_after_quiet_is_not_reopened(tmp_path):
    store, pipeline = fleet_pipeline(tmp_path)
    try:
        (first,) = created(pipeline.process_batch(burst(START)))
        assert store.set_status(first.id, "ack", "looking") == 2
        out = pipeline.process_batch(burst(START + timedelta(minutes=90)))
        assert [(v.id == first.id, v.activity_id) for v in out] == [
            (True, UPDATE), (True, CLOSE), (False, CREATE)]
        # the burst's coalesced Update keeps the analyst's status; the Close resolves it
        assert [d["status_id"] for d in store.versions(first.id)] == [
            NEW, IN_PROGRESS, IN_PROGRESS, RESOLVED]
    finally:
        store.close()
