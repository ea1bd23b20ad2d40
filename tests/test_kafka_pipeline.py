"""secretscope run against a real Kafka broker: two stages, crashes, restarts, dead letters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from conftest import ROOT
from kafka_broker import kafka_broker, unique_topic  # noqa: F401
from postgres_server import postgres_url  # noqa: F401
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
    # below the broker's 1 MB message limit, so the tests can put oversize records on the topic
    doc["input"]["max_record_bytes"] = 65536
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
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    _started.append(proc)
    return proc


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
    raise AssertionError(f"the service did not finish in time: parse lag "
                         f"{lag(bootstrap, f'parse-{tag}', audit)}, score lag "
                         f"{lag(bootstrap, f'score-{tag}', f'events-{tag}')}")


def stop(procs, logs) -> list[dict]:
    summaries = []
    for p, log in zip(procs, logs):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=60) == 0, log.read_text()[-3000:]
        last = [l for l in log.read_text().splitlines() if '"secretscope":"stopped"' in l]
        summaries.append(json.loads(last[-1]))
    return summaries


def _url(store) -> str:
    return store if isinstance(store, str) else f"sqlite:///{store}"


def findings(store) -> list[tuple]:
    """Every stored finding version (id, version, the whole OCSF document), and each finding's
    current row: what a second run must reproduce exactly."""
    engine = create_engine(_url(store))
    try:
        with engine.connect() as conn:
            versions = sorted(tuple(r) for r in conn.execute(
                text("select finding_id, version, ocsf from finding_versions")))
            current = sorted(tuple(r) for r in conn.execute(
                text("select id, version, detectors, trigger_event_id, ocsf from findings")))
            return versions + current
    finally:
        engine.dispose()


def snapshots_written(store) -> int:
    engine = create_engine(_url(store))
    try:
        with engine.connect() as conn:
            return conn.execute(text("select count(*) from snapshots")).scalar_one()
    except SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _no_stray_services():
    yield
    for p in _started:
        if p.poll() is None:
            p.kill()
            p.wait()
    _started.clear()


_started: list = []


def quiet_point(lines: list[bytes]) -> int:
    """An index near the middle where no call is open (its request read, its response not)."""
    open_calls: set[str] = set()
    for i, line in enumerate(lines):
        entry = orjson.loads(line)
        rid = entry["request"].get("id")
        if entry["type"] == "request":
            open_calls.add(rid)
        else:
            open_calls.discard(rid)
        if i >= len(lines) // 2 and not open_calls:
            return i + 1
    return len(lines)


def run_once(tmp, broker, audit, tag, processes=1, kill=False, store=None, later=()):
    """Run the service until everything is scored. With ``kill``, SIGKILL the first process
    once scoring has saved state, then produce ``later`` (the rest of the stream) for the
    survivor."""
    db = store or tmp / f"{tag}.db"
    cfg = config(tmp, broker.bootstrap, audit, tag, _url(db))
    logs = [tmp / f"{tag}-{i}.log" for i in range(processes)]
    procs = [start(cfg, log) for log in logs]
    if kill:
        deadline = time.time() + 120
        while snapshots_written(db) == 0 and time.time() < deadline:
            time.sleep(0.2)
        assert procs[0].poll() is None, logs[0].read_text()[-3000:]
        assert lag(broker.bootstrap, f"score-{tag}", f"events-{tag}") != 0 or later
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs, logs = procs[1:], logs[1:]
    if later:
        produce(broker.bootstrap, audit, later)
    wait_done(broker.bootstrap, audit, tag, procs)
    return findings(db), stop(procs, logs)


@pytest.fixture
def postgres_store(postgres_url):
    """An empty schema of its own on the test PostgreSQL server."""
    import uuid

    from sqlalchemy.engine import make_url

    schema = f"k_{uuid.uuid4().hex[:12]}"
    engine = create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield make_url(postgres_url).update_query_dict(
        {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def test_two_processes_one_killed_equal_a_single_process(kafka_broker, fleet_lines, tmp_path,
                                                         postgres_store):
    split = quiet_point(fleet_lines)
    single_audit = unique_topic("audit")
    kafka_broker.create_topic(single_audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, single_audit, fleet_lines)
    single, _ = run_once(tmp_path, kafka_broker, single_audit, unique_topic("one"))
    keys = [f[:2] for f in single if isinstance(f[1], int) and len(f) == 3]
    assert len({k[0] for k in keys}) >= 5 and len(keys) == len(set(keys))
    assert any(version > 1 for _, version in keys), "no finding has a later version"
    # two processes share a PostgreSQL store, as a deployment would; the stream arrives in two
    # parts and one process is killed between them, holding state and partitions of both stages
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, audit, fleet_lines[:split])
    pair, summaries = run_once(tmp_path, kafka_broker, audit, unique_topic("two"), processes=2,
                               kill=True, store=postgres_store, later=fleet_lines[split:])
    assert pair == single
    # the survivor took over the killed process's partitions: it parsed all of the second part
    assert summaries[0]["parse"]["records"] >= len(fleet_lines) - split
    assert summaries[0]["score"]["events"] > 0


def mutate(lines: list[bytes], n: int, seed: int = 4) -> list[bytes]:
    """``n`` malformed records of every kind a shipper or an attacker could put on the topic."""
    import random

    rng = random.Random(seed)
    kinds = [
        lambda l: l[: len(l) // 2],  # truncated
        lambda l: b"not json at all " + l[:20],
        lambda l: bytes(rng.getrandbits(8) for _ in range(64)),  # binary
        lambda l: l.replace(b'"path":"', b'"path":42,"x":"', 1),  # wrong type
        lambda l: l.replace(b'"time":"', b'"time":1700000000,"x":"', 1),
        lambda l: l.replace(b'"request":{', b'"request":"oops","x":{', 1),
        lambda l: b'{"time":"2026-03-04T10:00:00Z","type":"request","request":{"id":"x"},"d":'
                  + b"[" * 3000 + b"]" * 3000 + b"}",  # nested deeper than the decoder allows
        lambda l: l[:-2] + b',"pad":"' + b"x" * 100_000 + b'"}',  # oversize
        lambda l: b'{"hello":"world"}',  # JSON, not an audit entry
        lambda l: b"",  # empty record
    ]
    return [kinds[i % len(kinds)](rng.choice(lines)) for i in range(n)]


def consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 60) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    records, deadline = [], time.time() + timeout
    while len(records) < expect and time.time() < deadline:
        records += list(consumer)
    consumer.close()
    return records


def test_malformed_records_are_dead_lettered_and_the_rest_processed(kafka_broker, fleet_lines,
                                                                    tmp_path):
    import random

    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    good = fleet_lines[:4000]
    calls = {orjson.loads(l)["request"]["id"] for l in good}
    bad = mutate(good, 1200)
    mixed = good + bad
    random.Random(9).shuffle(bad)
    # interleave: the bad records land between good ones, in every partition
    mixed = [x for pair in zip(good[:1200], bad) for x in pair] + good[1200:]
    produce(kafka_broker.bootstrap, audit, mixed)
    tag = unique_topic("dlq")
    found, (summary,) = run_once(tmp_path, kafka_broker, audit, tag)
    parse = summary["parse"]
    assert parse["records"] == len(mixed)
    assert parse["dead_letters"] == len(bad)
    assert parse["events"] == len(calls)  # every good call, once
    assert parse["records"] == 2 * parse["events"] + parse["dead_letters"]  # nothing lost
    assert summary["score"]["events"] == parse["events"]
    assert {"not_json", "wrong_type", "too_deep", "oversize", "missing_field"} <= \
        set(parse["dead_letter_reasons"])
    letters = consume_all(kafka_broker.bootstrap, f"dlq-{tag}", len(bad))
    assert len(letters) == len(bad)
    for record in letters:
        headers = dict(record.headers)
        origin = headers["secretscope-origin"].decode()
        assert origin.startswith(f"{audit}/") and origin.rsplit("/", 1)[1].isdigit()
        assert headers["secretscope-reason"] and record.value is None
        assert len(headers["secretscope-sha256"]) == 64


def test_broker_restart_mid_stream(kafka_broker, fleet_lines, tmp_path):
    if not kafka_broker.managed:
        pytest.skip("an external broker cannot be restarted by the tests")
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    lines = fleet_lines
    half = len(lines) // 2
    produce(kafka_broker.bootstrap, audit, lines[:half])
    tag = unique_topic("restart")
    db = tmp_path / f"{tag}.db"
    cfg = config(tmp_path, kafka_broker.bootstrap, audit, tag, f"sqlite:///{db}")
    log = tmp_path / f"{tag}.log"
    proc = start(cfg, log)
    deadline = time.time() + 120
    while snapshots_written(db) == 0 and time.time() < deadline:
        time.sleep(0.2)
    kafka_broker.restart()  # the service keeps running across the outage
    produce(kafka_broker.bootstrap, audit, lines[half:])
    wait_done(kafka_broker.bootstrap, audit, tag, [proc], timeout=300)
    (summary,) = stop([proc], [log])
    calls = {orjson.loads(l)["request"]["id"] for l in lines}
    parse = summary["parse"]
    assert parse["dead_letters"] == 0 and parse["events"] >= len(calls)
    assert summary["score"]["events"] == len(calls)  # every call scored once; copies dropped
    keys = [f[:2] for f in findings(db) if len(f) == 3]  # (finding id, version)
    assert keys and len(keys) == len(set(keys))
