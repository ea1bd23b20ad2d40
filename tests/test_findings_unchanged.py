"""Speed work must not change what is found: every finding version the pipeline emits over two
simulated logs (the default world and the drifting one) matches a record kept in
``tests/data/golden/``, document for document.

The record was written by the code before the speed work (``python tests/test_findings_unchanged.py
--write``); rewrite it only for a change that is meant to alter findings, and say so in the
commit. The logs are regenerated from their seeds, and their digest is checked first, so a
change in the simulator is reported as such rather than as changed findings.

A second, stricter record (``*.features.json``) holds the digest of every row's feature vector
as the pipeline scored it (after any redo), 1,000 rows per digest: a faster implementation of
the features (compiled, columnar) must give the same numbers bit for bit, not only the same
findings. ``--write-features`` writes it alone, leaving the findings record as it is."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import orjson
import pytest

GOLDEN = Path(__file__).parent / "data" / "golden"
# (world, seed, days, calls): 20-40k calls, a few seconds of replay
CASES = [("default", 11, 4, 20000), ("drift", 12, 14, 40000)]


def simulated(tmp: Path, world: str, seed: int, days: int, calls: int) -> Path:
    from secretscope.simulate import SimulationSpec, simulate

    log = tmp / f"{world}-{seed}.log"
    simulate(SimulationSpec(days=days, seed=seed, target_calls=calls, world=world), log,
             tmp / f"{world}-{seed}.labels.jsonl")
    return log


FEATURE_BLOCK = 1000  # rows per digest: a mismatch names the block where the rows diverge


class FeatureDigests:
    """Takes the place of the pipeline's history recorder (which a store-less pipeline leaves
    off) and keeps the digest of every processed row's event id and feature values, in order."""

    def __init__(self) -> None:
        self.rows = 0
        self.blocks: list[str] = []
        self._sha = hashlib.sha256()

    def record(self, vectors, undo) -> int:
        from secretscope.history import encode_values  # the store's packing of a vector

        for fv in vectors:
            self._sha.update(fv.event.event_id.encode())
            self._sha.update(encode_values(fv.values))
            self.rows += 1
            if self.rows % FEATURE_BLOCK == 0:
                self.blocks.append(self._sha.hexdigest())
                self._sha = hashlib.sha256()
        return 0

    def summary(self) -> dict:
        tail = [self._sha.hexdigest()] if self.rows % FEATURE_BLOCK else []
        return {"rows": self.rows, "block_rows": FEATURE_BLOCK, "blocks": self.blocks + tail}


def finding_versions(log: Path, features: FeatureDigests | None = None) -> list[dict]:
    from secretscope.config import load_settings
    from secretscope.findings import to_ocsf
    from secretscope.runner import Pipeline
    from secretscope.sources.files import replay

    pipeline = Pipeline(load_settings())
    if features is not None:
        pipeline.history = features
    out, batch = [], []
    for event in replay([log]):
        batch.append(event)
        if len(batch) == 256:
            out += pipeline.process_batch(batch)
            batch = []
    out += pipeline.process_batch(batch)
    out += pipeline.finish()
    return [to_ocsf(f) for f in out]


def record(log: Path, docs: list[dict]) -> dict:
    """The log's digest and, per version, a line to read in a diff and the digest of the whole
    document (canonical JSON)."""
    return {
        "log_sha256": hashlib.sha256(log.read_bytes()).hexdigest(),
        "versions": [
            {"uid": d["finding_info"]["uid"], "activity": d["activity_name"],
             "severity": d["severity"], "title": d["finding_info"]["title"],
             "sha256": hashlib.sha256(orjson.dumps(d, option=orjson.OPT_SORT_KEYS)).hexdigest()}
            for d in docs],
    }


@pytest.mark.parametrize(("world", "seed", "days", "calls"), CASES,
                         ids=[f"{w}-{s}" for w, s, _, _ in CASES])
def test_findings_and_features_match_the_record(tmp_path, world, seed, days, calls):
    expected = json.loads((GOLDEN / f"{world}-{seed}.json").read_text())
    expected_features = json.loads((GOLDEN / f"{world}-{seed}.features.json").read_text())
    log = simulated(tmp_path, world, seed, days, calls)
    got_log = hashlib.sha256(log.read_bytes()).hexdigest()
    assert got_log == expected["log_sha256"], "the simulator's output changed: not a findings test"
    features = FeatureDigests()
    got = record(log, finding_versions(log, features))["versions"]
    assert len(expected["versions"]) >= 20, "too few versions recorded: a weak test"
    # readable first: which findings differ, then the full documents
    assert [(v["uid"], v["activity"], v["severity"], v["title"]) for v in got] == \
        [(v["uid"], v["activity"], v["severity"], v["title"]) for v in expected["versions"]]
    assert got == expected["versions"]
    got_features = features.summary()
    assert got_features["rows"] == expected_features["rows"] >= calls * 0.9
    diverged = next((k for k, (a, b) in enumerate(zip(got_features["blocks"],
                                                      expected_features["blocks"])) if a != b),
                    None)
    assert diverged is None, (f"feature vectors differ from row {diverged * FEATURE_BLOCK} on "
                              f"(the findings are the same)")
    assert got_features == expected_features


def _write(features_only: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for world, seed, days, calls in CASES:
            log = simulated(Path(tmp), world, seed, days, calls)
            features = FeatureDigests()
            rec = record(log, finding_versions(log, features))
            if not features_only:
                (GOLDEN / f"{world}-{seed}.json").write_text(json.dumps(rec, indent=1) + "\n")
            (GOLDEN / f"{world}-{seed}.features.json").write_text(
                json.dumps(features.summary(), indent=1) + "\n")
            print(f"{world}-{seed}: {len(rec['versions'])} versions, {features.rows:,} rows")


if __name__ == "__main__" and sys.argv[1:] in (["--write"], ["--write-features"]):
    sys.path.insert(0, str(Path(__file__).parent))
    _write(features_only=sys.argv[1] == "--write-features")
