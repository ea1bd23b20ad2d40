"""Replay of a real OpenBao audit log captured by tests/test_openbao_e2e.py (no server needed).

``tests/data/openbao_audit.log`` is the file device of one run (OpenBao 2.7.2, ``log_raw`` off so
every value is HMAC'd, ``hmac_accessor`` off); ``openbao_audit.labels.json`` lists its episodes
with their request ids: ``bootstrap`` (the dev server's start-up and set-up with root tokens) and
one of each attack; every other call is benign traffic.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import ROOT
from openbao_fleet import ATTACK_CLASSES, SEGMENTS, Episode, alerts_of, by_episode

DATA = ROOT / "tests" / "data"
CHECKER = ROOT.parent / "shared" / "tools" / "check_findings.py"


def test_replay_of_captured_openbao_log_finds_every_episode(tmp_path):
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["segments"] = SEGMENTS
    cfg = tmp_path / "secretscope.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    labels = json.loads((DATA / "openbao_audit.labels.json").read_text())
    episodes = [Episode.from_json(d) for d in labels["episodes"]]
    assert [e.episode for e in episodes] == ["bootstrap", *ATTACK_CLASSES]
    alerts = tmp_path / "alerts.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "secretscope", "replay", str(DATA / "openbao_audit.log"),
         "--config", str(cfg), "--store", "sqlite://", "--alerts-out", str(alerts), "--no-table"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1 audit device self-tests dropped" in proc.stderr, proc.stderr  # one file device
    found = by_episode(alerts_of(alerts), episodes)
    assert [e.episode for e in episodes if not found[e.episode]] == []
    assert len(found["benign"]) <= 1, [f["message"] for f in found["benign"]]
    detectors = {e: {d for f in fs for d in f["unmapped"]["secretscope"]["detectors"]}
                 for e, fs in found.items()}
    assert "vault-audit-device-change" in detectors["audit_device_change"]
    assert "vault-failed-login-burst" in detectors["bruteforce_login"]
    assert "vault-unknown-network-token-use" in detectors["stolen_token_new_network"]
    # the audit device's start-up self-test is the only sys/audit call without a client
    assert all(f["unmapped"]["secretscope"]["path"] != "sys/audit/test"
               for fs in found.values() for f in fs)
    check = subprocess.run([sys.executable, str(CHECKER), str(alerts),
                            str(DATA / "openbao_audit.log")],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
