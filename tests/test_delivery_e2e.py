"""Delivery end to end: a replay with eight sinks configured in YAML (credentials from files)
fills the outbox; the worker delivers through the real sinks to local stand-ins of Splunk HEC,
Elastic, PagerDuty, a signed webhook, Google SecOps, Azure Monitor (Sentinel), Slack and a TLS
syslog receiver, while the
stand-ins fail on purpose (503 for a while, 429 with Retry-After, per-item bulk failures, slow
answers, a permanent 400). Every finding version reaches every sink it is routed to exactly once
by its key (finding id, version), or sits in the dead-letter table with a reason; `secretscope
redrive` then delivers those. A growing incident ends at every sink in its final form, and a
replay killed and run again delivers no version twice."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter

import orjson
import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from fake_siems import (AzureServer, ElasticServer, PagerDutyServer, SecOpsServer,
                        SlackServer, SplunkHecServer, SyslogServer, WebhookServer, finding_key,
                        finding_version, make_local_ca)
from helpers import wait_for
from test_outbox import FakeClock, drain

from secretscope.cli import app
from secretscope.config import load_settings
from secretscope.delivery.retry import RetryPolicy
from secretscope.delivery.sinks import build_sink
from secretscope.delivery.worker import DeliveryWorker
from secretscope.runner import Pipeline
from secretscope.simulate import SimulationSpec, simulate
from secretscope.sources.files import replay
from secretscope.store import Store, delivery_dead_letters, finding_versions, findings, outbox

TOKEN, ES_KEY, PD_KEY, SECOPS_KEY = "hec-token-1", "ZXMta2V5Om9r", "R0UTINGKEY0123456789", "AIza-k"
AZ = dict(tenant_id="tenant-1", client_id="client-1", rule_id="dcr-0123",
          stream="Custom-SecretscopeFindings_CL")
AZ_SECRET = "azure-secret-1"


@pytest.fixture
def rig(tmp_path):
    (tmp_path / "ca").mkdir()
    ca = make_local_ca(tmp_path / "ca")
    servers = {"hook": WebhookServer(), "splunk": SplunkHecServer(TOKEN),
               "es": ElasticServer(ES_KEY), "pd": PagerDutyServer(PD_KEY),
               "secops": SecOpsServer(SECOPS_KEY, None), "syslog": SyslogServer(ca),
               "sentinel": AzureServer(client_secret=AZ_SECRET, **AZ), "slack": SlackServer()}
    for name, value in (("hook.key", servers["hook"].secret), ("hec.token", TOKEN),
                        ("es.key", ES_KEY), ("pd.key", PD_KEY), ("secops.key", SECOPS_KEY),
                        ("az.secret", AZ_SECRET), ("slack.url", servers["slack"].webhook_url)):
        (tmp_path / name).write_text(value + "\n")
    base = yaml.safe_load(open(load_settings().base_dir + "/default.yaml"))
    base["rules"] = {"directory": load_settings().base_dir + "/rules"}
    base["sinks"] = [
        {"type": "webhook", "name": "hook", "url": servers["hook"].url + "/in",
         "secret": {"file": "hook.key"}, "min_severity": "medium"},
        {"type": "splunk_hec", "name": "splunk", "token": {"file": "hec.token"}, "batch_size": 7,
         "url": servers["splunk"].url + "/services/collector/event"},
        {"type": "elastic", "name": "es", "url": servers["es"].url, "api_key": {"file": "es.key"},
         "batch_size": 10},
        {"type": "pagerduty", "name": "pd", "url": servers["pd"].enqueue_url,
         "routing_key": {"file": "pd.key"}},
        {"type": "secops", "name": "secops", "url": servers["secops"].feed_url,
         "api_key": {"file": "secops.key"}, "timeout_seconds": 0.5},
        {"type": "syslog", "name": "syslog", "host": "127.0.0.1",
         "port": servers["syslog"].port, "tls": True, "ca_file": str(ca.ca_file), "format": "leef"},
        {"type": "azure_logs", "name": "sentinel", "endpoint": servers["sentinel"].url,
         "authority": servers["sentinel"].url, "client_secret": {"file": "az.secret"}, **AZ},
        {"type": "slack", "name": "slack", "webhook_url": {"file": "slack.url"}},
    ]
    config = tmp_path / "secretscope.yaml"
    config.write_text(yaml.safe_dump(base))
    yield tmp_path, config, servers
    for s in servers.values():
        s.close()


def received(servers, rows) -> dict[str, Counter]:
    """(finding id, version) each stand-in accepted, with how many times. ``rows`` are the
    stored versions: a PagerDuty ``resolve`` carries no document, so it is taken for the first
    Close after the version PagerDuty last heard of (a campaign reopens a closed finding, and
    a finding may reach PagerDuty's route only after its first Close; a resolve sent again
    counts for the last Close again)."""
    closes: dict[str, list[int]] = {}
    for r in rows:
        if r.activity_id == 3:
            closes.setdefault(r.finding_id, []).append(r.version)
    syslog = [(re.search(r"findingId=([0-9a-f-]{36})", m.msg),
               re.search(r"findingVersion=(\d+)", m.msg)) for m in servers["syslog"].messages]
    slack = [re.search(r"finding id `([0-9a-f-]{36})` version (\d+)", str(msg))
             for msg in servers["slack"].messages]
    pd = Counter()
    for key, events in servers["pd"].alerts.items():
        last = 0  # the version PagerDuty last heard of: a resolve is the next Close after it
        for e in events:
            doc = (e.get("payload") or {}).get("custom_details")
            if doc:
                last = finding_version(doc)
            else:
                later = [c for c in closes.get(key, ()) if c > last]
                last = later[0] if later else closes.get(key, [None])[-1]
            pd[(key, last)] += 1
    return {
        "hook": Counter({(k.rsplit(".", 1)[0], int(k.rsplit(".", 1)[1])): n
                         for k, n in servers["hook"].received.items()}),
        "splunk": Counter(servers["splunk"].received),
        "es": Counter(servers["es"].writes),
        "pd": pd,
        "secops": Counter(servers["secops"].received),
        "syslog": Counter((i.group(1), int(v.group(1))) for i, v in syslog if i and v),
        "sentinel": Counter(finding_key(r) for r in servers["sentinel"].records),
        "slack": Counter((m.group(1), int(m.group(2))) for m in slack if m),
    }


def stored(store: Store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(select(finding_versions.c.finding_id, finding_versions.c.version,
                                   finding_versions.c.severity_id, finding_versions.c.activity_id,
                                   finding_versions.c.ocsf)
                            .order_by(finding_versions.c.finding_id,
                                      finding_versions.c.version)).all()


def routing(settings, rows) -> dict[str, set[tuple[str, int]]]:
    """What each sink must get, by its settings: versions at or above its minimum severity;
    for ``versions: raises`` only Creates and versions more severe than the one before."""
    previous: dict[str, int] = {}
    out: dict[str, set] = {s.name: set() for s in settings.sinks}
    for r in rows:
        raised = r.severity_id > previous.get(r.finding_id, r.severity_id)
        previous[r.finding_id] = r.severity_id
        for s in settings.sinks:
            if r.severity_id >= s.min_severity_id and (
                    s.versions == "all" or r.activity_id == 1 or raised):
                out[s.name].add((r.finding_id, r.version))
    return out


def worker_for(store, settings, clock) -> tuple[DeliveryWorker, dict]:
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=30, budget_seconds=600,
                         rng=random.Random(3))
    sinks = {s.name: build_sink(s, settings.base_dir) for s in settings.sinks}
    return DeliveryWorker(store, sinks, policy, clock=clock, sleep=lambda s: None), sinks


@pytest.mark.slow
def test_every_version_reaches_every_sink_once_or_is_dead_lettered(rig):
    """Every sink type, each with its own misbehaviour."""
    tmp_path, config, servers = rig
    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=4, seed=5, target_calls=15000), log)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    res = CliRunner().invoke(app, ["replay", str(log), "--config", str(config), "--store", url,
                                   "--quiet", "--no-table"])
    assert res.exit_code == 0, res.output
    settings = load_settings(config, store__url=url)
    store = Store(url, routes=settings.sinks)
    rows = stored(store)
    last = {r.finding_id: r.version for r in rows}
    assert len(last) >= 10 and any(v > 2 for v in last.values())
    routed = routing(settings, rows)
    assert routed["pd"] < routed["splunk"] and routed["hook"] <= routed["splunk"]
    assert routed["slack"] < routed["pd"]  # creation and raises only
    assert all(routed.values()) and len(routed) == 8

    # the stand-ins misbehave
    servers["splunk"].script.fail(3, 503, {"text": "Server is busy", "code": 9})
    servers["hook"].script.fail(2, 429, b"slow down", {"Retry-After": "30"})
    stubborn = sorted({f for f, v in routed["es"] if v == 1})[:2]
    servers["es"].fail_items.update({(stubborn[0], 1): 429, (stubborn[1], 1): 400})
    servers["pd"].script.fail(1, 400, {"status": "invalid event", "message": "Event object is "
                                       "invalid", "errors": ["'payload.summary' is missing"]})
    servers["secops"].script.slow(2, seconds=1.5)
    servers["sentinel"].script.fail(2, 503, {"error": {"code": "ServiceUnavailable"}})
    servers["slack"].script.drop(1)

    clock = FakeClock()
    worker, sinks = worker_for(store, settings, clock)
    started = clock()
    drain(worker, clock)
    # the failures did happen, and the webhook's Retry-After: 30 was waited for (event clock)
    assert len(servers["splunk"].requests) >= len(servers["splunk"].batches) + 3
    assert len(servers["hook"].requests) == servers["hook"].deliveries + 2
    assert len(servers["secops"].requests) >= 3
    assert clock() - started >= 60

    with store.engine.connect() as conn:
        dead = {(r.finding_id, r.version, r.sink): (r.reason, r.attempts)
                for r in conn.execute(select(delivery_dead_letters)).all()}
    got = received(servers, rows)
    # SecOps has no idempotency key: the two requests it answered after our timeout were
    # processed, so their versions were sent again (at-least-once; each carries its finding id
    # and version for the SIEM to dedupe on). Nothing else arrived twice.
    in_slow = Counter(finding_key(orjson.loads(line)) for req in servers["secops"].requests[:2]
                      for line in req.body.splitlines())
    assert in_slow and all(n == 1 + in_slow[k] for k, n in got["secops"].items() if n > 1)
    got["secops"] = Counter(dict.fromkeys(got["secops"], 1))
    for name, keys in routed.items():
        delivered = set(got[name])
        dead_keys = {(f, v) for f, v, s in dead if s == name}
        assert delivered | dead_keys == keys, name  # nothing lost
        assert not delivered & dead_keys, name
        assert all(n == 1 for n in got[name].values()), name  # nothing twice
    assert servers["hook"].deliveries == len(servers["hook"].messages)
    assert sum(servers["splunk"].batches) == sum(servers["splunk"].received.values())
    # the permanent failure is dead-lettered at once (one attempt) with the product's answer;
    # the retryable per-item failure only when the retry budget ran out
    reason, attempts = dead[(stubborn[1], 1, "es")]
    assert reason.startswith("HTTP 400: document_parsing_exception") and attempts == 1
    reason, attempts = dead[(stubborn[0], 1, "es")]
    assert reason.startswith("retry budget exhausted") and attempts > 2
    pd_dead = [(f, v) for f, v, sink in dead if sink == "pd"]
    assert len(pd_dead) == 1 and dead[(*pd_dead[0], "pd")][0].startswith("HTTP 400")
    assert dead[(*pd_dead[0], "pd")][1] == 1
    # a dead version holds back the later versions of its finding for that sink, so the
    # stubborn findings' later Elastic versions went out only after it died, still in order
    assert set(dead) == {(stubborn[0], 1, "es"), (stubborn[1], 1, "es"), (*pd_dead[0], "pd")}
    assert len(servers["syslog"].messages) == len(routed["syslog"])

    # the product is fixed; redrive delivers the dead letters, still once each
    servers["es"].fail_items.clear()
    res = CliRunner().invoke(app, ["redrive", "--all", "--config", str(config), "--store", url])
    assert res.exit_code == 0 and "redriven 3 dead letters" in res.output, res.output
    drain(worker, clock)
    got = received(servers, rows)
    got["secops"] = Counter(dict.fromkeys(got["secops"], 1))  # see above
    # Elastic answered the late version 1s with a version conflict (it holds newer ones):
    # delivered, nothing written
    late = {(stubborn[0], 1), (stubborn[1], 1)}
    assert not late & set(got["es"])
    assert {k: "delivered" for k in late} == {
        (r.finding_id, r.version): r.status for r in store.engine.connect().execute(
            select(outbox).where(outbox.c.sink == "es", outbox.c.version == 1,
                                 outbox.c.finding_id.in_(stubborn)))}
    got["es"].update(dict.fromkeys(late, 1))
    for name, keys in routed.items():
        assert set(got[name]) == keys and all(n == 1 for n in got[name].values()), name
    # Elastic holds one document per finding, its newest version (the redriven version 1s
    # arrived after newer ones and changed nothing)
    index = servers["es"].indices["logs-secretscope.findings"]
    assert {f: d["secretscope"]["version"] for f, d in index.items()} == {
        f: max(v for g, v in routed["es"] if g == f) for f, _ in routed["es"]}
    for sink in sinks.values():
        sink.close()
    store.close()


def final_forms(servers, rows) -> dict[str, dict[str, int]]:
    """What each stand-in shows as a finding's current state: sink -> finding -> version."""
    newest: dict[str, dict[str, int]] = {}
    for name, got in received(servers, rows).items():
        for f, v in got:
            newest.setdefault(name, {})
            newest[name][f] = max(v, newest[name].get(f, 0))
    return newest


def test_an_incident_that_grows_after_delivery_arrives_in_its_final_form(rig):
    """The service delivers a finding as soon as it is raised; the incident then grows and
    closes. Every stand-in ends with the finding's final version."""
    tmp_path, config, servers = rig
    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=4, seed=5, target_calls=15000), log)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = load_settings(config, store__url=url)
    store = Store(url, routes=settings.sinks)
    pipeline = Pipeline(settings, store=store)
    clock = FakeClock()
    worker, sinks = worker_for(store, settings, clock)
    events = list(replay([log]))
    first_delivered: dict[str, int] = {}  # finding -> its version when first delivered
    for i in range(0, len(events), 500):
        pipeline.process_batch(events[i:i + 500])
        drain(worker, clock)
        for r in stored(store):
            first_delivered.setdefault(r.finding_id, r.version)
    pipeline.finish()
    drain(worker, clock)
    rows = stored(store)
    last = {r.finding_id: r.version for r in rows}
    grown = {f for f, v in first_delivered.items() if last[f] > v}
    closed = {r.finding_id for r in rows if r.activity_id == 3}
    assert grown and closed, "no incident grew or closed after it was delivered: a weak test"
    forms = final_forms(servers, rows)
    routed = routing(settings, rows)
    for name, keys in routed.items():
        expected = {}
        for f, v in keys:
            expected[f] = max(v, expected.get(f, 0))
        assert forms.get(name, {}) == expected, name
        if name != "slack":  # Slack hears of creation and raises only
            assert all(expected[f] == last[f] for f in expected), name
    # the final form is the stored one: Elastic's document is the newest version rendered
    index = servers["es"].indices["logs-secretscope.findings"]
    with store.engine.connect() as conn:
        current = dict(conn.execute(select(findings.c.id, findings.c.version)).all())
    assert {f: d["secretscope"]["version"] for f, d in index.items()} == {
        f: current[f] for f in index}
    for sink in sinks.values():
        sink.close()
    store.close()


@pytest.mark.slow
def test_a_replay_killed_and_rerun_delivers_no_version_twice(rig):
    """A replay killed half way (SIGKILL) has stored and queued some versions; they are
    delivered; the replay is run again over the same input into the same store, and delivery
    goes on: every version reaches every sink once, none twice."""
    tmp_path, config, servers = rig
    log = tmp_path / "fleet.log"
    simulate(SimulationSpec(days=6, seed=5, target_calls=40000), log)
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    cmd = [sys.executable, "-m", "secretscope", "replay", str(log), "--config", str(config),
           "--store", url, "--quiet", "--no-table"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def some_versions_stored() -> bool:
            if not db.exists():
                return False
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                    return conn.execute("select count(*) from finding_versions").fetchone()[0] > 5
            except sqlite3.OperationalError:  # not created yet, or locked by the writer
                return False

        wait_for(some_versions_stored, 120, "the replay to store some finding versions")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    settings = load_settings(config, store__url=url)
    store = Store(url, routes=settings.sinks)
    partial = stored(store)
    clock = FakeClock()
    worker, sinks = worker_for(store, settings, clock)
    drain(worker, clock)
    before = received(servers, partial)
    assert sum(sum(c.values()) for c in before.values()) > 0

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    drain(worker, clock)
    rows = stored(store)
    assert len(rows) > len(partial)
    got = received(servers, rows)
    for name, keys in routing(settings, rows).items():
        assert set(got[name]) == keys, name
        assert all(n == 1 for n in got[name].values()), name
    for sink in sinks.values():
        sink.close()
    store.close()
