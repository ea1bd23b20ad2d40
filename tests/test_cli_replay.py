"""The replay contract, end to end through the installed console script, and the canary."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import orjson

from conftest import CANARY, ROOT, SAMPLES, VAULT_SAMPLES

CHECKER = ROOT.parent / "shared" / "tools" / "check_findings.py"


def secretscope(*args, cwd):
    exe = shutil.which("secretscope")
    cmd = [exe] if exe else [sys.executable, "-m", "secretscope"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd)


def test_replay_contract_and_checker(tmp_path, samples):
    alerts = tmp_path / "alerts.jsonl"
    proc = secretscope("replay", *VAULT_SAMPLES, "--alerts-out", alerts, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    findings = [orjson.loads(l) for l in alerts.read_text().splitlines()]
    titles = {f["finding_info"]["title"].split(" (+")[0] for f in findings}
    assert "Audit device disabled or changed" in titles
    assert any("vault-root-token-use" in f["unmapped"]["secretscope"]["detectors"] for f in findings)
    for f in findings:
        assert f["class_uid"] == 2004 and f["type_uid"] == 200400 + f["activity_id"]
        assert f["finding_info"]["related_events"] and f["finding_info"]["attacks"]
        assert f["actor"]["user"]["uid"] and f["finding_info"]["desc"]
        assert f["unmapped"]["secretscope"]["reasons"][0]["observed"]
    check = subprocess.run([sys.executable, CHECKER, alerts, *VAULT_SAMPLES],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert "0 problems, 0 related ids not found" in check.stdout
    # a second run gives the same findings with the same ids
    again = tmp_path / "again.jsonl"
    assert secretscope("replay", *VAULT_SAMPLES, "--alerts-out", again, "--store", "sqlite://",
                       cwd=tmp_path).returncode == 0
    assert [orjson.loads(l)["finding_info"]["uid"] for l in again.read_text().splitlines()] == \
        [f["finding_info"]["uid"] for f in findings]


def test_canary_never_reaches_storage_logs_or_findings(tmp_path, samples):
    alerts = tmp_path / "alerts.jsonl"
    db = tmp_path / "store.db"
    reference = SAMPLES / "vault_audit_reference.jsonl"
    bad = tmp_path / "reference+bad.jsonl"
    # a malformed line that carries the canary must be dead-lettered without its content (in an
    # audit log: a file with no audit record at all is refused before the replay starts)
    bad.write_text(reference.read_text()
                   + '{"time":"2026-03-04T11:06:00Z","type":"response","request":"x",'
                   f'"response":{{"data":{{"password":"{CANARY}"}}}}}}\n')
    files = [bad if p == reference else p for p in VAULT_SAMPLES]
    proc = secretscope("replay", *files, "--alerts-out", alerts,
                       "--store", f"sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert CANARY in (SAMPLES / "vault_audit_reference.jsonl").read_text()  # the canary is in the input
    assert CANARY not in proc.stdout and CANARY not in proc.stderr
    assert CANARY not in alerts.read_text()
    assert CANARY.encode() not in db.read_bytes()
    with sqlite3.connect(db) as conn:
        dumped = "\n".join(conn.iterdump())
        (letters,) = conn.execute("select count(*) from dead_letters").fetchone()
        (stored,) = conn.execute("select count(*) from findings").fetchone()
    assert CANARY not in dumped and letters == 1 and stored >= 3


def test_replay_reads_stdin_and_gzip(tmp_path, samples):
    import gzip

    gz = tmp_path / "audit.log.gz"
    gz.write_bytes(gzip.compress((SAMPLES / "vault_audit_reference.jsonl").read_bytes()))
    a = tmp_path / "a.jsonl"
    assert secretscope("replay", gz, "--alerts-out", a, "--store", "sqlite://", cwd=tmp_path).returncode == 0
    exe = shutil.which("secretscope")
    b = tmp_path / "b.jsonl"
    with open(SAMPLES / "vault_audit_reference.jsonl", "rb") as stdin:
        proc = subprocess.run([exe, "replay", "-", "--alerts-out", str(b), "--store", "sqlite://"],
                              stdin=stdin, capture_output=True, cwd=tmp_path)
    assert proc.returncode == 0
    assert a.read_text() == b.read_text() and a.read_text()


def test_missing_file_is_a_clear_error(tmp_path):
    proc = secretscope("replay", tmp_path / "nope.jsonl", "--alerts-out", tmp_path / "x", cwd=tmp_path)
    assert proc.returncode == 2 and "nope.jsonl: no such file" in proc.stderr


def test_bad_lines_are_counted_stored_and_logged_without_flooding(tmp_path, samples):
    good = (SAMPLES / "vault_audit_reference.jsonl").read_bytes().splitlines()
    bad = [b"not json %d" % i for i in range(300)]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(good[:6] + bad + good[6:]) + b"\n")
    db = tmp_path / "s.db"
    proc = secretscope("replay", path, "--alerts-out", tmp_path / "a.jsonl", "--store",
                       f"sqlite:///{db}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "11 calls" in proc.stderr and "300 dead letters" in proc.stderr
    assert f"{path}:7: not_json" in proc.stderr  # the first bad line is named, with its origin
    assert proc.stderr.count("dead letter:") == 20 and "no longer logged" in proc.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select origin, reason from dead_letters order by id").fetchall()
    assert len(rows) == 300 and rows[0] == (f"{path}:7", "not_json")
    listed = secretscope("alerts", "--store", f"sqlite:///{db}", cwd=tmp_path)
    assert listed.returncode == 0 and "Audit device disabled" in listed.stdout
