"""Every sink against a local stand-in of its product (tests/fake_siems.py): what arrives, how
credentials are checked, and how each failure maps to an Outcome the worker can act on."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secretscope.delivery.config import (AzureLogsSink, Credential, ElasticSink, PagerDutySink,
                                      SecOpsSink, SlackSink, SplunkHecSink, SyslogSink,
                                      WebhookSink)
from secretscope.delivery.model import Delivery, Outcome, Sink
from secretscope.delivery.sinks import SINK_TYPES, build_sink

from fake_siems import (AzureServer, ElasticServer, LocalCA, PagerDutyServer, SecOpsServer,
                        SlackServer, SplunkHecServer, SyslogServer, WebhookServer, make_local_ca)
from helpers import wait_for

TOKEN = "hec-0f1e2d3c-token"
ES_KEY = "ZXMta2V5OnNlY3JldA=="
AZ = dict(tenant_id="72f988bf-tenant", client_id="app-client-1", rule_id="dcr-0123456789abcdef",
          stream="Custom-SecretscopeFindings_CL")
AZ_SECRET = "azure-client-secret-value"
SECOPS_KEY = "AIzaSy-secops-api-key"
SECOPS_FEED = "feed-access-key-value"
PD_KEY = "R0UTINGKEY0123456789abcdefABCDEF"


# ---------------------------------------------------------------------------------------------
# Real findings


@pytest.fixture(scope="module")
def deliveries(tmp_path_factory) -> list[Delivery]:
    from secretscope.config import load_settings
    from secretscope.findings import to_ocsf
    from secretscope.runner import Pipeline
    from secretscope.simulate import SimulationSpec, simulate
    from secretscope.sources.files import replay

    log = tmp_path_factory.mktemp("sim") / "fleet.log"
    simulate(SimulationSpec(days=4, seed=5, target_calls=15000), log)
    events = list(replay([log]))
    p = Pipeline(load_settings())
    found = []
    for i in range(0, len(events), 1000):
        found += p.process_batch(events[i:i + 1000])
    found = [f for f in found if f.activity_id == 1]
    assert len(found) >= 10
    return [Delivery(f.id, f.severity_id, to_ocsf(f), f.version) for f in found]


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> LocalCA:
    return make_local_ca(tmp_path_factory.mktemp("ca"))


def many(deliveries: list[Delivery], n: int) -> list[Delivery]:
    """``n`` deliveries with distinct ids, cycling through the real findings."""
    out = []
    for i in range(n):
        d = deliveries[i % len(deliveries)]
        fid = f"{d.finding_id[:-6]}{i:06d}"
        doc = {**d.ocsf, "metadata": {**d.ocsf["metadata"], "uid": fid},
               "finding_info": {**d.ocsf["finding_info"], "uid": fid}}
        out.append(Delivery(fid, d.severity_id, doc))
    return out


def ids(items) -> list[str]:
    return [d.finding_id for d in items]


# ---------------------------------------------------------------------------------------------
# One rig per HTTP product: its server, a sink pointed at it, and what the server stored


@dataclass
class Rig:
    server: Any
    sink: Sink
    stored: Callable[[], set[str]]
    secrets: tuple[str, ...]


def cred(base: Path, name: str, value: str) -> Credential:
    (base / name).write_text(value + "\n")
    return Credential(file=name)


def rig(kind: str, base: Path, tls: LocalCA | None = None, **opts) -> Rig:
    """``opts`` go to the sink's settings (ca_file, timeout_seconds, fields, max_bytes...)."""
    if kind == "webhook":
        s = WebhookServer(tls)
        settings = WebhookSink(type="webhook", name="hook", url=s.url + "/hooks/secretscope",
                               secret=cred(base, "hook.key", s.secret), **opts)
        return Rig(s, build_sink(settings, base),
                   lambda: {k.rsplit(".", 1)[0] for k in s.messages}, (s.secret,))
    if kind == "splunk_hec":
        s = SplunkHecServer(TOKEN, tls)
        settings = SplunkHecSink(type="splunk_hec", name="splunk", index="security",
                                 url=s.url + "/services/collector/event",
                                 token=cred(base, "hec.token", TOKEN), **opts)
        return Rig(s, build_sink(settings, base), lambda: {k for k, _ in s.events}, (TOKEN,))
    if kind == "elastic":
        s = ElasticServer(ES_KEY, tls)
        settings = ElasticSink(type="elastic", name="es", url=s.url,
                               api_key=cred(base, "es.key", ES_KEY), **opts)
        return Rig(s, build_sink(settings, base),
                   lambda: set(s.indices.get("logs-secretscope.findings", {})), (ES_KEY,))
    if kind == "azure_logs":
        s = AzureServer(client_secret=AZ_SECRET, tls=tls, **AZ)
        settings = AzureLogsSink(type="azure_logs", name="sentinel", endpoint=s.url,
                                 authority=s.url, client_secret=cred(base, "az.secret", AZ_SECRET),
                                 **AZ, **opts)
        return Rig(s, build_sink(settings, base),
                   lambda: {r["finding_info"]["uid"] for r in s.records}, (AZ_SECRET,))
    if kind == "secops":
        s = SecOpsServer(SECOPS_KEY, SECOPS_FEED, tls)
        settings = SecOpsSink(type="secops", name="secops", url=s.feed_url,
                              api_key=cred(base, "secops.key", SECOPS_KEY),
                              feed_secret=cred(base, "secops.feed", SECOPS_FEED), **opts)
        return Rig(s, build_sink(settings, base), lambda: {k for k, _ in s.events},
                   (SECOPS_KEY, SECOPS_FEED))
    if kind == "slack":
        s = SlackServer(tls)
        settings = SlackSink(type="slack", name="slack",
                             webhook_url=cred(base, "slack.url", s.webhook_url), **opts)
        return Rig(s, build_sink(settings, base),
                   lambda: {m["blocks"][0]["text"]["text"].rsplit("`", 2)[1] for m in s.messages},
                   (s.webhook_url, s.path))
    if kind == "pagerduty":
        s = PagerDutyServer(PD_KEY, tls)
        settings = PagerDutySink(type="pagerduty", name="pd", url=s.enqueue_url,
                                 routing_key=cred(base, "pd.key", PD_KEY), **opts)
        return Rig(s, build_sink(settings, base), lambda: set(s.alerts), (PD_KEY,))
    raise AssertionError(kind)


HTTP_KINDS = ["webhook", "splunk_hec", "elastic", "azure_logs", "secops", "slack", "pagerduty"]


@pytest.fixture
def make_rig(tmp_path):
    made: list[Rig] = []

    def make(kind: str, tls: LocalCA | None = None, **opts) -> Rig:
        r = rig(kind, tmp_path, tls, **opts)
        made.append(r)
        return r

    yield make
    for r in made:
        r.sink.close()
        r.server.close()


def warm(r: Rig, deliveries: list[Delivery]) -> None:
    """Let Azure fetch its token first, so scripted failures hit the ingestion call."""
    if isinstance(r.server, AzureServer):
        assert r.sink.send(deliveries[-1:])[0].ok


def assert_no_secrets(outcomes: list[Outcome], secrets: tuple[str, ...]) -> None:
    for o in outcomes:
        for secret in secrets:
            assert secret not in o.reason


# ---------------------------------------------------------------------------------------------
# What every sink shares


def test_registry_covers_every_sink_type():
    from typing import get_args
    from secretscope.delivery.config import SinkSettings
    settings_types = {cls.model_fields["type"].annotation.__args__[0]
                      for cls in get_args(get_args(SinkSettings)[0])}
    assert set(SINK_TYPES) == settings_types


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_happy_path_delivers_every_item_in_order(kind, make_rig, deliveries):
    r = make_rig(kind, batch_size=50)
    assert isinstance(r.sink, Sink) and r.sink.batch_size == 50
    batch = deliveries[:12]
    outcomes = r.sink.send(batch)
    assert outcomes == [Outcome.delivered(fid) for fid in ids(batch)]
    assert r.stored() == set(ids(batch))
    assert r.sink.send([]) == []


@pytest.mark.parametrize("kind", HTTP_KINDS)
@pytest.mark.parametrize("status, retryable", [(503, True), (500, True), (408, True),
                                               (400, False), (501, False), (404, False)])
def test_status_maps_to_retryable_or_permanent(kind, status, retryable, make_rig, deliveries):
    r = make_rig(kind)
    warm(r, deliveries)
    batch = deliveries[:3]  # per-finding sinks make one request each
    body = {"text": "injected", "code": 9 if status == 503 else 6}
    r.server.script.fail(len(batch), status, body)
    outcomes = r.sink.send(batch)
    assert ids(outcomes) == ids(batch)
    assert all(not o.ok and o.retryable is retryable and o.retry_after is None for o in outcomes)
    assert all(o.reason.startswith(f"HTTP {status}: ") and "injected" in o.reason
               for o in outcomes)
    assert_no_secrets(outcomes, r.secrets)
    r.server.script.clear()
    assert r.sink.send(batch) == [Outcome.delivered(fid) for fid in ids(batch)]


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_429_with_retry_after_is_retryable_after_that_long(kind, make_rig, deliveries):
    r = make_rig(kind)
    warm(r, deliveries)
    r.server.script.fail(1, 429, "slow down", headers={"Retry-After": "1"})
    (o,) = r.sink.send(deliveries[:1])
    assert (o.ok, o.retryable, o.retry_after) == (False, True, 1.0)


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_timeout_and_dropped_connection_are_retryable(kind, make_rig, deliveries):
    r = make_rig(kind, timeout_seconds=0.3)
    warm(r, deliveries)
    r.server.script.slow(1, 1.0)
    (o,) = r.sink.send(deliveries[:1])
    assert not o.ok and o.retryable and o.reason.startswith("timeout (127.0.0.1:")
    r.server.script.clear()
    r.server.script.drop(2)  # two, in case the client reopens a connection it found dead
    (o,) = r.sink.send(deliveries[:1])
    assert not o.ok and o.retryable and "127.0.0.1" in o.reason
    assert_no_secrets([o], r.secrets)


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_unreachable_product_is_retryable_without_leaking_credentials(kind, tmp_path,
                                                                      deliveries):
    r = rig(kind, tmp_path)
    r.server.close()  # nothing listens on its port any more
    try:
        outcomes = r.sink.send(deliveries[:2])
    finally:
        r.sink.close()
    assert all(not o.ok and o.retryable and "connection failed (127.0.0.1:" in o.reason
               for o in outcomes)
    assert_no_secrets(outcomes, r.secrets)


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_tls_works_with_the_test_ca_and_fails_without_it(kind, make_rig, ca, deliveries):
    trusted = make_rig(kind, tls=ca, ca_file=str(ca.ca_file))
    assert trusted.server.url.startswith("https://")
    assert trusted.sink.send(deliveries[:2]) == [Outcome.delivered(f) for f in ids(deliveries[:2])]
    untrusted = make_rig(kind, tls=ca)
    outcomes = untrusted.sink.send(deliveries[:2])
    assert all(not o.ok and "certificate verify failed" in o.reason for o in outcomes)
    assert untrusted.stored() == set()


@pytest.mark.parametrize("kind", HTTP_KINDS)
def test_field_selection_is_applied_before_rendering(kind, make_rig, deliveries):
    r = make_rig(kind, fields=("finding_info.title",))
    assert r.sink.send(deliveries[:2]) == [Outcome.delivered(f) for f in ids(deliveries[:2])]
    assert r.stored() == set(ids(deliveries[:2]))
    body = r.server.requests[-1].body
    for d in deliveries[:2]:  # the actor and the trigger event were not selected
        assert d.ocsf["actor"]["user"]["uid"].encode() not in body
        assert d.ocsf["unmapped"]["secretscope"]["trigger_event_uid"].encode() not in body
    assert deliveries[1].ocsf["finding_info"]["title"].encode() in body


# ---------------------------------------------------------------------------------------------
# Webhook


def test_webhook_is_signed_per_standard_webhooks(make_rig, deliveries):
    r = make_rig("webhook")
    d = deliveries[0]
    assert r.sink.send([d]) == [Outcome.delivered(d.finding_id)]
    req = r.server.requests[-1]
    assert req.headers["webhook-id"] == d.key == f"{d.finding_id}.1"
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 5
    assert req.headers["webhook-signature"].startswith("v1,")
    msg = r.server.messages[d.key]
    assert msg["type"] == "secretscope.finding" and msg["data"] == d.ocsf


def test_webhook_with_the_wrong_secret_is_rejected_for_good(make_rig, deliveries, tmp_path):
    r = make_rig("webhook")
    wrong = "whsec_" + base64.b64encode(b"x" * 24).decode()
    settings = WebhookSink(type="webhook", name="hook2", url=r.server.url,
                           secret=cred(tmp_path, "wrong.key", wrong))
    sink = build_sink(settings, tmp_path)
    (o,) = sink.send(deliveries[:1])
    sink.close()
    assert (o.ok, o.retryable, o.reason) == (False, False, "HTTP 401: invalid signature")
    assert r.server.messages == {}


def test_webhook_ecs_format(make_rig, deliveries):
    r = make_rig("webhook", format="ecs")
    d = deliveries[0]
    r.sink.send([d])
    data = r.server.messages[d.key]["data"]
    assert data["event"]["id"] == d.finding_id and data["event"]["kind"] == "alert"


# ---------------------------------------------------------------------------------------------
# Splunk HEC


def test_hec_sends_one_request_per_batch_with_the_token(make_rig, deliveries):
    r = make_rig("splunk_hec")
    assert all(o.ok for o in r.sink.send(deliveries))
    assert r.server.batches == [len(deliveries)]
    assert r.server.requests[-1].headers["authorization"] == f"Splunk {TOKEN}"
    event = r.server.events[(deliveries[0].finding_id, 1)]
    assert event["index"] == "security" and event["sourcetype"] == "secretscope:finding"
    assert event["host"] == socket.gethostname()  # set, not left to the token's default
    assert event["event"] == deliveries[0].ocsf


def test_hec_wrong_token_is_permanent(make_rig, deliveries, tmp_path):
    r = make_rig("splunk_hec")
    settings = SplunkHecSink(type="splunk_hec", name="s2", url=r.server.url +
                             "/services/collector/event", token=cred(tmp_path, "bad", "nope"))
    sink = build_sink(settings, tmp_path)
    outcomes = sink.send(deliveries[:2])
    sink.close()
    assert all(not o.ok and not o.retryable and o.reason.startswith("HTTP 403: ")
               and "Invalid token" in o.reason for o in outcomes)


def test_hec_invalid_event_fails_alone_and_the_rest_are_retried(make_rig, deliveries):
    r = make_rig("splunk_hec")
    batch = deliveries[:5]
    r.server.reject_ids.add(batch[2].finding_id)
    outcomes = r.sink.send(batch)
    assert ids(outcomes) == ids(batch)
    bad = outcomes[2]
    assert not bad.ok and not bad.retryable and "Invalid data format" in bad.reason
    assert all(not o.ok and o.retryable for i, o in enumerate(outcomes) if i != 2)
    r.server.reject_ids.clear()
    retried = [d for i, d in enumerate(batch) if i != 2]
    assert all(o.ok for o in r.sink.send(retried))
    assert {k for k, _ in r.server.events} == set(ids(retried))


def test_hec_server_busy_is_retryable(make_rig, deliveries):
    r = make_rig("splunk_hec")
    r.server.script.fail(1, 503, {"text": "Server is busy", "code": 9})
    (o,) = r.sink.send(deliveries[:1])
    assert o.retryable and o.reason == 'HTTP 503: {"text": "Server is busy", "code": 9}'


# ---------------------------------------------------------------------------------------------
# Elastic


def test_elastic_ids_are_finding_ids_and_resend_is_idempotent(make_rig, deliveries):
    r = make_rig("elastic")
    assert all(o.ok for o in r.sink.send(deliveries))
    index = r.server.indices["logs-secretscope.findings"]
    assert list(index) == ids(deliveries)
    assert all(index[d.finding_id]["event"]["id"] == d.finding_id for d in deliveries)
    assert r.server.requests[-1].headers["authorization"] == f"ApiKey {ES_KEY}"
    # a re-send (e.g. after a lost response) conflicts on create: already delivered
    assert r.sink.send(deliveries[:4]) == [Outcome.delivered(f) for f in ids(deliveries[:4])]
    assert len(index) == len(deliveries)


def later_version(d: Delivery, version: int, activity: int = 2) -> Delivery:
    """Version ``version`` of the finding ``d`` is version 1 of (an Update, or a Close)."""
    ss = {**d.ocsf["unmapped"]["secretscope"], "version": version}
    doc = {**d.ocsf, "activity_id": activity, "type_uid": 200400 + activity,
           "activity_name": {2: "Update", 3: "Close"}[activity],
           "unmapped": {"secretscope": ss}}
    return Delivery(d.finding_id, d.severity_id, doc, version)


def test_elastic_holds_each_findings_newest_version(make_rig, deliveries):
    r = make_rig("elastic")
    d1 = deliveries[0]
    d3 = later_version(d1, 3)
    assert r.sink.send([d1]) == [Outcome.delivered(d1.finding_id)]
    assert r.sink.send([d3]) == [Outcome.delivered(d1.finding_id)]
    index = r.server.indices["logs-secretscope.findings"]
    assert index[d1.finding_id]["secretscope"]["version"] == 3
    # version 2 arriving late (a retry) is a conflict, counted as delivered, and changes nothing
    assert r.sink.send([later_version(d1, 2)]) == [Outcome.delivered(d1.finding_id)]
    assert index[d1.finding_id]["secretscope"]["version"] == 3
    assert r.server.versions[("logs-secretscope.findings", d1.finding_id)] == 3


def test_every_version_is_a_message_of_its_own_for_webhooks(make_rig, deliveries):
    r = make_rig("webhook")
    d1 = deliveries[0]
    versions = [d1, later_version(d1, 2), later_version(d1, 3, activity=3)]
    assert all(o.ok for o in r.sink.send(versions))
    assert sorted(r.server.messages) == [f"{d1.finding_id}.{v}" for v in (1, 2, 3)]
    assert [r.server.messages[f"{d1.finding_id}.{v}"]["data"]["activity_id"]
            for v in (1, 2, 3)] == [1, 2, 3]


def test_pagerduty_gets_every_version_under_one_dedup_key_and_resolves(make_rig, deliveries):
    r = make_rig("pagerduty")
    d1 = deliveries[0]
    versions = [d1, later_version(d1, 2), later_version(d1, 3, activity=3)]
    assert all(o.ok for o in r.sink.send(versions))
    assert [e["event_action"] for e in r.server.alerts[d1.finding_id]] == [
        "trigger", "trigger", "resolve"]
    acked = later_version(deliveries[1], 2)
    acked = Delivery(acked.finding_id, acked.severity_id, {**acked.ocsf, "status_id": 2}, 2)
    assert all(o.ok for o in r.sink.send([deliveries[1], acked]))
    assert [e["event_action"] for e in r.server.alerts[acked.finding_id]] == [
        "trigger", "acknowledge"]


def test_elastic_per_item_failures_in_a_200_response(make_rig, deliveries):
    r = make_rig("elastic")
    batch = deliveries[:5]
    r.server.fail_items = {batch[1].finding_id: 429, batch[2].finding_id: 400,
                           batch[3].finding_id: 503}
    outcomes = r.sink.send(batch)
    assert [o.ok for o in outcomes] == [True, False, False, False, True]
    assert [o.retryable for o in outcomes[1:4]] == [True, False, True]
    assert outcomes[1].reason.startswith("HTTP 429: es_rejected_execution_exception")
    assert outcomes[2].reason.startswith("HTTP 400: document_parsing_exception")
    assert set(r.server.indices["logs-secretscope.findings"]) == {batch[0].finding_id,
                                                            batch[4].finding_id}


def test_elastic_bad_api_key_is_permanent(make_rig, deliveries, tmp_path):
    r = make_rig("elastic")
    settings = ElasticSink(type="elastic", name="es2", url=r.server.url,
                           api_key=cred(tmp_path, "bad", "wrong-key"))
    sink = build_sink(settings, tmp_path)
    outcomes = sink.send(deliveries[:2])
    sink.close()
    assert all(not o.retryable and o.reason.startswith("HTTP 401: ") for o in outcomes)


# ---------------------------------------------------------------------------------------------
# Azure Monitor Logs Ingestion


def test_azure_reuses_its_token_until_it_expires(make_rig, deliveries):
    r = make_rig("azure_logs")
    assert all(o.ok for o in r.sink.send(deliveries[:5]))
    assert all(o.ok for o in r.sink.send(deliveries[5:10]))
    assert r.server.tokens_issued == 1
    rec = r.server.records[0]
    assert rec["TimeGenerated"].endswith("Z") and rec["finding_info"]["uid"] == ids(deliveries)[0]


def test_azure_refetches_a_token_that_expired_early(make_rig, deliveries):
    r = make_rig("azure_logs")
    r.sink.send(deliveries[:1])
    r.server.revoke_tokens()
    (o,) = r.sink.send(deliveries[1:2])
    assert not o.ok and o.retryable and o.reason.startswith("HTTP 401: ")
    assert r.sink.send(deliveries[1:2]) == [Outcome.delivered(deliveries[1].finding_id)]
    assert r.server.tokens_issued == 2


def test_azure_token_lifetime_is_honoured(make_rig, deliveries):
    r = make_rig("azure_logs")
    r.server.token_lifetime = 1  # refreshed at half its lifetime: 0.5 s
    r.sink.send(deliveries[:1])
    # the sink's own refresh time, not a guess at it: a sleep would race a slow machine
    wait_for(lambda: time.monotonic() >= r.sink._token_expires, 5,
             "the Azure token to reach its refresh time")
    r.sink.send(deliveries[1:2])
    assert r.server.tokens_issued == 2


def test_azure_token_endpoint_failures(make_rig, deliveries):
    r = make_rig("azure_logs")
    r.server.script.fail(1, 503, {"error": "temporarily_unavailable"})
    (o,) = r.sink.send(deliveries[:1])
    assert o.retryable and o.reason.startswith("token: HTTP 503: ")
    assert r.sink.send(deliveries[:1])[0].ok and r.server.tokens_issued == 1


def test_azure_bad_client_secret_is_permanent_and_not_leaked(make_rig, deliveries, tmp_path):
    r = make_rig("azure_logs")
    settings = AzureLogsSink(type="azure_logs", name="az2", endpoint=r.server.url,
                             authority=r.server.url, **AZ,
                             client_secret=cred(tmp_path, "bad", "not-the-secret"))
    sink = build_sink(settings, tmp_path)
    outcomes = sink.send(deliveries[:2])
    sink.close()
    assert all(not o.retryable and o.reason.startswith("token: HTTP 401: ") for o in outcomes)
    assert_no_secrets(outcomes, ("not-the-secret",))


def test_azure_chunks_stay_within_one_megabyte(make_rig, deliveries):
    r = make_rig("azure_logs", batch_size=1000)
    batch = many(deliveries, 700)  # ~2.3 MB of records
    outcomes = r.sink.send(batch)
    assert all(o.ok for o in outcomes) and ids(outcomes) == ids(batch)
    assert len(r.server.body_sizes) >= 3
    assert all(size <= 1_000_000 for size in r.server.body_sizes)
    assert [rec["finding_info"]["uid"] for rec in r.server.records] == ids(batch)
    assert r.server.tokens_issued == 1


def test_azure_smaller_cap_and_oversized_record(make_rig, deliveries):
    biggest = max(len(str(d.ocsf)) for d in deliveries)
    r = make_rig("azure_logs", max_bytes=12_000)
    outcomes = r.sink.send(deliveries)
    assert all(size <= 12_000 for size in r.server.body_sizes)
    assert all(o.ok for o in outcomes) and len(r.server.body_sizes) > 1
    tiny = make_rig("azure_logs", max_bytes=biggest // 3)
    outcomes = tiny.sink.send(deliveries)
    too_big = [o for o in outcomes if not o.ok]
    assert too_big and all(not o.retryable and "exceeds max_bytes" in o.reason for o in too_big)


# ---------------------------------------------------------------------------------------------
# Google SecOps


def test_secops_sends_ndjson_with_both_keys(make_rig, deliveries):
    r = make_rig("secops")
    assert all(o.ok for o in r.sink.send(deliveries[:6]))
    req = r.server.requests[-1]
    assert req.headers["x-goog-api-key"] == SECOPS_KEY
    assert req.headers["x-webhook-access-key"] == SECOPS_FEED
    assert len(req.body.split(b"\n")) == 6
    assert r.server.events[(deliveries[0].finding_id, 1)] == deliveries[0].ocsf


def test_secops_requests_stay_under_the_cap(make_rig, deliveries):
    r = make_rig("secops", max_bytes=15_000)
    assert all(o.ok for o in r.sink.send(deliveries))
    assert len(r.server.body_sizes) > 1 and max(r.server.body_sizes) <= 15_000
    assert {k for k, _ in r.server.events} == set(ids(deliveries))
    small = make_rig("secops", max_bytes=3_000)
    outcomes = small.sink.send(deliveries)
    rejected = [o for o in outcomes if not o.ok]
    assert rejected and all(not o.retryable and "exceeds max_bytes" in o.reason
                            for o in rejected)
    assert {k for k, _ in small.server.events} == {o.finding_id for o in outcomes if o.ok}


def test_secops_wrong_access_key_is_permanent(make_rig, deliveries, tmp_path):
    r = make_rig("secops")
    settings = SecOpsSink(type="secops", name="so2", url=r.server.feed_url,
                          api_key=cred(tmp_path, "k", SECOPS_KEY),
                          feed_secret=cred(tmp_path, "f", "wrong"))
    sink = build_sink(settings, tmp_path)
    (o,) = sink.send(deliveries[:1])
    sink.close()
    assert not o.retryable and o.reason.startswith("HTTP 403: ")
    assert_no_secrets([o], (SECOPS_KEY, "wrong"))


# ---------------------------------------------------------------------------------------------
# Slack and PagerDuty


def test_slack_posts_a_short_block(make_rig, deliveries):
    r = make_rig("slack")
    d = max(deliveries, key=lambda x: x.severity_id)
    r.sink.send([d])
    msg = r.server.messages[-1]
    text = msg["blocks"][0]["text"]["text"]
    assert msg["text"].startswith(d.ocsf["severity"]) and d.ocsf["finding_info"]["title"] in text
    assert len(text) < 3000


def test_slack_error_words_do_not_reveal_the_webhook_url(make_rig, deliveries):
    r = make_rig("slack")
    r.server.script.fail(1, 404, "no_service")
    (o,) = r.sink.send(deliveries[:1])
    assert (o.retryable, o.reason) == (False, "HTTP 404: no_service")
    assert_no_secrets([o], r.secrets)


def test_pagerduty_dedup_key_is_the_finding_id(make_rig, deliveries):
    r = make_rig("pagerduty")
    batch = deliveries[:4]
    assert all(o.ok for o in r.sink.send(batch))
    assert all(o.ok for o in r.sink.send(batch[:1]))  # a re-send joins the same alert
    assert set(r.server.alerts) == set(ids(batch))
    assert len(r.server.alerts[batch[0].finding_id]) == 2
    ev = r.server.alerts[batch[1].finding_id][0]
    assert ev["event_action"] == "trigger" and ev["routing_key"] == PD_KEY
    sev = {5: "critical", 4: "error", 3: "warning"}.get(batch[1].severity_id, "info")
    assert ev["payload"]["severity"] == sev
    assert ev["payload"]["custom_details"]["finding_info"]["uid"] == batch[1].finding_id


def test_pagerduty_invalid_routing_key_is_permanent(make_rig, deliveries, tmp_path):
    r = make_rig("pagerduty")
    settings = PagerDutySink(type="pagerduty", name="pd2", url=r.server.enqueue_url,
                             routing_key=cred(tmp_path, "k", "not-a-key"))
    sink = build_sink(settings, tmp_path)
    (o,) = sink.send(deliveries[:1])
    sink.close()
    assert not o.retryable and o.reason.startswith("HTTP 400: ") and "routing key" in o.reason
    assert_no_secrets([o], ("not-a-key",))


# ---------------------------------------------------------------------------------------------
# Syslog


@pytest.fixture
def syslog_rig(tmp_path):
    made = []

    def make(tls: LocalCA | None = None, **opts):
        server = SyslogServer(tls)
        settings = SyslogSink(type="syslog", name="syslog", host="127.0.0.1", port=server.port,
                              tls=tls is not None, **opts)
        sink = build_sink(settings, tmp_path)
        made.append((server, sink))
        return server, sink

    yield make
    for server, sink in made:
        sink.close()
        server.close()


@pytest.mark.parametrize("fmt, prefix", [("cef", "CEF:0|"), ("leef", "LEEF:2.0|")])
def test_syslog_tcp_octet_counted_rfc5424(fmt, prefix, syslog_rig, deliveries):
    server, sink = syslog_rig(format=fmt)
    assert isinstance(sink, Sink) and sink.name == "syslog" and sink.batch_size == 100
    assert sink.send(deliveries) == [Outcome.delivered(f) for f in ids(deliveries)]
    got = server.wait_for(len(deliveries))
    assert not server.errors and len(got) == len(deliveries)
    for d, m in zip(deliveries, got):
        assert m.version == 1 and m.app_name == "secretscope" and m.msgid == "finding"
        assert m.facility == 10 and m.severity == {5: 2, 4: 3, 3: 4, 2: 5, 1: 6}[d.severity_id]
        assert m.msg.startswith(prefix) and d.finding_id in m.msg
    assert server.connections == 1


def test_syslog_tls_with_and_without_the_ca(syslog_rig, ca, deliveries):
    server, sink = syslog_rig(tls=ca, ca_file=str(ca.ca_file))
    assert all(o.ok for o in sink.send(deliveries[:3]))
    assert len(server.wait_for(3)) == 3
    _, untrusted = syslog_rig(tls=ca)
    outcomes = untrusted.send(deliveries[:3])
    assert all(not o.ok and o.retryable and "certificate verify failed" in o.reason
               for o in outcomes)


def test_syslog_reconnects_after_the_receiver_closed(syslog_rig, deliveries):
    server, sink = syslog_rig()
    server.drop_after(2)
    first = sink.send(deliveries[:2])
    assert all(o.ok for o in first), first
    assert len(server.wait_for(2)) == 2
    assert server.dropped.wait(5), "the receiver did not close its end"
    assert all(o.ok for o in sink.send(deliveries[2:5]))
    assert len(server.wait_for(5)) == 5 and server.connections == 2


def test_syslog_unreachable_is_retryable(tmp_path, deliveries):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = build_sink(SyslogSink(type="syslog", name="sl", host="127.0.0.1", port=port,
                                 tls=False, timeout_seconds=0.5), tmp_path)
    outcomes = sink.send(deliveries[:2])
    sink.close()
    assert all(not o.ok and o.retryable and f"127.0.0.1:{port}" in o.reason for o in outcomes)
