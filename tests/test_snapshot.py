"""State snapshots: stop anywhere, restore into a fresh process, and continue identically."""

from __future__ import annotations

import pytest

from helpers import fleet_events

from secretscope import snapshot
from secretscope.config import load_settings
from secretscope.errors import ModelIntegrityError
from secretscope.findings import to_ocsf
from secretscope.runner import Pipeline
from secretscope.store import Store


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return fleet_events(tmp_path_factory, seed=8, label="snap")


def run(pipeline, events, size=200):
    out = []
    for i in range(0, len(events), size):
        out += pipeline.process_batch(events[i:i + size])
    return [to_ocsf(f) for f in out]


def test_restored_pipeline_continues_exactly(events, tmp_path):
    cut = len(events) * 3 // 5
    uninterrupted = Pipeline(load_settings())
    whole = run(uninterrupted, events[:cut]) + run(uninterrupted, events[cut:])
    assert len(whole) >= 5
    first = Pipeline(load_settings())
    before = run(first, events[:cut])
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.save_snapshot("test/0", cut, snapshot.dump(first, {"note": "x"}))
    offset, blob = store.load_snapshot("test/0")
    second = Pipeline(load_settings())
    assert snapshot.load(second, blob) == {"note": "x"} and offset == cut
    # peer groups, every detector's state and open incidents came across
    assert {k: g.to_state() for k, g in second.extractor.peers.items()} == \
        {k: g.to_state() for k, g in first.extractor.peers.items()}
    assert [d.name for d in second.detectors] == ["hst", "baseline"]
    for mine, theirs in zip(second.detectors, first.detectors):
        assert repr(mine.state_dict()) == repr(theirs.state_dict())
    assert second.triage.to_state() == first.triage.to_state()
    after = run(second, events[cut:])
    assert before + after == whole


def test_tampered_snapshot_is_refused(events, tmp_path):
    p = Pipeline(load_settings())
    run(p, events[:2000])
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.save_snapshot("k", 2000, snapshot.dump(p))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("update snapshots set data = x'00112233'")
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        store.load_snapshot("k")
    with pytest.raises(ModelIntegrityError, match="not readable"):
        snapshot.load(Pipeline(load_settings()), b"not a snapshot")


def test_deferred_findings_are_stored_in_the_snapshot_transaction(events, tmp_path):
    """The Kafka score stage commits its progress and the findings it raised together: until
    the snapshot is saved nothing is in the store or the outbox."""
    from secretscope.store import Route, finding_versions, findings, outbox

    store = Store(f"sqlite:///{tmp_path / 's.db'}", routes=[Route("hook", 1)])
    p = Pipeline(load_settings(), store=store, defer_writes=True)
    raised = run(p, events)
    assert raised and store.count(findings) == 0 and store.count(outbox) == 0
    versions = p.take_unsaved()
    assert [(f.id, f.version) for f in versions] == [
        (f["finding_info"]["uid"], f["unmapped"]["secretscope"]["version"]) for f in raised]
    store.save_snapshot("score/t/0", len(events), snapshot.dump(p), versions)
    assert store.count(findings) == len({f.id for f in versions})
    assert store.count(finding_versions) == len(versions) == store.count(outbox)
    assert store.load_snapshot("score/t/0")[0] == len(events)
    assert p.take_unsaved() == []
