"""The SQL outbox and the delivery worker, end to end: real findings from a simulated fleet, a
real HTTP server on 127.0.0.1 that fails on purpose, a real HTTP sink, SQLite and PostgreSQL.

Every finding version must reach every sink it is routed to exactly once by its key (finding id
and version), or sit in ``delivery_dead_letters`` with the reason. The worker runs on a fake clock (backoff waits are
jumped over, not slept); the HTTP calls, timeouts and dropped connections are real.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import requests
import standardwebhooks
from alembic import command
from postgres_server import postgres_url  # noqa: F401
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, func, inspect, select
from test_store_postgres import (_head, alembic_config, db_url, describe,  # noqa: F401
                                 fresh_schema, insert_finding_row, make_finding,
                                 schema_diff)
from typer.testing import CliRunner

from helpers import fleet_events, replay_into, wait_for
from secretscope.cli import app
from secretscope.config import load_settings
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.outbox import Outbox
from secretscope.delivery.retry import RetryPolicy, retry_after_seconds, retryable_status
from secretscope.delivery.worker import DeliveryMetrics, DeliveryWorker
from secretscope.store import (Route, Store, delivery_dead_letters, finding_versions, findings,
                            outbox)

ROUTES = (Route("hook", 1), Route("crit", 5))
CLIENT_TIMEOUT = 0.3


# --- a real HTTP receiver with failure injection -----------------------------------------------

class Receiver(ThreadingHTTPServer):
    """Accepts JSON POSTs at /<sink>, each keyed ``<finding id>.<version>`` (the
    ``Idempotency-Key`` of the test's sink, or the ``webhook-id`` of a Standard Webhooks request,
    whose signature it checks when ``webhook_secret`` is set); ``plan(sink, key, n)`` (n =
    requests so far for that key, from 1) says what to do: None to accept, or ("status", code,
    headers), ("slow", seconds) (answer after the client gave up, accept nothing), ("drop",)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, clock=None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.accepted: dict[str, list[str]] = {}  # sink -> keys, in order
        self.requests: dict[tuple[str, str], list[float]] = {}  # (sink, key) -> clock at each
        self.webhook_secret: str | None = None
        self.clock = clock or time.time
        self.plan = lambda sink, fid, n: None
        self.delay = 0.0  # seconds every request takes
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def get_request(self):
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def counts(self, sink: str) -> Counter:
        with self.lock:
            return Counter(self.accepted.get(sink, []))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        srv: Receiver = self.server  # type: ignore[assignment]
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = orjson.loads(raw)
        doc = body.get("data", body)  # a webhook wraps the document
        sink = self.path.strip("/")
        fid = self.headers.get("Idempotency-Key") or self.headers["webhook-id"]
        if srv.webhook_secret is not None and not _signed(srv.webhook_secret, self.headers, raw):
            return self._reply(401)
        uid, version = doc["finding_info"]["uid"], doc["unmapped"]["secretscope"]["version"]
        assert fid == f"{uid}.{version}", fid
        with srv.lock:
            seen = srv.requests.setdefault((sink, fid), [])
            seen.append(srv.clock())
            n = len(seen)
        if srv.delay:
            time.sleep(srv.delay)
        action = srv.plan(sink, fid, n)
        if action is None:
            with srv.lock:
                srv.accepted.setdefault(sink, []).append(fid)
            return self._reply(200)
        if action[0] == "status":
            return self._reply(action[1], action[2] if len(action) > 2 else {})
        if action[0] == "slow":
            time.sleep(action[1])  # the client timed out meanwhile; nothing accepted
            return self._reply(503)
        self.close_connection = True  # "drop": no response at all
        self.connection.shutdown(socket.SHUT_RDWR)

    def _reply(self, status: int, headers: dict | None = None) -> None:  # noqa: D401
        payload = b'{"ok": true}' if status == 200 else b'{"error": "injected"}'
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:
            pass


def _signed(secret: str, headers, body: bytes) -> bool:
    """Verified by the Standard Webhooks reference implementation, as a receiver would."""
    try:
        standardwebhooks.Webhook(secret).verify(body, dict(headers.items()))
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


class JsonSink:
    """A small real HTTP sink: one POST per finding version, the OCSF document as the body."""

    def __init__(self, name: str, url: str, batch_size: int = 10,
                 timeout: float = CLIENT_TIMEOUT) -> None:
        self.name, self.url, self.batch_size, self.timeout = name, url, batch_size, timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        return [self._one(d) for d in items]

    def _one(self, d: Delivery) -> Outcome:
        try:
            resp = self.session.post(f"{self.url}/{self.name}", data=orjson.dumps(d.ocsf),
                                     headers={"Idempotency-Key": d.key,
                                              "Content-Type": "application/json"},
                                     timeout=self.timeout)
        except requests.Timeout:
            return Outcome(d.finding_id, False, retryable=True, reason="timeout")
        except requests.ConnectionError as exc:
            return Outcome(d.finding_id, False, retryable=True,
                           reason=f"connection error: {type(exc).__name__}")
        if 200 <= resp.status_code < 300:
            return Outcome.delivered(d.finding_id)
        return Outcome(d.finding_id, False, retryable=retryable_status(resp.status_code),
                       reason=f"HTTP {resp.status_code}",
                       retry_after=retry_after_seconds(resp.headers.get("Retry-After")))

    def close(self) -> None:
        self.session.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance_to(self, t: float) -> None:
        with self.lock:
            self.now = max(self.now, t)


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return fleet_events(tmp_path_factory)


@pytest.fixture
def receiver():
    clock = FakeClock()
    srv = Receiver(clock)
    srv.thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def policy(budget: float = 120.0) -> RetryPolicy:
    return RetryPolicy(base_seconds=0.05, cap_seconds=5.0, budget_seconds=budget,
                       rng=random.Random(7))


def drain(worker: DeliveryWorker, clock: FakeClock, max_passes: int = 500) -> None:
    """Run the worker until nothing is pending, jumping the clock to the next due time."""
    for _ in range(max_passes):
        worker.run_once()
        with worker.store.engine.connect() as conn:
            pending = conn.execute(select(func.count(), func.min(outbox.c.next_attempt_at))
                                   .where(outbox.c.status == "pending")).one()
        if pending[0] == 0:
            return
        if pending[1] is not None:
            due = pending[1] if pending[1].tzinfo else pending[1].replace(tzinfo=timezone.utc)
            clock.advance_to(due.timestamp())
    raise AssertionError("outbox did not drain")


def stored_versions(store: Store) -> dict[str, int]:
    """``<finding id>.<version>`` -> severity, for every stored version."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(finding_versions.c.finding_id, finding_versions.c.version,
                                   finding_versions.c.severity_id)).all()
    return {f"{r.finding_id}.{r.version}": r.severity_id for r in rows}


def dead(store: Store) -> dict[tuple[str, str], tuple[str, int]]:
    """(key, sink) -> (reason, attempts) of every delivery dead letter."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(delivery_dead_letters)).all()
    return {(f"{r.finding_id}.{r.version}", r.sink): (r.reason, r.attempts) for r in rows}


def finding_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def sample_value(registry, name: str, sink: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"sink": sink, **labels}) or 0.0


# --- tests ----------------------------------------------------------------------------------

def test_every_version_reaches_every_routed_sink_once_or_is_dead_lettered(
        tmp_path, events, receiver):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url, routes=ROUTES)
    replay_into(store, events)
    severities = stored_versions(store)
    keys = sorted(severities)
    per_finding = Counter(finding_of(k) for k in keys)
    assert len(per_finding) >= 10 and {5} < set(severities.values())
    assert max(per_finding.values()) > 1, "no finding has a later version: a weak test"
    # severity routing: every version to "hook", only critical ones to "crit"
    assert Outbox(store).counts() == {
        "hook": {"pending": len(keys), "delivered": 0, "dead": 0},
        "crit": {"pending": sum(s == 5 for s in severities.values()), "delivered": 0, "dead": 0}}

    newest = sorted(f"{f}.{n}" for f, n in per_finding.items())
    rejected = set(newest[:2])  # the product refuses these (two findings' last version) for good
    others = [k for k in keys if k not in rejected]
    limited, slow, dropped = others[0], others[1], others[2]
    busy = {"left": 12}  # the first requests find the product overloaded

    def plan(sink, key, n):
        if sink != "hook":
            return None
        if key in rejected:
            return ("status", 400)
        if key == limited and n <= 2:
            return ("status", 429, {"Retry-After": "40"})
        if key == slow and n <= 2:
            return ("slow", CLIENT_TIMEOUT * 3)
        if key == dropped and n <= 2:
            return ("drop",)
        if busy["left"] > 0:
            busy["left"] -= 1
            return ("status", 503)
        return None

    receiver.plan = plan
    registry = CollectorRegistry()
    sinks = {"hook": JsonSink("hook", receiver.url, batch_size=7),
             "crit": JsonSink("crit", receiver.url, batch_size=3)}
    worker = DeliveryWorker(store, sinks, policy(), clock=receiver.clock,
                            metrics=DeliveryMetrics(registry))
    drain(worker, receiver.clock)

    hook, crit = receiver.counts("hook"), receiver.counts("crit")
    assert set(hook) == set(keys) - rejected and set(hook.values()) == {1}
    assert set(crit) == {k for k, s in severities.items() if s == 5}
    assert set(crit.values()) == {1}
    assert dead(store) == {(k, "hook"): ("HTTP 400", 1) for k in rejected}
    # each sink got a finding's versions in order
    for sink in ("hook", "crit"):
        order = [int(k.rsplit(".", 1)[1]) for k in receiver.accepted[sink]]
        by_finding: dict[str, list[int]] = {}
        for k, v in zip(receiver.accepted[sink], order):
            by_finding.setdefault(finding_of(k), []).append(v)
        assert all(v == sorted(v) for v in by_finding.values()), sink
    # the failures were retried: overloaded, rate-limited, timed out, dropped
    assert len(receiver.requests[("hook", limited)]) == 3
    assert len(receiver.requests[("hook", slow)]) == 3
    assert len(receiver.requests[("hook", dropped)]) == 3
    # Retry-After: 40 s were waited between the rate-limited attempts (the backoff alone
    # would have allowed well under 5 s)
    first, second, third = receiver.requests[("hook", limited)]
    assert second - first >= 40 - 1e-6 and third - second >= 40 - 1e-6  # float clock
    # metrics and per-sink state
    deliveries = "secretscope_deliveries_total"
    assert sample_value(registry, deliveries, "hook", outcome="delivered") == len(hook)
    assert sample_value(registry, deliveries, "crit", outcome="delivered") == len(crit)
    assert sample_value(registry, deliveries, "hook", outcome="dead_lettered") == 2
    assert sample_value(registry, deliveries, "hook", outcome="retried") >= 12 + 6
    assert sample_value(registry, "secretscope_delivery_pending", "hook") == 0
    assert sample_value(registry, "secretscope_delivery_dead_letters", "hook") == 2
    gone = finding_of(sorted(rejected)[0])
    states = Outbox(store).states(per_finding)
    assert states[gone]["hook"] == f"dead v{per_finding[gone]}"  # its newest version's state
    critical = [f for f in per_finding if f"{f}.1" in crit]
    assert critical
    for f in critical:
        v = per_finding[f]
        assert states[f] == {"crit": f"delivered v{v}", "hook": f"delivered v{v}"}, states[f]

    # replaying the same log into the same store enqueues nothing twice (nor the dead letters)
    before = Outbox(store).counts()
    replay_into(store, events)
    assert Outbox(store).counts() == before and stored_versions(store) == severities
    worker.run_once()
    assert receiver.counts("hook") == hook and receiver.counts("crit") == crit

    # alerts show the delivery state per sink
    res = CliRunner().invoke(app, ["alerts", "--store", url, "--limit", "200"])
    assert res.exit_code == 0, res.output
    assert "crit:delivered" in res.output and "hook:dead" in res.output

    # redrive: the product accepts them now; each arrives exactly once
    receiver.plan = lambda sink, key, n: None
    runner = CliRunner()
    res = runner.invoke(app, ["redrive", "--store", url])
    assert res.exit_code != 0  # a scope is required
    res = runner.invoke(app, ["redrive", "--sink", "hook", "--finding", gone, "--store", url])
    assert res.exit_code == 0 and "redriven 1 dead letter" in res.output
    res = runner.invoke(app, ["redrive", "--all", "--store", url])
    assert res.exit_code == 0 and "redriven 1 dead letter" in res.output
    assert runner.invoke(app, ["redrive", "--all", "--store", url]).output.startswith(
        "redriven 0 dead letters")
    assert Outbox(store).states([gone])[gone]["hook"] == f"pending v{per_finding[gone]}"
    drain(worker, receiver.clock)
    drain(worker, receiver.clock)
    hook = receiver.counts("hook")
    assert set(hook) == set(keys) and set(hook.values()) == {1}
    assert dead(store) == {}
    store.close()


def test_retry_budget_exhausted_dead_letters_with_the_last_reason(tmp_path, events, receiver):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", routes=[Route("hook", 5)])
    replay_into(store, events)
    receiver.plan = lambda sink, fid, n: ("status", 503)
    worker = DeliveryWorker(store, {"hook": JsonSink("hook", receiver.url)}, policy(budget=10),
                            clock=receiver.clock, metrics=DeliveryMetrics(CollectorRegistry()))
    drain(worker, receiver.clock)
    letters = dead(store)
    assert letters and receiver.counts("hook") == Counter()
    for (key, sink), (reason, attempts) in letters.items():
        assert reason == f"retry budget exhausted after {attempts} attempts: HTTP 503"
        times = receiver.requests[(sink, key)]
        assert len(times) == attempts > 2
        assert times[-1] - times[0] <= 10  # never past the budget
    assert Outbox(store).counts()["hook"]["pending"] == 0


def test_a_sink_that_raises_fails_its_batch_retryably(tmp_path, events, receiver):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", routes=[Route("hook", 5)])
    replay_into(store, events)

    class Flaky(JsonSink):
        calls = 0

        def send(self, items):
            Flaky.calls += 1
            if Flaky.calls <= 2:
                raise RuntimeError("renderer bug")
            return super().send(items)

    worker = DeliveryWorker(store, {"hook": Flaky("hook", receiver.url, batch_size=100)},
                            policy(), clock=receiver.clock,
                            metrics=DeliveryMetrics(CollectorRegistry()))
    worker.run_once()
    with store.engine.connect() as conn:
        errors = set(conn.execute(select(outbox.c.last_error)
                                  .where(outbox.c.attempts > 0)).scalars())
    assert errors == {"sink raised RuntimeError: renderer bug"}
    drain(worker, receiver.clock)
    assert set(receiver.counts("hook").values()) == {1} and dead(store) == {}


@pytest.fixture
def pg_url(postgres_url):  # noqa: F811
    with fresh_schema(postgres_url) as url:
        yield url


def test_two_workers_on_postgresql_never_deliver_an_id_twice(pg_url, events, receiver):
    writer = Store(pg_url, routes=ROUTES)
    replay_into(writer, events)
    severities = stored_versions(writer)
    receiver.clock = time.time
    receiver.delay = 0.01  # so the workers overlap
    # a third of the keys fail their first attempt (crc32: the same third in every run)
    receiver.plan = lambda sink, key, n: (
        ("status", 503) if n == 1 and zlib.crc32(key.encode()) % 3 == 0 else None)
    stop = threading.Event()
    stores = [Store(pg_url) for _ in range(2)]
    metrics = [DeliveryMetrics(CollectorRegistry()) for _ in range(2)]
    workers = [DeliveryWorker(s, {"hook": JsonSink("hook", receiver.url, batch_size=3),
                                  "crit": JsonSink("crit", receiver.url, batch_size=2)},
                              RetryPolicy(base_seconds=0.01, cap_seconds=0.05,
                                          budget_seconds=60, rng=random.Random(i)),
                              poll_seconds=0.02, metrics=m)
               for i, (s, m) in enumerate(zip(stores, metrics))]
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(c["pending"] == 0 for c in Outbox(writer).counts().values()),
                 60, "the two workers to empty the outbox")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    hook, crit = receiver.counts("hook"), receiver.counts("crit")
    assert set(hook) == set(severities) and set(hook.values()) == {1}
    assert set(crit) == {k for k, s in severities.items() if s == 5}
    assert set(crit.values()) == {1}
    assert dead(writer) == {}
    assert any(len(times) > 1 for times in receiver.requests.values())  # some were retried
    per_worker = [sum(sample_value(m.registry, "secretscope_deliveries_total", s,
                                   outcome="delivered")
                      for s in ("hook", "crit")) for m in metrics]
    assert sum(per_worker) == len(hook) + len(crit)
    assert all(n > 0 for n in per_worker)  # both took part
    for s in (*stores, writer):
        s.close()


NEW_TABLES = {"outbox", "delivery_dead_letters"}



def test_migration_0003_on_an_existing_0002_store(db_url):  # noqa: F811
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0002")
        before = describe(engine)
        assert before["revision"] == "0002" and not NEW_TABLES & set(before)
        f = make_finding("ev-outbox-1")
        with engine.begin() as conn:
            insert_finding_row(conn, f)
    finally:
        engine.dispose()

    store = Store(db_url, routes=[Route("hook", 1)])  # opening the store migrates it (to head)
    try:
        after = describe(store.engine)
        assert after["revision"] == _head()
        assert set(after) - {"revision"} == (set(before) - {"revision"} | NEW_TABLES
                                             | {"finding_versions"})
        # findings gain versions (0004), dead_letters its unique key (0005)
        assert all(after[t] == before[t]
                   for t in set(before) - {"revision", "findings", "dead_letters"})
        assert schema_diff(store.engine) == []
        insp = inspect(store.engine)
        assert insp.get_pk_constraint("outbox")["constrained_columns"] == [
            "finding_id", "version", "sink"]
        assert insp.get_pk_constraint("delivery_dead_letters")["constrained_columns"] == [
            "finding_id", "version", "sink"]
        assert {i["name"] for i in insp.get_indexes("outbox")} == {"ix_outbox_due"}
        assert store.count(findings) == 1 and store.count(outbox) == 0
        g = make_finding("ev-outbox-2")
        store.add_findings([g, g])
        store.add_findings([g])
        assert Outbox(store).states([f.id, g.id]) == {g.id: {"hook": "pending"}}
    finally:
        store.close()

    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0002")
        assert not (NEW_TABLES | {"finding_versions"}) & set(inspect(engine).get_table_names())
        assert describe(engine) == before
    finally:
        engine.dispose()


def test_deliver_command_sends_everything_once_and_serves_metrics(tmp_path, events, receiver):
    """The command with the product's own webhook sink, signed, against the receiver: every
    version once, retried after a first failure each, metrics served while it runs, and a clean
    stop on SIGTERM."""
    from postgres_server import free_port

    receiver.clock = time.time
    receiver.webhook_secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    port = free_port()
    config = tmp_path / "deliver.yaml"
    config.write_text(f"""
sinks:
  - {{type: webhook, name: hook, url: "{receiver.url}/hook", secret: {{env: HOOK_SECRET}},
     min_severity: informational, batch_size: 4}}
delivery: {{metrics_port: {port}, retry_base_seconds: 0.01, poll_seconds: 0.05}}
""")
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = load_settings(config)
    store = Store(url, routes=settings.sinks)
    replay_into(store, events)
    keys = set(stored_versions(store))
    store.close()
    receiver.plan = lambda sink, key, n: ("status", 503) if n == 1 else None
    env = {**os.environ, "HOOK_SECRET": receiver.webhook_secret}
    exe = [sys.executable, "-m", "secretscope"]
    once = subprocess.run([*exe, "deliver", "--once", "--config", str(config), "--store", url],
                          env=env, capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr
    # --once tries each due delivery once: the first version of each finding, all refused once
    firsts = {k for k in keys if k.endswith(".1")}
    assert {k for _, k in receiver.requests} == firsts
    assert f"0 delivered; {len(firsts)} retried; 0 dead-lettered" in once.stderr

    proc = subprocess.Popen([*exe, "deliver", "--config", str(config), "--store", url],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = f"http://127.0.0.1:{port}/metrics"

        def delivered_all() -> str | None:
            try:
                text = requests.get(metrics, timeout=2).text
            except requests.ConnectionError:
                return None
            done = (f'secretscope_deliveries_total{{outcome="delivered",sink="hook"}} '
                    f'{float(len(keys))}')
            return text if done in text else None

        scraped = wait_for(delivered_all, 120, "deliver to report every version delivered")
        assert 'secretscope_delivery_pending{sink="hook"} 0.0' in scraped
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    hook = receiver.counts("hook")
    assert set(hook) == keys and set(hook.values()) == {1}
    with pytest.raises(requests.ConnectionError):  # the metrics server stopped with the command
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_deliver_command_needs_sinks(tmp_path):
    res = CliRunner().invoke(app, ["deliver", "--once", "--store",
                                   f"sqlite:///{tmp_path / 's.db'}"])
    assert res.exit_code != 0
