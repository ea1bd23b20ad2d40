"""The IsolationForest batch detector end to end: feature history recorded by a real replay,
`secretscope train`, loading through the config with its integrity checks."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
import skops.io as sio
from conftest import ROOT
from typer.testing import CliRunner

from secretscope.models.batch import (IFOREST_INPUTS, IFOREST_SOURCES, IsolationForestDetector,
                          iforest_inputs, load_model, manifest_path, train_isolation_forest)
from secretscope.cli import app
from secretscope.config import load_settings
from secretscope.errors import ModelIntegrityError, TrainingError
from secretscope.features import FEATURE_NAMES, INDEX, feature_frame
from secretscope.runner import Pipeline
from secretscope.simulate import SimulationSpec, simulate
from secretscope.sources.files import replay
from secretscope.store import Store, feature_history

RULES = ROOT / "config" / "rules"


def write_config(path: Path, store_url: str, sample: float, iforest: str | None = None) -> Path:
    default = load_settings()
    segments = "\n".join(f"  - {{name: {s.name}, cidr: '{s.cidr}'}}" for s in default.segments)
    detectors = "  - {type: halfspacetrees}\n"
    if iforest:
        detectors += f"  - {{type: isolationforest, model_path: {iforest}, threshold: 0.999}}\n"
    path.write_text(f"store:\n  url: '{store_url}'\n  feature_history_sample: {sample}\n"
                    f"segments:\n{segments}\nrules:\n  directory: '{RULES}'\n"
                    f"detectors:\n{detectors}")
    return path


def run_pipeline(config: Path, log: Path, findings: list | None = None) -> Pipeline:
    settings = load_settings(config)
    store = Store(settings.store.url)
    try:
        pipeline = Pipeline(settings, store=store,
                            on_version=findings.append if findings is not None else None)
        pipeline.run(replay([log]))
    finally:
        store.close()
    return pipeline


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A simulated, labelled log replayed once with every learned row kept; a model trained
    on that history by the CLI."""
    d = tmp_path_factory.mktemp("iforest")
    log, labels = d / "sim.log", d / "sim.labels.jsonl"
    simulate(SimulationSpec(days=3, target_calls=20_000), log, labels)
    url = f"sqlite:///{d / 'store.db'}"
    config = write_config(d / "record.yaml", url, 1.0)
    findings: list = []
    run_pipeline(config, log, findings)
    model = d / "models" / "iforest.skops"
    res = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(model),
                                   "--n-estimators", "50"])
    assert res.exit_code == 0, res.output
    attack = set()
    for line in labels.read_text().splitlines():
        attack |= set(orjson.loads(line)["request_ids"])
    return {"dir": d, "log": log, "url": url, "model": model, "attack": attack,
            "findings": findings, "train_output": res.output}


def copy_model(world, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(world["model"], dest / "iforest.skops")
    shutil.copy(manifest_path(world["model"]), manifest_path(dest / "iforest.skops"))
    return dest / "iforest.skops"


def rewrite(model: Path, blob: bytes | None = None, **manifest_changes) -> None:
    """Replace the model bytes and/or manifest fields, keeping the manifest's sha256 right, so
    only the check under test can fail."""
    if blob is not None:
        model.write_bytes(blob)
    mpath = manifest_path(model)
    manifest = orjson.loads(mpath.read_bytes())
    manifest.update(manifest_changes, sha256=hashlib.sha256(model.read_bytes()).hexdigest())
    mpath.write_bytes(orjson.dumps(manifest))


# --- feature history ----------------------------------------------------------------------


def test_history_holds_learned_rows_only(world):
    store = Store(world["url"])
    try:
        frame = store.feature_history()
    finally:
        store.close()
    assert list(frame.columns) == ["time", "identity", *FEATURE_NAMES]
    assert frame.index.is_unique and str(frame["time"].dt.tz) == "UTC"
    assert frame["time"].is_monotonic_increasing
    triggers = {f.trigger.event_id for f in world["findings"]}
    assert triggers and not triggers & set(frame.index)  # what raised a finding is not kept
    assert 0.9 * 20_000 < len(frame) < 20_000


def test_sampling_is_deterministic_and_replays_add_nothing(world, tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    config = write_config(tmp_path / "a.yaml", url, 0.2)
    run_pipeline(config, world["log"])
    store = Store(url)
    try:
        first = store.feature_history()
        run_pipeline(config, world["log"])  # the same log again: the same rows, ignored
        assert store.count(feature_history) == len(first)
    finally:
        store.close()
    full = Store(world["url"])
    try:
        everything = full.feature_history()
    finally:
        full.close()
    assert set(first.index) <= set(everything.index)
    assert 0.17 < len(first) / len(everything) < 0.23
    np.testing.assert_array_equal(first[list(FEATURE_NAMES)].to_numpy(),
                                  everything.loc[first.index, list(FEATURE_NAMES)].to_numpy())


def test_sample_zero_records_nothing(world, tmp_path):
    url = f"sqlite:///{tmp_path / 'off.db'}"
    pipeline = run_pipeline(write_config(tmp_path / "off.yaml", url, 0.0), world["log"])
    assert not pipeline.history.enabled
    store = Store(url)
    try:
        assert store.count(feature_history) == 0
    finally:
        store.close()


def test_history_window_and_limit(world):
    store = Store(world["url"])
    try:
        frame = store.feature_history()
        mid = frame["time"].iloc[len(frame) // 2].to_pydatetime()
        later = store.feature_history(since=mid)
        earlier = store.feature_history(until=mid)
        newest = store.feature_history(limit=100)
    finally:
        store.close()
    assert len(later) + len(earlier) == len(frame)
    assert (later["time"] >= mid).all() and (earlier["time"] < mid).all()
    assert list(newest.index) == list(frame.index[-100:])


# --- training and scoring -----------------------------------------------------------------


def test_train_writes_model_and_manifest(world):
    assert "trained on" in world["train_output"]
    manifest = orjson.loads(manifest_path(world["model"]).read_bytes())
    assert manifest["inputs"] == list(IFOREST_INPUTS)
    assert manifest["sha256"] == hashlib.sha256(world["model"].read_bytes()).hexdigest()
    assert manifest["rows"] > 10_000 and manifest["params"]["n_estimators"] == 50
    assert manifest["trained_from"].startswith("2026-03-02")
    assert manifest["trained_until"].startswith("2026-03-04")
    assert world["model"].read_bytes()[:2] == b"PK"  # a skops zip archive, not a pickle


def test_detector_loaded_through_config_scores_attacks_higher(world, tmp_path):
    copy_model(world, tmp_path / "m")
    config = write_config(tmp_path / "score.yaml", "sqlite://", 0.0, iforest="m/iforest.skops")
    settings = load_settings(config)  # model_path is relative to the config file
    pipeline = Pipeline(settings)
    detector = pipeline.detectors[-1]
    assert isinstance(detector, IsolationForestDetector) and detector.name == "iforest"
    frame = feature_frame(replay([world["log"]]), pipeline.segments)
    values = frame[list(FEATURE_NAMES)].to_numpy()
    sb = detector.score_then_learn([], np.zeros(len(values), dtype=bool), values)
    assert ((sb.scores >= 0) & (sb.scores <= 1)).all()
    attack = frame.index.isin(list(world["attack"]))
    assert attack.sum() > 300
    assert sb.scores[attack].mean() > sb.scores[~attack].mean() + 0.25
    assert (sb.ready == (values[:, INDEX["history_events"]] >= 50)).all()
    assert (sb.fired == (sb.ready & (sb.scores >= 0.999))).all()
    # benign rows fire at about the calibrated rate; attack rows far more often
    benign_rate = sb.fired[~attack & sb.ready].mean()
    assert benign_rate < 0.005 and sb.fired[attack & sb.ready].mean() > 20 * benign_rate


def test_pipeline_with_iforest_replays_and_snapshots(world, tmp_path, caplog):
    copy_model(world, tmp_path / "m")
    config = write_config(tmp_path / "run.yaml", "sqlite://", 0.0, iforest="m/iforest.skops")
    findings: list = []
    pipeline = run_pipeline(config, world["log"], findings)
    assert any("iforest" in f.detectors for f in findings)
    detector = pipeline.detectors[-1]
    state = detector.state_dict()
    assert state == {"sha256": detector.model.sha256} and len(state["sha256"]) == 64
    detector.load_state_dict(state)
    with caplog.at_level(logging.WARNING):
        detector.load_state_dict({"sha256": "0" * 64})  # retrained since: a warning
    assert "snapshot was taken with model sha256" in caplog.text
    with pytest.raises(ModelIntegrityError, match="no isolationforest state"):
        detector.load_state_dict({"trees": []})


def test_calibration_is_the_training_cdf(world):
    model = load_model(world["model"])
    store = Store(world["url"])
    try:
        frame = store.feature_history()
    finally:
        store.close()
    values = frame[list(FEATURE_NAMES)].to_numpy()
    values = values[values[:, INDEX["history_events"]] >= 50]
    scores = model.score(values)
    for q in (0.5, 0.9, 0.99):
        assert abs((scores >= q).mean() - (1 - q)) < 0.01 + 0.1 * (1 - q)


def test_inputs_read_only_their_source_features_by_name():
    values = np.full((4, len(FEATURE_NAMES)), np.nan)
    for name in IFOREST_SOURCES:
        values[:, INDEX[name]] = 0.5
    assert np.isfinite(iforest_inputs(values)).all()


def test_training_refuses_too_few_rows_and_missing_features(world, tmp_path):
    store = Store(world["url"])
    try:
        frame = store.feature_history(limit=500)
    finally:
        store.close()
    with pytest.raises(TrainingError, match="too few rows"):
        train_isolation_forest(frame)
    with pytest.raises(TrainingError, match="feature names mismatch.*segment_share"):
        train_isolation_forest(frame.drop(columns=["segment_share"]), min_rows=10)
    res = CliRunner().invoke(app, ["train", "--store", f"sqlite:///{tmp_path / 'empty.db'}",
                                   "--out", str(tmp_path / "x.skops")])
    assert isinstance(res.exception, TrainingError) and "too few rows" in str(res.exception)


def test_train_cli_error_exits_2(tmp_path):
    import subprocess

    exe = shutil.which("secretscope")
    res = subprocess.run([exe, "train", "--store", f"sqlite:///{tmp_path / 'empty.db'}", "--out",
                          str(tmp_path / "x.skops")], capture_output=True, text=True)
    assert res.returncode == 2 and "error: too few rows to train on: 0 usable" in res.stderr
    assert not (tmp_path / "x.skops").exists()


# --- integrity --------------------------------------------------------------------------


def test_tampered_model_file_is_refused(world, tmp_path):
    model = copy_model(world, tmp_path)
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    model.write_bytes(bytes(blob))
    with pytest.raises(ModelIntegrityError, match=f"{model}: sha256 .* does not match"):
        load_model(model)
    config = write_config(tmp_path / "c.yaml", "sqlite://", 0.0, iforest=str(model))
    with pytest.raises(ModelIntegrityError):  # at start-up, not at the first batch
        Pipeline(load_settings(config))


class Payload:
    """A type no allow-list names."""

    def __init__(self) -> None:
        self.command = "id"


def test_untrusted_type_is_refused(world, tmp_path):
    model = copy_model(world, tmp_path)
    forest = load_model(model).forest
    forest.payload_ = Payload()
    rewrite(model, sio.dumps(forest))
    with pytest.raises(ModelIntegrityError) as info:
        load_model(model)
    assert str(model) in str(info.value) and "test_batch_model.Payload" in str(info.value)


def test_out_of_range_tree_nodes_are_refused(world, tmp_path):
    model = copy_model(world, tmp_path)
    forest = load_model(model).forest
    tree = forest.estimators_[3].tree_
    state = tree.__getstate__()
    state["nodes"] = state["nodes"].copy()
    state["nodes"]["left_child"][0] = 10**9
    tree.__setstate__(state)
    rewrite(model, sio.dumps(forest))
    with pytest.raises(ModelIntegrityError, match="malformed forest: tree 3 has child indices"):
        load_model(model)


def test_manifest_inputs_must_match_the_transform(world, tmp_path):
    model = copy_model(world, tmp_path)
    rewrite(model, inputs=list(IFOREST_INPUTS[:-1]) + ["denied_count_5m"])
    with pytest.raises(ModelIntegrityError, match="trained on inputs .* retrain"):
        load_model(model)
    model = copy_model(world, tmp_path / "v")
    rewrite(model, transform_version=0)
    with pytest.raises(ModelIntegrityError, match="transform 0"):
        load_model(model)


def test_missing_or_foreign_manifest_is_refused(world, tmp_path):
    model = copy_model(world, tmp_path)
    manifest_path(model).unlink()
    with pytest.raises(ModelIntegrityError, match="cannot read model"):
        load_model(model)
    manifest_path(model).write_text("[1, 2]")
    with pytest.raises(ModelIntegrityError, match="not a secretscope-isolationforest"):
        load_model(model)
