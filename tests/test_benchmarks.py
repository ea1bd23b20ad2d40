"""The benchmark scripts keep working (their figures are read from their output, not asserted here)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_replay_benchmark_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "replay_throughput.py"), "--calls", "20000",
         "--cache", str(tmp_path), "--min-calls-per-second", "0"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "calls/s on one core" in proc.stdout and "peak RSS" in proc.stdout
    assert "features (observe + learn)" in proc.stdout
