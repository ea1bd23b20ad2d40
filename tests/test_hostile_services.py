"""``secretscope run`` survives hostile input through the socket source and Kafka, and large
records cost bounded memory in replay, stdin, the socket source and Kafka.

Memory is the peak RSS of the CLI process (``os.wait4``), compared with a clean run of the same
good lines; the large inputs are streamed to temporary files, never built in memory here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer

from conftest import ROOT, SAMPLES
from kafka_broker import kafka_broker, unique_topic  # noqa: F401

REFERENCE = SAMPLES / "vault_audit_reference.jsonl"
GOOD_CALLS = 11
MIB = 1 << 20
MEMORY_HEADROOM = 200 * MIB
BIG_HEAD = b'{"type":"request","pad":"'  # an oversize record: this, padding, then '"}'


def root_call(time_: str, request_id: str) -> list[bytes]:
    """Request and response of a root-token read: the root-token rule fires on it."""
    auth = {"accessor": "hmac-sha256:acc-root", "display_name": "root", "policies": ["root"],
            "token_type": "service"}
    req = {"id": request_id, "operation": "read", "path": "secret/data/x",
           "mount_point": "secret/", "mount_type": "kv", "remote_address": "10.0.0.1"}
    return [orjson.dumps({"time": time_, "type": kind, "auth": auth, "request": req})
            for kind in ("request", "response")]


# What an attacker sends before the good lines: a cut-off first line, a root-token call whose
# time leaves years 1-9999 in UTC, one far ahead of the clock (it would drag a live stream's
# event time, and so its watermark, past every true line after it), JSON that is not an entry.
HOSTILE = [REFERENCE.read_bytes()[:300], *root_call("9999-12-31T23:59:59-23:59", "r-bad"),
           *root_call("9000-01-01T00:00:00Z", "r-future"), b'{"hello":"world"}']
GOOD = REFERENCE.read_bytes().splitlines() + root_call("2026-03-04T12:00:00Z", "r-good")


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
             timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the service exited ({proc.returncode}) while waiting for "
                                 f"{what}: {log.read_text()[-3000:] if log else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def query(db: Path, sql: str) -> list[tuple]:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return []


def base_config(tmp: Path, db: Path, **sections) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = f"sqlite:///{db}"
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "service.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def secretscope_exe() -> list[str]:
    exe = shutil.which("secretscope") or str(ROOT / ".venv" / "bin" / "secretscope")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "secretscope"]


def peak_rss(proc: subprocess.Popen) -> tuple[int, int]:
    """Exit status and peak resident memory (bytes) of a child, once it has ended."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024


def related_ids(db: Path) -> set[str]:
    return {e["uid"] for (ocsf,) in query(db, "select ocsf from findings")
            for e in json.loads(ocsf)["finding_info"]["related_events"]}


# --- the socket source --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SocketService:
    """``secretscope run`` with Vault's socket audit device as its source, in a subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.db = tmp / "store.db"
        cfg = base_config(tmp, self.db, run={"source": "socket"},
                          socket={"host": "127.0.0.1", "port": self.port})
        self.log = tmp / "run.log"
        self.proc = subprocess.Popen([*secretscope_exe(), "run", "--config", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))

    def connect(self) -> socket.socket:
        def attempt():
            try:
                return socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                return None
        return wait_for(attempt, "the socket listener", self.proc, self.log, timeout=60)

    def stop(self) -> tuple[int, int, dict]:
        self.proc.send_signal(signal.SIGTERM)
        code, peak = peak_rss(self.proc)
        summary = json.loads([l for l in self.log.read_text().splitlines()
                              if '"stopped"' in l][-1])
        return code, peak, summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def send_big_line(client: socket.socket, size: int) -> None:
    """A line of ``size`` bytes, sent in pieces (never held whole)."""
    client.sendall(b'{"type":"request","request":{},"pad":"')
    piece = b"x" * MIB
    left = size - 40
    while left > 0:
        client.sendall(piece[:min(left, MIB)])
        left -= MIB
    client.sendall(b'"}\n')


def socket_run(tmp: Path, big_line: int = 0) -> tuple[int, dict, SocketService]:
    service = SocketService(tmp)
    try:
        client = service.connect()
        client.sendall(b"\n".join(HOSTILE) + b"\n")
        if big_line:
            send_big_line(client, big_line)
        client.sendall(b"\n".join(GOOD) + b"\n")
        client.close()
        wait_for(lambda: "r-good" in related_ids(service.db), "the good root-token finding",
                 service.proc, service.log)
        assert service.proc.poll() is None  # still running after every hostile line
        code, peak, summary = service.stop()
        assert code == 0, service.log.read_text()[-3000:]
        return peak, summary, service
    finally:
        service.kill()


def test_run_with_the_socket_source_survives_hostile_lines(tmp_path):
    _, summary, service = socket_run(tmp_path, big_line=3 * MIB)
    assert summary["events"] == GOOD_CALLS + 1
    reasons = sorted(r for (r,) in query(service.db, "select reason from dead_letters"))
    assert reasons == ["bad_time"] * 4 + ["missing_field", "not_json", "oversize"]
    assert not {"r-bad", "r-future"} & related_ids(service.db)
    assert "Traceback" not in service.log.read_text()


@pytest.mark.slow
def test_a_300_mib_line_over_the_socket_stays_within_200_mib_of_a_clean_run(tmp_path):
    (tmp_path / "clean").mkdir()
    (tmp_path / "big").mkdir()
    clean, _, _ = socket_run(tmp_path / "clean")
    big, summary, service = socket_run(tmp_path / "big", big_line=300 * MIB)
    assert summary["events"] == GOOD_CALLS + 1
    (size,) = query(service.db, "select detail from dead_letters where reason = 'oversize'")[0]
    assert size.startswith(f"{300 * MIB} bytes")
    assert big - clean < MEMORY_HEADROOM, f"peak {big / MIB:.0f} MiB vs clean {clean / MIB:.0f}"


# --- replay and stdin ---------------------------------------------------------------------------


def replay_peak(tmp: Path, *files: Path, stdin: Path | None = None) -> tuple[int, int, str]:
    db = tmp / f"store-{len(list(tmp.glob('store-*.db')))}.db"
    args = [*secretscope_exe(), "replay", *map(str, files), "--store", f"sqlite:///{db}",
            "--no-table", "-q"]
    err = tmp / "replay.err"
    with open(err, "wb") as errors, open(stdin or os.devnull, "rb") as source:
        proc = subprocess.Popen(args, stdin=source, stdout=subprocess.DEVNULL, stderr=errors)
        code, peak = peak_rss(proc)
    return code, peak, err.read_text()


def write_big_line(path: Path, size: int, compress: bool = False) -> None:
    """``size`` bytes of one line (no newline until the end), then the good lines; streamed."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31) if compress else None
    piece = b"x" * (8 * MIB)
    with open(path, "wb") as out:
        def put(data: bytes) -> None:
            out.write(packer.compress(data) if packer else data)
        put(BIG_HEAD)
        for _ in range(size // len(piece)):
            put(piece)
        put(b'"}\n' + b"\n".join(GOOD) + b"\n")
        if packer:
            out.write(packer.flush())


@pytest.fixture(scope="module")
def clean_replay_peak(tmp_path_factory) -> int:
    tmp = tmp_path_factory.mktemp("clean")
    good = tmp / "good.jsonl"
    good.write_bytes(b"\n".join(GOOD) + b"\n")
    code, peak, err = replay_peak(tmp, good)
    assert code == 0 and f"-> {GOOD_CALLS + 1} calls" in err, err
    return peak


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "stdin", "gzip bomb"])
def test_huge_line_in_replay_stays_within_200_mib_of_a_clean_run(tmp_path, clean_replay_peak,
                                                                   how):
    if how == "gzip bomb":
        path, size = tmp_path / "bomb.jsonl.gz", 1024 * MIB
        write_big_line(path, size, compress=True)
        assert path.stat().st_size < 8 * MIB  # a bomb: small on disk
    else:
        path, size = tmp_path / "big.jsonl", 300 * MIB
        write_big_line(path, size)
    if how == "stdin":
        code, peak, err = replay_peak(tmp_path, Path("-"), stdin=path)
    else:
        code, peak, err = replay_peak(tmp_path, path)
    assert code == 0, err
    assert f"-> {GOOD_CALLS + 1} calls" in err and "1 dead letters" in err, err
    assert peak - clean_replay_peak < MEMORY_HEADROOM, \
        f"peak {peak / MIB:.0f} MiB vs clean {clean_replay_peak / MIB:.0f}"


# --- Kafka --------------------------------------------------------------------------------------


def kafka_service(tmp: Path, broker, audit: str, tag: str):
    db = tmp / "store.db"
    cfg = base_config(
        tmp, db, input={"max_record_bytes": 65536},
        run={"source": "kafka"},
        kafka={"bootstrap_servers": [broker.bootstrap], "audit_topics": [audit],
               "events_topic": f"events-{tag}", "dead_letter_topic": f"dlq-{tag}",
               "parse_group": f"parse-{tag}", "score_group": f"score-{tag}",
               "events_partitions": 1, "session_timeout_ms": 6000,
               "heartbeat_interval_ms": 1000, "idle_seconds": 1.0, "snapshot_seconds": 0.5})
    log = tmp / "run.log"
    proc = subprocess.Popen([*secretscope_exe(), "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    return proc, db, log


def big_topic(broker, max_bytes: int) -> str:
    from kafka.admin import NewTopic

    name = unique_topic("audit-big")
    admin = broker.admin()
    try:
        # a batch must also fit in one log segment (the test broker's are 16 MiB)
        configs = {"max.message.bytes": str(max_bytes), "segment.bytes": str(2 * max_bytes)}
        admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs)])
    finally:
        admin.close()
    return broker.create_topic(name, exist_ok=True)  # waits for the leader


def dead_letter_headers(bootstrap: str, topic: str, expect: int) -> list[dict]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=2000)
    got: list[dict] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got += [{k: v.decode() for k, v in r.headers} for r in consumer]
    finally:
        consumer.close()
    return got


def committed(bootstrap: str, group: str, topic: str) -> int:
    from kafka import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                             enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0)) or 0
    finally:
        consumer.close()


def kafka_run(tmp: Path, broker, big_record: int) -> tuple[int, dict, list[dict], str]:
    audit = big_topic(broker, big_record + MIB)
    tag = unique_topic("hostile")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             max_request_size=big_record + MIB)
    records = list(HOSTILE)
    for value in records:
        producer.send(audit, value=value)
    if big_record:
        producer.send(audit, value=BIG_HEAD + b"x" * big_record + b'"}')
        records.append(b"big")
    producer.flush()
    proc, db, log = kafka_service(tmp, broker, audit, tag)
    try:
        # the good lines arrive once the hostile ones are through, as in a live stream: a
        # watermark they moved would now make the good lines late
        wait_for(lambda: committed(broker.bootstrap, f"parse-{tag}", audit) == len(records),
                 "the parse stage to commit the hostile records", proc, log)
        for value in GOOD:
            producer.send(audit, value=value)
        producer.flush()
        producer.close()
        wait_for(lambda: "r-good" in related_ids(db), "the good root-token finding", proc, log,
                 timeout=180)
        assert proc.poll() is None  # still running after every hostile record
        proc.send_signal(signal.SIGTERM)
        code, peak = peak_rss(proc)
        assert code == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    summary = json.loads([l for l in log.read_text().splitlines() if '"stopped"' in l][-1])
    letters = dead_letter_headers(broker.bootstrap, f"dlq-{tag}", len(records))
    assert not {"r-bad", "r-future"} & related_ids(db)
    return peak, summary, letters, audit


@pytest.mark.kafka
def test_run_with_kafka_survives_hostile_records_and_dead_letters_an_oversize_one(
        tmp_path, kafka_broker):  # noqa: F811
    _, summary, letters, audit = kafka_run(tmp_path, kafka_broker, big_record=3 * MIB)
    parse = summary["parse"]
    assert parse["events"] == GOOD_CALLS + 1 and parse["records"] == len(HOSTILE) + 1 + len(GOOD)
    by_offset = {int(h["secretscope-origin"].rsplit("/", 1)[1]): h for h in letters}
    assert sorted(by_offset) == list(range(len(HOSTILE) + 1))
    oversize = by_offset[len(HOSTILE)]
    assert oversize["secretscope-origin"] == f"{audit}/0/{len(HOSTILE)}"
    assert oversize["secretscope-reason"] == "oversize"
    assert oversize["secretscope-detail"].startswith(
        f"{len(BIG_HEAD) + 3 * MIB + 2} bytes > 65536")
    assert [by_offset[i]["secretscope-reason"] for i in range(5)] == [
        "not_json", "bad_time", "bad_time", "bad_time", "bad_time"]
    assert [by_offset[i]["secretscope-field"] for i in (1, 2, 3, 4)] == ["time"] * 4
    assert "ahead of this host's clock" in by_offset[3]["secretscope-detail"]


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_memory_for_an_oversize_record_grows_with_the_record_not_beyond(
        tmp_path, kafka_broker):  # noqa: F811
    """kafka-python fetches a record whole, so an oversize record costs memory in proportion to
    its size, unlike files, stdin and the socket; what is bounded is the multiple."""
    (tmp_path / "clean").mkdir()
    (tmp_path / "big").mkdir()
    record = 50 * MIB
    clean, *_ = kafka_run(tmp_path / "clean", kafka_broker, big_record=0)
    big, summary, letters, _ = kafka_run(tmp_path / "big", kafka_broker, big_record=record)
    assert summary["parse"]["dead_letter_reasons"]["oversize"] == 1
    assert summary["parse"]["events"] == GOOD_CALLS + 1
    # measured 2.3 to 3.8 times the record (fetch buffers, record value): a multiple, not more
    assert big - clean < 5 * record, f"peak {big / MIB:.0f} MiB vs clean {clean / MIB:.0f}"
    print(f"Kafka peak RSS: clean {clean / MIB:.0f} MiB, one {record // MIB} MiB record "
          f"{big / MIB:.0f} MiB")
