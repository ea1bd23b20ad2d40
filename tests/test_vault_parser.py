"""Vault/OpenBao audit parsing: every sample line, joining, identities, formats, bad input."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

import orjson
import pytest

from pipeline.errors import ParseError
from pipeline.events import DENIED, FAILED, SUCCESS, AccessEvent, DeadLetter
from pipeline.parsers import detect_format
from pipeline.parsers.limits import InputLimits
from pipeline.parsers.vault import VaultJoiner, parse_entry
from pipeline.sources.files import ReplayCounters, replay

from conftest import CANARY, VAULT_SAMPLES


def events_of(*paths, **kw) -> list[AccessEvent]:
    items = list(replay([str(p) for p in paths], **kw))
    assert all(isinstance(i, AccessEvent) for i in items), [i for i in items if isinstance(i, DeadLetter)]
    return items


def by_id(events):
    return {e.event_id: e for e in events}


def test_every_vault_sample_line_parses(samples):
    for path in VAULT_SAMPLES:
        for lineno, raw in enumerate(path.read_bytes().splitlines(), 1):
            entry = parse_entry(raw, f"{path.name}:{lineno}")
            assert entry.ts > 0 and entry.kind in ("request", "response")


def test_reference_file_joins_request_and_response_into_one_event(samples):
    events = events_of(samples / "vault_audit_reference.jsonl")
    # 14 lines: three request/response pairs, eight single entries.
    assert len(events) == 11
    ev = by_id(events)
    read = ev["0b0c4e2a-6f15-4d0e-8a57-3c1b2d9e7f01"]
    assert read.phases == "request+response"
    # a Kubernetes workload is named by its namespace and service account
    assert read.identity == "kubernetes:payments/payments-api"
    assert read.secret == "secret/payments/db" and read.operation == "read"
    assert read.user_agent == "vault-agent/1.19.2" and read.remote_address == "10.20.3.17"
    assert read.outcome == SUCCESS
    # 9-digit fraction truncated to microseconds, in UTC
    assert read.time == datetime(2026, 3, 4, 10, 0, 1, 123456, tzinfo=timezone.utc)
    denied = ev["5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9"]
    assert denied.outcome == DENIED and denied.error == "permission denied"


def test_identity_rules(samples):
    ev = by_id(events_of(samples / "vault_audit_reference.jsonl"))
    login = ev["9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"]
    # the login request has no identity; the response's auth names the new token's AppRole role
    assert login.is_login and login.identity == "approle:nightly-reports"
    assert login.display_name == "approle-nightly-reports"
    assert login.policies == ("default", "etl-reports") and login.auth_method == "approle"
    failed = ev["1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"]
    assert failed.outcome == FAILED and failed.is_login
    assert failed.identity == "login:userpass/victor" and failed.error == "invalid credentials"
    old = ev["8d9e0f1a-2b3c-4d4e-8f5a-6b7c8d9e0f1a"]  # 2018: entity_id "" -> accessor
    assert old.identity.startswith("accessor:hmac-sha256:4539e4b4")
    assert old.outcome == SUCCESS and old.time.year == 2018
    root = ev["7c8d9e0f-1a2b-4c3d-9e4f-5a6b7c8d9e0f"]
    assert root.is_root and root.remote_address == "2001:db8::10"  # IPv6, brackets stripped
    assert root.time == datetime(2026, 3, 4, 0, 48, 52, tzinfo=timezone.utc)


def test_display_name_is_last_resort(samples):
    line = orjson.loads((samples / "vault_audit_reference.jsonl").read_bytes().splitlines()[0])
    line["auth"]["entity_id"] = ""
    line["auth"].pop("accessor")
    line["auth"].pop("metadata")
    entry = parse_entry(orjson.dumps(line), "t:1")
    joiner = VaultJoiner()
    joiner.feed(entry)
    (event,) = joiner.flush()
    assert event.identity == "name:kubernetes-payments-payments-api"


def test_namespace_kv2_and_offsets(samples):
    ev = by_id(events_of(samples / "vault_audit_reference.jsonl"))
    ns = ev["9e0f1a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2c"]
    assert ns.namespace == "team-a" and ns.secret == "team-a/kv/app/config"
    listing = ev["2a3b4c5d-6e7f-4081-9a2b-3c4d5e6f7a8b"]
    assert listing.operation == "list" and listing.secret == "secret/payments/"
    assert listing.time.tzinfo is not None


def test_help_request_without_id_gets_a_stable_derived_id(samples):
    first = [e for e in events_of(samples / "vault_audit_reference.jsonl") if e.operation == "help"]
    second = [e for e in events_of(samples / "vault_audit_reference.jsonl") if e.operation == "help"]
    assert len(first) == 1 and first[0].event_id.startswith("derived:")
    assert first[0].event_id == second[0].event_id


def test_prefix_option_and_duplicate_devices_collapse(samples):
    prefixed = events_of(samples / "vault_audit_prefixed.log")
    assert prefixed[0].event_id == "0b0c4e2a-6f15-4d0e-8a57-3c1b2d9e7f01"
    counters = ReplayCounters(0)
    both = events_of(samples / "vault_audit_reference.jsonl", samples / "vault_audit_prefixed.log",
                     counters=counters)
    assert len(both) == 11 and counters.duplicates == 1
    assert len({e.event_id for e in both}) == 11


def test_thirdparty_key_order_request_only(samples):
    (event,) = events_of(samples / "vault_audit_thirdparty.jsonl")
    assert event.phases == "request" and event.is_root
    assert event.path == "sys/policies/acl/admin" and event.operation == "update"


def _split(samples, kind):
    lines = (samples / "vault_audit_reference.jsonl").read_bytes().splitlines()
    return [l for l in lines if orjson.loads(l)["type"] == kind]


def test_response_only_and_request_only_feeds(samples, tmp_path):
    responses = tmp_path / "responses.jsonl"
    responses.write_bytes(b"\n".join(_split(samples, "response")) + b"\n")
    requests = tmp_path / "requests.jsonl"
    requests.write_bytes(b"\n".join(_split(samples, "request")) + b"\n")
    resp_events = events_of(responses)
    assert {e.phases for e in resp_events} == {"response"}
    assert len(resp_events) == len(_split(samples, "response"))
    req_events = events_of(requests)
    assert {e.phases for e in req_events} == {"request"}
    assert len(req_events) == len(_split(samples, "request"))


def test_request_only_calls_are_released_after_join_timeout():
    joiner = VaultJoiner(join_timeout=30)
    base = {"type": "request", "auth": {"entity_id": "e1"},
            "request": {"operation": "read", "path": "secret/data/a"}}
    out = []
    for i, t in enumerate(["2026-03-04T10:00:00Z", "2026-03-04T10:00:10Z", "2026-03-04T10:00:45Z"]):
        rec = {**base, "time": t, "request": {**base["request"], "id": f"r{i}"}}
        out += joiner.feed(parse_entry(orjson.dumps(rec), f"t:{i}"))
    # r0 and r1 waited more than 30 s of event time for a response; r2 is still pending
    assert [e.event_id for e in out] == ["r0", "r1"]
    assert [e.event_id for e in joiner.flush()] == ["r2"]


def test_gzip_and_multi_file_event_time_merge(samples, tmp_path):
    lines = (samples / "vault_audit_reference.jsonl").read_bytes().splitlines()
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl"
    early = [l for l in lines if orjson.loads(l)["time"] < "2026-03-04T10:05"]
    late = [l for l in lines if l not in early]
    with gzip.open(a, "wb") as fh:
        fh.write(b"\n".join(sorted(late, key=lambda l: orjson.loads(l)["time"])) + b"\n")
    b.write_bytes(b"\n".join(sorted(early, key=lambda l: orjson.loads(l)["time"])) + b"\n")
    events = events_of(a, b)
    times = [e.ts for e in events]
    assert times == sorted(times) and len(events) == 11


@pytest.mark.parametrize("raw, reason, field", [
    (b"this is not json", "not_json", ""),
    (b'{"time":"2026-03-04T10:00:00Z","type":"request","request":{"id":"x"', "not_json", ""),
    (b'[1,2,3]', "not_json", ""),
    (b'{"time":"2026-03-04T10:00:00Z","type":"request","request":{"id":"x","path":42}}', "wrong_type", "request.path"),
    (b'{"time":"2026-03-04T10:00:00Z","type":"request","request":"oops"}', "wrong_type", "request"),
    (b'{"time":"yesterday","type":"request","request":{"id":"x"}}', "bad_time", "time"),
    (b'{"type":"request","request":{"id":"x"}}', "missing_field", "time"),
    (b'{"time":"2026-03-04T10:00:00Z","type":"metric","request":{}}', "not_vault", "type"),
    (b'{"time":"2026-03-04T10:00:00Z","type":"request","auth":{"policies":"root"},"request":{}}', "wrong_type", "auth.policies"),
    (b'\x00\xff\xfe binary \x80', "not_json", ""),
])
def test_bad_lines_name_origin_reason_and_field(raw, reason, field):
    with pytest.raises(ParseError) as info:
        parse_entry(raw, "audit.log:7")
    err = info.value
    assert err.reason == reason and err.field == field and err.origin == "audit.log:7"
    assert "audit.log:7" in str(err) and isinstance(err, ValueError)


def test_bounds_oversize_deep_and_long_fields():
    limits = InputLimits(max_record_bytes=200_000, max_field_chars=50)
    big = b'{"time":"2026-03-04T10:00:00Z","type":"request","request":{"id":"' + b"x" * 300_000 + b'"}}'
    with pytest.raises(ParseError, match="oversize"):
        parse_entry(big, "f:1", limits)
    deep = (b'{"time":"2026-03-04T10:00:00Z","type":"request","request":{"id":"x"},"d":'
            + b"[" * 5000 + b"]" * 5000 + b"}")
    with pytest.raises(ParseError, match="too_deep"):
        parse_entry(deep, "f:2", limits)
    long_path = ('{"time":"2026-03-04T10:00:00Z","type":"request","request":{"id":"x","path":"secret/'
                 + "a" * 200 + '"}}').encode()
    joiner = VaultJoiner(max_field_chars=50)
    joiner.feed(parse_entry(long_path, "f:3", limits))
    (event,) = joiner.flush()
    assert len(event.path) == 50 and len(event.secret) == 50
    assert event.truncated == ("path", "secret")


def test_bad_lines_become_dead_letters_and_replay_continues(samples, tmp_path):
    good = (samples / "vault_audit_reference.jsonl").read_bytes().splitlines()
    mixed = good[:4] + [b"garbage", b'{"time":"2026","type":"request","request":{}}'] + good[4:]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(mixed) + b"\n")
    items = list(replay([str(path)]))
    letters = [i for i in items if isinstance(i, DeadLetter)]
    events = [i for i in items if isinstance(i, AccessEvent)]
    assert len(events) == 11
    assert [(d.origin, d.reason) for d in letters] == [(f"{path}:5", "not_json"), (f"{path}:6", "bad_time")]
    assert all(len(d.digest) == 64 for d in letters)


def test_format_detection_names_file_and_format(samples):
    raw = (samples / "cloudtrail_secretsmanager.jsonl").read_bytes().splitlines()[0]
    with pytest.raises(ParseError, match="cloudtrail.*not supported yet"):
        detect_format(raw, "ct.jsonl:1")
    with pytest.raises(ParseError, match="unknown_format"):
        detect_format(b'{"hello": 1}', "x.jsonl:1")
    assert detect_format((samples / "vault_audit_prefixed.log").read_bytes(), "p:1") == "vault"


def test_secret_values_never_reach_the_event(samples):
    for e in events_of(*VAULT_SAMPLES):
        assert CANARY not in repr(e)


@pytest.mark.parametrize("digits", range(10))
def test_fractional_seconds_of_any_width(digits):
    fraction = "123456789"[:digits]
    stamp = "2026-03-04T10:00:01" + (f".{fraction}" if digits else "") + "Z"
    rec = {"time": stamp, "type": "response", "auth": {"entity_id": "e"},
           "request": {"id": f"r{digits}", "operation": "read", "path": "secret/data/a"}}
    joiner = VaultJoiner()
    (event,) = joiner.feed(parse_entry(orjson.dumps(rec), "t:1")) + joiner.flush()
    micros = int(fraction[:6].ljust(6, "0")) if digits else 0
    assert event.time == datetime(2026, 3, 4, 10, 0, 1, micros, tzinfo=timezone.utc)


def test_utc_offsets_are_normalized():
    rec = {"time": "2026-03-04T11:00:01.5+01:00", "type": "response", "auth": {"entity_id": "e"},
           "request": {"id": "r", "operation": "read", "path": "secret/data/a"}}
    joiner = VaultJoiner()
    (event,) = joiner.feed(parse_entry(orjson.dumps(rec), "t:1")) + joiner.flush()
    assert event.time == datetime(2026, 3, 4, 10, 0, 1, 500000, tzinfo=timezone.utc)
