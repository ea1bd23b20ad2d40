"""secretscope run against a real Kafka broker: two stages, crashes, restarts, dead letters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from pathlib import Path

import msgspec
import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from conftest import CANARY, ROOT, SAMPLES
from helpers import wait_for
from kafka_broker import kafka_broker, unique_topic  # noqa: F401
from postgres_server import postgres_url  # noqa: F401
from secretscope.simulate import SimulationSpec, simulate
from secretscope.stages import EVENTS, WATERMARK, Watermark

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

AUDIT_PARTITIONS = 4
EVENTS_PARTITIONS = 4


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


def config(tmp: Path, bootstrap: str, audit: str, tag: str, store: str,
           client_id: str = "secretscope", hop: str = "topic") -> Path:
    """A service config of the test topics; ``hop``: events through the events topic (the
    topic path, as separate parse and score processes use it) or in memory."""
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    # below the broker's 1 MB message limit, so the tests can put oversize records on the topic
    doc["input"]["max_record_bytes"] = 65536
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = store
    doc["kafka"] = {
        "bootstrap_servers": [bootstrap], "audit_topics": [audit],
        "events_topic": f"events-{tag}", "dead_letter_topic": f"dlq-{tag}",
        "parse_group": f"parse-{tag}", "score_group": f"score-{tag}",
        "events_partitions": EVENTS_PARTITIONS, "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "idle_seconds": 1.5, "snapshot_seconds": 0.5, "client_id": client_id,
    }
    doc["run"] = {"hop": hop}
    path = tmp / f"{tag}-{client_id}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(cfg: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "secretscope", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    _started.append(proc)
    return proc


def lag(bootstrap: str, group: str, topic: str) -> int | None:
    # a metadata request must not create the events topic before the service does (with the
    # broker's default partition count)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False, allow_auto_create_topics=False)
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


def last_watermarks(bootstrap: str, events: str) -> dict[tuple[int, str], bool]:
    """Whether the last watermark each audit partition sent to each events partition says it is
    idle: {(events partition, "audit-topic/partition"): idle}."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             allow_auto_create_topics=False)
    try:
        parts = [TopicPartition(events, p) for p in consumer.partitions_for_topic(events) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        last: dict[tuple[int, str], bool] = {}
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for tp, records in consumer.poll(timeout_ms=1000).items():
                for r in records:
                    if ("secretscope-kind", WATERMARK) in (r.headers or ()):
                        mark = msgspec.msgpack.decode(r.value, type=Watermark)
                        last[(tp.partition, mark.source)] = mark.idle
        return last
    finally:
        consumer.close()


def finished(bootstrap: str, audit: str, tag: str) -> bool:
    """Both stages are done with everything on the audit topic: the parse stage committed it
    all and told every events partition that every audit partition is idle (so the score stage
    holds nothing back), and the score stage committed past those watermarks (its state and
    findings are saved)."""
    if lag(bootstrap, f"parse-{tag}", audit) != 0:
        return False
    marks = last_watermarks(bootstrap, f"events-{tag}")
    sources = [f"{audit}/{p}" for p in range(AUDIT_PARTITIONS)]
    if not all(marks.get((p, s)) for p in range(EVENTS_PARTITIONS) for s in sources):
        return False
    return lag(bootstrap, f"score-{tag}", f"events-{tag}") == 0


def wait_done(bootstrap: str, audit: str, tag: str, procs, timeout: float = 240) -> None:
    def done() -> bool:
        for p in procs:
            assert p.poll() is None, "a service process died"
        return finished(bootstrap, audit, tag)

    wait_for(done, timeout, lambda: (
        f"the service to finish: parse lag {lag(bootstrap, f'parse-{tag}', audit)}, score lag "
        f"{lag(bootstrap, f'score-{tag}', f'events-{tag}')}"), interval=0.5)


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


def quiet_point(lines: list[bytes], after: float = 0.5) -> int:
    """An index from ``after`` of the way (the middle) where no call is open (its request read,
    its response not)."""
    open_calls: set[str] = set()
    for i, line in enumerate(lines):
        entry = orjson.loads(line)
        rid = entry["request"].get("id")
        if entry["type"] == "request":
            open_calls.add(rid)
        else:
            open_calls.discard(rid)
        if i >= int(len(lines) * after) and not open_calls:
            return i + 1
    return len(lines)


def run_once(tmp, broker, audit, tag, processes=1, kill=False, store=None, later=()):
    """Run the service until everything is scored. With ``kill``, SIGKILL the first process
    once scoring has saved state, then produce ``later`` (the rest of the stream) for the
    survivor."""
    db = store or tmp / f"{tag}.db"
    clients = [f"secretscope-{i}" for i in range(processes)]
    logs = [tmp / f"{tag}-{i}.log" for i in range(processes)]
    procs = [start(config(tmp, broker.bootstrap, audit, tag, _url(db), client), log)
             for client, log in zip(clients, logs)]
    if kill:
        wait_for(lambda: snapshots_written(db) > 0, 120, f"a first state snapshot in {db}")
        # the process killed holds partitions of both stages, so the others must take them over
        groups = (f"parse-{tag}", f"score-{tag}")
        wait_for(lambda: all(owned(broker, group, clients[0]) for group in groups), 60,
                 lambda: f"{clients[0]} to own partitions of both stages: "
                         f"{[owned(broker, group, clients[0]) for group in groups]}")
        assert procs[0].poll() is None, logs[0].read_text()[-3000:]
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        procs, logs = procs[1:], logs[1:]
    if later:
        produce(broker.bootstrap, audit, later)
    wait_done(broker.bootstrap, audit, tag, procs)
    return findings(db), stop(procs, logs)


def owned(broker, group: str, client_id: str) -> list[int]:
    """Partitions the consumer ``client_id`` is assigned in ``group`` (a stable group only)."""
    admin = broker.admin()
    try:
        described = admin.describe_groups([group])[group]
    except KafkaError:  # the group's coordinator is still being elected
        return []
    finally:
        admin.close()
    if described["group_state"] != "Stable":
        return []
    return [p for m in described["members"] if m["client_id"] == client_id
            for a in m["member_assignment"]["assigned_partitions"] for p in a["partitions"]]


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


@pytest.mark.postgres
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
    assert pair == single, (f"only with the kill: {sorted(f[:2] for f in set(pair) - set(single))}; "
                            f"only in one process: {sorted(f[:2] for f in set(single) - set(pair))}")
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
    wait_for(lambda: snapshots_written(db) > 0, 120, f"a first state snapshot in {db}")
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


def with_canary(lines: list[bytes]) -> list[bytes]:
    """The lines as a Vault with ``log_raw`` on writes them: plaintext secret values in every
    response's data and in the body of every write."""
    out = []
    for line in lines:
        entry = orjson.loads(line)
        if entry["type"] == "response":
            response = entry.setdefault("response", {})
            response["data"] = {**(response.get("data") or {}), "password": CANARY}
        elif entry["request"].get("operation") in ("create", "update"):
            entry["request"]["data"] = {"value": CANARY}
        out.append(orjson.dumps(entry))
    return out


def every_record(bootstrap: str, topic: str) -> list:
    """Every record on ``topic`` now, from the beginning of each partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             allow_auto_create_topics=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records = []
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for batch in consumer.poll(timeout_ms=1000).values():
                records += batch
        return records
    finally:
        consumer.close()


def record_bytes(record) -> bytes:
    headers = b"".join(k.encode() + (v or b"") for k, v in record.headers or ())
    return (record.key or b"") + (record.value or b"") + headers


def test_no_secret_value_in_kafka_topics_or_snapshots(kafka_broker, fleet_lines, tmp_path):
    secret = CANARY.encode()
    # the fleet's first day, then the reference calls (two days later; their findings are
    # certain, and Vault itself wrote the canary into one of them)
    reference = (SAMPLES / "vault_audit_reference.jsonl").read_bytes().splitlines()
    good = with_canary(fleet_lines[:8000]) + reference
    # malformed records that still carry the canary: cut after it, and the wrong type
    carrier = next(line for line in good if secret in line)
    bad = [carrier[: carrier.index(secret) + len(secret)],
           carrier.replace(b'"request":{', b'"request":"oops","x":{', 1)]
    assert all(secret in b for b in bad)
    lines = good[:4000] + bad + good[4000:]
    assert sum(secret in line for line in lines) >= 4000  # the canary is in the input
    assert any(secret in line for line in reference)
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, audit, lines)
    tag = unique_topic("canary")
    found, (summary,) = run_once(tmp_path, kafka_broker, audit, tag)
    assert found, summary
    assert summary["parse"]["dead_letters"] == len(bad)
    events = every_record(kafka_broker.bootstrap, f"events-{tag}")
    letters = every_record(kafka_broker.bootstrap, f"dlq-{tag}")
    assert sum(map(len, map(events_of, events))) == summary["parse"]["events"]
    assert len(letters) == len(bad)
    leaked = [f"{r.topic}/{r.partition}/{r.offset}" for r in events + letters
              if secret in record_bytes(r)]
    assert leaked == []
    db = tmp_path / f"{tag}.db"
    engine = create_engine(_url(db))
    try:
        with engine.connect() as conn:
            blobs = dict(conn.execute(text("select key, data from snapshots")).all())
    finally:
        engine.dispose()
    assert len(blobs) == EVENTS_PARTITIONS  # one snapshot each
    for key, blob in blobs.items():
        state = zlib.decompress(bytes(blob))
        assert len(state) > 1000 and secret not in state, key
    assert secret not in db.read_bytes()
    assert secret not in (tmp_path / f"{tag}-0.log").read_bytes()


def rewrite_version(db: Path, key: str, version: int) -> bytes:
    """Make the snapshot under ``key`` look written by another version (checksum kept valid,
    as that version would have written it); returns the new blob."""
    import hashlib

    engine = create_engine(_url(db))
    try:
        with engine.begin() as conn:
            blob = conn.execute(text("select data from snapshots where key = :k"),
                                {"k": key}).scalar_one()
            state = msgspec.msgpack.decode(zlib.decompress(bytes(blob)))
            state["version"] = version
            new = zlib.compress(msgspec.msgpack.encode(state), 3)
            conn.execute(text("update snapshots set data = :d, checksum = :c where key = :k"),
                         {"d": new, "c": hashlib.sha256(new).hexdigest(), "k": key})
        return new
    finally:
        engine.dispose()


def snapshot_blob(db: Path, key: str) -> bytes | None:
    engine = create_engine(_url(db))
    try:
        with engine.connect() as conn:
            blob = conn.execute(text("select data from snapshots where key = :k"),
                                {"k": key}).scalar()
        return None if blob is None else bytes(blob)
    finally:
        engine.dispose()


def test_snapshot_of_another_version_stops_the_service_until_deleted(kafka_broker, fleet_lines,
                                                                     tmp_path):
    from secretscope.snapshot import VERSION

    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    first, rest = fleet_lines[:3000], fleet_lines[3000:3000 + quiet_point(fleet_lines[3000:6000])]
    produce(kafka_broker.bootstrap, audit, first)
    tag = unique_topic("version")
    run_once(tmp_path, kafka_broker, audit, tag)
    db = tmp_path / f"{tag}.db"
    key = f"score/events-{tag}/0"
    foreign = rewrite_version(db, key, VERSION + 1)
    cfg = config(tmp_path, kafka_broker.bootstrap, audit, tag, _url(db))
    log = tmp_path / f"{tag}-refused.log"
    proc = start(cfg, log)
    assert proc.wait(timeout=120) == 2, log.read_text()[-3000:]
    error = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert error == [f"error: snapshot {key}: snapshot version {VERSION + 1} is not {VERSION}: "
                     "it was written by another secretscope version. Run that version, or "
                     "delete the snapshot row; the score stage then starts from its group's "
                     "committed offset with empty baselines"]
    assert snapshot_blob(db, key) == foreign  # refused, not overwritten
    # the remedy the message names: without the row, that partition starts afresh
    engine = create_engine(_url(db))
    with engine.begin() as conn:
        conn.execute(text("delete from snapshots where key = :k"), {"k": key})
    engine.dispose()
    produce(kafka_broker.bootstrap, audit, rest)
    log = tmp_path / f"{tag}-afresh.log"
    proc = start(cfg, log)
    wait_done(kafka_broker.bootstrap, audit, tag, [proc])
    (summary,) = stop([proc], [log])
    assert summary["score"]["events"] > 0
    restored = snapshot_blob(db, key)
    assert restored is not None and restored != foreign


def call(template: list[bytes], request_id: str, second: int) -> list[bytes]:
    """The request and response lines of ``template`` as another call at 10:00:SS."""
    out = []
    for line in template:
        entry = orjson.loads(line)
        entry["request"]["id"] = request_id
        entry["time"] = f"2026-03-02T10:00:{second:02d}.000000Z"
        out.append(orjson.dumps(entry))
    return out


def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False, allow_auto_create_topics=False)
    try:
        return consumer.committed(tp)
    finally:
        consumer.close()


def held_call_stage(broker, fleet_lines, tmp_path, held_id: str, whole: int, name: str,
                    join_wait: float | None = None, response_last: bool = False,
                    max_poll_records: int = 2000):
    """A one-partition audit topic holding a request whose response is not there yet (offset
    0), then ``whole`` complete calls within the join timeout (then the response, with
    ``response_last``); and a parse stage on it, driven poll by poll, waiting ``join_wait``
    (kafka.join_wait_seconds) for a response. Returns (topic, tag, the held response's line,
    the stage)."""
    from secretscope.config import load_settings
    from secretscope.sources.kafka import ensure_topics
    from secretscope.stages import ParseStage

    first = orjson.loads(fleet_lines[0])["request"]["id"]
    template = [l for l in fleet_lines[:200] if orjson.loads(l)["request"]["id"] == first]
    assert [orjson.loads(l)["type"] for l in template] == ["request", "response"]
    held_request, held_response = call(template, held_id, 0)
    audit = unique_topic("audit")
    broker.create_topic(audit, partitions=1)
    produce(broker.bootstrap, audit, [held_request] + [
        l for i in range(1, whole + 1) for l in call(template, f"{held_id}-{i}", i)]
        + ([held_response] if response_last else []))
    tag = unique_topic(name)
    cfg = config(tmp_path, broker.bootstrap, audit, tag, "sqlite://")
    doc = yaml.safe_load(cfg.read_text())
    doc["kafka"]["idle_seconds"] = 3600  # a quiet partition must not release the request
    # a member driven poll by poll by the test must not be evicted from the group meanwhile
    doc["kafka"]["session_timeout_ms"] = 30_000
    doc["kafka"]["heartbeat_interval_ms"] = 1_000
    doc["kafka"]["join_wait_seconds"] = join_wait
    doc["kafka"]["max_poll_records"] = max_poll_records
    cfg.write_text(yaml.safe_dump(doc))
    settings = load_settings(cfg)
    ensure_topics(settings.kafka, 1, 1)
    return audit, tag, held_response, ParseStage(settings)


def test_parse_stage_never_commits_past_a_request_waiting_for_its_response(
        kafka_broker, fleet_lines, tmp_path):
    """A restart must read the waiting request again, or its call would lose its request half.
    The stage is driven poll by poll here, so each commit is known to have happened."""
    audit, tag, held_response, stage = held_call_stage(kafka_broker, fleet_lines, tmp_path,
                                                       "held-0", 10, "commit")
    tp = TopicPartition(audit, 0)
    try:
        wait_for(lambda: stage.poll_once() or stage.counters.records >= 21, 60,
                 lambda: f"the 21 records to be read ({stage.counters.records} so far)")
        stage.poll_once()  # nothing new: flushes and commits
        assert committed_offset(kafka_broker.bootstrap, f"parse-{tag}", tp) == 0
        produce(kafka_broker.bootstrap, audit, [held_response])
        wait_for(lambda: stage.poll_once() or
                 committed_offset(kafka_broker.bootstrap, f"parse-{tag}", tp) == 22, 60,
                 "a commit past the held call once its response arrived")
    finally:
        stage.close()
    held = [e for e in parsed_events(kafka_broker.bootstrap, f"events-{tag}")
            if e.event_id == "held-0"]
    assert [e.phases for e in held] == ["request+response"]


def test_a_lost_response_is_given_up_on_after_the_join_wait(kafka_broker, fleet_lines, tmp_path):
    """On a partition read to its end, a request whose response is not on the topic goes on
    alone ``kafka.join_wait_seconds`` (wall time) after it was read, and the calls behind it
    with it, instead of waiting for event time to pass ``input.join_timeout_seconds`` (here
    the 10 calls behind it are all within that, and the partition is never quiet long enough
    to be flushed as idle). A response read later is a counted duplicate, not a second event."""
    audit, tag, held_response, stage = held_call_stage(
        kafka_broker, fleet_lines, tmp_path, "held-1", 10, "wait", join_wait=0.5)
    tp = TopicPartition(audit, 0)
    try:
        wait_for(lambda: stage.poll_once() or stage.counters.records >= 21, 60,
                 lambda: f"the 21 records to be read ({stage.counters.records} so far)")
        decoder = stage.decoders[tp]
        read_at = decoder.waiting_since()
        assert decoder.oldest_pending().origin == f"{audit}/0/0"
        wait_for(lambda: stage.poll_once() or decoder.oldest_pending() is None, 10,
                 "the held request to be released")
        waited = time.monotonic() - read_at
        assert 0.5 <= waited < 1.5, waited
        assert stage.counters.events == 11
        # the watermark no longer stops at the held request: the score stage can go on
        latest = decoder.latest_ts
        assert stage._watermark(tp).ts == latest - stage.k.allowed_lateness_seconds
        produce(kafka_broker.bootstrap, audit, [held_response])
        wait_for(lambda: stage.poll_once() or stage.counters.records == 22, 60,
                 "the late response to be read")
        assert decoder.duplicates == 1 and stage.counters.events == 11
    finally:
        stage.close()
    events = parsed_events(kafka_broker.bootstrap, f"events-{tag}")
    assert [(e.event_id, e.phases) for e in events] == [("held-1", "request")] + [
        (f"held-1-{i}", "request+response") for i in range(1, 11)]


def test_a_backlog_read_slower_than_the_join_wait_never_splits_a_call(kafka_broker, fleet_lines,
                                                                      tmp_path):
    """A response 50 records behind its request, read 2 records a poll with pauses, comes long
    after the join wait; the partition is not read to its end until then, so the call waits
    and is joined."""
    audit, tag, _, stage = held_call_stage(
        kafka_broker, fleet_lines, tmp_path, "held-2", 25, "backlog", join_wait=0.05,
        response_last=True, max_poll_records=2)
    tp = TopicPartition(audit, 0)
    try:
        def read_slowly() -> bool:
            stage.poll_once()
            time.sleep(0.05)
            return stage.counters.records >= 52
        started = time.monotonic()
        wait_for(read_slowly, 60, lambda: f"the 52 records ({stage.counters.records} so far)")
        assert time.monotonic() - started > 1.0  # 20 times the join wait
        assert stage.decoders[tp].duplicates == 0
    finally:
        stage.close()
    events = parsed_events(kafka_broker.bootstrap, f"events-{tag}")
    assert ("held-2", "request+response") in [(e.event_id, e.phases) for e in events]
    assert len(events) == 26


def parsed_events(bootstrap: str, topic: str) -> list:
    """The events (not watermarks) on the events topic."""
    return [e for r in every_record(bootstrap, topic) for e in events_of(r)]


def events_of(record) -> list:
    """The events of one record of the events topic (none in a watermark)."""
    from secretscope.events import AccessEvent

    if ("secretscope-kind", EVENTS) not in (record.headers or ()):
        return []
    return msgspec.msgpack.decode(record.value, type=list[AccessEvent])


# --- both stages in one process, events handed over in memory ---------------------------------

def in_memory_snapshots(store, tag: str) -> list[dict]:
    """The ``extra`` part (watermarks, reorder buffer) of each in-process worker's snapshot."""
    engine = create_engine(_url(store))
    try:
        with engine.connect() as conn:
            blobs = conn.execute(text("select data from snapshots where key like :k"),
                                 {"k": f"inproc/parse-{tag}/%"}).scalars().all()
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()
    return [msgspec.msgpack.decode(zlib.decompress(bytes(b)))["extra"] for b in blobs]


def finished_in_memory(bootstrap: str, audit: str, tag: str, store) -> bool:
    """Everything on the audit topic is committed, and every worker's saved state has every
    audit partition idle and nothing left in its buffer: every call is scored and its findings
    stored (the offsets are committed only after that save)."""
    if lag(bootstrap, f"parse-{tag}", audit) != 0:
        return False
    saved = in_memory_snapshots(store, tag)
    sources = {f"{audit}/{p}" for p in range(AUDIT_PARTITIONS)}
    return len(saved) == EVENTS_PARTITIONS and all(
        not extra["buffer"] and set(extra["marks"]) == sources
        and all(idle for _, idle in extra["marks"].values()) for extra in saved)


def wait_done_in_memory(bootstrap: str, audit: str, tag: str, store, procs) -> None:
    def done() -> bool:
        for p in procs:
            assert p.poll() is None, "a service process died"
        return finished_in_memory(bootstrap, audit, tag, store)

    wait_for(done, 240, lambda: f"the in-memory run to finish: parse lag "
                                f"{lag(bootstrap, f'parse-{tag}', audit)}", interval=0.5)


def members(broker, group: str) -> int:
    """Members of a stable group (0 while it rebalances)."""
    admin = broker.admin()
    try:
        described = admin.describe_groups([group])[group]
    except KafkaError:
        return 0
    finally:
        admin.close()
    return len(described["members"]) if described["group_state"] == "Stable" else 0


@pytest.fixture(scope="module")
def topic_run(kafka_broker, fleet_lines, tmp_path_factory) -> list[tuple]:
    """The fleet's findings through the events topic, in one process."""
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, audit, fleet_lines)
    found, _ = run_once(tmp_path_factory.mktemp("topic"), kafka_broker, audit,
                        unique_topic("topic"))
    keys = [f[:2] for f in found if isinstance(f[1], int) and len(f) == 3]
    assert len({k[0] for k in keys}) >= 5 and any(version > 1 for _, version in keys)
    return found


def test_in_memory_hop_gives_the_findings_of_the_events_topic(kafka_broker, fleet_lines,
                                                              tmp_path, topic_run):
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, audit, fleet_lines)
    tag = unique_topic("memory")
    db = tmp_path / f"{tag}.db"
    log = tmp_path / f"{tag}.log"
    proc = start(config(tmp_path, kafka_broker.bootstrap, audit, tag, _url(db), hop="memory"),
                 log)
    wait_done_in_memory(kafka_broker.bootstrap, audit, tag, db, [proc])
    (summary,) = stop([proc], [log])
    calls = {orjson.loads(l)["request"]["id"] for l in fleet_lines}
    assert summary["parse"]["events"] == summary["score"]["events"] == len(calls)
    assert summary["score"]["dropped_copies"] == 0
    found = findings(db)
    assert found == topic_run, (
        f"only in memory: {sorted(f[:2] for f in set(found) - set(topic_run))}; "
        f"only via the topic: {sorted(f[:2] for f in set(topic_run) - set(found))}")
    # nothing went through an events topic: the process did not even create one
    admin = kafka_broker.admin()
    try:
        assert f"events-{tag}" not in admin.list_topics()
    finally:
        admin.close()


@pytest.mark.parametrize("after", ["standby takes over", "restart"])
def test_in_memory_owner_killed_mid_run_loses_and_duplicates_nothing(
        kafka_broker, fleet_lines, tmp_path, topic_run, after):
    """SIGKILL of the process that owns every audit partition, mid-run, with state saved and
    records read since; then a standby that was waiting takes over, or the process is started
    again. Either restores the saved state, reads from the committed audit offsets and drops
    what the saved state already holds: the findings are exactly those of an uninterrupted
    run, none lost, none twice."""
    split = quiet_point(fleet_lines)
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=AUDIT_PARTITIONS)
    produce(kafka_broker.bootstrap, audit, fleet_lines[:split])
    tag = unique_topic("killed")
    db = tmp_path / f"{tag}.db"
    cfgs = [config(tmp_path, kafka_broker.bootstrap, audit, tag, _url(db), f"secretscope-{i}",
                   hop="memory") for i in range(2)]
    logs = [tmp_path / f"{tag}-{i}.log" for i in range(2)]
    owner = start(cfgs[0], logs[0])
    wait_for(lambda: len(in_memory_snapshots(db, tag)) > 0, 120, "a first saved state")
    if after == "standby takes over":
        survivor = start(cfgs[1], logs[1])
        wait_for(lambda: members(kafka_broker, f"parse-{tag}") == 2, 60, "the standby to join")
    # More records just before the kill, up to the next quiet point: the owner has read some and
    # not committed them (it commits with its saved state), however fast it got through the
    # first half meanwhile.
    mid = quiet_point(fleet_lines, 0.75)
    produce(kafka_broker.bootstrap, audit, fleet_lines[split:mid])
    assert owner.poll() is None, logs[0].read_text()[-3000:]
    assert lag(kafka_broker.bootstrap, f"parse-{tag}", audit) > 0  # killed mid-run
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    if after == "restart":
        survivor = start(cfgs[1], logs[1])
    produce(kafka_broker.bootstrap, audit, fleet_lines[mid:])
    wait_done_in_memory(kafka_broker.bootstrap, audit, tag, db, [survivor])
    (summary,) = stop([survivor], [logs[1]])
    # it read again what the owner had read since its last commit
    assert summary["parse"]["records"] > len(fleet_lines) - mid
    found = findings(db)
    assert found == topic_run, (
        f"only with the kill: {sorted(f[:2] for f in set(found) - set(topic_run))}; "
        f"only without: {sorted(f[:2] for f in set(topic_run) - set(found))}")


def test_a_lost_response_does_not_hold_a_busy_partition_back(kafka_broker, tmp_path):
    """``secretscope run`` on Kafka (both stages, events in memory) with a call every 0.1 s:
    a request whose response never comes, then a root-token call. The finding is stored once
    the join wait (2 s) has passed (the allowed lateness, 1 s here, passes meanwhile), instead
    of after the event-time join timeout (30 s): the partition is never quiet long enough to be
    flushed as idle."""
    from test_live_latency import LINES, ROOT_CALL, now_entry, root_findings

    read_request, read_response = LINES[0], LINES[1]
    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=1)
    tag = unique_topic("busy")
    db = tmp_path / f"{tag}.db"
    cfg = config(tmp_path, kafka_broker.bootstrap, audit, tag, _url(db), hop="memory")
    doc = yaml.safe_load(cfg.read_text())
    doc["kafka"]["idle_seconds"] = 120  # never quiet enough: only the join wait releases
    doc["kafka"]["allowed_lateness_seconds"] = 1.0
    cfg.write_text(yaml.safe_dump(doc))
    log = tmp_path / f"{tag}.log"
    proc = start(cfg, log)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, linger_ms=0)
    busy = threading.Event()

    def steady() -> None:  # complete calls at 10 a second, with current times
        while not busy.is_set():
            rid = str(uuid.uuid4())
            for line in (read_request, read_response):
                producer.send(audit, now_entry(line, rid).rstrip(b"\n"))
            producer.flush()
            time.sleep(0.1)

    feeder = threading.Thread(target=steady, daemon=True)
    feeder.start()
    try:
        warm = str(uuid.uuid4())  # a first finding: the service is up and scoring
        producer.send(audit, now_entry(ROOT_CALL, warm).rstrip(b"\n"))
        wait_for(lambda: warm in root_findings(db), 120, "the warm-up finding", interval=0.1)
        lost, root = str(uuid.uuid4()), str(uuid.uuid4())
        producer.send(audit, now_entry(read_request, lost).rstrip(b"\n"))  # no response
        producer.send(audit, now_entry(ROOT_CALL, root).rstrip(b"\n"))
        producer.flush()
        sent = time.monotonic()
        wait_for(lambda: root in root_findings(db), 25, "the root-token finding", interval=0.05)
        delay = time.monotonic() - sent
    finally:
        busy.set()
        feeder.join(10)
        producer.close()
    stop([proc], [log])
    print(f"root-token finding stored {delay:.2f} s after sending")
    assert 2.0 <= delay <= 6.0, f"stored {delay:.2f} s after sending"
