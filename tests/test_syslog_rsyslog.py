"""The syslog sink against a real rsyslogd over TLS (RFC 5425, octet-counted RFC 5424 frames):
what rsyslog parses out of each message, that it logs no error for our connections, and how a
restart or a wrong CA becomes an outcome the worker can retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from secretscope.config import load_settings
from secretscope.delivery.config import SyslogSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.renderings import cef_header, leef_header, to_cef, to_leef
from secretscope.delivery.sinks import build_sink
from secretscope.delivery.sinks._common import iso_time
from secretscope.delivery.sinks.syslog import SYSLOG_SEVERITY, frame
from secretscope.findings import to_ocsf
from secretscope.runner import Pipeline
from secretscope.sources.files import replay

from fake_siems import make_local_ca
from rsyslog_server import Received, Rsyslog, rsyslog, rsyslog_ca  # noqa: F401


def delivery(*, finding_id: str, severity_id: int, ocsf: dict, version: int = 1) -> Delivery:
    """The one place these tests build a Delivery."""
    return Delivery(finding_id=finding_id, severity_id=severity_id, ocsf=ocsf, version=version)


@pytest.fixture(scope="module")
def findings(samples) -> list[Delivery]:
    """The findings the pipeline raises on the sample Vault audit lines."""
    events = list(replay(sorted(samples.glob("vault_audit_*.jsonl"))))
    found = [f for f in Pipeline(load_settings()).process_batch(events) if f.version == 1]
    assert len(found) >= 2, "the sample lines raise findings of more than one rule"
    return [delivery(finding_id=f.id, severity_id=f.severity_id, ocsf=to_ocsf(f)) for f in found]


def numbered(findings: list[Delivery], n: int, tag: str) -> list[Delivery]:
    """``n`` deliveries with distinct ids (``tag`` keeps batches apart), cycling the findings."""
    out = []
    for i in range(n):
        d = findings[i % len(findings)]
        fid = f"{d.finding_id[:-7]}{tag}{i:06d}"
        doc = {**d.ocsf, "metadata": {**d.ocsf["metadata"], "uid": fid},
               "finding_info": {**d.ocsf["finding_info"], "uid": fid}}
        out.append(delivery(finding_id=fid, severity_id=d.severity_id, ocsf=doc))
    return out


def sink_for(server: Rsyslog, tmp_path: Path, *, ca_file: Path | None = None, **opts):
    settings = SyslogSink(**{"type": "syslog", "name": "rsyslog", "host": "127.0.0.1",
                             "port": server.tls_port, "tls": True, "timeout_seconds": 2.0,
                             "ca_file": str(ca_file or server.ca.ca_file), **opts})
    return build_sink(settings, tmp_path)


def delivered(items: list[Delivery]) -> list[Outcome]:
    return [Outcome.delivered(d.finding_id) for d in items]


def received_ids(got: list[Received]) -> list[str]:
    """The finding ids of received CEF messages, in arrival order."""
    return [m.msg.split("externalId=")[1].split(" ")[0] for m in got]


def split_unescaped(text: str, sep: str, limit: int) -> list[str]:
    """Split on ``sep`` not preceded by a backslash escape, at most ``limit`` times, unescaping
    ``\\\\`` and ``\\sep`` in the parts (CEF and LEEF header rules)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if c == sep and len(parts) < limit:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def parse_cef(msg: str) -> tuple[list[str], str]:
    fields = split_unescaped(msg, "|", 7)
    assert fields[0] == "CEF:0", msg[:80]
    return fields[1:7], fields[7]


def parse_leef(msg: str) -> tuple[list[str], dict[str, str]]:
    fields = split_unescaped(msg, "|", 6)
    assert fields[0] == "LEEF:2.0", msg[:80]
    assert fields[5] == "x09", f"declared delimiter {fields[5]!r}"
    attrs = dict(pair.split("=", 1) for pair in fields[6].split("\t"))
    return fields[1:5], attrs


# ---------------------------------------------------------------------------------------------
# What arrives


def test_cef_and_leef_over_tls_arrive_once_each_in_order(rsyslog, findings, tmp_path):
    cef_items, leef_items = numbered(findings, 7, "c"), numbered(findings, 5, "l")
    cef, leef = sink_for(rsyslog, tmp_path, format="cef"), sink_for(rsyslog, tmp_path,
                                                                    format="leef")
    assert cef.send(cef_items) == delivered(cef_items)
    cef.close()
    assert leef.send(leef_items) == delivered(leef_items)
    leef.close()

    got = rsyslog.wait_for(len(cef_items) + len(leef_items))
    assert len(got) == len(cef_items) + len(leef_items), [m.msg[:60] for m in got]
    for d, m in zip(cef_items + leef_items, got):
        assert (m.version, m.app_name, m.msgid, m.structured_data) == ("1", "secretscope",
                                                                       "finding", "-")
        assert m.facility == 10 and m.severity == SYSLOG_SEVERITY[d.severity_id]
        assert m.timestamp == iso_time(d.ocsf["time"])
    renders = [to_cef] * len(cef_items) + [to_leef] * len(leef_items)
    for d, m, render in zip(cef_items + leef_items, got, renders):
        # rsyslog took the octet count as framing (RFC 5425), not as part of the message
        sent = frame(d, render(d.ocsf), m.hostname, "secretscope", m.procid)
        assert sent == f"{len(m.rawmsg.encode())} {m.rawmsg}".encode()
    for d, m in zip(cef_items, got):
        header, extension = parse_cef(m.msg)
        assert header == list(cef_header(d.ocsf)) and m.msg == to_cef(d.ocsf)
        assert f"externalId={d.finding_id} " in extension
    for d, m in zip(leef_items, got[len(cef_items):]):
        header, attrs = parse_leef(m.msg)
        assert header == list(leef_header(d.ocsf)) and m.msg == to_leef(d.ocsf)
        assert attrs["findingId"] == d.finding_id


def test_one_message_per_finding_version(rsyslog, samples, tmp_path):
    """Every version of every finding the sample lines raise (Creates, Updates, Closes) is one
    LEEF message, carrying its version and activity."""
    p = Pipeline(load_settings())
    events = list(replay(sorted(samples.glob("vault_audit_*.jsonl"))))
    versions = p.process_batch(events) + p.finish()
    assert {v.activity_id for v in versions} >= {1, 3}, "no finding was closed: a weak test"
    items = [delivery(finding_id=v.id, severity_id=v.severity_id, ocsf=to_ocsf(v),
                      version=v.version) for v in versions]
    sink = sink_for(rsyslog, tmp_path, format="leef")
    assert sink.send(items) == delivered(items)
    sink.close()
    got = rsyslog.wait_for(len(items))
    attrs = [parse_leef(m.msg)[1] for m in got]
    assert [(a["findingId"], int(a["findingVersion"]), a["activity"]) for a in attrs] == [
        (v.id, v.version, {1: "Create", 2: "Update", 3: "Close"}[v.activity_id])
        for v in versions]


def test_rsyslog_logs_no_error_for_our_tls_connections(rsyslog, findings, tmp_path):
    items = numbered(findings, 4, "e")
    for fmt in ("cef", "leef"):
        sink = sink_for(rsyslog, tmp_path, format=fmt)
        assert sink.send(items[:2]) == delivered(items[:2])
        assert sink.send(items[2:]) == delivered(items[2:])  # a second connection
        sink.close()
    assert len(rsyslog.wait_for(8)) == 8
    rsyslog.wait_connections_closed()
    rsyslog.stop()
    assert rsyslog.trouble() == []
    assert any("] start" in line for line in rsyslog.internal()), "internal log is written"


# ---------------------------------------------------------------------------------------------
# Failures become retryable outcomes


def test_restart_between_batches_reconnects_and_never_reports_a_lost_batch(
        rsyslog, findings, tmp_path):
    first, second, third = (numbered(findings, 3, t) for t in "abc")
    sink = sink_for(rsyslog, tmp_path)
    assert sink.send(first) == delivered(first)
    assert len(rsyslog.wait_for(3)) == 3

    rsyslog.stop()
    down = sink.send(second)
    where = f"127.0.0.1:{rsyslog.tls_port}"
    assert [o.finding_id for o in down] == [d.finding_id for d in second]
    assert all(not o.ok and o.retryable and where in o.reason for o in down), down

    rsyslog.start()
    assert sink.send(second) == delivered(second)  # the worker's retry
    rsyslog.restart()
    assert sink.send(third) == delivered(third)
    sink.close()

    got = rsyslog.wait_for(9)
    assert received_ids(got) == [d.finding_id for d in first + second + third]
    rsyslog.wait_connections_closed()
    rsyslog.stop()
    assert rsyslog.trouble() == []


def test_wrong_ca_is_a_retryable_tls_error(rsyslog, findings, tmp_path):
    other = make_local_ca(tmp_path)
    sink = sink_for(rsyslog, tmp_path, ca_file=other.ca_file)
    outcomes = sink.send(findings)
    sink.close()
    assert [o.finding_id for o in outcomes] == [d.finding_id for d in findings]
    assert all(not o.ok and o.retryable and o.reason.startswith(
        f"TLS error (127.0.0.1:{rsyslog.tls_port}): certificate verify failed")
        for o in outcomes), outcomes
    # rsyslog is unharmed: the right CA gets through at once.
    good = sink_for(rsyslog, tmp_path)
    assert good.send(findings) == delivered(findings)
    good.close()
    assert len(rsyslog.wait_for(len(findings))) == len(findings)


def test_a_finding_at_the_related_events_cap_arrives_whole(rsyslog, findings, tmp_path):
    # rsyslog splits messages over its maxMessageSize (8096 bytes by default) and logs an error:
    # the largest finding the default triage settings make must stay under it.
    cap = load_settings().triage.max_related_events
    d = findings[0]
    fi = {**d.ocsf["finding_info"],
          "related_events": [{"uid": f"{i:08x}-0000-4000-8000-000000000000"} for i in range(cap)]}
    big = delivery(finding_id=d.finding_id, severity_id=d.severity_id,
                   ocsf={**d.ocsf, "finding_info": fi})
    for fmt in ("cef", "leef"):
        sink = sink_for(rsyslog, tmp_path, format=fmt)
        assert sink.send([big]) == delivered([big])
        sink.close()
    rsyslog.wait_connections_closed()
    rsyslog.stop()
    assert [m.msg for m in rsyslog.received()] == [to_cef(big.ocsf), to_leef(big.ocsf)]
    assert rsyslog.trouble() == []



@pytest.mark.parametrize("tls", [True, False], ids=["tls", "tcp"])
def test_a_receiver_that_does_not_read_gets_no_delivered_outcome(rsyslog, findings, tmp_path,
                                                                 tls):
    # The kernel accepts our bytes for a stopped process: only the receiver's close of the
    # connection says it read them.
    port = rsyslog.tls_port if tls else rsyslog.tcp_port
    sink = sink_for(rsyslog, tmp_path, port=port, tls=tls, timeout_seconds=1.0)
    rsyslog.pause()
    try:
        outcomes = sink.send(findings)
    finally:
        rsyslog.resume()
    assert [o.finding_id for o in outcomes] == [d.finding_id for d in findings]
    assert all(not o.ok and o.retryable and o.reason == f"timeout (127.0.0.1:{port})"
               for o in outcomes), outcomes
    assert sink.send(findings) == delivered(findings)  # the worker's retry
    got = rsyslog.wait_for(len(findings))
    assert set(received_ids(got)) == {d.finding_id for d in findings}  # duplicates, no loss
