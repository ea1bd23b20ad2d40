"""secretscope run against a real Kafka broker: two stages, crashes, restarts, dead letters."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import ROOT
from kafka_broker import kafka_broker, unique_topic  # noqa: F401
from pipeline.simulate import SimulationSpec, simulate

AUDIT_PARTITIONS = 4


@pytest.fixture(scope="module")
def fleet_lines(tmp_path_factory) -> list[bytes]:
    tmp = tmp_path_factory.mktemp("fleet")
    log = tmp / "fleet.log"
    simulate(SimulationSpec(days=5, seed=21, target_calls=40000), log, tmp / "labels.jsonl")
    return log.read_bytes().splitlines()


def produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """Audit lines keyed by request id, so both halves of a call share a partition."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for line in lines:
        try:
            key = orjson.loads(line)["request"]["id"].encode()
        except Exception:
            key = b"unparseable"
        producer.send(topic, key=key, value=line)
    producer.flush()
    producer.close()


def config(tmp: Path, bootstrap: str, audit: str, tag: str, store: str) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = store
    doc["kafka"] = {
        "bootstrap_servers": [bootstrap], "audit_topics": [audit],
        "events_topic": f"events-{tag}", "dead_letter_topic": f"dlq-{tag}",
        "parse_group": f"parse-{tag}", "score_group": f"score-{tag}",
        "events_partitions": 4, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
        "idle_seconds": 1.5, "snapshot_seconds": 0.5,
    }
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))


def lag(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not parts:
            return None
        ends = consumer.end_offsets(parts)
        total = 0
        for tp in parts:
            committed = consumer.committed(tp)
            total += ends[tp] - (committed or 0)
        return total
    finally:
        consumer.close()


def wait_done(bootstrap: str, audit: str, tag: str, procs, timeout: float = 240) -> None:
    """Until both stages have committed everything (and the stage-2 input stopped growing)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            assert p.poll() is None, "a service process died"
        if lag(bootstrap, f"parse-{tag}", audit) == 0 and lag(bootstrap, f"score-{tag}",
                                                               f"events-{tag}") == 0:
            time.sleep(2)  # idle watermarks may still add records; check once more
            if lag(bootstrap, f"score-{tag}", f"events-{tag}") == 0:
                return
        time.sleep(1)
    raise AssertionError("the service did not finish in time")


def stop(procs, logs) -> list[dict]:
    summaries = []
    for p, log in zip(procs, logs):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
        last = [l for l in log.read_text().splitlines() if '"secretscope":"stopped"' in l]
        summaries.append(json.loads(last[-1]))
    return summaries


def findings(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("select id, detectors, trigger_event_id from findings"))


def snapshots_written(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("select count(*) from snapshots").fetchone()[0]
    except sqlite3.Error:
        return 0


def run_once(tmp, broker, audit, tag, processes=1, kill=False):
    db = tmp / f"{tag}.db"
    cfg = config(tmp, broker.bootstrap, audit, tag, f"sqlite:///{db}")
    logs = [tmp / f"{tag}-{i}.log" for i in range(processes)]
    procs = [start(cfg, log) for log in logs]
    if kill:
        # mid-stream: once scoring has saved state, while the audit topic is not yet consumed
        deadline = time.time() + 120
        while snapshots_written(db) == 0 and time.time() < deadline:
            time.sleep(0.2)
        assert procs[0].poll() is None, logs[0].read_text()[-3000:]
        assert lag(broker.bootstrap, f"parse-{tag}", audit) > 0, "too late to kill mid-stream"
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs, logs = procs[1:], logs[1:]
    wait_done(broker.bootstrap, audit, tag, procs)
    return findings(db), stop(procs, logs)


def test_two_processes_one_killed_equal_a_single_process(kafka_broker, fleet_lines, tmp_path):
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, audit, fleet_lines)
    single, _ = run_once(tmp_path, kafka_broker, audit, unique_topic("one"))
    assert len(single) >= 5
    ids = [f[0] for f in single]
    assert len(ids) == len(set(ids))
    pair, summaries = run_once(tmp_path, kafka_broker, audit, unique_topic("two"), processes=2,
                               kill=True)
    assert pair == single
    # the survivor took over the killed process's audit partitions (it read more than its half)
    assert summaries[0]["parse"]["records"] > len(fleet_lines) // 2
