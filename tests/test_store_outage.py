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
from helpers import make_event, wait_for
from postgres_server import SCRIPT, START_TIMEOUT, free_port

from pipeline.features import FEATURE_NAMES
from pipeline.findings import Finding, Reason, finding_id
from pipeline.history import NAMES_HASH, HistoryRow, encode_values
from pipeline.store import Route, Store, feature_history, finding_versions, outbox
from pipeline.store_retry import StoreRetry, StoreUnavailableError, is_transient

OUTAGE_SECONDS = 30.0
PASSWORD_IN_URL = "secretscope:secretscope@"
EXE = [sys.executable, "-m", "pipeline"]


SECRET = "s3cr3t-Pw-7d1e"


def refused_url() -> str:
    """A PostgreSQL URL nothing listens on (a real refused connection)."""
    return f"postgresql+psycopg://secretscope:{SECRET}@127.0.0.1:{free_port()}/secretscope"


def outage_lines(caplog) -> tuple[list[str], list[str]]:
    msgs = [r.getMessage() for r in caplog.records if r.name == "pipeline.store_retry"]
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

    def outage(self, seconds: float, *alive: subprocess.Popen) -> float:
        """Stop the server for ``seconds`` of wall time (the outage is the point), checking
        that the processes under test keep running through it; returns how long it lasted."""
        began = time.monotonic()
        self.stop()
        deadline = began + seconds
        while time.monotonic() < deadline:
            for proc in alive:
                assert proc.poll() is None, f"{proc.args} exited during the outage"
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        self.start()
        return time.monotonic() - began

    def schema(self) -> str:
        """URL of a new, empty schema."""
        name = f"o_{os.urandom(6).hex()}"
        engine = create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        engine.dispose()
        url = make_url(self.url).update_query_dict({"options": f"-csearch_path={name}"})
        return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def pg() -> Iterator[Server]:
    workdir = tempfile.mkdtemp(prefix="ss-pgo-", dir="/tmp")
    server = Server(workdir, free_port())
    try:
        server.start()
        yield server
    finally:
        subprocess.run([str(SCRIPT), "stop", "--dir", workdir], capture_output=True, timeout=120)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def audit_lines(tmp_path_factory) -> list[bytes]:
    out = tmp_path_factory.mktemp("sim") / "sim.log"
    res = subprocess.run([*EXE, "simulate", str(out), "--days", "3", "--calls", "20000"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out.read_bytes().splitlines(keepends=True)


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
    """Writes ``chunks`` to ``stream`` (blocking while the reader pauses); ``join`` fails if
    the writing did."""

    def __init__(self, stream, chunks: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream, self.chunks = stream, chunks
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for chunk in self.chunks:
                self.stream.write(chunk)
                self.stream.flush()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = 600) -> None:
        super().join(timeout)
        assert not self.is_alive(), "still writing after 600 s"
        assert self.error is None, f"writing the audit lines failed: {self.error!r}"


# --- replay -------------------------------------------------------------------------------------

def replay(url: str, lines: list[bytes], pg: Server | None = None) -> subprocess.CompletedProcess:
    """``secretscope replay -`` over ``lines``; with ``pg``, the server is stopped once findings
    are stored, while the rest of the lines go in."""
    proc = subprocess.Popen([*EXE, "replay", "-", "--store", url, "--no-table", "-q"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    cut = len(lines) * 3 // 4  # the simulated attacks (and findings) start past half of it
    writer = feed(proc.stdin, [b"".join(lines[:cut])])
    if pg is not None:
        wait_for(lambda: (count(url, "finding_versions") or 0) > 0, 300,
                 "the replay to store findings", interval=0.2)
        writer.join()
        writer = feed(proc.stdin, [b"".join(lines[cut:])])
        pg.outage(OUTAGE_SECONDS, proc)
    else:
        writer.join()
        writer = feed(proc.stdin, [b"".join(lines[cut:])])
    writer.join()
    proc.stdin.close()
    stderr = proc.stderr.read().decode()
    return subprocess.CompletedProcess(proc.args, proc.wait(timeout=600), "", stderr)


@pytest.mark.postgres
@pytest.mark.slow
def test_replay_waits_out_an_outage_and_stores_the_same_findings(pg, audit_lines):
    calm_url, outage_url = pg.schema(), pg.schema()
    calm = replay(calm_url, audit_lines)
    assert calm.returncode == 0, calm.stderr
    assert "unreachable" not in calm.stderr

    res = replay(outage_url, audit_lines, pg)
    assert res.returncode == 0, res.stderr
    check_outage_log(res.stderr)
    expected, got = stored(calm_url), stored(outage_url)
    assert len(expected["findings"]) >= 10 and len(expected["versions"]) > len(expected["findings"])
    assert got["findings"].keys() == expected["findings"].keys()
    assert got == expected


# --- run, socket source -------------------------------------------------------------------------

def socket_config(tmp_path: Path, url: str, port: int) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = url
    doc["run"] = {"source": "socket"}
    doc["socket"] = {"host": "127.0.0.1", "port": port}
    path = tmp_path / f"socket-{port}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_socket(tmp_path: Path, url: str, lines: list[bytes],
               pg: Server | None = None) -> tuple[int, str]:
    """``secretscope run`` over the socket source, sent ``lines`` like a Vault node; with
    ``pg``, the server is stopped once findings are stored, while the rest is sent."""
    port = free_port()
    log = tmp_path / f"run-{port}.log"
    proc = subprocess.Popen([*EXE, "run", "--config", str(socket_config(tmp_path, url, port))],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    try:
        client = wait_for(lambda: _connect(port, proc, log), 60, "the socket listener")
        cut = len(lines) * 3 // 4
        sender = feed(client.makefile("wb"), [b"".join(lines[:cut])])
        if pg is not None:
            wait_for(lambda: (count(url, "finding_versions") or 0) > 0, 300,
                     "the service to store findings", interval=0.2)
            sender.join()
            sender = feed(client.makefile("wb"), [b"".join(lines[cut:])])
            pg.outage(OUTAGE_SECONDS, proc)
        else:
            sender.join()
            sender = feed(client.makefile("wb"), [b"".join(lines[cut:])])
        sender.join()
        # The service closes its side once it has read everything: every line is then in.
        client.shutdown(socket.SHUT_WR)
        client.settimeout(600)
        assert client.recv(1) == b""
        client.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, log.read_text()


def _connect(port: int, proc: subprocess.Popen, log: Path) -> socket.socket | None:
    assert proc.poll() is None, log.read_text()
    try:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None
    client.settimeout(None)  # sending blocks for as long as the service pauses
    return client


@pytest.mark.postgres
@pytest.mark.slow
def test_socket_service_waits_out_an_outage_and_stores_the_same_findings(pg, audit_lines,
                                                                        tmp_path):
    calm_url, outage_url = pg.schema(), pg.schema()
    code, calm_log = run_socket(tmp_path, calm_url, audit_lines)
    assert code == 0, calm_log

    code, outage_log = run_socket(tmp_path, outage_url, audit_lines, pg)
    assert code == 0, outage_log
    check_outage_log(outage_log)
    summary = orjson.loads([ln for ln in outage_log.splitlines() if '"stopped"' in ln][-1])
    assert summary["lines"] == len(audit_lines)
    expected, got = stored(calm_url), stored(outage_url)
    assert len(expected["findings"]) >= 10
    assert got == expected


# --- deliver ------------------------------------------------------------------------------------

class Receiver(ThreadingHTTPServer):
    """Takes webhook POSTs, each ``delay`` seconds long, and records their ``webhook-id``
    (``<finding id>.<version>``) with the time it arrived."""

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
        time.sleep(srv.delay)  # a slow SIEM, so the outage falls in the middle of delivery
        with srv.lock:
            srv.received.append((self.headers["webhook-id"], time.monotonic()))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.postgres
@pytest.mark.slow
def test_deliver_waits_out_an_outage_and_loses_no_claimed_batch(pg, audit_lines, tmp_path):
    receiver = Receiver(delay=0.1)
    config = tmp_path / "deliver.yaml"
    config.write_text(f"""
sinks:
  - {{type: webhook, name: hook, url: "http://127.0.0.1:{receiver.server_address[1]}/hook",
     secret: {{env: HOOK_SECRET}}, min_severity: informational, batch_size: 5}}
delivery: {{retry_base_seconds: 0.05, poll_seconds: 0.05}}
rules: {{directory: "{ROOT / 'config' / 'rules'}"}}
""")
    url = pg.schema()
    queued = subprocess.run([*EXE, "replay", "-", "--config", str(config), "--store", url,
                             "--no-table", "-q"], input=b"".join(audit_lines),
                            capture_output=True, timeout=600)
    assert queued.returncode == 0, queued.stderr.decode()
    engine = create_engine(url)
    with engine.connect() as conn:
        keys = {f"{f}.{v}" for f, v in conn.execute(text(
            "SELECT finding_id, version FROM outbox WHERE sink = 'hook'"))}
    engine.dispose()
    assert len(keys) >= 50

    env = {**os.environ, "HOOK_SECRET": "whsec_" + base64.b64encode(os.urandom(24)).decode()}
    proc = subprocess.Popen([*EXE, "deliver", "--config", str(config), "--store", url],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(receiver.keys()) >= 10, 120, "the first deliveries")
        began = time.monotonic()
        lasted = pg.outage(OUTAGE_SECONDS, proc)
        sent_while_down = receiver.received_between(began + 2.0, began + lasted)
        wait_for(lambda: set(receiver.keys()) >= keys, 300, "every version delivered")
        wait_for(lambda: count(url, "outbox WHERE status = 'pending'") == 0, 60,
                 "the outbox to record every delivery")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = proc.stderr.read()
    check_outage_log(stderr)
    got = Counter(receiver.keys())
    assert set(got) == keys
    twice = sorted(k for k, n in got.items() if n > 1)
    # Results are kept until recorded: a batch sent as the server went down is recorded when it
    # is back, not sent again; and nothing is sent while the outbox cannot be read.
    assert twice == [], twice
    assert sent_while_down == [], sent_while_down
    assert count(url, "delivery_dead_letters") == 0
    assert count(url, "outbox WHERE status = 'delivered'") == len(keys)
