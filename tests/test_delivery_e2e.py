"""Delivery end to end: a replay with eight sinks configured in YAML (credentials from files)
fills the outbox; the worker delivers through the real sinks to local stand-ins of Splunk HEC,
Elastic, PagerDuty, a signed webhook, Google SecOps, Azure Monitor (Sentinel), Slack and a TLS
syslog receiver, while the
stand-ins fail on purpose (503 for a while, 429 with Retry-After, per-item bulk failures, slow
answers, a permanent 400). Every finding reaches every sink it is routed to exactly once by id,
or sits in the dead-letter table with a reason; `secretscope redrive` then delivers those."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from fake_siems import (AzureServer, ElasticServer, PagerDutyServer, SecOpsServer,
                        SlackServer, SplunkHecServer, SyslogServer, WebhookServer, finding_uid,
                        make_local_ca)
from test_outbox import FakeClock, drain

from pipeline.cli import app
from pipeline.config import load_settings
from pipeline.delivery.retry import RetryPolicy
from pipeline.delivery.sinks import build_sink
from pipeline.delivery.worker import DeliveryWorker
from pipeline.simulate import SimulationSpec, simulate
from pipeline.store import Store, delivery_dead_letters, findings

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


def received(servers) -> dict[str, Counter]:
    """Finding ids each stand-in accepted, with how many times."""
    syslog_ids = [re.search(r"findingId=([0-9a-f-]{36})", m.msg)
                  for m in servers["syslog"].messages]
    return {
        "hook": Counter({k: 1 for k in servers["hook"].messages}),
        "splunk": Counter({k: 1 for k in servers["splunk"].events}),
        "es": Counter({k: 1 for k in servers["es"].indices.get("secretscope-findings", {})}),
        "pd": Counter({k: len(v) for k, v in servers["pd"].alerts.items()}),
        "secops": Counter({k: 1 for k in servers["secops"].events}),
        "syslog": Counter(m.group(1) for m in syslog_ids if m),
        "sentinel": Counter(finding_uid(r) for r in servers["sentinel"].records),
        "slack": Counter(m.group(1) for m in (
            re.search(r"finding id `([0-9a-f-]{36})`", str(msg))
            for msg in servers["slack"].messages) if m),
    }


def test_every_finding_reaches_every_sink_once_or_is_dead_lettered(rig):
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
    with store.engine.connect() as conn:
        severity = dict(conn.execute(select(findings.c.id, findings.c.severity_id)).all())
    assert len(severity) >= 10
    routed = {s.name: {f for f, sev in severity.items() if sev >= s.min_severity_id}
              for s in settings.sinks}
    assert routed["pd"] < routed["splunk"] and routed["hook"] <= routed["splunk"]
    assert all(routed.values()) and len(routed) == 8

    # the stand-ins misbehave
    servers["splunk"].script.fail(3, 503, {"text": "Server is busy", "code": 9})
    servers["hook"].script.fail(2, 429, b"slow down", {"Retry-After": "30"})
    stubborn = sorted(routed["es"])[:2]
    servers["es"].fail_items.update({stubborn[0]: 429, stubborn[1]: 400})
    servers["pd"].script.fail(1, 400, {"status": "invalid event", "message": "Event object is "
                                       "invalid", "errors": ["'payload.summary' is missing"]})
    servers["secops"].script.slow(2, seconds=1.5)
    servers["sentinel"].script.fail(2, 503, {"error": {"code": "ServiceUnavailable"}})
    servers["slack"].script.drop(1)

    clock = FakeClock()
    policy = RetryPolicy(base_seconds=0.5, cap_seconds=30, budget_seconds=600,
                         rng=random.Random(3))
    sinks = {s.name: build_sink(s, settings.base_dir) for s in settings.sinks}
    worker = DeliveryWorker(store, sinks, policy, clock=clock, sleep=lambda s: None)
    started = clock()
    drain(worker, clock)
    # the failures did happen, and the webhook's Retry-After: 30 was waited for (event clock)
    assert len(servers["splunk"].requests) >= len(servers["splunk"].batches) + 3
    assert len(servers["hook"].requests) == servers["hook"].deliveries + 2
    assert len(servers["secops"].requests) >= 3
    assert clock() - started >= 60

    with store.engine.connect() as conn:
        dead = {(r.finding_id, r.sink): r.reason
                for r in conn.execute(select(delivery_dead_letters)).all()}
    got = received(servers)
    for name, ids in routed.items():
        delivered = set(got[name])
        dead_ids = {f for f, s in dead if s == name}
        assert delivered | dead_ids == ids, name  # nothing lost
        assert not delivered & dead_ids, name
        assert all(n == 1 for n in got[name].values()), name  # nothing twice
    assert servers["hook"].deliveries == len(servers["hook"].messages)
    assert sum(servers["splunk"].batches) == len(servers["splunk"].events)
    # the permanent failure is dead-lettered at once with the product's answer; the retryable
    # per-item failure only when the retry budget ran out
    assert dead[(stubborn[1], "es")].startswith("HTTP 400") or "400" in dead[(stubborn[1], "es")]
    assert "retry budget exhausted" in dead[(stubborn[0], "es")]
    pd_dead = [f for f, sink in dead if sink == "pd"]
    assert len(pd_dead) == 1 and "HTTP 400" in dead[(pd_dead[0], "pd")]
    assert set(dead) == {(stubborn[0], "es"), (stubborn[1], "es"), (pd_dead[0], "pd")}
    assert len(servers["syslog"].messages) == len(routed["syslog"])

    # the product is fixed; redrive delivers the dead letters, still once each
    servers["es"].fail_items.clear()
    res = CliRunner().invoke(app, ["redrive", "--all", "--config", str(config), "--store", url])
    assert res.exit_code == 0 and "redriven" in res.output, res.output
    drain(worker, clock)
    got = received(servers)
    for name, ids in routed.items():
        assert set(got[name]) == ids and all(n == 1 for n in got[name].values()), name
    for sink in sinks.values():
        sink.close()
    store.close()
