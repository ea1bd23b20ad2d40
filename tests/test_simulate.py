"""Tests for pipeline.simulate: a deterministic, well-formed, correctly labelled Vault audit log."""

from __future__ import annotations

import gzip
import io
from datetime import datetime, timezone

import orjson
import pytest

from pipeline.simulate import ATTACKS, SimulationSpec, simulate

SPEC = SimulationSpec(days=7, target_calls=25_000)
UNKNOWN_PREFIXES = ("203.0.113.", "198.51.100.")


def _ns(stamp: str) -> int:
    """Nanoseconds of a Vault time (RFC 3339, 'Z', 0-9 fractional digits)."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    dt = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + int(frac.ljust(9, "0"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    summary = simulate(SPEC, d / "audit.jsonl", d / "labels.jsonl")
    raw = (d / "audit.jsonl").read_bytes()
    records = [orjson.loads(line) for line in raw.splitlines()]
    labels = [orjson.loads(line) for line in (d / "labels.jsonl").read_bytes().splitlines()]
    return summary, raw, records, labels, d


def test_same_spec_gives_identical_bytes(run, tmp_path):
    _, raw, _, _, d = run
    simulate(SPEC, tmp_path / "again.jsonl", tmp_path / "labels.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == raw
    assert (tmp_path / "labels.jsonl").read_bytes() == (d / "labels.jsonl").read_bytes()


def test_another_seed_gives_another_log(run):
    _, raw, _, _, _ = run
    out = io.StringIO()
    simulate(SimulationSpec(days=7, seed=8, target_calls=25_000), out, None)
    assert out.getvalue().encode() != raw


def test_gzip_output_is_readable_and_reproducible(tmp_path):
    small = SimulationSpec(days=2, target_calls=5_000)
    simulate(small, tmp_path / "plain.jsonl", None)
    simulate(small, tmp_path / "a.jsonl.gz", None)
    simulate(small, tmp_path / "b.jsonl.gz", None)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    with gzip.open(tmp_path / "a.jsonl.gz", "rb") as f:
        assert f.read() == (tmp_path / "plain.jsonl").read_bytes()


def test_text_stream_output_matches_file(run):
    _, raw, _, _, _ = run
    out = io.StringIO()
    simulate(SPEC, out, io.StringIO())
    assert out.getvalue().encode() == raw


def test_summary_counts_lines_and_episodes(run):
    summary, _, records, labels, _ = run
    assert summary.lines == len(records) == 2 * summary.calls
    assert summary.benign_calls + summary.attack_calls == summary.calls
    assert summary.attack_calls == sum(len(label["request_ids"]) for label in labels)
    assert sum(summary.episodes.values()) == len(labels)
    assert summary.first_time >= SPEC.start
    assert (summary.last_time - SPEC.start).days < SPEC.days + 1


def test_lines_are_time_ordered(run):
    _, _, records, _, _ = run
    times = [_ns(r["time"]) for r in records]
    assert all(a <= b for a, b in zip(times, times[1:]))
    start = int(SPEC.start.timestamp()) * 1_000_000_000
    assert start <= times[0] and times[-1] < start + (SPEC.days * 86400 + 1) * 1_000_000_000


def test_every_request_has_one_later_response_with_the_same_id(run):
    _, _, records, _, _ = run
    seen: dict[str, dict] = {}
    for r in records:
        rid = r["request"]["id"]
        if r["type"] == "request":
            assert rid not in seen
            seen[rid] = r
        else:
            req = seen.pop(rid)  # KeyError: response without an earlier request
            assert r["request"] == req["request"] and r["auth"] == req["auth"]
            delay = _ns(r["time"]) - _ns(req["time"])
            assert 1_000_000 <= delay <= 50_000_000
    assert not seen


def test_entries_follow_the_vault_format(run):
    _, _, records, _, _ = run
    for r in records:
        req = r["request"]
        assert len(req["id"]) == 36 and req["id"][14] == "4"
        assert req["namespace"] == {"id": "root"}
        assert r["time"].endswith("Z")
        auth = r["auth"]
        if auth == {"token_type": "default"}:
            assert req["path"].startswith("auth/")
        else:
            assert auth["accessor"].startswith("hmac-sha256:")
            assert auth["client_token"].startswith("hmac-sha256:")
            assert ("entity_id" in auth) != (auth["display_name"] == "root")
        if r["type"] == "response":
            err = r.get("error")
            assert err in (None, "1 error occurred:\n\t* permission denied\n\n",
                           "1 error occurred:\n\t* invalid credentials\n\n")
            if req["path"].startswith("auth/") and "login" in req["path"] and err is None:
                assert r["response"]["auth"]["entity_id"]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_no_plaintext_values_in_data(run):
    _, _, records, _, _ = run
    checked = 0
    for r in records:
        for data in (r["request"].get("data"), r.get("response", {}).get("data")):
            for s in _strings(data):
                assert s.startswith("hmac-sha256:") and len(s) == 12 + 64, s
                checked += 1
    assert checked > 1000


def test_labelled_ids_exist_and_are_disjoint(run):
    _, _, records, labels, _ = run
    ids = {r["request"]["id"] for r in records}
    labelled = [rid for label in labels for rid in label["request_ids"]]
    assert len(labelled) == len(set(labelled))
    assert set(labelled) <= ids
    names = [label["episode"] for label in labels]
    assert names == [f"ep-{k:04d}" for k in range(1, len(labels) + 1)]


def test_each_class_appears_at_least_twice_after_day_two(run):
    _, _, _, labels, _ = run
    counts = {cls: 0 for cls in ATTACKS}
    for label in labels:
        counts[label["class"]] += 1
        assert _ns(label["start"]) >= int(SPEC.start.timestamp() + 2 * 86400) * 1_000_000_000
        assert _ns(label["start"]) <= _ns(label["end"])
    assert set(counts) == {
        "root_token_use", "audit_device_tampering", "policy_change_then_reads",
        "enumeration_denied_burst", "bruteforce_login", "stolen_token_new_network",
        "offhours_bulk_read"}
    assert min(counts.values()) >= 2


def test_attack_only_signals_are_all_labelled(run):
    """Root tokens, outside addresses, audit device changes and non-SRE policy writes never occur
    in benign traffic, so every such call must belong to an episode."""
    _, _, records, labels, _ = run
    labelled = {rid for label in labels for rid in label["request_ids"]}
    for r in records:
        req, auth = r["request"], r["auth"]
        attack_only = (
            auth.get("display_name") == "root"
            or req["remote_address"].startswith(UNKNOWN_PREFIXES)
            or (req["path"].startswith("sys/audit/") and req["operation"] != "read")
            or (req["path"].startswith("sys/policies/acl/")
                and "sre-read-all" not in auth.get("policies", ()))
        )
        if attack_only:
            assert req["id"] in labelled, req


def test_episodes_have_the_shape_of_their_class(run):
    _, _, records, labels, _ = run
    calls = {r["request"]["id"]: r for r in records if r["type"] == "response"}
    for label in labels:
        eps = [calls[rid] for rid in label["request_ids"]]
        cls = label["class"]
        paths = [e["request"]["path"] for e in eps]
        errors = [e.get("error") for e in eps]
        if cls == "root_token_use":
            assert 1 <= len(eps) <= 3
            assert all(e["auth"]["policies"] == ["root"] for e in eps)
        elif cls == "audit_device_tampering":
            assert any(p.startswith("sys/audit/") for p in paths)
        elif cls == "policy_change_then_reads":
            assert paths[0].startswith("sys/policies/acl/")
            assert eps[0]["request"]["operation"] == "update"
            assert 5 <= len(eps) - 1 <= 15
        elif cls == "enumeration_denied_burst":
            assert 30 <= len(eps) <= 80
            assert sum(err is not None for err in errors) > len(eps) / 2
        elif cls == "bruteforce_login":
            failed = [e for e in eps if e.get("error", "").endswith("invalid credentials\n\n")]
            assert 15 <= len(failed) <= 40
            assert len({e["request"]["remote_address"] for e in eps}) == 1
        elif cls == "stolen_token_new_network":
            assert 5 <= len(eps) <= 30
            assert all(e["request"]["remote_address"].startswith("203.0.113.") for e in eps)
            assert len({e["auth"]["entity_id"] for e in eps}) == 1
        elif cls == "offhours_bulk_read":
            reads = {p for p in paths if p.startswith("secret/data/")}
            assert 40 <= len(reads) <= 150
        assert label["identity_hint"]


def test_no_attacks_means_no_labels(tmp_path):
    labels = tmp_path / "labels.jsonl"
    summary = simulate(SimulationSpec(days=2, attacks=False, target_calls=5_000),
                       tmp_path / "a.jsonl", labels)
    assert summary.attack_calls == 0 and summary.episodes == {}
    assert labels.read_bytes() == b""


@pytest.mark.parametrize("days,target", [(7, 25_000), (2, 60_000), (1, 8_000)])
def test_target_calls_is_met_within_15_percent(run, days, target):
    if (days, target) == (SPEC.days, SPEC.target_calls):
        summary = run[0]
    else:
        summary = simulate(SimulationSpec(days=days, target_calls=target), io.StringIO(), None)
    assert abs(summary.calls - target) <= 0.15 * target
