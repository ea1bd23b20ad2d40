"""No input stops a run or hides good lines: every record is processed or dead-lettered with a
reason, and the run goes on (replay, stdin, the socket source and Kafka)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

import orjson
import pytest
from alembic import command
from sqlalchemy import create_engine, func, select

from conftest import ROOT, SAMPLES
from secretscope.errors import ParseError
from secretscope.events import AccessEvent, DeadLetter
from secretscope.parsers.limits import InputLimits
from secretscope.parsers.vault import parse_entry
from secretscope.sources.decode import Decoder
from secretscope.sources.files import ReplayCounters, replay
from secretscope.store import Store, dead_letters
from postgres_server import postgres_url  # noqa: F401
from test_store_postgres import alembic_config, db_url, schema_diff  # noqa: F401

REFERENCE = SAMPLES / "vault_audit_reference.jsonl"
GOOD_CALLS = 11  # calls in the reference sample
OUT_OF_RANGE = ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+00:01"]


def root_call(time: str, request_id: str) -> list[bytes]:
    """Request and response of a root-token read: the root-token rule fires on it."""
    auth = {"accessor": "hmac-sha256:acc-root", "display_name": "root", "policies": ["root"],
            "token_type": "service"}
    req = {"id": request_id, "operation": "read", "path": "secret/data/x", "mount_point": "secret/",
           "mount_type": "kv", "remote_address": "10.0.0.1"}
    return [orjson.dumps({"time": time, "type": kind, "auth": auth, "request": req})
            for kind in ("request", "response")]


def secretscope(*args, cwd, stdin=None):
    exe = shutil.which("secretscope") or str(ROOT / ".venv" / "bin" / "secretscope")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          stdin=stdin)


def split(items):
    items = list(items)
    return ([i for i in items if isinstance(i, AccessEvent)],
            [i for i in items if isinstance(i, DeadLetter)])


def store_rows(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select origin, reason, field, digest from dead_letters "
                            "order by origin").fetchall()


# --- timestamps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", OUT_OF_RANGE)
def test_time_outside_years_1_to_9999_in_utc_is_bad_time_at_parse(stamp):
    raw = root_call(stamp, "r1")[0]
    with pytest.raises(ParseError) as caught:
        parse_entry(raw, "f.log:7")
    assert (caught.value.reason, caught.value.origin, caught.value.field) == (
        "bad_time", "f.log:7", "time")


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_the_first_and_last_utc_seconds_still_parse(stamp):
    expected = datetime.fromisoformat(stamp).timestamp()
    assert parse_entry(root_call(stamp, "r1")[0], "f.log:1").ts == expected


@pytest.mark.parametrize("stamp", OUT_OF_RANGE)
def test_replay_of_a_rule_firing_line_with_an_out_of_range_time_goes_on(tmp_path, stamp):
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(b"\n".join(root_call(stamp, "r-bad")) + b"\n" + REFERENCE.read_bytes()
                      + b"\n".join(root_call("2026-03-04T12:00:00Z", "r-good")) + b"\n")
    db = tmp_path / "store.db"
    alerts = tmp_path / "alerts.jsonl"
    proc = secretscope("replay", audit, "--store", f"sqlite:///{db}", "--alerts-out", alerts,
                       "--no-table", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [(o, r, f) for o, r, f, _ in store_rows(db)] == [
        (f"{audit}:1", "bad_time", "time"), (f"{audit}:2", "bad_time", "time")]
    related = {e["uid"] for line in alerts.read_text().splitlines()
               for e in orjson.loads(line)["finding_info"]["related_events"]}
    assert "r-good" in related and "r-bad" not in related


# --- format detection ---------------------------------------------------------------------------


@pytest.mark.parametrize("first", [
    REFERENCE.read_bytes()[:300],  # cut off
    b"\x00\xff garbage",  # not JSON
    (SAMPLES / "cloudtrail_secretsmanager.jsonl").read_bytes().splitlines()[0],  # foreign
])
def test_a_bad_first_line_does_not_hide_the_good_lines_after_it(tmp_path, first):
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(first + b"\n" + REFERENCE.read_bytes())
    events, letters = split(replay([audit]))
    assert len(events) == GOOD_CALLS
    assert [d.origin for d in letters] == [f"{audit}:1"]
    assert letters[0].reason in ("not_json", "unsupported_format")


# --- truncated and corrupt .gz ------------------------------------------------------------------


def many_lines(copies: int) -> bytes:
    """The reference calls many times over, each copy with its own request ids."""
    text = REFERENCE.read_bytes()
    return b"".join(text.replace(b'"id":"', f'"id":"c{i}-'.encode()) for i in range(copies))


def test_truncated_gz_keeps_the_readable_lines_and_replay_exits_3(tmp_path):
    whole = gzip.compress(many_lines(40))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(REFERENCE.read_bytes())
    db = tmp_path / "store.db"
    proc = secretscope("replay", cut, plain, "--store", f"sqlite:///{db}", "--no-table", "-q",
                       cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "Aborted" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"input incomplete: {cut}: compressed stream ended before the "
                           "end-of-stream marker after ")
    read = int(last.rsplit(" after ", 1)[1].split()[0].replace(",", ""))
    assert 0 < read < 40 * 14
    assert ("truncated" in {r for _, r, _, _ in store_rows(db)})
    calls = int(proc.stderr.split(" calls in ")[0].rsplit("-> ", 1)[1].replace(",", ""))
    assert calls >= read // 2 + GOOD_CALLS - 1  # the readable part of the cut file, and the rest


@pytest.mark.parametrize("damage, why", [
    (lambda gz: gz[:300] + bytes(b ^ 0x55 for b in gz[300:400]) + gz[400:], "corrupt compressed"),
    (lambda gz: gz[:-8] + b"\0" * 8, "not a valid gzip stream (CRC check failed"),
    (lambda gz: b"not gzip at all\n" + gz, "not a valid gzip stream (Not a gzipped file"),
])
def test_corrupt_gz_is_reported_by_name_and_the_next_file_still_read(tmp_path, damage, why):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(damage(gzip.compress(many_lines(20))))
    counters = ReplayCounters(0)
    events, letters = split(replay([bad, REFERENCE], counters=counters))
    (cut,) = counters.incomplete
    assert cut.startswith(f"{bad}: {why}")
    assert [d.reason for d in letters if d.origin.startswith(str(bad))] == ["truncated"]
    assert len(events) >= GOOD_CALLS


# --- oversize records ---------------------------------------------------------------------------


def test_oversize_line_is_skipped_while_streaming_and_the_next_lines_are_read(tmp_path):
    limit = 4096
    huge = b'{"type":"request","pad":"' + b"x" * 1_000_000 + b'"}'
    audit = tmp_path / "audit.jsonl.gz"
    audit.write_bytes(gzip.compress(huge + b"\n" + REFERENCE.read_bytes()))
    events, letters = split(replay([audit], InputLimits(max_record_bytes=limit)))
    (big,) = letters
    assert (big.origin, big.reason, big.size) == (f"{audit}:1", "oversize", limit)
    assert big.digest == hashlib.sha256(huge[:limit]).hexdigest()
    assert big.detail.startswith(f"{len(huge)} bytes > {limit}")
    assert len(events) == GOOD_CALLS


def test_oversize_line_on_stdin(tmp_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(f"rules: {{directory: {ROOT / 'config' / 'rules'}}}\n"
                   "input: {max_record_bytes: 4096}\n")
    audit = tmp_path / "audit.jsonl"
    audit.write_bytes(b"{" + b" " * 100_000 + b"}\n" + REFERENCE.read_bytes())
    db = tmp_path / "store.db"
    with open(audit, "rb") as stdin:
        proc = secretscope("replay", "-", "--config", cfg, "--store", f"sqlite:///{db}",
                           "--no-table", "-q", cwd=tmp_path, stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert f"-> {GOOD_CALLS} calls" in proc.stderr
    assert [(o, r) for o, r, _, _ in store_rows(db)] == [("stdin:1", "oversize")]


def test_a_live_decoder_refuses_entries_far_ahead_of_its_clock():
    now = 1_772_618_400.0  # 2026-03-04T10:00:00Z
    decoder = Decoder("vault", max_ahead_seconds=300, clock=lambda: now)
    (ahead,) = decoder.feed(root_call("2026-03-04T10:05:01Z", "r1")[0], "audit/0/7")
    assert (ahead.reason, ahead.field, ahead.origin) == ("bad_time", "time", "audit/0/7")
    assert decoder.latest_ts == float("-inf")  # event time did not move
    assert decoder.feed(root_call("2026-03-04T10:04:59Z", "r2")[0], "audit/0/8") == []
    assert decoder.latest_ts == now + 299
    # replays of old (or future-dated) logs are not judged by the clock
    assert Decoder("vault").feed(root_call("9000-01-01T00:00:00Z", "r3")[0], "f:1") == []


def test_decoder_refuses_an_oversize_record_before_detecting_its_format():
    decoder = Decoder(None, InputLimits(max_record_bytes=8192))
    (big,) = decoder.feed(b"{" + b'"a":1,' * 3000 + b'"b":2}', "audit/3/41")
    assert (big.reason, big.origin) == ("oversize", "audit/3/41")
    assert decoder.format is None  # nothing was decided from it
    out = [o for line in REFERENCE.read_bytes().splitlines() for o in decoder.feed(line, "t")]
    assert len(split(out + decoder.flush())[0]) == GOOD_CALLS


# --- dead letters are idempotent ----------------------------------------------------------------


def hostile_file(tmp_path):
    audit = tmp_path / "hostile.jsonl"
    audit.write_bytes(b"cut-off {\"time\n" + b"\n".join(root_call(OUT_OF_RANGE[0], "r-bad"))
                      + b"\n" + REFERENCE.read_bytes())
    return audit


def test_replaying_a_file_twice_does_not_double_its_dead_letters(tmp_path):
    audit = hostile_file(tmp_path)
    db = tmp_path / "store.db"
    for _ in range(2):
        proc = secretscope("replay", audit, "--store", f"sqlite:///{db}", "--no-table", "-q",
                           cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    rows = store_rows(db)
    assert [(o, r) for o, r, _, _ in rows] == [
        (f"{audit}:1", "not_json"), (f"{audit}:2", "bad_time"), (f"{audit}:3", "bad_time")]


def test_dead_letters_idempotent_on_both_backends(db_url, tmp_path):  # noqa: F811
    letters = split(replay([hostile_file(tmp_path)]))[1]
    assert len(letters) == 3
    store = Store(db_url)
    try:
        store.add_dead_letters(letters)
        store.add_dead_letters(letters + letters)  # a replay, and copies within one batch
        with store.engine.connect() as conn:
            rows = conn.execute(select(dead_letters.c.origin, dead_letters.c.digest)).all()
        assert sorted(rows) == sorted((d.origin, d.digest) for d in letters)
    finally:
        store.close()


def test_migration_0005_keeps_one_of_each_stored_copy(db_url):  # noqa: F811
    engine = create_engine(db_url)
    row = {"origin": "a.log:3", "reason": "not_json", "detail": "", "field": "",
           "digest": "ab" * 32, "size": 17, "created_at": datetime(2026, 3, 4, tzinfo=timezone.utc)}
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0003")
            conn.execute(dead_letters.insert(), [row, row, {**row, "origin": "a.log:4"}])
    finally:
        engine.dispose()
    store = Store(db_url)  # migrates to the newest revision
    try:
        assert schema_diff(store.engine) == []
        with store.engine.connect() as conn:
            origins = conn.execute(select(dead_letters.c.origin, func.min(dead_letters.c.id))
                                   .group_by(dead_letters.c.origin)).all()
            count = conn.execute(select(func.count()).select_from(dead_letters)).scalar_one()
        assert count == 2 and {o for o, _ in origins} == {"a.log:3", "a.log:4"}
        store.add_dead_letters([DeadLetter("a.log:3", "not_json", "", "", "ab" * 32, 3 << 30)])
        assert store.count(dead_letters) == 2
    finally:
        store.close()
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003")
    finally:
        engine.dispose()
