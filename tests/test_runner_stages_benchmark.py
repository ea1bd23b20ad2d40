"""benchmarks/runner_stages.py keeps working: every stage and counter it prints is there, the
counters are those of a run in which little was flagged, and the finding versions are the same
at every batch size (small run; the real figures are in the closing note of the speed work)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs the benchmark in a new process

NUMBER = r"(-?[\d,]+(?:\.\d+)?)"


def test_runner_stages_prints_every_stage_and_counter(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "runner_stages.py"),
                           "--calls", "4000", "--repeat", "1", "--batch-size", "64",
                           "--batch-size", "1024", "--cache", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout

    def row(label: str) -> list[float]:
        match = re.search(rf"^{re.escape(label)}\s+{NUMBER}\s+{NUMBER}$", out, re.M)
        assert match, f"{label!r} not in the output:\n{out}"
        return [float(g.replace(",", "")) for g in match.groups()]

    for stage in ("features (once per event)", "detector hst", "detector baseline",
                  "rules (batch, in the pipeline)", "triage", "history + store", "runner glue",
                  "total process_batch", "rules alone, one row at a time",
                  "rules alone, a batch at a time"):
        row(stage)
    assert all(v > 0 for v in row("total process_batch"))
    # a small fleet is flagged often while it warms up, the more rows per batch the more is
    # redone; still far from twice the work
    for counter in ("learns per event", "derives per event", "detector rows scored per event"):
        assert all(1.0 <= v < 2.0 for v in row(counter)), counter
    assert all(0.0 <= v < 0.5 for v in row("unlearns per event"))
    versions = row("finding versions")
    assert versions[0] == versions[1]
    assert "finding versions identical at every batch size: yes" in out
