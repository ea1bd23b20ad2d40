"""The store's schema migrations and writes, on SQLite (file) and on a real PostgreSQL server.

PostgreSQL comes from ``scripts/postgres`` (see ``postgres_server.py``); each test gets its own
empty schema there (``search_path``), so tests do not see each other's tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from helpers import T0, make_event
from postgres_server import postgres_url  # noqa: F401
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import make_url

from secretscope.events import DeadLetter
from secretscope.findings import Finding, Reason, finding_id
from secretscope.store import (MIGRATIONS_DIR, Store, dead_letters, findings, metadata, migrate,
                            snapshots)

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"findings", "dead_letters", "snapshots", "feature_history", "feature_sets", "labels",
          "outbox", "delivery_dead_letters", "finding_versions"}


def _head() -> str:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """URL of an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@contextmanager
def fresh_schema(base: str):
    """URL of a new, empty schema on the PostgreSQL server at ``base``; dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url):
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


def schema_diff(eng) -> list:
    with eng.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True})
        return compare_metadata(ctx, metadata)


def describe(eng) -> dict:
    """Tables, their columns and indexes, and the alembic revision: to see that nothing changed."""
    insp = inspect(eng)
    out = {}
    for name in sorted(insp.get_table_names()):
        cols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(name)]
        idx = sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(name))
        out[name] = (cols, idx, insp.get_pk_constraint(name)["constrained_columns"])
    with eng.connect() as conn:
        out["revision"] = MigrationContext.configure(conn).get_current_revision()
    return out


def alembic_config(conn) -> Config:
    """Alembic pointed at the shipped migrations, running on ``conn``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = conn
    return cfg


def insert_finding_row(conn, f: Finding) -> None:
    """A finding row written as an older version would have, bypassing ``Store``."""
    import orjson

    from secretscope.findings import to_ocsf

    conn.execute(findings.insert().values(
        id=f.id, time=f.time, identity=f.identity, display_name=f.display_name, title=f.title,
        severity_id=f.severity_id, score=f.score, detectors=",".join(f.detectors),
        trigger_event_id=f.trigger.event_id, ocsf=orjson.dumps(to_ocsf(f)).decode(),
        created_at=f.time))


def make_finding(event_id: str = "ev-store-1") -> Finding:
    ev = make_event(event_id=event_id, identity="entity:svc-db")
    detectors = ("rules",)
    return Finding(
        id=finding_id(detectors, ev.identity, ev.event_id),
        time=datetime.fromtimestamp(ev.ts, timezone.utc),
        identity=ev.identity, display_name=ev.display_name, title="Unusual secret read",
        severity_id=3, score=0.82, detectors=detectors,
        reasons=(Reason(code="new_secret", detector="rules", text="first read of this secret",
                        observed="secret/team/app", baseline="never"),),
        techniques=("T1555",), related_event_ids=(ev.event_id,), trigger=ev, segment="default",
    )


def test_migrations_on_empty_database_match_models(engine):
    assert inspect(engine).get_table_names() == []
    migrate(engine)
    insp = inspect(engine)
    assert set(insp.get_table_names()) == TABLES | {"alembic_version"}
    assert schema_diff(engine) == []
    assert {i["name"] for i in insp.get_indexes("findings")} == {"ix_findings_time",
                                                                  "ix_findings_identity"}
    assert {i["name"] for i in insp.get_indexes("dead_letters")} == {
        "ix_dead_letters_reason", "uq_dead_letters_origin_digest"}  # the key: migration 0005
    assert describe(engine)["revision"] == _head()


def test_migrate_twice_is_a_noop(engine):
    migrate(engine)
    before = describe(engine)
    with engine.begin() as conn:
        conn.execute(snapshots.insert().values(key="p0", next_offset=1, checksum="c",
                                               data=b"x", updated_at=T0))
    migrate(engine)
    assert describe(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(snapshots.c.key)).scalars().all() == ["p0"]


def test_database_from_create_all_is_adopted(engine, db_url):
    """A store created before migrations existed gets stamped, not 'table already exists'."""
    metadata.create_all(engine, tables=[findings, dead_letters])  # an older store: no snapshots
    store = Store(db_url)
    try:
        assert set(inspect(store.engine).get_table_names()) == TABLES | {"alembic_version"}
        assert schema_diff(store.engine) == []
        assert describe(store.engine)["revision"] == _head()
    finally:
        store.close()


def test_add_findings_is_idempotent_on_id(db_url):
    store = Store(db_url)
    try:
        f = make_finding()
        store.add_findings([f])
        store.add_findings([f])
        store.add_findings([f, make_finding("ev-store-2"), f])
        assert store.count(findings) == 2
        with store.engine.connect() as conn:
            rows = conn.execute(select(findings.c.id, findings.c.identity, findings.c.score,
                                       findings.c.trigger_event_id)
                                .order_by(findings.c.trigger_event_id)).all()
        assert [r.trigger_event_id for r in rows] == ["ev-store-1", "ev-store-2"]
        assert rows[0].id == f.id and rows[0].identity == "entity:svc-db"
        assert rows[0].score == pytest.approx(0.82)
        uids = {o["metadata"]["uid"] for o in store.recent_findings()}
        assert f.id in uids and len(uids) == 2
    finally:
        store.close()


def test_add_dead_letters(db_url):
    store = Store(db_url)
    try:
        store.add_dead_letters([
            DeadLetter(origin="file:a.log:3", reason="json", detail="unexpected end",
                       field="", digest="ab" * 32, size=17),
            DeadLetter(origin="file:a.log:9", reason="too_large", detail="line over limit",
                       field="request.data", digest="cd" * 32, size=2_000_000),
        ])
        store.add_dead_letters([])
        assert store.count(dead_letters) == 2
        with store.engine.connect() as conn:
            rows = conn.execute(select(dead_letters).order_by(dead_letters.c.id)).all()
        assert [(r.origin, r.reason, r.field, r.size) for r in rows] == [
            ("file:a.log:3", "json", "", 17),
            ("file:a.log:9", "too_large", "request.data", 2_000_000)]
        assert rows[0].id < rows[1].id
    finally:
        store.close()


def test_snapshot_row_round_trip(db_url):
    store = Store(db_url)
    try:
        data = bytes(range(256)) * 64  # every byte value, NUL included
        when = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=timezone.utc)
        with store.engine.begin() as conn:
            conn.execute(snapshots.insert().values(key="vault/0", next_offset=2**40 + 7,
                                                   checksum="f" * 64, data=data,
                                                   updated_at=when))
        with store.engine.connect() as conn:
            row = conn.execute(select(snapshots).where(snapshots.c.key == "vault/0")).one()
        assert row.next_offset == 2**40 + 7
        assert row.checksum == "f" * 64
        assert bytes(row.data) == data
        got = row.updated_at if row.updated_at.tzinfo else row.updated_at.replace(
            tzinfo=timezone.utc)  # SQLite keeps no zone
        assert got == when
    finally:
        store.close()


def test_in_memory_sqlite_store_sees_its_tables():
    store = Store("sqlite://")
    try:
        store.add_findings([make_finding()])
        assert store.count(findings) == 1
        assert store.count(snapshots) == 0
    finally:
        store.close()


def test_alembic_command_line_with_repo_ini(tmp_path):
    """Developers' workflow: alembic.ini at the root, URL from SECRETSCOPE_STORE_URL."""
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    env = {**os.environ, "SECRETSCOPE_STORE_URL": url}
    for args in (["upgrade", "head"], ["check"], ["current"]):
        res = subprocess.run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"),
                              *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    assert _head() in res.stdout


@pytest.mark.postgres
def test_concurrent_openers_on_postgresql_wait_for_each_other(postgres_url):
    """Several processes of a deployment start at once on an empty database: every one opens
    its store, and the schema is migrated once (without the migration lock the losers fail on
    'relation already exists' or a duplicate pg_type row)."""
    import threading
    import time

    openers = 6
    with fresh_schema(postgres_url) as schema_url:
        # any lock wait gives up after 20 s, so a broken migration lock fails the test instead
        # of hanging it (waiting for 5 others' migrations takes a few seconds)
        url = make_url(schema_url)
        url = url.update_query_dict({"options": url.query["options"] + " -clock_timeout=20s"})
        url = url.render_as_string(hide_password=False)
        start = threading.Barrier(openers)
        errors: list[BaseException] = []
        stores: list[Store] = []

        def open_store() -> None:
            start.wait()
            try:
                stores.append(Store(url))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=open_store) for _ in range(openers)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        try:
            assert not any(t.is_alive() for t in threads), "an opener is still waiting"
            assert errors == [] and len(stores) == openers
            eng = stores[0].engine
            with eng.connect() as conn:
                versions = conn.execute(text("select version_num from alembic_version")).all()
            assert [v for (v,) in versions] == [_head()]
            assert set(inspect(eng).get_table_names()) == TABLES | {"alembic_version"}
            assert schema_diff(eng) == []
        finally:
            for store in stores:
                store.close()
