"""Operating `secretscope run` and `deliver`: Prometheus metrics, /livez and /readyz on one
port, JSON logs, and the Grafana dashboard shipped over those metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import CANARY, ROOT, SAMPLES
from fake_siems import WebhookServer
from helpers import wait_for
from kafka_broker import kafka_broker  # noqa: F401
from secretscope.config import load_settings
from secretscope.delivery.worker import OUTCOMES
from secretscope.metrics import LATENCY_BUCKETS
from secretscope.models.rules import load_rules
from secretscope.parsers.limits import InputLimits
from secretscope.sources.files import replay

SAMPLE = SAMPLES / "vault_audit_reference.jsonl"
EXE = [sys.executable, "-m", "secretscope"]
SEVERITIES = {"informational", "low", "medium", "high", "critical"}
ACTIVITIES = {"create", "update", "close"}
# the reason codes parsers and sources give dead letters (secretscope.errors.ParseError)
REASONS = {"oversize", "not_json", "too_deep", "not_vault", "missing_field", "wrong_type",
           "not_object", "bad_time", "unsupported_format", "unknown_format", "truncated",
           "other"}
CUT_LINE = b'{"time":"2026-03-04T11:06:00Z","type":"request","request":{"id":"cut'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_doc(store: str) -> dict:
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = store
    return doc


def socket_run_doc(store: str, metrics_port: int) -> dict:
    """A `run` config: Vault's socket device on a free port, the ops server on ``metrics_port``."""
    doc = default_doc(store)
    doc["run"] = {"source": "socket"}
    doc["socket"] = {"host": "127.0.0.1", "port": free_port()}
    doc["metrics"] = {"host": "127.0.0.1", "port": metrics_port}
    return doc


def get(url: str) -> requests.Response | None:
    try:
        return requests.get(url, timeout=5)
    except requests.ConnectionError:
        return None


def status(url: str) -> int | None:
    r = get(url)
    return r.status_code if r is not None else None


def scrape(base: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from a /metrics page."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(requests.get(base + "/metrics", timeout=5).text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for k, v in samples.get(name, {}).items()
               if all((key, value) in k for key, value in labels.items()))


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page defines, labelled families without samples included
    (a counter ``x`` is queried as ``x_total``, a histogram through its parts)."""
    names = set()
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                                 "_created"),
                "summary": ("_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",)}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def sensitive_strings() -> set[str]:
    """Identities, display names, paths, addresses and request ids of the sample lines: none
    may appear in a label (or anywhere on /metrics)."""
    found = {CANARY}
    for event in replay([SAMPLE], InputLimits()):
        if hasattr(event, "identity"):
            found |= {event.identity, event.display_name, event.path, event.secret,
                      event.remote_address, event.event_id}
    return {s for s in found if s}


def sample_events() -> int:
    return sum(1 for item in replay([SAMPLE], InputLimits()) if hasattr(item, "identity"))


def leaks(text: str, samples: dict) -> list[str]:
    """Sensitive strings on a /metrics page: anywhere for the long ones, as a whole label
    value for all (short ones such as "root" are also parts of rule ids)."""
    values = {v for series in samples.values() for labels in series for _, v in labels}
    return sorted(x for x in sensitive_strings()
                  if x in values or (len(x) >= 8 and x in text))


def bounded_label_problems(samples: dict, allowed: dict[str, set[str]]) -> list[str]:
    """Labels of secretscope_* series whose name or value is outside ``allowed``."""
    problems = []
    for name, series in samples.items():
        if not name.startswith("secretscope_"):
            continue
        for labels in series:
            for key, value in labels:
                if key not in allowed:
                    problems.append(f"{name}: label {key} is not one the process may use")
                elif value not in allowed[key]:
                    problems.append(f"{name}: {key}={value!r} is not in its bounded set")
    return problems


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


@dataclass
class SocketRun:
    base: str
    samples: dict
    text: str
    log: str
    returncode: int
    db: Path
    livez_at_start: int
    readyz_at_start: int


def stored(db: Path, query: str) -> list[tuple]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(query).fetchall()
    except sqlite3.Error:
        return []


@pytest.fixture(scope="module")
def socket_run(tmp_path_factory) -> SocketRun:
    """`secretscope run` on Vault's socket audit device with JSON logs and a metrics port, fed
    the reference sample lines, a line cut by a dropped connection and a line that is not JSON;
    scraped once everything is stored, then stopped."""
    tmp = tmp_path_factory.mktemp("socket-run")
    db = tmp / "store.db"
    metrics_port = free_port()
    doc = socket_run_doc(f"sqlite:///{db}", metrics_port)
    port = doc["socket"]["port"]
    cfg = tmp / "socket.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = tmp / "run.log"
    base = f"http://127.0.0.1:{metrics_port}"
    proc = subprocess.Popen([*EXE, "run", "--config", str(cfg), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        livez = wait_for(lambda: proc.poll() is None and status(base + "/livez"), 30,
                         lambda: f"/livez to answer; log: {log.read_text()[-2000:]}")
        wait_for(lambda: status(base + "/readyz") == 200, 30,
                 lambda: f"/readyz to say ready; log: {log.read_text()[-2000:]}")
        client = wait_for(lambda: _connect(port), 30, "the socket source to listen")
        client.sendall(SAMPLE.read_bytes() + b"this line is not JSON\n")
        client.close()
        broken = socket.create_connection(("127.0.0.1", port))
        broken.sendall(CUT_LINE)
        broken.close()
        expected = len(stored_lines()) + 2

        def all_counted() -> dict | None:
            samples = scrape(base)
            done = (total(samples, "secretscope_records_received_total") == expected
                    and total(samples, "secretscope_dead_letters_total") == 2
                    and total(samples, "secretscope_finding_versions_total")
                    == len(stored(db, "select 1 from finding_versions")) > 0)
            return samples if done else None

        samples = wait_for(all_counted, 60, lambda: f"every line counted and every stored "
                                                    f"version counted; {scrape(base)}")
        text = requests.get(base + "/metrics", timeout=5).text
        returncode = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    return SocketRun(base, samples, text, log.read_text(), returncode, db, livez, 200)


def stored_lines() -> list[bytes]:
    return [line for line in SAMPLE.read_bytes().splitlines() if line.strip()]


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        return None


def test_run_counts_input_dead_letters_findings_versions_and_latency(socket_run):
    s = socket_run.samples
    assert socket_run.returncode == 0, socket_run.log
    assert socket_run.livez_at_start == 200
    lines = stored_lines()
    assert total(s, "secretscope_records_received_total") == len(lines) + 2
    assert total(s, "secretscope_events_parsed_total") == sample_events() == 11
    assert total(s, "secretscope_events_scored_total") == 11
    assert total(s, "secretscope_dead_letters_total", reason="truncated") == 1
    assert total(s, "secretscope_dead_letters_total", reason="not_json") == 1
    # findings by severity and detector match what the store holds
    rows = stored(socket_run.db, "select severity_id, count(*) from findings group by 1")
    names = {1: "informational", 2: "low", 3: "medium", 4: "high", 5: "critical"}
    by_severity = {names[sev]: n for sev, n in rows}
    assert by_severity and sum(by_severity.values()) >= 2
    for severity, n in by_severity.items():
        assert total(s, "secretscope_findings_total", severity=severity) == n, severity
    detectors = {dict(k)["detector"] for k in s["secretscope_findings_total"]}
    assert "vault-audit-device-change" in detectors
    versions = dict(stored(socket_run.db, "select activity_id, count(*) from finding_versions "
                                          "group by 1"))
    assert total(s, "secretscope_finding_versions_total", activity="create") == versions[1]
    assert total(s, "secretscope_finding_versions_total") == sum(versions.values())
    # every Create was timed from its trigger's arrival to the store, within the run
    count = total(s, "secretscope_processing_latency_seconds_count")
    assert count >= versions[1]
    assert 0 < total(s, "secretscope_processing_latency_seconds_sum") < 60 * count
    assert total(s, "secretscope_processing_latency_seconds_bucket", le="+Inf") == count


def test_run_metrics_carry_no_identity_secret_or_path_and_bounded_labels(socket_run):
    assert not leaks(socket_run.text, socket_run.samples)
    assert leaks("", {"x": {(("sink", "root"),): 1.0}}) == ["root"]  # the check can fail
    settings = load_settings(ROOT / "config" / "default.yaml")
    detectors = {d.name for d in settings.detectors}
    detectors |= {r.id for r in load_rules(ROOT / "config" / "rules")}
    allowed = {"severity": SEVERITIES, "detector": detectors, "activity": ACTIVITIES,
               "reason": REASONS, "le": {_le(b) for b in LATENCY_BUCKETS} | {"+Inf"}}
    assert not bounded_label_problems(socket_run.samples, allowed)
    # the check can fail: an identity as a label value is reported
    planted = {"secretscope_findings_total": {(("detector", "entity:7d2e"),
                                                ("severity", "high")): 1.0}}
    assert bounded_label_problems(planted, allowed)


def _le(bound: float) -> str:
    return str(float(bound))


def test_run_logs_one_json_object_per_line(socket_run):
    lines = [line for line in socket_run.log.splitlines() if line.strip()]
    docs = [json.loads(line) for line in lines]  # each line is one JSON object
    logs = [d for d in docs if "secretscope" not in d]  # the exit summary is JSON too
    assert logs, socket_run.log
    for d in logs:
        assert {"time", "level", "logger", "message"} <= set(d), d
        assert d["time"].endswith("Z")
    messages = " ".join(d["message"] for d in logs)
    assert "metrics and health on http://127.0.0.1:" in messages
    assert "listening for Vault's socket audit device" in messages
    assert "dead letter:" in messages  # the pipeline's own warnings go through it too
    assert CANARY not in socket_run.log


def test_json_log_lines_carry_exceptions_and_mask_url_passwords(capsys):
    from secretscope.logs import configure

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure("json")
        log = logging.getLogger("secretscope.test")
        try:
            raise ConnectionError("postgresql://scope:hunter2-PASSWORD@db:5432/x refused")
        except ConnectionError:
            log.exception("store postgresql://scope:hunter2-PASSWORD@db:5432/x down")
        log.info("below the level: not written")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["level"] == "ERROR" and doc["logger"] == "secretscope.test"
    assert doc["message"] == "store postgresql://scope:***@db:5432/x down"
    assert "Traceback" in doc["exception"] and "ConnectionError" in doc["exception"]
    assert "hunter2" not in lines[0]


def test_readyz_is_503_while_the_store_does_not_answer(tmp_path):
    closed = free_port()  # nothing listens here
    metrics_port = free_port()
    doc = socket_run_doc(f"postgresql+psycopg://scope:hunter2-PASSWORD@127.0.0.1:{closed}/x",
                         metrics_port)
    cfg = tmp_path / "down.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = tmp_path / "run.log"
    base = f"http://127.0.0.1:{metrics_port}"
    proc = subprocess.Popen([*EXE, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"))
    try:
        wait_for(lambda: proc.poll() is None and status(base + "/livez") == 200, 30,
                 lambda: f"/livez while the store is down; log: {log.read_text()[-2000:]}")
        ready = get(base + "/readyz")
        assert ready.status_code == 503
        assert "store" in ready.text and "hunter2" not in ready.text
        assert status(base + "/metrics") == 200  # scrapable while it waits
        stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "hunter2" not in log.read_text()


def test_a_metrics_port_in_use_is_a_config_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        doc = socket_run_doc(f"sqlite:///{tmp_path / 'store.db'}", port)
        cfg = tmp_path / "taken.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        done = subprocess.run([*EXE, "run", "--config", str(cfg)], capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: metrics: cannot listen on 127.0.0.1:{port}: "
                      f"Address already in use"], done.stderr
    assert "Traceback" not in done.stderr


@dataclass
class DeliverRun:
    samples: dict
    text: str
    readyz: int
    returncode: int
    log: str
    versions: int


@pytest.fixture(scope="module")
def deliver_run(tmp_path_factory) -> DeliverRun:
    """`secretscope deliver` to a Standard Webhooks receiver that refuses its first request."""
    tmp = tmp_path_factory.mktemp("deliver-run")
    receiver = WebhookServer()
    db = tmp / "store.db"
    doc = default_doc(f"sqlite:///{db}")
    metrics_port = free_port()
    doc["sinks"] = [{"type": "webhook", "name": "hook", "url": f"{receiver.url}/hook",
                     "secret": {"env": "HOOK_SECRET"}, "min_severity": "informational"}]
    doc["delivery"] = {"retry_base_seconds": 0.01, "poll_seconds": 0.05}
    doc["metrics"] = {"port": metrics_port}
    cfg = tmp / "deliver.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "HOOK_SECRET": receiver.secret}
    replayed = subprocess.run([*EXE, "replay", str(SAMPLE), "--config", str(cfg), "--quiet",
                               "--no-table"], env=env, capture_output=True, text=True,
                              timeout=300)
    assert replayed.returncode == 0, replayed.stderr
    versions = len(stored(db, "select 1 from finding_versions"))
    receiver.script.fail(1, 503)
    base = f"http://127.0.0.1:{metrics_port}"
    log = tmp / "deliver.log"
    proc = subprocess.Popen([*EXE, "deliver", "--config", str(cfg), "--log-format", "json"],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        def delivered() -> dict | None:
            if proc.poll() is not None or status(base + "/livez") != 200:
                return None
            samples = scrape(base)
            done = total(samples, "secretscope_deliveries_total", outcome="delivered")
            return samples if done == versions else None

        samples = wait_for(delivered, 120, lambda: f"every version delivered; log: "
                                                   f"{log.read_text()[-2000:]}")
        text = requests.get(base + "/metrics", timeout=5).text
        readyz = status(base + "/readyz")
        returncode = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        receiver.close()
    return DeliverRun(samples, text, readyz, returncode, log.read_text(), versions)


def test_deliver_counts_deliveries_by_sink_and_outcome(deliver_run):
    s = deliver_run.samples
    assert deliver_run.returncode == 0, deliver_run.log
    assert deliver_run.readyz == 200
    assert deliver_run.versions > 0
    assert total(s, "secretscope_deliveries_total", sink="hook",
                 outcome="delivered") == deliver_run.versions
    assert total(s, "secretscope_deliveries_total", sink="hook", outcome="retried") == 1
    assert total(s, "secretscope_deliveries_total", outcome="dead_lettered") == 0
    assert total(s, "secretscope_delivery_pending", sink="hook") == 0
    allowed = {"sink": {"hook"}, "outcome": set(OUTCOMES)}
    assert not bounded_label_problems(s, allowed)
    assert not leaks(deliver_run.text, s)
    for line in deliver_run.log.splitlines():
        json.loads(line)


# PromQL words that are not metric names
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                 "bool", "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads: identifiers outside label matchers, grouping
    clauses, ranges and strings that are not functions or keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings ($job, legend text)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    doc = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    exprs = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(doc)
    return exprs


def test_metric_names_are_read_from_promql():
    expr = ('histogram_quantile(0.95, sum by (le) (rate(secretscope_x_bucket{job=~"$job"}'
            '[$__rate_interval]))) / on (job) group_left max(up{job="a"}) offset 5m')
    assert metric_names(expr) == {"secretscope_x_bucket", "up"}


def test_every_dashboard_query_reads_a_metric_run_or_deliver_exports(socket_run, deliver_run):
    exprs = dashboard_exprs()
    assert len(exprs) >= 10
    exported = exported_names(socket_run.text) | exported_names(deliver_run.text)
    unknown = {name: expr for expr in exprs for name in metric_names(expr)
               if name not in exported}
    assert not unknown, f"dashboard queries name metrics nothing exports: {unknown}"
    read = {name for expr in exprs for name in metric_names(expr)}
    for wanted in ("secretscope_records_received_total", "secretscope_dead_letters_total",
                   "secretscope_findings_total", "secretscope_finding_versions_total",
                   "secretscope_processing_latency_seconds_bucket",
                   "secretscope_consumer_lag", "secretscope_snapshot_age_seconds",
                   "secretscope_deliveries_total"):
        assert wanted in read, f"the dashboard shows no {wanted}"


def test_the_dashboard_ships_inside_the_package():
    from importlib.resources import files

    shipped = files("secretscope.defaults") / "grafana-dashboard.json"
    assert json.loads(shipped.read_text())["uid"] == "secretscope-ops"


# --- Kafka: consumer lag, snapshot age and readiness of the two stages ------------------------

def kafka_config(tmp: Path, bootstrap: str, audit: str, tag: str, store: str,
                 metrics_port: int | None = None) -> Path:
    doc = default_doc(store)
    doc["kafka"] = {
        "bootstrap_servers": [bootstrap], "audit_topics": [audit],
        "events_topic": f"events-{tag}", "dead_letter_topic": f"dlq-{tag}",
        "parse_group": f"parse-{tag}", "score_group": f"score-{tag}", "events_partitions": 2,
        "session_timeout_ms": 30_000, "heartbeat_interval_ms": 1_000, "max_poll_records": 50,
        "idle_seconds": 1.0, "snapshot_seconds": 0.5,
    }
    doc["run"] = {"hop": "topic"}  # the lag of both topics; in memory there is no events topic
    if metrics_port is not None:
        doc["metrics"] = {"port": metrics_port}
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def produce_sample(bootstrap: str, topic: str, copies: int) -> list[bytes]:
    """The reference calls that have a request id, ``copies`` times over (ids made unique per
    copy), keyed by request id so both halves of a call share a partition; returns the lines
    produced."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = []
    for copy in range(copies):
        for line in stored_lines():
            doc = json.loads(line)
            if not doc.get("request", {}).get("id"):
                continue
            doc["request"]["id"] = f"{doc['request']['id']}-{copy}"
            value = json.dumps(doc).encode()
            producer.send(topic, key=doc["request"]["id"].encode(), value=value)
            sent.append(value)
    producer.flush()
    producer.close()
    return sent


def events_in(lines: list[bytes], tmp: Path) -> int:
    """Events the file replay makes of ``lines``: what the Kafka stages must count too."""
    path = tmp / "produced.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return sum(1 for item in replay([path], InputLimits()) if hasattr(item, "identity"))


@pytest.mark.kafka
def test_parse_stage_lag_is_end_offset_minus_position_per_partition(kafka_broker, tmp_path):
    from kafka_broker import unique_topic
    from secretscope.metrics import ServiceMetrics
    from secretscope.sources.kafka import TopicPartition, ensure_topics
    from secretscope.stages import ParseCounters, ParseStage

    audit = unique_topic("audit")
    kafka_broker.create_topic(audit, partitions=3)
    records = len(produce_sample(kafka_broker.bootstrap, audit, 40))
    settings = load_settings(kafka_config(tmp_path, kafka_broker.bootstrap, audit,
                                          unique_topic("lag"), "sqlite://"))
    ensure_topics(settings.kafka, 2, 1)
    metrics, counters = ServiceMetrics(), ParseCounters()
    stage = ParseStage(settings, counters, metrics)
    tps = [TopicPartition(audit, p) for p in range(3)]

    def lag_of(tp) -> float | None:
        return metrics.registry.get_sample_value("secretscope_consumer_lag",
                                                 {"topic": tp.topic,
                                                  "partition": str(tp.partition)})

    def exact() -> None:
        stage.lag.at = float("-inf")  # report now, not at the next second
        stage.lag(stage.consumer)
        ends = stage.consumer.end_offsets(tps)
        for tp in tps:
            assert lag_of(tp) == ends[tp] - stage.consumer.position(tp), tp

    try:
        wait_for(lambda: stage.poll_once() or (len(stage.consumer.assignment()) == 3
                                               and counters.records >= 100), 60,
                 lambda: f"some records read ({counters.records})")
        assert stage.ready
        exact()
        assert 0 < sum(lag_of(tp) for tp in tps) < records
        wait_for(lambda: stage.poll_once() or counters.records == records, 120,
                 lambda: f"all {records} records read ({counters.records})")
        exact()
        assert sum(lag_of(tp) for tp in tps) == 0
    finally:
        stage.close()
    assert all(lag_of(tp) is None for tp in tps)  # a closed stage reports no partitions


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_run_serves_lag_snapshot_age_readiness_and_counts(kafka_broker, tmp_path):
    from kafka_broker import unique_topic

    audit, tag = unique_topic("audit"), unique_topic("ops")
    kafka_broker.create_topic(audit, partitions=2)
    lines = produce_sample(kafka_broker.bootstrap, audit, 20)
    records, events = len(lines), events_in(lines, tmp_path)
    metrics_port = free_port()
    db = tmp_path / "store.db"
    cfg = kafka_config(tmp_path, kafka_broker.bootstrap, audit, tag, f"sqlite:///{db}",
                       metrics_port)
    base = f"http://127.0.0.1:{metrics_port}"
    log = tmp_path / "run.log"
    proc = subprocess.Popen([*EXE, "run", "--config", str(cfg), "--log-format", "json"],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        wait_for(lambda: proc.poll() is None and status(base + "/readyz") == 200, 90,
                 lambda: f"/readyz 200; log: {log.read_text()[-2000:]}")

        def caught_up() -> dict | None:
            s = scrape(base)
            lags = s.get("secretscope_consumer_lag", {})
            topics = {dict(k)["topic"] for k in lags}
            done = (total(s, "secretscope_records_received_total") == records
                    and total(s, "secretscope_events_scored_total") == events
                    and topics == {audit, f"events-{tag}"} and sum(lags.values()) == 0
                    and total(s, "secretscope_finding_versions_total")
                    == len(stored(db, "select 1 from finding_versions")) > 0)
            return s if done else None

        s = wait_for(caught_up, 180, lambda: f"every record parsed and scored, every version "
                                             f"counted, no lag; {scrape(base)}")
        assert proc.poll() is None
        lags = s["secretscope_consumer_lag"]
        assert {tuple(sorted(dict(k))) for k in lags} == {("partition", "topic")}
        assert {(dict(k)["topic"], dict(k)["partition"]) for k in lags} == {
            (audit, "0"), (audit, "1"), (f"events-{tag}", "0"), (f"events-{tag}", "1")}
        age = total(s, "secretscope_snapshot_age_seconds")
        assert 0 <= age < 30  # snapshots every 0.5 s while there is work
        assert total(s, "secretscope_events_parsed_total") == events
        creates = len(stored(db, "select 1 from finding_versions where activity_id = 1"))
        assert total(s, "secretscope_findings_total") == creates > 0
        # timed through the events topic, the watermark wait and the snapshot
        assert total(s, "secretscope_processing_latency_seconds_count") >= creates
        assert stop(proc) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    for line in log.read_text().splitlines():
        json.loads(line)
