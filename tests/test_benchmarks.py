"""The benchmark scripts keep working: the figures they print are present and plausible, and
their targets make them exit 1 when missed (small runs; the real figures are in the README)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # each case runs a benchmark script in a new process

BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"([\d,]+(?:\.\d+)?)"


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=600)


def figure(pattern: str, text: str) -> float:
    """The number captured by ``pattern`` in ``text``; fails naming the pattern if absent."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the benchmark's output:\n{text}"
    return float(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Simulated logs shared by the runs of one script (the benchmarks cache them by name)."""
    return tmp_path_factory.mktemp("bench-cache")


def replay_args(cache, min_rate: str, max_start_up: str = "1000") -> list[str]:
    return ["--calls", "5000", "--repeat", "1", "--cache", str(cache),
            "--min-calls-per-second", min_rate, "--max-start-up", max_start_up]


def test_replay_benchmark_prints_its_figures(cache):
    proc = bench("replay_throughput.py", *replay_args(cache, "0"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert figure(rf"replay: {NUMBER} calls", out) >= 5000  # the simulator's target
    assert figure(rf"= {NUMBER} calls/s on one core", out) > 0
    assert figure(rf"; {NUMBER} findings;", out) > 0
    assert figure(rf"peak RSS {NUMBER} MiB", out) > 0
    # stage costs are differences of cumulative runs: small ones can come out below 0 on a
    # busy machine, so only the two big stages must be positive
    assert figure(rf"read, parse, join \(2 lines\)\s+{NUMBER} us per call", out) > 0
    assert figure(rf"features \(observe \+ learn\)\s+{NUMBER} us per call", out) > 0
    assert re.search(r"hst scaling \+ score \+ learn\s+-?[\d.]+ us per call", out), out
    assert 0 < figure(rf"process start to first event\s+{NUMBER} s wall", out) < 1000


def test_replay_benchmark_exits_1_below_its_target(cache):
    proc = bench("replay_throughput.py", *replay_args(cache, str(10**9)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL:" in proc.stderr and "< target 1,000,000,000" in proc.stderr


def test_replay_benchmark_exits_1_when_start_up_is_not_under_its_target(cache):
    proc = bench("replay_throughput.py", *replay_args(cache, "0", "0"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"FAIL: start-up [\d.]+ s >= target 0\.0 s", proc.stderr), proc.stderr


def quality_args(cache, *targets: str) -> list[str]:
    return ["--seeds", "5", "--days", "2", "--calls", "8000", "--cache", str(cache), *targets]


def test_quality_benchmark_prints_its_figures(cache):
    proc = bench("detection_quality.py", *quality_args(
        cache, "--min-recall", "0", "--min-precision", "0", "--max-false-per-10k", "10000"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    recall = figure(rf"recall {NUMBER}", out)
    precision = figure(rf"precision {NUMBER}", out)
    assert 0 < recall <= 1 and 0 < precision <= 1
    assert figure(rf"false per 10k benign {NUMBER}", out) >= 0
    episodes = re.findall(r"^  (\w+)\s+(\d+)/(\d+) episodes", out, re.M)
    assert len(episodes) == 10, out  # every attack class of the simulator is reported
    assert all(0 <= int(found) <= int(total) and int(total) > 0 for _, found, total in episodes)
    detected = sum(int(found) for _, found, _ in episodes)
    assert recall == pytest.approx(detected / sum(int(t) for _, _, t in episodes), abs=1e-3)


def test_quality_benchmark_exits_1_below_its_target(cache):
    proc = bench("detection_quality.py", *quality_args(cache, "--min-recall", "1.01"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL seed 5: recall" in proc.stderr


def test_baseline_detector_micro_benchmark_prints_its_figure():
    proc = bench("baseline_detector.py", "--rows", "3000", "--days", "1")
    assert proc.returncode == 0, proc.stderr
    assert figure(rf"RobustBaselineDetector: {NUMBER} us/row over 3,000 rows", proc.stdout) > 0


def test_partition_quality_prints_one_line_per_partition_count(tmp_path):
    from secretscope.simulate import SimulationSpec, simulate

    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=3, seed=5, target_calls=9000), log,
             tmp_path / "fleet.log.labels.jsonl")
    res = bench("partition_quality.py", str(log), "1", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["partitions 1", "partitions 3"], res.stdout
    for line in lines:
        assert 0.0 < figure(r"recall " + NUMBER, line) <= 1.0
        assert 0.0 < figure(r"precision " + NUMBER, line) <= 1.0


def test_workers_benchmark_compares_both_commands_and_their_findings(cache):
    args = ["--calls", "3000", "--repeat", "1", "--cache", str(cache)]
    done = bench("replay_workers.py", *args, "--min-speedup", "0.1")
    assert done.returncode == 0, done.stderr
    assert figure(r"--workers 1: .* " + NUMBER + r" calls/s", done.stdout) > 0
    assert figure(r"--workers 2: .* " + NUMBER + r" calls/s", done.stdout) > 0
    assert figure(r"findings identical \(" + NUMBER, done.stdout) > 10
    assert figure(r": " + NUMBER + r"x\n", done.stdout) > 0
    missed = bench("replay_workers.py", *args, "--min-speedup", "100")
    assert missed.returncode == 1 and "FAIL" in missed.stderr
