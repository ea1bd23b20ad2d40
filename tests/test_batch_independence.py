"""Findings do not depend on how the stream is cut into batches: every finding version (ids,
severity, title, reasons, related events, merged counts, versions) is the same whatever the batch
sizes, which vary with file replays, Kafka polls and idle ticks of live sources."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from secretscope.config import load_settings
from secretscope.findings import to_ocsf
from secretscope.runner import Pipeline

from helpers import T0, created, make_event


def versions(settings_, events, sizes) -> list[dict]:
    """Every version the pipeline emits over ``events`` cut into batches of ``sizes`` (cycled),
    as OCSF documents."""
    p = Pipeline(settings_)
    out, i, k = [], 0, 0
    while i < len(events):
        n = sizes[k % len(sizes)]
        out += p.process_batch(events[i:i + n])
        i, k = i + n, k + 1
    out += p.finish()
    return [to_ocsf(f) for f in out]


@pytest.fixture(scope="module", params=[5, 23])
def fleet(request, tmp_path_factory):
    from secretscope.simulate import SimulationSpec, simulate
    from secretscope.sources.files import replay

    d = tmp_path_factory.mktemp(f"fleet{request.param}")
    log = d / "fleet.log"
    simulate(SimulationSpec(days=3, seed=request.param, target_calls=9000), log,
             d / "labels.jsonl")
    events = list(replay([log]))
    settings_ = load_settings()
    reference = versions(settings_, events, [1])
    assert sum(d["activity_id"] == 2 for d in reference) >= 3, "too few updates: a weak test"
    return settings_, events, reference


@pytest.mark.slow
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=30))
def test_any_batching_gives_the_versions_of_one_event_at_a_time(fleet, sizes):
    settings_, events, reference = fleet
    assert versions(settings_, events, sizes) == reference


def test_the_forest_is_ready_per_row_not_per_batch():
    """600 identical calls at a low threshold: the forest finishes its first window (250 rows)
    inside a batch of 256 or 600, and the rows after that point may fire as single events do."""
    base = load_settings()
    hst = base.detectors[0].model_copy(update={
        "threshold": 0.01, "high_threshold": 0.02, "min_history": 0, "min_history_days": 0.0})
    settings_ = base.model_copy(update={
        "detectors": (hst,), "triage": base.triage.model_copy(update={"incident_minutes": 0})})
    events = [make_event(at=T0 + timedelta(minutes=i), event_id=f"same-{i}") for i in range(600)]
    found = {}
    for size in (1, 256, 600):
        found[size] = [(d["finding_info"]["uid"], d["activity_id"])
                       for d in versions(settings_, events, [size])]
    assert len(created([type("V", (), {"activity_id": a}) for _, a in found[1]])) > 0
    assert found[256] == found[1] and found[600] == found[1]


def test_a_real_openbao_log_gives_the_same_versions_at_any_batch_size():
    """The audit log of a real OpenBao run (tests/data, see test_openbao_capture.py): at batch
    sizes 1, 7, 256 and 4096 the same finding versions, and every labelled episode in them."""
    import json

    from conftest import ROOT
    from openbao_fleet import SEGMENTS, Episode
    from secretscope.config import Segment
    from secretscope.sources.files import replay

    data = ROOT / "tests" / "data"
    base = load_settings()
    settings_ = base.model_copy(update={"segments": tuple(Segment(**s) for s in SEGMENTS)})
    events = list(replay([data / "openbao_audit.log"]))
    reference = versions(settings_, events, [1])
    for size in (7, 256, 4096):
        assert versions(settings_, events, [size]) == reference, f"batch size {size}"
    named = {r["uid"] for d in reference for r in d["finding_info"]["related_events"]}
    labels = json.loads((data / "openbao_audit.labels.json").read_text())
    for episode in (Episode.from_json(d) for d in labels["episodes"]):
        assert named & set(episode.request_ids), episode.episode


@pytest.mark.slow
def test_replay_at_any_runner_batch_size_writes_the_same_alerts_and_store(tmp_path):
    """What a user sees: ``secretscope replay`` with ``runner.batch_size`` 1, 7, 256 and 4096
    writes the same alerts file, line for line, and stores the same findings and versions."""
    import subprocess
    import sys

    import orjson
    import yaml
    from sqlalchemy import create_engine, text

    from conftest import ROOT
    from secretscope.simulate import SimulationSpec, simulate

    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=3, seed=11, target_calls=8000), log, tmp_path / "labels.jsonl")
    outputs = {}
    for size in (1, 7, 256, 4096):
        doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
        doc["rules"]["directory"] = str(ROOT / "config" / "rules")
        doc["runner"]["batch_size"] = size
        cfg = tmp_path / f"batch-{size}.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        alerts, db = tmp_path / f"alerts-{size}.jsonl", tmp_path / f"store-{size}.db"
        proc = subprocess.run([sys.executable, "-m", "secretscope", "replay", str(log), "--config",
                               str(cfg), "--store", f"sqlite:///{db}", "--alerts-out",
                               str(alerts), "--quiet", "--no-table"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        engine = create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            stored = (sorted(tuple(r) for r in conn.execute(text(
                          "select id, version, severity_id, title, ocsf from findings"))),
                      sorted(tuple(r) for r in conn.execute(text(
                          "select finding_id, version, pipeline_seq, ocsf from finding_versions"))))
        engine.dispose()
        outputs[size] = (alerts.read_text(), stored)
    lines = outputs[1][0].splitlines()
    uids = {orjson.loads(line)["finding_info"]["uid"] for line in lines}
    assert len(lines) > len(uids) >= 3  # later versions too
    for size in (7, 256, 4096):
        assert outputs[size] == outputs[1], f"runner.batch_size {size}"


@pytest.mark.slow
def test_the_drift_world_gives_the_same_findings_at_any_batch_size(tmp_path):
    """The drift world exercises what a stationary fleet does not (reads new for the role kept
    across a day, concurrent networks, peers changing with policies, AppRole lineage): every
    feature row and every finding version is the same at batch sizes 1, 97 and 4096."""
    import orjson

    from secretscope.config import load_settings
    from secretscope.findings import to_ocsf
    from secretscope.runner import Pipeline
    from secretscope.simulate import simulate, world_spec
    from secretscope.sources.files import replay

    log = tmp_path / "drift.log"
    simulate(world_spec("drift", seed=3, target_calls=40_000), log, tmp_path / "labels.jsonl")
    events = list(replay([str(log)]))

    def run(size):
        pipeline = Pipeline(load_settings(None, store__url="sqlite://"))
        rows, derive = {}, pipeline.extractor.derive

        def recording(event, w):
            fv = derive(event, w)
            rows[event.event_id] = fv.values  # the last derive of a row is the one that counts
            return fv

        pipeline.extractor.derive = recording
        versions = []
        for i in range(0, len(events), size):
            versions += pipeline.process_batch(events[i:i + size])
        versions += pipeline.finish()
        return rows, [orjson.dumps(to_ocsf(v), option=orjson.OPT_SORT_KEYS) for v in versions]

    rows, versions = run(1)
    assert len(versions) > 20
    for size in (97, 4096):
        other_rows, other_versions = run(size)
        assert other_rows == rows, f"batch size {size}: feature rows differ"
        assert other_versions == versions, f"batch size {size}: finding versions differ"
