"""A real OpenBao, driven like a small company, watched two ways: replay of its file audit device
and ``secretscope run`` on its socket audit device.

On a run of seconds only the YAML rules can fire (the learned models need days of history), so
the test config is the default one with the fleet's segments. Checks: every attack episode is in
some finding on both paths, benign traffic raises at most one finding, the audit devices'
start-up self-test raises none, both paths give the same findings, and no written secret value
reaches findings, stores or the pipeline's output, with ``log_raw`` on and off.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import ROOT
from fake_siems import WebhookServer, finding_uid
from openbao_fleet import (ATTACK_CLASSES, SEGMENTS, Fleet, alerts_of, by_episode, related,
                           stored_findings)
from openbao_server import FileDevice, OpenBaoServer, SocketDevice, free_port

pytestmark = pytest.mark.openbao

CHECKER = ROOT.parent / "shared" / "tools" / "check_findings.py"


def write_config(tmp_path: Path, db: Path, port: int, webhook: WebhookServer) -> Path:
    doc = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    (tmp_path / "hook.key").write_text(webhook.secret)
    doc["sinks"] = [{"type": "webhook", "name": "hook", "url": webhook.url + "/in",
                     "secret": {"file": "hook.key"}}]
    doc["rules"]["directory"] = str(ROOT / "config" / "rules")
    doc["store"]["url"] = f"sqlite:///{db}"
    doc["segments"] = SEGMENTS
    doc["run"] = {"source": "socket"}
    doc["socket"] = {"host": "127.0.0.1", "port": port}
    cfg = tmp_path / "secretscope.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def start_socket_pipeline(cfg: Path, port: int, out: Path, err: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "secretscope", "run", "--config", str(cfg)],
                            stdout=open(out, "wb"), stderr=open(err, "wb"), cwd=cfg.parent)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"secretscope run did not listen on {port}:\n{err.read_text()}")
            time.sleep(0.1)


def summary(findings: dict[str, dict]) -> set[tuple]:
    """What both paths must agree on: who, which detectors, which call triggered it. A call
    logged without a request id (the dev server's own start-up calls) has an id derived from
    its entry, whose time each device stamps itself: those are compared by path."""
    out = set()
    for f in findings.values():
        info = f["unmapped"]["secretscope"]
        trigger = info["trigger_event_uid"]
        if trigger.startswith("derived:"):
            trigger = f"derived:{info['path']}"
        out.add((f["actor"]["user"]["uid"], tuple(sorted(info["detectors"])), trigger))
    return out


def db_bytes(db: Path) -> bytes:
    """The SQLite file with its journal or WAL files, if any are left."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.parametrize("log_raw", [False, True], ids=["hmac", "log_raw"])
def test_openbao_attacks_detected_on_file_replay_and_socket_run(tmp_path, log_raw):
    canary = f"CANARY-{uuid.uuid4().hex}"
    port = free_port()
    run_db, replay_db = tmp_path / "run.db", tmp_path / "replay.db"
    webhook = WebhookServer()
    cfg = write_config(tmp_path, run_db, port, webhook)
    run_out, run_err = tmp_path / "run.out", tmp_path / "run.err"
    audit = tmp_path / "audit.log"
    pipeline = start_socket_pipeline(cfg, port, run_out, run_err)
    try:
        started = time.time()
        # accessors in clear: with per-device HMAC salts, identities keyed by accessor (root
        # and other entity-less tokens) would differ between the two devices' logs
        devices = [FileDevice("file", audit, log_raw=log_raw, hmac_accessor=False),
                   SocketDevice("socket", f"127.0.0.1:{port}", log_raw=log_raw,
                                hmac_accessor=False)]
        with OpenBaoServer(tmp_path / "bao", devices) as bao:
            fleet = Fleet(bao, canary)
            fleet.bootstrap(started)
            fleet.benign()
            fleet.attacks()
        episodes = fleet.labels(audit)
        (tmp_path / "labels.json").write_text(
            json.dumps([e.to_json() for e in episodes], indent=1))

        alerts = tmp_path / "alerts.jsonl"
        replay = subprocess.run(
            [sys.executable, "-m", "secretscope", "replay", str(audit), "--config", str(cfg),
             "--store", f"sqlite:///{replay_db}", "--alerts-out", str(alerts), "--no-table"],
            capture_output=True, cwd=tmp_path, timeout=300)
        assert replay.returncode == 0, replay.stderr.decode()
        replayed = alerts_of(alerts)

        # the live path has seen everything once its store holds what the replay found (if it
        # never does, stopping it flushes the rest and the comparison below shows the difference)
        wait_for(lambda: summary(stored_findings(run_db)) >= summary(replayed), 30)
        pipeline.send_signal(signal.SIGTERM)
        assert pipeline.wait(timeout=60) == 0, run_err.read_text()
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
    live = stored_findings(run_db)
    deliver = subprocess.run([sys.executable, "-m", "secretscope", "deliver", "--config", str(cfg),
                              "--once"], capture_output=True, cwd=tmp_path, timeout=120)
    webhook.close()
    assert deliver.returncode == 0, deliver.stderr.decode()
    assert {finding_uid(m) for m in webhook.messages.values()} == set(live)

    # every attack is in some finding, on both paths
    assert [e.episode for e in episodes] == ["bootstrap", *ATTACK_CLASSES]
    assert all(e.request_ids for e in episodes)
    for findings in (replayed, live):
        found = by_episode(findings, episodes)
        missed = [e.episode for e in episodes if not found[e.episode]]
        assert not missed, f"episodes in no finding: {missed}"
        assert len(found["benign"]) <= 1, [f["message"] for f in found["benign"]]
    assert summary(live) == summary(replayed), (
        f"only live: {summary(live) - summary(replayed)}\n"
        f"only replay: {summary(replayed) - summary(live)}")

    found = by_episode(replayed, episodes)
    # the stolen AppRole token is named by its role, not "approle" or an entity id
    assert {f["actor"]["user"]["uid"] for f in found["stolen_token_new_network"]} == \
        {"approle:payments-api"}
    # the break-glass token was created by root at bootstrap: that call is root's, so the
    # attacker's use of the new token is a finding of its own, about the attack alone
    bootstrap_ids = set(episodes[0].request_ids)
    assert all(not related(f) & bootstrap_ids for f in found["root_token_use"])
    # the self-test each audit device logs at start-up is in the log but raises nothing
    self_tests = [orjson.loads(l) for l in audit.read_bytes().splitlines()
                  if b'"sys/audit/test"' in l]
    assert len(self_tests) == 1 and "remote_address" not in self_tests[0]["request"]
    for f in (*replayed.values(), *live.values()):
        assert not f["actor"]["user"]["uid"].startswith("anonymous:")
        assert self_tests[0]["request"]["id"] not in related(f)

    # no secret value leaves the audit device
    assert (canary.encode() in audit.read_bytes()) is log_raw  # the canary really was logged
    outputs = {"alerts": alerts.read_bytes(), "replay store": db_bytes(replay_db),
               "live store": db_bytes(run_db), "replay stdout": replay.stdout,
               "replay stderr": replay.stderr, "run stdout": run_out.read_bytes(),
               "run stderr": run_err.read_bytes(), "deliver output": deliver.stdout + deliver.stderr,
               "deliveries": b"".join(r.body for r in webhook.requests)}
    assert all(outputs[k] for k in ("alerts", "replay store", "live store", "run stderr",
                                    "deliveries"))
    secrets = [canary, *fleet.tokens()]
    leaks = [(name, value[:12]) for name, data in outputs.items() for value in secrets
             if value.encode() in data]
    assert not leaks, f"secret values found: {leaks}"

    check = subprocess.run([sys.executable, str(CHECKER), str(alerts), str(audit)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
