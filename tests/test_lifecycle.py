"""The finding lifecycle: Create, coalesced Updates, Close in event time, analysts' status
changes, and what a restored pipeline does with the incidents it was holding."""

from __future__ import annotations

from datetime import timedelta

import pytest
from typer.testing import CliRunner

from secretscope import snapshot
from secretscope.cli import app
from secretscope.config import TriageSettings, load_settings
from secretscope.delivery.renderings import validate_ocsf
from secretscope.errors import SecretscopeError, UnknownFindingError
from secretscope.events import DENIED
from secretscope.findings import CLOSE, CREATE, IN_PROGRESS, NEW, RESOLVED, UPDATE, to_ocsf
from secretscope.runner import Pipeline
from secretscope.store import Route, Store, outbox

from helpers import T0, created, make_event
from test_triage import hst_firing, make_triage, observe


def test_merges_are_coalesced_into_one_update_per_interval():
    fx, triage = make_triage(TriageSettings(update_minutes=5))
    start = T0 + timedelta(days=2)
    first = [observe(fx, start, path="secret/data/ledger/a")]
    (opened,) = triage.decide(first, [()], [hst_firing(first)])
    # three merges within the first five minutes: no version yet
    burst = [observe(fx, start + timedelta(minutes=m), path=f"secret/data/ledger/b{m}")
             for m in (1, 2, 3)]
    assert triage.decide(burst, [()] * 3, [hst_firing(burst)]) == []
    # any event moving event time past the interval emits one Update with all three merges
    quiet = [observe(fx, start + timedelta(minutes=7), identity="entity:other")]
    (update,) = triage.decide(quiet, [()], [_silent(quiet)])
    assert (update.id, update.version, update.activity_id, update.merged) == (
        opened.id, 2, UPDATE, 3)
    assert update.last_time == burst[-1].event.time
    # the end of input emits what is still waiting, and leaves the incident open
    late = [observe(fx, start + timedelta(minutes=8), path="secret/data/ledger/c")]
    assert triage.decide(late, [()], [hst_firing(late)]) == []
    (flushed,) = triage.finish()
    assert (flushed.version, flushed.activity_id, flushed.merged) == (3, UPDATE, 4)
    assert triage.finish() == [] and triage.open_findings() == [opened.id]


def _silent(fvs):
    """A detector that scored the rows and fired on none."""
    import numpy as np

    from secretscope.models.base import ScoreBatch

    n = len(fvs)
    return ScoreBatch("hst", np.zeros(n), np.ones(n, bool), np.zeros(n, bool))


def test_close_after_quiet_carries_the_pending_merges():
    fx, triage = make_triage(TriageSettings(update_minutes=30, incident_minutes=60))
    start = T0 + timedelta(days=2)
    first = [observe(fx, start)]
    (opened,) = triage.decide(first, [()], [hst_firing(first)])
    more = [observe(fx, start + timedelta(minutes=10), path="secret/data/ledger/x")]
    assert triage.decide(more, [()], [hst_firing(more)]) == []  # pending (30 min interval)
    later = [observe(fx, start + timedelta(minutes=29), identity="entity:other")]
    assert triage.decide(later, [()], [_silent(later)]) == []
    # the update would be due at +30 min; at +75 min the incident has been quiet for 65 min:
    # one Update at +30, then the Close at +70 (60 minutes after the last firing)
    end = [observe(fx, start + timedelta(minutes=75), identity="entity:other")]
    update, closed = triage.decide(end, [()], [_silent(end)])
    assert (update.version, update.activity_id, update.merged) == (2, UPDATE, 1)
    assert (closed.version, closed.activity_id, closed.status_id) == (3, CLOSE, RESOLVED)
    assert closed.closed_time == start + timedelta(minutes=70)
    doc = to_ocsf(closed)
    validate_ocsf(doc)  # every version is a valid OCSF 1.3.0 Detection Finding
    validate_ocsf(to_ocsf(update))
    assert (doc["activity_id"], doc["type_uid"], doc["status"]) == (3, 200403, "Resolved")
    assert doc["end_time"] == int(closed.closed_time.timestamp() * 1000)
    assert doc["unmapped"]["secretscope"]["version"] == 3 and triage.open_findings() == []


def test_a_restored_triage_goes_on_with_its_open_incidents():
    fx, triage = make_triage()
    start = T0 + timedelta(days=2)
    first = [observe(fx, start)]
    (opened,) = triage.decide(first, [()], [hst_firing(first)])
    state = triage.to_state()
    fx2, restored = make_triage()
    restored.load_state(state)
    again = [observe(fx2, start + timedelta(minutes=10), path="secret/data/ledger/z")]
    (grown,) = restored.decide(again, [()], [hst_firing(again)])
    assert (grown.id, grown.version, grown.merged) == (opened.id, 2, 1)
    assert opened.trigger.event_id in grown.related_event_ids


@pytest.fixture
def fleet_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url, routes=[Route("hook", 1)])
    settings = load_settings(triage__labels_refresh_seconds=0)
    pipeline = Pipeline(settings, store=store)
    history = [make_event(at=T0 + timedelta(minutes=5 * i), path=f"secret/data/team/s{i % 5}")
               for i in range(300)]
    pipeline.process_batch(history)
    yield url, store, pipeline
    store.close()


def burst(at, n=8):
    return [make_event(at=at + timedelta(seconds=5 * i), outcome=DENIED,
                       path=f"secret/data/ledger/s{i}") for i in range(n)]


def test_an_analyst_closes_a_finding_and_the_next_firing_opens_a_new_one(fleet_store):
    url, store, pipeline = fleet_store
    start = T0 + timedelta(days=2)
    (first,) = created(pipeline.process_batch(burst(start)))
    res = CliRunner().invoke(app, ["alerts", "close", first.id, "--note", "rotated, contained",
                                   "--store", url])
    assert res.exit_code == 0, res.output
    versions = store.versions(first.id)
    closed = versions[-1]
    validate_ocsf(closed)
    assert (closed["activity_id"], closed["status_id"], closed["comment"]) == (
        CLOSE, RESOLVED, "rotated, contained")
    assert closed["unmapped"]["secretscope"]["version"] == len(versions)
    # a later firing of the same identity, within the incident window, is a new finding
    (second,) = created(pipeline.process_batch(burst(start + timedelta(minutes=10))))
    assert second.id != first.id
    # closing twice, or an unknown finding, is a clear error
    again = CliRunner().invoke(app, ["alerts", "close", first.id, "--store", url])
    assert isinstance(again.exception, SecretscopeError)  # main() makes it "error: ..." exit 2
    assert "closed already" in str(again.exception)
    with pytest.raises(UnknownFindingError):
        store.set_status("no-such-finding", "close")


def test_an_acknowledged_finding_keeps_its_status_through_pipeline_updates(fleet_store):
    url, store, pipeline = fleet_store
    start = T0 + timedelta(days=3)
    (first,) = created(pipeline.process_batch(burst(start)))
    assert store.set_status(first.id, "ack", "looking") == 2
    assert store.versions(first.id)[-1]["status_id"] == IN_PROGRESS
    with store.engine.connect() as conn:  # queued for the sink like the pipeline's versions
        queued = {tuple(r) for r in conn.execute(outbox.select().with_only_columns(
            outbox.c.finding_id, outbox.c.version))}
    assert {(first.id, 1), (first.id, 2)} <= queued
    # the incident grows: the pipeline's next version (its own number 2) is stored as version
    # 3, after the analyst's, and keeps the analyst's status
    grown = pipeline.process_batch(burst(start + timedelta(minutes=6)))
    assert [(v.id, v.version) for v in grown if v.id == first.id] == [(first.id, 2)]
    docs = store.versions(first.id)
    assert [d["unmapped"]["secretscope"]["version"] for d in docs] == [1, 2, 3]
    assert [d["status_id"] for d in docs] == [NEW, IN_PROGRESS, IN_PROGRESS]
    assert [d["activity_id"] for d in docs] == [CREATE, UPDATE, UPDATE]
    for d in docs:
        validate_ocsf(d)
    # storing the same pipeline versions again (a replay) adds nothing
    store.add_versions(grown)
    assert len(store.versions(first.id)) == 3
    with pytest.raises(SecretscopeError):
        store.set_status(first.id, "reopen")  # type: ignore[arg-type]


def test_snapshot_keeps_the_incidents_findings(fleet_store, tmp_path):
    _, store, pipeline = fleet_store
    start = T0 + timedelta(days=4)
    (first,) = created(pipeline.process_batch(burst(start)))
    blob = snapshot.dump(pipeline)
    restored = Pipeline(load_settings())
    snapshot.load(restored, blob)
    out = restored.process_batch(burst(start + timedelta(minutes=6)))
    assert [(v.id, v.version, v.activity_id) for v in out] == [(first.id, 2, UPDATE)]
