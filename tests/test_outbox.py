"""The SQL outbox and the delivery worker, end to end: real findings from a simulated fleet, a
real HTTP server on 127.0.0.1 that fails on purpose, a real HTTP sink, SQLite and PostgreSQL.

Every finding must reach every sink it is routed to exactly once by id, or sit in
``delivery_dead_letters`` with the reason. The worker runs on a fake clock (backoff waits are
jumped over, not slept); the HTTP calls, timeouts and dropped connections are real.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import requests
from alembic import command
from postgres_server import postgres_url  # noqa: F401
from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine, func, inspect, select
from test_store_postgres import (_head, alembic_config, db_url, describe,  # noqa: F401
                                 fresh_schema, insert_finding_row, make_finding,
                                 schema_diff)
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import load_settings
from pipeline.delivery.model import Delivery, Outcome
from pipeline.delivery.outbox import Outbox
from pipeline.delivery.retry import RetryPolicy, retry_after_seconds, retryable_status
from pipeline.delivery.worker import DeliveryMetrics, DeliveryWorker
from pipeline.runner import Pipeline
from pipeline.store import (Route, Store, delivery_dead_letters, findings,
                            outbox)

ROUTES = (Route("hook", 1), Route("crit", 5))
CLIENT_TIMEOUT = 0.3


# --- a real HTTP receiver with failure injection -----------------------------------------------

class Receiver(ThreadingHTTPServer):
    """Accepts JSON POSTs at /<sink>; ``plan(sink, finding_id, n)`` (n = requests so far for
    that id, from 1) says what to do: None to accept, or ("status", code, headers),
    ("slow", seconds) (answer after the client gave up, accept nothing), ("drop",)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, clock=None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.accepted: dict[str, list[str]] = {}  # sink -> finding ids, in order
        self.requests: dict[tuple[str, str], list[float]] = {}  # (sink, id) -> clock at each
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
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        sink, fid = self.path.strip("/"), body["finding_info"]["uid"]
        assert self.headers["Idempotency-Key"] == fid
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

    def _reply(self, status: int, headers: dict | None = None) -> None:
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


class JsonSink:
    """A small real HTTP sink: one POST per finding, the OCSF document as the body."""

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
                                     headers={"Idempotency-Key": d.finding_id,
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
    from pipeline.simulate import SimulationSpec, simulate
    from pipeline.sources.files import replay

    d = tmp_path_factory.mktemp("fleet")
    log = d / "fleet.log"
    simulate(SimulationSpec(days=4, seed=5, target_calls=15000), log, d / "labels.jsonl")
    return list(replay([log]))


def replay_into(store: Store, events) -> None:
    Pipeline(load_settings(), store=store).run(iter(events))


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


def stored_severities(store: Store) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(select(findings.c.id, findings.c.severity_id)).all())


def dead(store: Store) -> dict[tuple[str, str], tuple[str, int]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(delivery_dead_letters)).all()
    return {(r.finding_id, r.sink): (r.reason, r.attempts) for r in rows}


def sample_value(registry, name: str, sink: str) -> float:
    return registry.get_sample_value(name, {"sink": sink}) or 0.0


# --- tests ----------------------------------------------------------------------------------

def test_every_finding_reaches_every_routed_sink_once_or_is_dead_lettered(
        tmp_path, events, receiver):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url, routes=ROUTES)
    replay_into(store, events)
    severities = stored_severities(store)
    ids = sorted(severities)
    assert len(ids) >= 10 and {5} < set(severities.values())
    # severity routing: every finding to "hook", only critical ones to "crit"
    assert Outbox(store).counts() == {
        "hook": {"pending": len(ids), "delivered": 0, "dead": 0},
        "crit": {"pending": sum(s == 5 for s in severities.values()), "delivered": 0, "dead": 0}}

    rejected = set(ids[:2])  # the product refuses these for good
    limited, slow, dropped = ids[2], ids[3], ids[4]
    busy = {"left": 12}  # the first requests find the product overloaded

    def plan(sink, fid, n):
        if sink != "hook":
            return None
        if fid in rejected:
            return ("status", 400)
        if busy["left"] > 0:
            busy["left"] -= 1
            return ("status", 503)
        if fid == limited and n <= 2:
            return ("status", 429, {"Retry-After": "40"})
        if fid == slow and n <= 2:
            return ("slow", CLIENT_TIMEOUT * 3)
        if fid == dropped and n <= 2:
            return ("drop",)
        return None

    receiver.plan = plan
    registry = CollectorRegistry()
    sinks = {"hook": JsonSink("hook", receiver.url, batch_size=7),
             "crit": JsonSink("crit", receiver.url, batch_size=3)}
    worker = DeliveryWorker(store, sinks, policy(), clock=receiver.clock,
                            metrics=DeliveryMetrics(registry))
    drain(worker, receiver.clock)

    hook, crit = receiver.counts("hook"), receiver.counts("crit")
    assert set(hook) == set(ids) - rejected and set(hook.values()) == {1}
    assert set(crit) == {i for i, s in severities.items() if s == 5}
    assert set(crit.values()) == {1}
    assert dead(store) == {(i, "hook"): ("HTTP 400", 1) for i in rejected}
    # the failures were retried: overloaded, rate-limited, timed out, dropped
    assert len(receiver.requests[("hook", limited)]) == 3
    assert len(receiver.requests[("hook", slow)]) == 3
    assert len(receiver.requests[("hook", dropped)]) == 3
    # Retry-After: 40 s were waited between the rate-limited attempts (the backoff alone
    # would have allowed well under 5 s)
    first, second, third = receiver.requests[("hook", limited)]
    assert second - first >= 40 and third - second >= 40
    # metrics and per-sink state
    assert sample_value(registry, "secretscope_delivery_delivered_total", "hook") == len(hook)
    assert sample_value(registry, "secretscope_delivery_delivered_total", "crit") == len(crit)
    assert sample_value(registry, "secretscope_delivery_dead_lettered_total", "hook") == 2
    assert sample_value(registry, "secretscope_delivery_retried_total", "hook") >= 12 + 6
    assert sample_value(registry, "secretscope_delivery_pending", "hook") == 0
    assert sample_value(registry, "secretscope_delivery_dead_letters", "hook") == 2
    states = Outbox(store).states(ids)
    assert states[ids[0]]["hook"] == "dead"
    crit_id = next(iter(crit))
    assert states[crit_id] == {"crit": "delivered", "hook": "delivered"}

    # replaying the same log into the same store enqueues nothing twice (nor the dead letters)
    before = Outbox(store).counts()
    replay_into(store, events)
    assert Outbox(store).counts() == before
    worker.run_once()
    assert receiver.counts("hook") == hook and receiver.counts("crit") == crit

    # alerts show the delivery state per sink
    res = CliRunner().invoke(app, ["alerts", "--store", url, "--limit", "100"])
    assert res.exit_code == 0, res.output
    assert "hook:delivered" in res.output and "crit:delivered hook:delivered" in res.output
    assert "hook:dead" in res.output

    # redrive: the product accepts them now; each arrives exactly once
    receiver.plan = lambda sink, fid, n: None
    runner = CliRunner()
    res = runner.invoke(app, ["redrive", "--store", url])
    assert res.exit_code != 0  # a scope is required
    res = runner.invoke(app, ["redrive", "--sink", "hook", "--finding", ids[0], "--store", url])
    assert res.exit_code == 0 and "redriven 1 dead letter" in res.output
    res = runner.invoke(app, ["redrive", "--all", "--store", url])
    assert res.exit_code == 0 and "redriven 1 dead letter" in res.output
    assert runner.invoke(app, ["redrive", "--all", "--store", url]).output.startswith(
        "redriven 0 dead letters")
    assert Outbox(store).states([ids[0]])[ids[0]]["hook"] == "pending"
    drain(worker, receiver.clock)
    drain(worker, receiver.clock)
    hook = receiver.counts("hook")
    assert set(hook) == set(ids) and set(hook.values()) == {1}
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
    for (fid, sink), (reason, attempts) in letters.items():
        assert reason == f"retry budget exhausted after {attempts} attempts: HTTP 503"
        times = receiver.requests[(sink, fid)]
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
        errors = set(conn.execute(select(outbox.c.last_error)).scalars())
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
    severities = stored_severities(writer)
    receiver.clock = time.time
    receiver.delay = 0.01  # so the workers overlap
    receiver.plan = lambda sink, fid, n: ("status", 503) if n == 1 and hash(fid) % 3 == 0 else None
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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = Outbox(writer).counts()
            if all(c["pending"] == 0 for c in counts.values()):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    hook, crit = receiver.counts("hook"), receiver.counts("crit")
    assert set(hook) == set(severities) and set(hook.values()) == {1}
    assert set(crit) == {i for i, s in severities.items() if s == 5}
    assert set(crit.values()) == {1}
    assert dead(writer) == {}
    per_worker = [sum(sample_value(m.registry, "secretscope_delivery_delivered_total", s)
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

    store = Store(db_url, routes=[Route("hook", 1)])  # opening the store migrates it
    try:
        after = describe(store.engine)
        assert after["revision"] == _head()
        assert set(after) - {"revision"} == set(before) - {"revision"} | NEW_TABLES
        # dead_letters gains its unique key in migration 0004
        assert all(after[t] == before[t] for t in set(before) - {"revision", "dead_letters"})
        assert schema_diff(store.engine) == []
        insp = inspect(store.engine)
        assert insp.get_pk_constraint("outbox")["constrained_columns"] == ["finding_id", "sink"]
        assert insp.get_pk_constraint("delivery_dead_letters")["constrained_columns"] == [
            "finding_id", "sink"]
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
        assert not NEW_TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_deliver_command_sends_everything_once_and_serves_metrics(tmp_path, events, receiver,
                                                                   monkeypatch):
    import pipeline.delivery.sinks as sinks_package
    from postgres_server import free_port

    receiver.clock = time.time
    port = free_port()
    config = tmp_path / "deliver.yaml"
    config.write_text(f"""
sinks:
  - {{type: webhook, name: hook, url: "{receiver.url}", secret: {{env: NOT_USED}},
     min_severity: informational, batch_size: 4}}
delivery: {{metrics_port: {port}, retry_base_seconds: 0.01}}
""")
    scraped: list[str] = []

    class Scraping(JsonSink):  # the product's sink stands in for pipeline.delivery.sinks
        def send(self, items):
            scraped.append(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            return super().send(items)

    monkeypatch.setattr(sinks_package, "build_sink",
                        lambda s, base_dir: Scraping(s.name, receiver.url, s.batch_size),
                        raising=False)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = load_settings(config)
    store = Store(url, routes=settings.sinks)
    replay_into(store, events)
    ids = set(stored_severities(store))
    store.close()
    receiver.plan = lambda sink, fid, n: ("status", 503) if n == 1 else None
    args = ["deliver", "--once", "--config", str(config), "--store", url]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    # --once tries each due delivery once: all failed once, the later ones may have gone again
    assert set(receiver.requests) == {("hook", i) for i in ids}
    assert f"0 delivered; {len(ids)} retried; 0 dead-lettered" in res.output
    time.sleep(0.1)  # the backoff (base 0.01 s) has passed
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    hook = receiver.counts("hook")
    assert set(hook) == ids and set(hook.values()) == {1}
    assert 'secretscope_delivery_retried_total{sink="hook"}' in scraped[-1]
    assert 'secretscope_delivery_pending{sink="hook"}' in scraped[-1]
    with pytest.raises(requests.ConnectionError):  # the metrics server stopped with the command
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_deliver_command_needs_sinks(tmp_path):
    res = CliRunner().invoke(app, ["deliver", "--once", "--store",
                                   f"sqlite:///{tmp_path / 's.db'}"])
    assert res.exit_code != 0
