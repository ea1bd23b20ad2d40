"""``replay --workers 2`` reads, parses and measures windows in a second process: what it finds
must be what one process finds, whatever the input, and the reader must never outlive it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import wait_for
from test_findings_unchanged import CASES, GOLDEN, record, simulated

ROOT = Path(__file__).resolve().parent.parent


def run_replay(*args: str, stdin=None, env_extra: dict | None = None, timeout: float = 300):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "secretscope", "replay", *args, "--no-table"],
                          capture_output=True, text=True, stdin=stdin, timeout=timeout, env=env)


def versions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def summary(stderr: str) -> str:
    """The run summary without its timing (``in 1.2s (12,345 calls/s...)``)."""
    line = next(x for x in stderr.splitlines() if x.startswith("replayed "))
    head, _, rest = line.partition(" in ")
    return head + rest[rest.index(";"):]


@pytest.mark.slow  # two whole replays of 20-40k calls; the expiry test below covers the fast set
@pytest.mark.parametrize(("world", "seed", "days", "calls"), CASES,
                         ids=[f"{w}-{s}" for w, s, _, _ in CASES])
def test_two_processes_find_what_the_record_holds(tmp_path, world, seed, days, calls):
    """Every finding version, document for document, is the one-process record's."""
    expected = json.loads((GOLDEN / f"{world}-{seed}.json").read_text())
    log = simulated(tmp_path, world, seed, days, calls)
    out = tmp_path / "alerts.jsonl"
    done = run_replay(str(log), "--workers", "2", "--alerts-out", str(out), "-q",
                      "--store", f"sqlite:///{tmp_path / 'two.db'}")
    assert done.returncode == 0, done.stderr
    assert "2 processes" in done.stderr  # it did run split
    assert record(log, versions(out))["versions"] == expected["versions"]


def _config(tmp_path: Path, batch_size: int, idle_days: float) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"runner:\n  batch_size: {batch_size}\nstate:\n  idle_days: {idle_days}\n"
                    "store:\n  url: 'sqlite://'\n")
    return path


def _replay_in_process(log: Path, config: Path, workers: int, monkeypatch):
    """A replay as the CLI runs it; also every feature vector derived, in order."""
    from secretscope.cli import _run_replay
    from secretscope.config import load_settings
    from secretscope.features import FeatureExtractor

    derived = []
    derive = FeatureExtractor.derive

    def recording(self, event, w):
        fv = derive(self, event, w)
        derived.append((event.event_id, fv.values))
        return fv

    settings = load_settings(config)
    collected: dict = {}
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractor, "derive", recording)
        stats, counters, pipeline = _run_replay([str(log)], settings, None, True, collected,
                                                workers)
    return stats, derived, pipeline, collected


def test_identities_expire_at_the_same_event_times_in_both_processes(tmp_path, monkeypatch):
    """Idle expiry changes an identity's windows and its baseline; each process expires its
    half. With batches spanning more event time than ``idle_days`` (an identity of the batch
    must wait for its row to be derived), the reader replays the runner's batching to agree."""
    from secretscope.findings import to_ocsf

    log = simulated(tmp_path, "default", 11, 4, 20000)
    config = _config(tmp_path, 4096, 0.2)  # 4,096 calls is about 20 h here; idle: 4.8 h
    one = _replay_in_process(log, config, 1, monkeypatch)
    two = _replay_in_process(log, config, 2, monkeypatch)
    assert two[2].windows_relayed and not one[2].windows_relayed
    assert len(one[2].extractor.dormant) > 10, "no identity expired: a weak test"
    assert set(two[2].extractor.dormant) == set(one[2].extractor.dormant)
    assert set(two[2].extractor.identities) == set(one[2].extractor.identities)
    assert one[0].findings > 5
    assert (one[0].events, one[0].findings, one[0].updates, one[0].closes) == \
        (two[0].events, two[0].findings, two[0].updates, two[0].closes)
    assert {k: to_ocsf(f) for k, f in one[3].items()} == {k: to_ocsf(f) for k, f in two[3].items()}
    assert not two[2].extractor.relayed  # every window was used by its event
    # every feature of every event, windows measured by the reader included, as in one process
    assert len(one[1]) >= one[0].events
    assert one[1] == two[1]


def test_broken_input_is_reported_the_same_way(tmp_path):
    """Cut lines, foreign lines and a truncated gzip: the same dead letters, the same summary,
    the same exit status 3 naming the cut file, with one process or two."""
    log = simulated(tmp_path, "default", 11, 4, 20000)
    lines = log.read_bytes().splitlines(keepends=True)
    hostile = tmp_path / "hostile.log"
    hostile.write_bytes(b"".join(lines[:3000]) + b'{"type": "request", "time": "not a time"\n'
                        + b"\x00\xff garbage \n" + lines[3000][:200] + b"\n"
                        + b'{"type":"response","time":"2026-13-45T99:99:99Z"}\n'
                        + b"".join(lines[3001:6000]))
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(gzip.compress(b"".join(lines[6000:9000]))[:-5000])
    results = {}
    for workers in ("1", "2"):
        out = tmp_path / f"alerts-{workers}.jsonl"
        db = tmp_path / f"w{workers}.db"
        done = run_replay(str(hostile), str(cut), "--workers", workers, "-q",
                          "--alerts-out", str(out), "--store", f"sqlite:///{db}")
        results[workers] = (done, out.read_text(), db)
    one, two = results["1"][0], results["2"][0]
    assert one.returncode == two.returncode == 3, (one.stderr, two.stderr)
    assert "2 processes" in two.stderr and "2 processes" not in one.stderr
    assert summary(one.stderr) == summary(two.stderr)
    assert "dead letters" in summary(one.stderr) and " 0 dead letters" not in summary(one.stderr)
    incomplete = [x for x in one.stderr.splitlines() if x.startswith("input incomplete")]
    assert incomplete and incomplete == \
        [x for x in two.stderr.splitlines() if x.startswith("input incomplete")]
    assert "cut.log.gz" in incomplete[0]
    assert results["1"][1] == results["2"][1]

    import sqlite3

    def letters(db: Path):
        with sqlite3.connect(db) as c:
            return c.execute("select origin, reason, digest from dead_letters order by id").fetchall()

    assert letters(results["1"][2]) and letters(results["1"][2]) == letters(results["2"][2])


@pytest.mark.slow
def test_standard_input_and_progress(tmp_path):
    log = simulated(tmp_path, "default", 11, 4, 20000)
    out = tmp_path / "alerts.jsonl"
    with open(log, "rb") as fh:
        done = run_replay("-", "--workers", "2", "--alerts-out", str(out),
                          "--store", f"sqlite:///{tmp_path / 'stdin.db'}", stdin=fh)
    assert done.returncode == 0, done.stderr
    assert "2 processes" in done.stderr
    expected = json.loads((GOLDEN / "default-11.json").read_text())
    assert record(log, versions(out))["versions"] == expected["versions"]
    # progress from a file names how far through its input the reader is
    config = tmp_path / "progress.yaml"
    config.write_text("runner:\n  progress_seconds: 0\n")
    done = run_replay(str(log), "--workers", "2", "--store", "sqlite://", "--config", str(config))
    assert done.returncode == 0, done.stderr
    progress = [x for x in done.stderr.splitlines() if x.startswith("secretscope: ")]
    assert progress and all("% of input" in x for x in progress), done.stderr


def _reader_of(pid: int) -> int | None:
    """The reader process of the replay ``pid``, once started (its one child)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) <= 1, children
    return int(children[0]) if children else None


def _replay_from_a_pipe():
    """A split replay reading standard input, which the test writes (a live pipe: the reader
    blocks on it whenever it has read everything written so far)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "secretscope", "replay", "-", "--workers", "2", "-q",
         "--no-table", "--store", "sqlite://"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, proc.stdin


def test_a_reader_that_dies_is_an_error_not_a_hang(tmp_path):
    log = simulated(tmp_path, "default", 11, 4, 20000)
    proc, writer = _replay_from_a_pipe()
    try:
        writer.write(b"".join(log.read_bytes().splitlines(keepends=True)[:2000]))
        writer.flush()
        reader = wait_for(lambda: _reader_of(proc.pid), 30, "the reader process")
        os.kill(reader, signal.SIGKILL)
        writer.close()
        proc.wait(60)
        stderr = proc.stderr.read().decode()
    finally:
        proc.kill()
    assert proc.returncode == 1
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert lines[-1] == "error: the reader process ended before its input did (exit code -9)", stderr
    assert "Traceback" not in stderr


def test_the_reader_does_not_outlive_the_pipeline():
    proc, writer = _replay_from_a_pipe()
    try:
        reader = wait_for(lambda: _reader_of(proc.pid), 30, "the reader process")
        proc.kill()  # no chance to clean up: the kernel must end the reader
        proc.wait(30)

        def gone() -> bool:
            try:
                os.kill(reader, 0)
            except ProcessLookupError:
                return True
            state = Path(f"/proc/{reader}/stat").read_text().split()[2]
            return state == "Z"  # ended, waiting for its parent's wait

        wait_for(gone, 10, "the reader to end with the pipeline")
    finally:
        writer.close()
        proc.kill()


def test_one_process_when_asked(tmp_path):
    log = simulated(tmp_path, "default", 11, 1, 2000)
    done = run_replay(str(log), "--workers", "1", "-q", "--store", "sqlite://")
    assert done.returncode == 0, done.stderr
    assert "2 processes" not in done.stderr
    done = run_replay(str(log), "--workers", "0", "-q", "--store", "sqlite://")
    assert done.returncode != 0 and "Traceback" not in done.stderr


def test_evaluate_gives_the_same_figures_with_two_processes(tmp_path):
    from secretscope.config import load_settings
    from secretscope.models.evaluation import evaluate_log

    log = simulated(tmp_path, "default", 11, 4, 20000)
    settings = load_settings()
    labels = tmp_path / "default-11.labels.jsonl"
    one = evaluate_log(log, settings, labels, workers=1)
    two = evaluate_log(log, settings, labels, workers=2)
    assert one.findings >= 10 and one.recall > 0.5
    assert two == one


def test_the_default_follows_the_cores_a_container_may_use(tmp_path, monkeypatch):
    from secretscope import replay_split

    monkeypatch.setattr(replay_split.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    cpu_max = tmp_path / "cpu.max"
    for text, cores in (("max 100000\n", 4), ("100000 100000\n", 1), ("150000 100000\n", 2),
                        ("50000 100000\n", 1)):
        cpu_max.write_text(text)
        assert replay_split.usable_cores(cpu_max) == cores, text
    assert replay_split.usable_cores(tmp_path / "none") == 4  # no cgroup v2 quota
    monkeypatch.setattr(replay_split, "usable_cores", lambda: 1)
    assert replay_split.workers_for(None) == 1
    monkeypatch.setattr(replay_split, "usable_cores", lambda: 8)
    assert replay_split.workers_for(None) == 2
    assert replay_split.workers_for(1) == 1 and replay_split.workers_for(5) == 2
