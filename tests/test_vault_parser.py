"""Vault/OpenBao audit parsing: every sample line, joining, identities, formats, bad input."""

from __future__ import annotations

import gzip
from datetime import datetime, timezone

import orjson
import pytest

from secretscope.errors import ParseError
from secretscope.events import DENIED, FAILED, SUCCESS, AccessEvent, DeadLetter
from secretscope.parsers import detect_format
from secretscope.parsers.limits import InputLimits
from secretscope.parsers.vault import VaultJoiner, parse_entry
from secretscope.sources.files import ReplayCounters, replay

from conftest import CANARY, ROOT, VAULT_SAMPLES


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


# --- identities as OpenBao names them (tests/data/openbao_audit.log: a real OpenBao 2.7 dev
# server driven by tests/test_openbao_e2e.py, log_raw off, accessors in clear) ----------------

OPENBAO_LOG = ROOT / "tests" / "data" / "openbao_audit.log"


def openbao_lines() -> list[dict]:
    return [orjson.loads(raw) for raw in OPENBAO_LOG.read_bytes().splitlines()]


def openbao_line(path: str, kind: str = "request", nth: int = 0) -> dict:
    return [d for d in openbao_lines() if d["request"].get("path") == path and d["type"] == kind][nth]


def join(*lines: dict) -> tuple[list[AccessEvent], VaultJoiner]:
    joiner = VaultJoiner()
    events = []
    for i, line in enumerate(lines, 1):
        events += joiner.feed(parse_entry(orjson.dumps(line), f"t:{i}"))
    return events + joiner.flush(), joiner


def test_openbao_approle_services_are_named_by_role():
    events = events_of(OPENBAO_LOG)
    pods = [e for e in events if e.remote_address in ("127.0.0.10", "127.0.0.11")
            and e.outcome == SUCCESS]
    # two pods, a token each (display_name is just "approle"): one identity, the role's
    assert len({e.identity for e in pods}) == 1 and pods[0].identity == "approle:payments-api"
    assert {e.display_name for e in pods} == {"approle-payments-api"}
    logins = [e for e in events if e.is_login and e.auth_method == "approle"]
    assert {e.identity for e in logins} == {"approle:payments-api", "approle:ledger-api",
                                            "approle:orders-api", "approle:secret-rotator"}


def test_token_metadata_from_token_create_names_nobody():
    line = openbao_line("secret/data/payments/stripe")
    line["auth"].update(display_name="token-evil", metadata={"role_name": "payments-api"})
    (event,), _ = join(line)
    assert event.identity == f"accessor:{line['auth']['accessor']}"


def test_kubernetes_service_account_names_the_identity(samples):
    (event,) = [e for e in events_of(samples / "vault_audit_reference.jsonl")
                if e.event_id == "0b0c4e2a-6f15-4d0e-8a57-3c1b2d9e7f01"]
    assert event.identity == "kubernetes:payments/payments-api"
    assert event.display_name == "kubernetes-payments-payments-api"


def test_token_creation_is_credited_to_the_caller():
    for rid in ("dev-gen-root", "b052c449-e1a5-8131-a43d-5c7d8408cc76"):
        req, resp = [d for d in openbao_lines() if d["request"].get("id") == rid]
        (event,), _ = join(req, resp)
        caller, created = req["auth"]["accessor"], resp["response"]["auth"]["accessor"]
        assert caller != created
        assert event.identity == f"accessor:{caller}" and not event.is_login
    # a login, by contrast, is the new token's (here the request even carried another token)
    req, resp = openbao_line("auth/approle/login"), openbao_line("auth/approle/login", "response")
    req["auth"] = openbao_line("secret/data/ledger/db")["auth"]
    (event,), _ = join(req, resp)
    assert event.identity == "approle:payments-api" and event.is_login


def test_openbao_audit_self_test_is_dropped_and_counted():
    line = openbao_line("sys/audit/test")
    assert "remote_address" not in line["request"] and "accessor" not in line["auth"]
    assert not any(d["request"].get("id") == line["request"]["id"] for d in openbao_lines()
                   if d["type"] == "response")
    events, joiner = join(line)
    assert events == [] and joiner.self_tests == 1
    replayed = events_of(OPENBAO_LOG)
    assert not [e for e in replayed if e.path == "sys/audit/test"]
    # a client's audit device change is still a call
    assert [e.path for e in replayed if e.path.startswith("sys/audit/")] == \
        ["sys/audit/exfil", "sys/audit/file"]


def test_self_test_lookalike_from_a_client_is_a_call():
    line = openbao_line("sys/audit/test")
    line["request"]["remote_address"] = "127.0.0.66"
    (event,), joiner = join(line)
    assert event.path == "sys/audit/test" and joiner.self_tests == 0
    assert event.identity == "anonymous:127.0.0.66"


def test_empty_remote_address_is_an_unknown_address_not_an_identity():
    line = openbao_line("sys/audit/test")
    line["request"]["path"] = "sys/seal-status"
    (event,), _ = join(line)
    assert event.remote_address == "" and event.identity == "anonymous:unknown"
    login = openbao_line("auth/approle/login")
    login["auth"] = {"token_type": "default"}
    del login["request"]["remote_address"]
    (event,), _ = join(login)  # request-only: no response names the new token
    assert event.is_login and event.identity == "login:approle/@unknown"


def test_openbao_login_that_issued_no_token_failed():
    # OpenBao 2.7 logs a login for an unknown userpass user without a top-level error (the
    # reason is only in the HMAC'd response.data)
    path = ROOT / "tests" / "data" / "openbao_login_unknown_user.log"
    assert b'"error":"' not in path.read_bytes().replace(b'"data":{"error":"', b"")
    (event,) = events_of(path)
    assert event.is_login and event.outcome == FAILED
    assert event.identity == "login:userpass/nobody"
