"""secretscope run with Vault's socket audit device as its source, end to end."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
from pathlib import Path


from conftest import SAMPLES, CANARY
from helpers import connect, start_socket_service, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stored_findings(db: Path) -> int:
    """Findings in the service's SQLite store; 0 until the store exists."""
    try:  # read-only: never create the file under the service
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("select count(*) from findings").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_run_listens_for_vault_socket_device(tmp_path):
    port = free_port()
    db = tmp_path / "store.db"
    proc, log = start_socket_service(tmp_path, port, f"sqlite:///{db}")
    try:
        client = wait_for(lambda: connect(port, proc, log), 30,
                          lambda: f"the service to listen on 127.0.0.1:{port}")
        lines = (SAMPLES / "vault_audit_reference.jsonl").read_bytes()
        client.sendall(lines)
        client.close()
        # a second node that drops its connection in the middle of a line
        broken = socket.create_connection(("127.0.0.1", port))
        broken.sendall(b'{"time":"2026-03-04T11:06:00Z","type":"request","request":{"id":"cut')
        broken.close()
        # findings arrive while the service runs (an idle source flushes its batch)
        wait_for(lambda: stored_findings(db) >= 2, 30,
                 lambda: f"2 findings in {db} (found {stored_findings(db)}); "
                         f"service log: {log.read_text()[-2000:]}")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads([l for l in log.read_text().splitlines() if '"stopped"' in l][-1])
    assert summary["events"] == 11 and summary["dead_letters"] == 1
    with sqlite3.connect(db) as conn:
        titles = [r[0] for r in conn.execute("select title from findings")]
        (reason,) = conn.execute("select reason from dead_letters").fetchone()
        dump = "\n".join(conn.iterdump())
    assert any("Audit device" in t for t in titles) and reason == "truncated"
    assert CANARY not in dump and CANARY not in log.read_text()
