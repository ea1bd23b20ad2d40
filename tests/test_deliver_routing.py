"""Delivery configured where it is used: ``secretscope deliver --config F`` routes the findings
already in the store to the sinks F names (each sink's filters decide which versions), before
it delivers, so a sink added after a replay gets them; each (version, sink) enters the outbox at
most once however often deliver runs, next to a pipeline that routes at store time, on SQLite
and PostgreSQL. ``deliver`` says why nothing is pending; ``validate`` checks sinks; ``redrive``
refuses a sink nobody names. Webhook receivers verify every request with the Standard Webhooks
reference implementation (``standardwebhooks``).
"""

from __future__ import annotations

import base64
import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import standardwebhooks
import yaml
from postgres_server import postgres_url  # noqa: F401
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from sqlalchemy import select
from test_store_postgres import db_url, make_finding  # noqa: F401

from fake_siems import WebhookServer
from helpers import fleet_events, replay_into, wait_for
from secretscope.config import load_settings
from secretscope.delivery.backlog import backlog, explain
from secretscope.delivery.checks import sink_problems
from secretscope.delivery.config import SyslogSink, WebhookSink
from secretscope.delivery.model import Delivery
from secretscope.delivery.outbox import Outbox
from secretscope.delivery.retry import RetryPolicy
from secretscope.delivery.routing import route, routes_of
from secretscope.delivery.sinks import build_sink
from secretscope.delivery.sinks.webhook import secret_problem
from secretscope.delivery.worker import FULL_ROUTE_SECONDS, DeliveryMetrics, DeliveryWorker
from secretscope.errors import ConfigError
from secretscope.store import Route, Store, delivery_dead_letters, finding_versions, outbox

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "rules"


# --- helpers ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def events(tmp_path_factory):
    return fleet_events(tmp_path_factory)


def stored_rows(store: Store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(select(finding_versions.c.finding_id, finding_versions.c.version,
                                   finding_versions.c.severity_id,
                                   finding_versions.c.activity_id)
                            .order_by(finding_versions.c.finding_id,
                                      finding_versions.c.version)).all()


def expected(rows, min_severity: int, versions: str = "all") -> set[str]:
    """``<finding id>.<version>`` of the versions a sink with these filters must receive,
    worked out here from the stored rows: a raise is more severe than the version before."""
    out, before = set(), {}
    for r in rows:
        raised = r.severity_id > before.get(r.finding_id, r.severity_id)
        before[r.finding_id] = r.severity_id
        if r.severity_id >= min_severity and (versions == "all" or r.activity_id == 1 or raised):
            out.add(f"{r.finding_id}.{r.version}")
    return out


def queued(store: Store, sink: str | None = None) -> set[tuple[str, int, str]]:
    query = select(outbox.c.finding_id, outbox.c.version, outbox.c.sink)
    if sink is not None:
        query = query.where(outbox.c.sink == sink)
    with store.engine.connect() as conn:
        return {tuple(r) for r in conn.execute(query)}


def webhook_entry(name: str, server: WebhookServer, key_file: str, **filters) -> dict:
    return {"type": "webhook", "name": name, "url": server.url + "/in",
            "secret": {"file": key_file}, **filters}


def write_config(path: Path, sinks: list[dict], **sections) -> Path:
    """A config with the repository's rules and these sinks; webhook secrets go to files."""
    doc = {"rules": {"directory": str(RULES)}, "sinks": sinks, **sections}
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str, env: dict | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "secretscope", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=cwd)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line a wrong invocation prints (and nothing else)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def hooks(tmp_path):
    """Two Standard Webhooks receivers, their secrets in files beside the config."""
    servers = {"all": WebhookServer(), "raises": WebhookServer()}
    for name, s in servers.items():
        (tmp_path / f"{name}.key").write_text(s.secret + "\n")
    yield servers
    for s in servers.values():
        s.close()


def received(server: WebhookServer) -> Counter:
    return Counter(server.received)


# --- deliver routes what is stored ---------------------------------------------------------

def test_deliver_sends_findings_stored_before_its_sinks_existed(db_url, events, hooks,  # noqa: F811
                                                                 tmp_path):
    store = Store(db_url)  # a replay with no sinks configured: nothing queued when stored
    replay_into(store, events)
    rows = stored_rows(store)
    assert store.count(outbox) == 0
    store.close()
    everything = expected(rows, 1)
    raises = expected(rows, 4, "raises")
    assert len(everything) > len(raises) > 3 and not raises <= expected(rows, 5)
    config = write_config(tmp_path / "late.yaml", [
        webhook_entry("all", hooks["all"], "all.key", min_severity="informational"),
        webhook_entry("raises", hooks["raises"], "raises.key", min_severity="high",
                      versions="raises")])

    first = cli("deliver", "--once", "--config", str(config), "--store", db_url)
    assert first.returncode == 0, first.stderr
    assert (f"routed {len(everything):,} finding versions to all, {len(raises):,} finding "
            f"versions to raises") in first.stderr
    # one pass sends a finding's later versions as soon as the earlier ones arrived
    assert received(hooks["all"]) == Counter({k: 1 for k in everything})
    assert received(hooks["raises"]) == Counter({k: 1 for k in raises})

    last = cli("deliver", "--once", "--config", str(config), "--store", db_url)
    assert last.returncode == 0, last.stderr
    assert last.stderr.splitlines() == [
        "0 delivered; 0 retried; 0 dead-lettered",
        f"all: {len(everything):,} routed, {len(everything):,} delivered, nothing pending: "
        "all delivered",
        f"raises: {len(raises):,} routed, {len(raises):,} delivered, nothing pending: "
        "all delivered"]
    assert sum(hooks["all"].received.values()) == len(everything)  # nothing sent again


def test_routing_at_delivery_queues_what_routing_at_store_time_queues(db_url, events):  # noqa: F811
    filters = {"all": (1, "all"), "crit": (5, "all"), "raises": (3, "raises"),
               "info-raises": (1, "raises")}
    at_store = [Route(f"s-{n}", m, v) for n, (m, v) in filters.items()]
    at_deliver = [Route(f"d-{n}", m, v) for n, (m, v) in filters.items()]
    store = Store(db_url, routes=at_store)
    replay_into(store, events)
    try:
        rows = stored_rows(store)
        assert route(store, at_deliver) == {
            f"d-{n}": len(expected(rows, m, v)) for n, (m, v) in filters.items()}
        for name in filters:
            by_store = {(f, v) for f, v, _ in queued(store, f"s-{name}")}
            by_deliver = {(f, v) for f, v, _ in queued(store, f"d-{name}")}
            assert by_store == by_deliver and by_store, name
        assert len(queued(store, "d-info-raises")) < len(queued(store, "d-all"))
        # again: everything is queued already, whoever queued it
        assert route(store, at_store + at_deliver) == {r.name: 0 for r in at_store + at_deliver}
        assert route(store, at_deliver, since=datetime.now(timezone.utc) - timedelta(hours=1)) \
            == {r.name: 0 for r in at_deliver}
    finally:
        store.close()


def test_delivered_and_dead_lettered_versions_are_never_queued_again(tmp_path, events, hooks):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = write_config(tmp_path / "hook.yaml", [
        webhook_entry("hook", hooks["all"], "all.key", min_severity="high")])
    settings = load_settings(config)
    store = Store(url, routes=settings.sinks)  # this store routes at store time too
    replay_into(store, events)
    keys = expected(stored_rows(store), 4)
    assert {f"{f}.{v}" for f, v, _ in queued(store)} == keys
    store.close()
    hooks["all"].script.fail(2, 400, b"rejected")  # refused for good: dead letters

    first = cli("deliver", "--once", "--config", str(config), "--store", url)
    assert first.returncode == 0, first.stderr
    assert not first.stderr.startswith("routed")  # the store had queued them all
    assert "2 dead-lettered (secretscope redrive --sink hook)" in first.stderr
    store = Store(url)
    with store.engine.connect() as conn:
        dead = {f"{r.finding_id}.{r.version}" for r in conn.execute(select(delivery_dead_letters))}
    assert len(dead) == 2
    assert route(store, routes_of(settings.sinks)) == {"hook": 0}  # not even the dead ones
    assert set(hooks["all"].received) == keys - dead
    assert received(hooks["all"]) == Counter({k: 1 for k in keys - dead})
    again = cli("deliver", "--once", "--config", str(config), "--store", url)
    assert again.returncode == 0 and again.stderr.startswith("0 delivered; 0 retried; 0 dead-l")

    redrive = cli("redrive", "--sink", "hook", "--config", str(config), "--store", url)
    assert redrive.returncode == 0 and redrive.stdout == "redriven 2 dead letters\n"
    assert cli("deliver", "--once", "--config", str(config), "--store", url).returncode == 0
    assert received(hooks["all"]) == Counter({k: 1 for k in keys})
    store.close()


@pytest.mark.slow
def test_deliver_next_to_a_running_pipeline_sends_each_version_once(
        db_url, events, hooks, tmp_path):  # noqa: F811
    """The pipeline stores versions (and routes them to "all" itself) while deliver workers
    route to "all" and "raises" and send: each version arrives once per sink. Two workers on
    PostgreSQL, where claims lock rows; one on SQLite, which takes one deliver process."""
    config = write_config(tmp_path / "both.yaml", [
        webhook_entry("all", hooks["all"], "all.key", min_severity="informational"),
        webhook_entry("raises", hooks["raises"], "raises.key", min_severity="high",
                      versions="raises")])
    settings = load_settings(config)
    writer = Store(db_url, routes=settings.sinks[:1])
    stores = [Store(db_url) for _ in range(2 if db_url.startswith("postgresql") else 1)]
    workers = [DeliveryWorker(s, {c.name: build_sink(c, settings.base_dir)
                                  for c in settings.sinks},
                              RetryPolicy(0.01, 0.05, 60, rng=random.Random(i)),
                              poll_seconds=0.02, metrics=DeliveryMetrics(CollectorRegistry()),
                              routes=routes_of(settings.sinks))
               for i, s in enumerate(stores)]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in threads:
        t.start()
    try:
        replay_into(writer, events)
        rows = stored_rows(writer)
        want = {"all": expected(rows, 1), "raises": expected(rows, 4, "raises")}

        def arrived() -> bool:
            return all(set(hooks[n].received) == want[n] for n in want)

        wait_for(arrived, 120, lambda: f"every version at both receivers; missing "
                 f"{ {n: len(want[n] - set(hooks[n].received)) for n in want} }")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for w in workers:
            for sink in w.sinks.values():
                sink.close()
    for name in want:
        assert received(hooks[name]) == Counter({k: 1 for k in want[name]}), name
    assert Outbox(writer).counts() == {
        n: {"pending": 0, "delivered": len(want[n]), "dead": 0} for n in want}
    for s in (*stores, writer):
        s.close()


def test_the_deliver_service_sends_what_is_stored_while_it_runs(tmp_path, hooks):
    """``deliver`` without --once, for a sink only its config names: versions stored after it
    started (by a process routing to no sink) arrive, and SIGTERM ends it cleanly."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = write_config(tmp_path / "late.yaml", [webhook_entry("late", hooks["all"],
                                                                 "all.key")],
                          delivery={"poll_seconds": 0.05})
    Store(url).close()
    proc = subprocess.Popen([sys.executable, "-m", "secretscope", "deliver", "--config",
                             str(config), "--store", url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        # printed once it has routed and looked at the outbox
        wait_for(lambda: lines, 60, lambda: f"deliver's first line (exit {proc.poll()})")
        assert lines[0] == "late: nothing to deliver: the store holds no findings yet\n", lines
        store = Store(url)
        made = [make_finding(f"ev-live-{i}") for i in range(3)]
        store.add_findings(made)
        store.close()
        want = {f"{f.id}.1" for f in made}
        wait_for(lambda: set(hooks["all"].received) == want, 60,
                 lambda: f"the versions stored while deliver ran; got {hooks['all'].received}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert len(lines) == 1, lines  # nothing went wrong on the way
    assert received(hooks["all"]) == Counter({k: 1 for k in want})


def test_a_running_worker_routes_what_is_stored_while_it_runs(db_url):  # noqa: F811
    """A pass when idle sees versions stored since the previous one; a version whose stored
    time lies before that (a clock behind, a late commit) is caught by the next full pass."""
    store = Store(db_url)
    wall = [datetime.now(timezone.utc).timestamp()]
    worker = DeliveryWorker(store, {}, RetryPolicy(), routes=[Route("hook", 1)],
                            metrics=DeliveryMetrics(CollectorRegistry()), wall=lambda: wall[0])
    assert worker.route() == {"hook": 0}
    store.add_findings([make_finding("ev-route-1")])
    assert worker.route() == {"hook": 1}
    late = make_finding("ev-route-2")
    store.add_findings([late])
    with store.engine.begin() as conn:  # as if stored by a host whose clock is a day behind
        conn.execute(finding_versions.update().where(finding_versions.c.finding_id == late.id)
                     .values(created_at=datetime.now(timezone.utc) - timedelta(days=1)))
    assert worker.route() == {"hook": 0}
    wall[0] += FULL_ROUTE_SECONDS
    assert worker.route() == {"hook": 1}
    assert {f for f, _, _ in queued(store, "hook")} == {make_finding("ev-route-1").id, late.id}
    store.close()


# --- what deliver says --------------------------------------------------------------------

def test_deliver_without_sinks_is_an_error_naming_the_section(tmp_path):
    config = write_config(tmp_path / "none.yaml", [])
    line = one_error_line(cli("deliver", "--once", "--config", str(config), "--store",
                              f"sqlite:///{tmp_path / 's.db'}"))
    assert "no sinks configured" in line and "sinks:" in line and str(config) in line


def test_deliver_says_why_nothing_is_pending(tmp_path, hooks):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = write_config(tmp_path / "hook.yaml", [
        webhook_entry("hook", hooks["all"], "all.key", min_severity="high")])
    empty = cli("deliver", "--once", "--config", str(config), "--store", url)
    assert empty.returncode == 0, empty.stderr
    assert "hook: nothing to deliver: the store holds no findings yet" in empty.stderr

    store = Store(url)
    store.add_findings([make_finding("ev-why-1"), make_finding("ev-why-2")])  # medium severity
    store.close()
    filtered = cli("deliver", "--once", "--config", str(config), "--store", url)
    assert filtered.returncode == 0, filtered.stderr
    assert ("hook: nothing routed: none of the 2 finding versions in the store passes its "
            "filters (min_severity high, every version)") in filtered.stderr
    assert received(hooks["all"]) == Counter()

    hooks["all"].script.fail(10, 503)
    lower = write_config(tmp_path / "low.yaml", [
        webhook_entry("hook", hooks["all"], "all.key", min_severity="low")])
    failing = cli("deliver", "--once", "--config", str(lower), "--store", url)
    assert failing.returncode == 0, failing.stderr
    assert "routed 2 finding versions to hook" in failing.stderr
    assert "hook: 2 routed, 0 delivered, 2 pending (2 after failed attempts, next attempt in " \
        in failing.stderr
    assert "last error: HTTP 503" in failing.stderr


def test_backlog_names_sinks_the_config_no_longer_has(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}", routes=[Route("old", 1)])
    store.add_findings([make_finding("ev-old-1")])
    lines = explain(backlog(store, [Route("new", 1)]), datetime.now(timezone.utc))
    assert lines == ["new: nothing routed: none of the 1 finding versions in the store passes "
                     "its filters (min_severity informational, every version)",
                     "old: not in this config, left alone (1 pending, 0 delivered, "
                     "0 dead-lettered)"]
    store.close()


# --- redrive -------------------------------------------------------------------------------

def test_redrive_of_a_sink_nobody_names_is_an_error(tmp_path, hooks):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    config = write_config(tmp_path / "hook.yaml", [webhook_entry("hook", hooks["all"],
                                                                 "all.key")])
    store = Store(url, routes=[Route("gone", 1)])
    store.add_findings([make_finding("ev-redrive-1")])
    store.close()
    line = one_error_line(cli("redrive", "--sink", "hokk", "--config", str(config),
                              "--store", url))
    assert "no sink named 'hokk'" in line and "hook" in line and "no dead letters" in line
    ok = cli("redrive", "--sink", "hook", "--config", str(config), "--store", url)
    assert ok.returncode == 0 and ok.stdout == "redriven 0 dead letters\n", ok.stderr

    # a sink gone from the config still has its dead letters: those can be redriven
    store = Store(url)
    fid = make_finding("ev-redrive-1").id
    with store.engine.begin() as conn:
        conn.execute(outbox.delete())
        conn.execute(delivery_dead_letters.insert().values(
            finding_id=fid, version=1, sink="gone", reason="HTTP 400", attempts=1,
            dead_at=datetime.now(timezone.utc)))
    store.close()
    moved = cli("redrive", "--sink", "gone", "--config", str(config), "--store", url)
    assert moved.returncode == 0 and moved.stdout == "redriven 1 dead letter\n", moved.stderr
    line = one_error_line(cli("redrive", "--sink", "gone", "--store", url))
    assert line.endswith("the embedded default config names no sinks, and there are no dead "
                         "letters")


# --- validate: sinks -----------------------------------------------------------------------

BAD_URLS = [("file:///etc/passwd", "scheme 'file'"), ("ftp://siem.example/in", "scheme 'ftp'"),
            ("not a url", "is not a URL"), ("https:///services/collector", "has no host"),
            ("siem.example:8088/in", "is not an http:// or https:// URL"),
            ("http://siem.example:99999/in", "is not a URL")]
URL_KEYS = {"webhook": "url", "splunk_hec": "url", "elastic": "url", "azure_logs": "endpoint",
            "secops": "url", "pagerduty": "url"}


def _sink_entry(kind: str, key: str, url: str) -> dict:
    cred = {"env": "SINK_SECRET"}
    entry = {"type": kind, "name": f"my-{kind}", key: url}
    entry.update({"webhook": {"secret": cred}, "splunk_hec": {"token": cred},
                  "elastic": {}, "secops": {"api_key": cred}, "pagerduty": {"routing_key": cred},
                  "azure_logs": {"rule_id": "dcr-1", "tenant_id": "t", "client_id": "c",
                                 "client_secret": cred}}[kind])
    return entry


@pytest.mark.parametrize("kind, key", sorted(URL_KEYS.items()))
@pytest.mark.parametrize("url, why", BAD_URLS)
def test_a_sink_url_that_is_not_http_fails_at_load_naming_file_sink_and_key(
        kind, key, url, why, tmp_path):
    config = write_config(tmp_path / "bad.yaml", [_sink_entry(kind, key, url)])
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: sinks.0.{kind}.{key}: ")
    assert f"sink 'my-{kind}'" in message and why in message


def test_validate_rejects_bad_sink_urls_in_one_line(tmp_path):
    config = write_config(tmp_path / "bad.yaml", [
        {"type": "webhook", "name": "hook", "url": "file:///etc/passwd",
         "secret": {"env": "X"}},
        {"type": "syslog", "name": "siem", "host": "siem.example:514"}])
    line = one_error_line(cli("validate", str(config)))
    assert "sinks.0.webhook.url" in line and "sink 'hook'" in line and "scheme 'file'" in line
    assert "sinks.1.syslog.host" in line and "give the port as port:" in line


@pytest.mark.parametrize("host, bad", [("siem.example", False), ("10.0.0.7", False),
                                       ("[::1]", False), ("", True), ("tcp://siem.example", True),
                                       ("siem.example:6514", True), ("siem example", True)])
def test_a_syslog_host_is_a_bare_host(host, bad):
    entry = {"type": "syslog", "name": "siem", "host": host, "port": 6514}
    if bad:
        with pytest.raises(ValidationError, match="sink 'siem': host .* is not a host name"):
            SyslogSink(**entry)
    else:
        assert SyslogSink(**entry).host == host.strip("[]")


def test_a_url_password_is_masked_in_errors(tmp_path):
    config = write_config(tmp_path / "bad.yaml", [
        {"type": "elastic", "name": "es", "url": "ftp://elastic:S3cr3t-pw@es.example/?k=tok"}])
    line = one_error_line(cli("validate", str(config)))
    assert "S3cr3t-pw" not in line and "tok" not in line and "elastic:***@es.example" in line


def _whsec(n: int, pad: bool = True, salt: int = 0) -> str:
    """A well-formed secret of ``n`` bytes; fixed for a (n, salt), since parametrized ids made
    of it must be the same each time the tests are collected (pytest-xdist collects per worker)."""
    body = base64.b64encode(bytes((i * 37 + 11 + salt * 101) % 256 for i in range(n))).decode()
    return "whsec_" + (body if pad else body.rstrip("="))


@pytest.mark.parametrize("secret, why", [
    ("c2VjcmV0LWtleS13aXRob3V0LXRoZS1wcmVmaXgtMTIzNA==", "does not start with whsec_"),
    ("whsec_not*base64!", "is not base64 after whsec_"),
    (_whsec(10), "holds a 10-byte key; Standard Webhooks keys have 24 to 64 bytes"),
    (_whsec(65), "holds a 65-byte key"),
])
def test_validate_checks_webhook_secrets(secret, why, tmp_path):
    (tmp_path / "hook.key").write_text(secret + "\n")
    config = write_config(tmp_path / "hook.yaml", [
        {"type": "webhook", "name": "hook", "url": "https://siem.example/in",
         "secret": {"file": "hook.key"}}])
    line = one_error_line(cli("validate", str(config)))
    # the file named as the config resolved it: relative to the config file's folder
    assert f"sinks.hook.secret (file {tmp_path / 'hook.key'}): the secret {why}" in line
    assert secret not in line and secret[6:] not in line


def test_validate_checks_credentials_and_files_are_there(tmp_path):
    config = write_config(tmp_path / "creds.yaml", [
        {"type": "webhook", "name": "hook", "url": "https://siem.example/in",
         "secret": {"env": "SS_TEST_HOOK_SECRET"}},
        {"type": "splunk_hec", "name": "splunk", "url": "https://splunk.example:8088/x",
         "token": {"file": "missing.token"}, "ca_file": "missing-ca.pem"},
        {"type": "slack", "name": "slack", "webhook_url": {"env": "SS_TEST_SLACK"}}])
    env = {"SS_TEST_SLACK": "ftp://hooks.slack.example/services/T0/B0/XyZsecretpath"}
    line = one_error_line(cli("validate", str(config), env=env))
    assert "sinks.hook.secret: environment variable SS_TEST_HOOK_SECRET is not set" in line
    assert f"sinks.splunk.token: cannot read {tmp_path / 'missing.token'}" in line
    assert f"sinks.splunk.ca_file: {tmp_path / 'missing-ca.pem'}: no such file" in line
    assert ("sinks.slack.webhook_url (environment variable SS_TEST_SLACK): the webhook URL is "
            "not an http:// or https:// URL") in line
    assert "XyZsecretpath" not in line

    (tmp_path / "missing.token").write_text("hec-token\n")
    (tmp_path / "missing-ca.pem").write_text("a CA bundle\n")
    env = {"SS_TEST_SLACK": "https://hooks.slack.example/services/T0/B0/XyZsecretpath",
           "SS_TEST_HOOK_SECRET": _whsec(32, pad=False)}
    ok = cli("validate", str(config), env=env, cwd=ROOT.parent)  # files are found from anywhere
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.rstrip().endswith("3 sinks")


def test_sink_problems_is_empty_for_a_good_sink(tmp_path):
    (tmp_path / "k").write_text(_whsec(24) + "\n")
    sink = WebhookSink(type="webhook", name="hook", url="https://siem.example/in",
                       secret={"file": "k"})
    assert sink_problems((sink,), tmp_path) == []
    assert secret_problem(_whsec(64, pad=False)) is None


# --- Standard Webhooks interoperability ----------------------------------------------------

@pytest.mark.parametrize("pad", [True, False])
def test_the_webhook_sink_signs_what_the_reference_implementation_verifies(pad, tmp_path):
    """Padded and unpadded secrets (the reference library accepts both), and a receiver with
    the wrong secret refuses what the sink signed."""
    with WebhookServer() as server:
        server.secret = _whsec(32, pad=pad)
        (tmp_path / "k").write_text(server.secret)
        sink = build_sink(WebhookSink(type="webhook", name="hook", url=server.url + "/in",
                                      secret={"file": "k"}), tmp_path)
        doc = {"finding_info": {"uid": "f-1"}, "time": 1, "activity_id": 1}
        (outcome,) = sink.send([Delivery("f-1", 3, doc)])
        assert outcome.ok, outcome.reason
        assert server.messages["f-1.1"]["data"] == doc
        req = server.requests[-1]
        standardwebhooks.Webhook(server.secret).verify(req.body, req.headers)
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(_whsec(32, salt=1)).verify(req.body, req.headers)
        server.secret = _whsec(32, salt=1)
        (refused,) = sink.send([Delivery("f-1", 3, doc, 2)])
        sink.close()
    assert (refused.ok, refused.retryable, refused.reason) == (False, False,
                                                               "HTTP 401: invalid signature")
