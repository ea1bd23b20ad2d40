"""Store outages are waited out. PostgreSQL stopped for 30 s under `replay`, `run` (socket source) and `deliver`: each waits
the outage out (one log line when it starts, one when it ends), resumes, and the store ends as
it would have without the outage; `deliver` loses no claimed batch.

The module starts its own PostgreSQL server (``scripts/postgres``) so it can stop and start it
without disturbing other tests; every scenario writes to a fresh schema of it. The retry policy
itself is checked first, quickly, against real refused connections and a locked SQLite file.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
from datetime import datetime, timezone
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from conftest import ROOT
from kafka_broker import kafka_broker  # noqa: F401
from helpers import make_event, wait_for
from postgres_server import SCRIPT, START_TIMEOUT, free_port

from secretscope.features import FEATURE_NAMES
from secretscope.findings import Finding, Reason, finding_id
from secretscope.history import NAMES_HASH, HistoryRow, encode_values
from secretscope.store import Route, Store, feature_history, finding_versions, outbox
from secretscope.store_retry import StoreUnavailableError, is_transient

OUTAGE_SECONDS = 30.0
PASSWORD_IN_URL = "secretscope:secretscope@"
EXE = [sys.executable, "-m", "secretscope"]


SECRET = "s3cr3t-Pw-7d1e"


def refused_url() -> str:
    """A PostgreSQL URL nothing listens on (a real refused connection)."""
    return f"postgresql+psycopg://secretscope:{SECRET}@127.0.0.1:{free_port()}/secretscope"


def outage_lines(caplog) -> tuple[list[str], list[str]]:
    msgs = [r.getMessage() for r in caplog.records if r.name == "secretscope.store_retry"]
    return ([m for m in msgs if m.startswith("store unreachable")],
            [m for m in msgs if m.startswith("store reachable again after")])


def a_finding(event_id: str) -> Finding:
    ev = make_event(event_id=event_id, identity="entity:svc-db")
    return Finding(
        id=finding_id(("rules",), ev.identity, ev.event_id),
        time=datetime.fromtimestamp(ev.ts, timezone.utc), identity=ev.identity,
        display_name=ev.display_name, title="Unusual secret read", severity_id=3, score=0.82,
        detectors=("rules",),
        reasons=(Reason(code="new_secret", detector="rules", text="first read of this secret",
                        observed="secret/team/app", baseline="never"),),
        techniques=("T1555",), related_event_ids=(ev.event_id,), trigger=ev, segment="default")


def a_history_row(event_id: str) -> HistoryRow:
    return HistoryRow("entity:svc-db", event_id, datetime.now(timezone.utc), NAMES_HASH,
                      encode_values([0.0] * len(FEATURE_NAMES)))


def test_transient_errors_are_told_from_wrong_calls(tmp_path):
    refused = create_engine(refused_url())
    with pytest.raises(Exception) as down:
        refused.connect()
    refused.dispose()
    assert is_transient(down.value), down.value
    db = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(Exception) as wrong, db.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    db.dispose()
    assert not is_transient(wrong.value)


def test_an_outage_longer_than_the_limit_fails_with_the_password_masked(caplog):
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as failed:
        Store(refused_url(), outage_seconds=1.5)
    assert 1.0 <= time.monotonic() - started < 10
    assert "store.outage_seconds=1.5" in str(failed.value) and SECRET not in str(failed.value)
    down, up = outage_lines(caplog)
    assert len(down) == 1 and up == [], (down, up)  # one line for the outage, not per attempt
    assert "secretscope:***@127.0.0.1" in down[0]
    assert SECRET not in caplog.text


def test_a_service_waits_without_limit_until_asked_to_stop(caplog):
    """``run`` and ``deliver`` have no outage limit; a stop request (SIGTERM) ends the wait."""
    caplog.set_level(logging.WARNING)
    stop = threading.Event()
    failures: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(refused_url(), outage_seconds=None, stop=stop)
        except BaseException as exc:
            failures.append(exc)

    opener = threading.Thread(target=open_store)
    opener.start()
    wait_for(lambda: outage_lines(caplog)[0], 30, "the outage to be noticed")
    opener.join(timeout=3.0)  # past the first backoffs: no limit means it is still waiting
    assert opener.is_alive() and not failures
    stop.set()
    opener.join(timeout=30)
    assert not opener.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], StoreUnavailableError)
    assert "stopped while store" in str(failures[0]) and SECRET not in str(failures[0])


def test_a_locked_sqlite_store_is_waited_out_and_history_is_kept(tmp_path, caplog):
    """"database is locked" is an outage too: the write waits for the lock, and the feature
    history it took from the buffer is written once it gets through."""
    caplog.set_level(logging.WARNING)
    path = tmp_path / "store.db"
    store = Store(f"sqlite:///{path}?timeout=0.1", routes=[Route("hook", 1)])
    store.add_feature_history([a_history_row("ev-h1"), a_history_row("ev-h2")])
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    writer = threading.Thread(target=store.add_versions, args=([a_finding("ev-locked")],))
    writer.start()
    wait_for(lambda: outage_lines(caplog)[0], 30, "the write to find the store locked")
    assert writer.is_alive()
    locker.execute("COMMIT")
    locker.close()
    writer.join(timeout=60)
    assert not writer.is_alive()
    down, up = outage_lines(caplog)
    assert len(down) == 1 and len(up) == 1 and "database is locked" in down[0]
    assert store.count(finding_versions) == 1 and store.count(outbox) == 1
    assert store.count(feature_history) == 2
    store.close()


def test_a_commit_whose_answer_was_lost_is_retried_without_duplicates(tmp_path, caplog):
    """The connection drops after the server committed but before it said so: the retried
    transaction stores and queues nothing twice."""
    import psycopg
    from sqlalchemy.exc import OperationalError

    caplog.set_level(logging.WARNING)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", routes=[Route("hook", 1)])
    store.add_feature_history([a_history_row("ev-h3")])
    dialect = store.engine.dialect
    commit, lost = dialect.do_commit, []

    def commit_then_lose_the_answer(dbapi_conn) -> None:
        commit(dbapi_conn)
        if not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, psycopg.OperationalError(
                "server closed the connection unexpectedly"))

    dialect.do_commit = commit_then_lose_the_answer
    store.add_versions([a_finding("ev-ambiguous")])
    assert lost == [True]
    down, up = outage_lines(caplog)
    assert len(down) == 1 and len(up) == 1
    assert store.count(finding_versions) == 1 and store.count(outbox) == 1
    assert store.count(feature_history) == 1
    store.close()


# --- PostgreSQL stopped for 30 s under replay, run and deliver at once ---------------------------

class Server:
    """A PostgreSQL server of this module's own, to stop and start."""

    def __init__(self, workdir: str, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.url = ""

    def _script(self, *args: str) -> str:
        res = subprocess.run([str(SCRIPT), *args, "--dir", self.workdir], capture_output=True,
                             text=True, timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, f"scripts/postgres {args[0]}: {res.stdout}{res.stderr}"
        return res.stdout

    def start(self) -> None:
        out = self._script("start", "--port", str(self.port))
        self.url = [ln for ln in out.splitlines() if ln.startswith("url=")][-1][4:]

    def stop(self) -> None:
        self._script("stop")

    def schema(self) -> str:
        """URL of a new, empty schema."""
        name = f"o_{os.urandom(6).hex()}"
        engine = create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        engine.dispose()
        url = make_url(self.url).update_query_dict({"options": f"-csearch_path={name}"})
        return url.render_as_string(hide_password=False)


def stored(url: str) -> dict:
    """What a comparison of two stores looks at: findings and every version, with the OCSF
    documents (nothing that depends on when it was written)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = {r.id: (r.version, r.severity_id, r.status_id, orjson.loads(r.ocsf))
                     for r in conn.execute(text(
                         "SELECT id, version, severity_id, status_id, ocsf FROM findings"))}
            versions = {(r.finding_id, r.version): (r.pipeline_seq, r.activity_id, r.status_id,
                                                    r.severity_id, orjson.loads(r.ocsf))
                        for r in conn.execute(text(
                            "SELECT finding_id, version, pipeline_seq, activity_id, status_id, "
                            "severity_id, ocsf FROM finding_versions"))}
    finally:
        engine.dispose()
    return {"findings": found, "versions": versions}


def count(url: str, table: str) -> int | None:
    """Rows in ``table``, or None while the table or the server is not there."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    except Exception:
        return None
    finally:
        engine.dispose()


def check_outage_log(stderr: str) -> None:
    lines = stderr.splitlines()
    down = [ln for ln in lines if "store unreachable" in ln]
    up = [ln for ln in lines if "store reachable again after" in ln]
    assert len(down) == 1 and len(up) == 1, stderr
    assert lines.index(down[0]) < lines.index(up[0])
    assert "Traceback" not in stderr and PASSWORD_IN_URL not in stderr, stderr


class feed(threading.Thread):
    """Writes ``data`` to ``stream`` (blocking while the reader pauses); ``join`` fails if the
    writing did."""

    def __init__(self, stream, data: bytes) -> None:
        super().__init__(daemon=True)
        self.stream, self.data = stream, data
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.stream.write(self.data)
            self.stream.flush()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = 600) -> None:
        super().join(timeout)
        assert not self.is_alive(), "still writing after 600 s"
        assert self.error is None, f"writing the audit lines failed: {self.error!r}"


# Each scenario starts, shows it got going (`ready`), is given the rest of its input when the
# server is down (`resume`), and ends after the outage (`finish`); without an outage the same
# steps give the store to compare with.

class ReplayRun:
    """``secretscope replay -`` over the audit lines, the last quarter sent during the outage
    (the simulated attacks, and so the findings, start past half of the log)."""

    def __init__(self, url: str, lines: list[bytes]) -> None:
        self.url = url
        self.cut = len(lines) * 3 // 4
        self.rest = b"".join(lines[self.cut:])
        self.proc = subprocess.Popen([*EXE, "replay", "-", "--store", url, "--no-table", "-q"],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.writer = feed(self.proc.stdin, b"".join(lines[:self.cut]))

    def ready(self) -> bool:
        return (count(self.url, "finding_versions") or 0) > 0

    def resume(self) -> None:
        self.writer.join()
        self.writer = feed(self.proc.stdin, self.rest)

    def finish(self) -> dict:
        self.writer.join()
        self.proc.stdin.close()
        stderr = self.proc.stderr.read().decode()
        return {"code": self.proc.wait(timeout=600), "stderr": stderr,
                "stored": stored(self.url)}


class SocketRun:
    """``secretscope run`` with the socket source, sent the audit lines like a Vault node, the
    last quarter during the outage."""

    def __init__(self, url: str, lines: list[bytes], tmp_path: Path) -> None:
        self.url = url
        port = free_port()
        doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
        doc["rules"]["directory"] = str(ROOT / "config" / "rules")
        doc["store"]["url"] = url
        doc["run"] = {"source": "socket"}
        doc["socket"] = {"host": "127.0.0.1", "port": port}
        config = tmp_path / f"socket-{port}.yaml"
        config.write_text(yaml.safe_dump(doc))
        self.log = tmp_path / f"run-{port}.log"
        self.proc = subprocess.Popen([*EXE, "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        self.client = wait_for(lambda: self._connect(port), 60, "the socket listener")
        cut = len(lines) * 3 // 4
        self.rest = b"".join(lines[cut:])
        self.writer = feed(self.client.makefile("wb"), b"".join(lines[:cut]))

    def _connect(self, port: int) -> socket.socket | None:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return None
        client.settimeout(None)  # sending blocks for as long as the service pauses
        return client

    def ready(self) -> bool:
        return (count(self.url, "finding_versions") or 0) > 0

    def resume(self) -> None:
        self.writer.join()
        self.writer = feed(self.client.makefile("wb"), self.rest)

    def finish(self) -> dict:
        try:
            self.writer.join()
            # The service closes its side once it has read everything: every line is then in.
            self.client.shutdown(socket.SHUT_WR)
            self.client.settimeout(600)
            assert self.client.recv(1) == b""
            self.client.close()
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=600)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        log = self.log.read_text()
        summary = orjson.loads([ln for ln in log.splitlines() if '"stopped"' in ln][-1])
        return {"code": code, "stderr": log, "summary": summary, "stored": stored(self.url)}


class Receiver(ThreadingHTTPServer):
    """Takes webhook POSTs, each ``delay`` seconds long (a slow SIEM, so the outage falls in
    the middle of delivery), and records their ``webhook-id`` (``<finding id>.<version>``)
    with the time it arrived."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay = delay
        self.lock = threading.Lock()
        self.received: list[tuple[str, float]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        with self.lock:
            return [k for k, _ in self.received]

    def received_between(self, start: float, end: float) -> list[str]:
        with self.lock:
            return [k for k, at in self.received if start <= at <= end]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        srv: Receiver = self.server  # type: ignore[assignment]
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(srv.delay)
        with srv.lock:
            srv.received.append((self.headers["webhook-id"], time.monotonic()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


class DeliverRun:
    """``secretscope deliver`` (the worker) over an outbox filled by a replay, with the
    product's webhook sink posting to a slow receiver."""

    def __init__(self, url: str, lines: list[bytes], tmp_path: Path) -> None:
        self.url = url
        self.receiver = Receiver(delay=0.15)
        config = tmp_path / "deliver.yaml"
        config.write_text(f"""
sinks:
  - {{type: webhook, name: hook, url: "http://127.0.0.1:{self.receiver.server_address[1]}/h",
     secret: {{env: HOOK_SECRET}}, min_severity: informational, batch_size: 5}}
delivery: {{retry_base_seconds: 0.05, poll_seconds: 0.05}}
rules: {{directory: "{ROOT / 'config' / 'rules'}"}}
""")
        queued = subprocess.run([*EXE, "replay", "-", "--config", str(config), "--store", url,
                                 "--no-table", "-q"], input=b"".join(lines),
                                capture_output=True, timeout=600)
        assert queued.returncode == 0, queued.stderr.decode()
        engine = create_engine(url)
        with engine.connect() as conn:
            self.keys = {f"{f}.{v}" for f, v in conn.execute(text(
                "SELECT finding_id, version FROM outbox WHERE sink = 'hook'"))}
        engine.dispose()
        env = {**os.environ, "HOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(24)).decode()}
        self.proc = subprocess.Popen([*EXE, "deliver", "--config", str(config), "--store", url],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)

    def ready(self) -> bool:
        return len(self.receiver.keys()) >= 10

    def resume(self) -> None:
        pass

    def finish(self) -> dict:
        try:
            wait_for(lambda: set(self.receiver.keys()) >= self.keys, 300,
                     "every version delivered")
            wait_for(lambda: count(self.url, "outbox WHERE status = 'pending'") == 0, 60,
                     "the outbox to record every delivery")
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return {"code": code, "stderr": self.proc.stderr.read(), "queued": self.keys,
                "received": Counter(self.receiver.keys()),
                "dead": count(self.url, "delivery_dead_letters"),
                "delivered": count(self.url, "outbox WHERE status = 'delivered'")}


class KafkaRun:
    """``secretscope run`` with Kafka (both stages in one process) over an audit topic that holds
    all the lines from the start; the outage begins as its first finding is stored, so the rest
    of the topic is scored across it.

    Unlike the other runs, no lines are held back for the outage: an audit partition that sits
    quiet for ``kafka.idle_seconds`` releases the calls the score stage holds back for it, and
    calls produced after such a pause can be scored in another order than without it (see the
    Kafka service's docs). That depends on how long the topic sat quiet, not on the store."""

    def __init__(self, url: str, lines: list[bytes], tmp_path: Path, broker) -> None:
        import test_kafka_pipeline as k

        self.k, self.url, self.broker = k, url, broker
        self.audit, self.tag = k.unique_topic("audit"), k.unique_topic("outage")
        broker.create_topic(self.audit, partitions=k.AUDIT_PARTITIONS)
        k.produce(broker.bootstrap, self.audit, [ln.rstrip(b"\n") for ln in lines])
        cfg = k.config(tmp_path, broker.bootstrap, self.audit, self.tag, url)
        # Small polls, each saved: the first finding's save covers a few hundred calls, not
        # (on a fast machine) the whole topic, so the outage cuts into it. Findings do not
        # depend on either setting, and the calm run uses the same.
        doc = yaml.safe_load(cfg.read_text())
        doc["kafka"] |= {"max_poll_records": 200, "snapshot_seconds": 0}
        cfg.write_text(yaml.safe_dump(doc))
        self.log = tmp_path / f"{self.tag}.log"
        self.proc = k.start(cfg, self.log)

    def ready(self) -> bool:
        return (count(self.url, "finding_versions") or 0) > 0

    def resume(self) -> None:
        pass  # the whole topic was there from the start

    def finish(self) -> dict:
        try:
            self.k.wait_done(self.broker.bootstrap, self.audit, self.tag, [self.proc],
                             timeout=300)
            (summary,) = self.k.stop([self.proc], [self.log])
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return {"code": self.proc.returncode, "stderr": self.log.read_text(),
                "summary": summary, "stored": stored(self.url)}


@pytest.fixture(scope="module")
def outage(tmp_path_factory, kafka_broker) -> Iterator[dict]:
    """Runs of replay, run (socket) and deliver through one 30 s PostgreSQL outage, and the
    same replay and run without it; the tests below each check one of them."""
    workdir = tempfile.mkdtemp(prefix="ss-pgo-", dir="/tmp")
    pg = Server(workdir, free_port())
    tmp = tmp_path_factory.mktemp("outage")
    calm: dict = {}
    runs: dict = {}
    try:
        pg.start()
        sim = tmp / "sim.log"
        res = subprocess.run([*EXE, "simulate", str(sim), "--days", "3", "--calls", "20000"],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        lines = sim.read_bytes().splitlines(keepends=True)
        calm = {"replay": ReplayRun(pg.schema(), lines), "run": SocketRun(pg.schema(), lines, tmp),
                "kafka": KafkaRun(pg.schema(), lines, tmp, kafka_broker)}
        for run in calm.values():
            run.resume()
        results = {f"calm {name}": run.finish() for name, run in calm.items()}
        runs = {"replay": ReplayRun(pg.schema(), lines), "run": SocketRun(pg.schema(), lines, tmp),
                "deliver": DeliverRun(pg.schema(), lines, tmp)}
        for name, run in runs.items():
            wait_for(run.ready, 300, f"{name} to get going", interval=0.2)
        # started last, and the store stops as soon as it stores its first finding: mid-topic
        runs["kafka"] = KafkaRun(pg.schema(), lines, tmp, kafka_broker)
        wait_for(runs["kafka"].ready, 300, "kafka to get going", interval=0.05)
        kafka_versions_before = count(runs["kafka"].url, "finding_versions")
        began = time.monotonic()
        pg.stop()
        for run in runs.values():
            run.resume()
        while time.monotonic() < began + OUTAGE_SECONDS:  # the outage is the point: wall time
            for name, run in runs.items():
                assert run.proc.poll() is None, f"{name} exited during the outage"
            time.sleep(min(0.5, max(0.0, began + OUTAGE_SECONDS - time.monotonic())))
        pg.start()
        ended = time.monotonic()
        results |= {name: run.finish() for name, run in runs.items()}
        results["kafka"]["versions before"] = kafka_versions_before
        results["deliver"]["sent while down"] = runs["deliver"].receiver.received_between(
            began + 2.0, ended)  # the batch in flight as the server stopped may still land
        yield results
    finally:
        for run in [*calm.values(), *runs.values()]:  # a failed set-up must not leave them running
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait(timeout=30)
        subprocess.run([str(SCRIPT), "stop", "--dir", workdir], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_replay_waits_out_an_outage_and_stores_the_same_findings(outage):
    calm, res = outage["calm replay"], outage["replay"]
    assert calm["code"] == 0 and "unreachable" not in calm["stderr"], calm["stderr"]
    assert res["code"] == 0, res["stderr"]
    check_outage_log(res["stderr"])
    expected, got = calm["stored"], res["stored"]
    assert len(expected["findings"]) >= 10
    assert len(expected["versions"]) > len(expected["findings"])
    assert got["findings"].keys() == expected["findings"].keys()
    assert got == expected


@pytest.mark.postgres
@pytest.mark.slow
def test_socket_service_waits_out_an_outage_and_stores_the_same_findings(outage):
    calm, res = outage["calm run"], outage["run"]
    assert calm["code"] == 0 and "unreachable" not in calm["stderr"], calm["stderr"]
    assert res["code"] == 0, res["stderr"]
    check_outage_log(res["stderr"])
    assert res["summary"]["lines"] == calm["summary"]["lines"] > 0
    expected, got = calm["stored"], res["stored"]
    assert len(expected["findings"]) >= 10
    assert got["findings"].keys() == expected["findings"].keys()
    assert got == expected


@pytest.mark.postgres
@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_service_waits_out_an_outage_and_stores_the_same_findings(outage):
    calm, res = outage["calm kafka"], outage["kafka"]
    assert calm["code"] == 0 and "unreachable" not in calm["stderr"], calm["stderr"]
    assert res["code"] == 0, res["stderr"][-3000:]
    check_outage_log(res["stderr"])
    assert res["summary"]["score"]["events"] == calm["summary"]["score"]["events"] > 0
    expected, got = calm["stored"], res["stored"]
    assert len(expected["findings"]) >= 10
    # The outage cut into the topic: versions were stored before it and after it. (How many
    # came before depends on how much the first save covered: one poll of 200 calls, and more
    # on a loaded machine, where scoring runs ahead of the test's look at the store.)
    assert 0 < res["versions before"] < len(got["versions"]), res["versions before"]
    assert got["findings"].keys() == expected["findings"].keys()
    assert got == expected


@pytest.mark.postgres
@pytest.mark.slow
def test_deliver_waits_out_an_outage_and_loses_no_claimed_batch(outage):
    res = outage["deliver"]
    assert res["code"] == 0, res["stderr"]
    check_outage_log(res["stderr"])
    assert len(res["queued"]) >= 50
    assert set(res["received"]) == res["queued"]
    # Outcomes are kept until recorded: the batch sent as the server went down is recorded when
    # it is back, not sent again; and nothing is sent while the outbox cannot be read.
    twice = sorted(k for k, n in res["received"].items() if n > 1)
    assert twice == [], twice
    assert res["sent while down"] == []
    assert res["dead"] == 0 and res["delivered"] == len(res["queued"])


def test_deliver_waiting_for_an_unreachable_store_stops_on_sigterm(tmp_path):
    """The long-running ``deliver`` waits an outage out without limit, and still stops when told
    to: SIGTERM ends the wait, exit 0, no password shown."""
    config = tmp_path / "deliver.yaml"
    config.write_text(yaml.safe_dump({"sinks": [
        {"type": "webhook", "name": "hook", "url": "http://127.0.0.1:9/in",
         "secret": {"env": "SS_TEST_HOOK"}}]}))
    env = {**os.environ, "SS_TEST_HOOK": "whsec_" + base64.b64encode(bytes(32)).decode()}
    proc = subprocess.Popen([*EXE, "deliver", "--config", str(config), "--store", refused_url()],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        wait_for(lambda: any("store unreachable" in ln for ln in lines), 60,
                 "deliver to notice the outage")
        assert proc.poll() is None  # no limit: still waiting
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines)
    assert "stopped while waiting for the store" in text
    assert SECRET not in text and "Traceback" not in text
