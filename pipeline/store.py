"""SQL storage through SQLAlchemy: findings and dead letters (SQLite file by default).

Writes are idempotent on the finding id, so a replay after a crash does not duplicate findings.
Nothing stored here holds a secret value: findings carry identifiers and reasons, dead letters a
digest of the bad record rather than the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import orjson
from sqlalchemy import (BigInteger, Column, DateTime, Float, Integer, LargeBinary, MetaData,
                        String, Table, Text, create_engine, func, select)
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from pipeline.errors import ModelIntegrityError
from pipeline.events import DeadLetter
from pipeline.findings import Finding, to_ocsf

metadata = MetaData()

findings = Table(
    "findings", metadata,
    Column("id", String(36), primary_key=True),
    Column("time", DateTime(timezone=True), nullable=False, index=True),
    Column("identity", String(512), nullable=False, index=True),
    Column("display_name", String(512), nullable=False),
    Column("title", String(512), nullable=False),
    Column("severity_id", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("detectors", String(512), nullable=False),
    Column("trigger_event_id", String(128), nullable=False),
    Column("ocsf", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("origin", String(1024), nullable=False),
    Column("reason", String(64), nullable=False, index=True),
    Column("detail", String(512), nullable=False),
    Column("field", String(128), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Per-partition processing state (identity baselines, model, suppression) with the input offset
# it covers; written in the same transaction as the findings of the batches it covers.
snapshots = Table(
    "snapshots", metadata,
    Column("key", String(512), primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# Alembic migrations for the tables above ship inside the package (pipeline/migrations).
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_MIGRATION_LOCK_ID = 0x5EC5_C09E  # pg_advisory_xact_lock key: one migrating process at a time


def migrate(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the newest schema (``alembic upgrade head``).

    A no-op when it is already current. Runs in one transaction on the caller's engine, so an
    in-memory SQLite database sees the tables afterwards; on PostgreSQL concurrent callers wait
    for each other instead of racing to create the same tables.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url)
        migrate(self.engine)

    def _insert_ignore(self, table: Table):
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        if dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return table.insert()

    def add_findings(self, items: Sequence[Finding]) -> None:
        if not items:
            return
        now = datetime.now(timezone.utc)
        rows = [
            {"id": f.id, "time": f.time, "identity": f.identity[:512],
             "display_name": f.display_name[:512], "title": f.title[:512],
             "severity_id": f.severity_id, "score": f.score,
             "detectors": ",".join(f.detectors)[:512], "trigger_event_id": f.trigger.event_id,
             "ocsf": orjson.dumps(to_ocsf(f)).decode(), "created_at": now}
            for f in items
        ]
        with self.engine.begin() as conn:
            conn.execute(self._insert_ignore(findings), rows)

    def add_dead_letters(self, items: Iterable[DeadLetter]) -> None:
        now = datetime.now(timezone.utc)
        rows = [{"origin": d.origin[:1024], "reason": d.reason, "detail": d.detail[:512],
                 "field": d.field[:128], "digest": d.digest, "size": d.size, "created_at": now}
                for d in items]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(dead_letters.insert(), rows)

    def save_snapshot(self, key: str, next_offset: int, blob: bytes) -> None:
        """Replace the snapshot under ``key`` (with the input offset it covers)."""
        row = {"key": key, "next_offset": next_offset, "checksum": hashlib.sha256(blob).hexdigest(),
               "data": blob, "updated_at": datetime.now(timezone.utc)}
        with self.engine.begin() as conn:
            conn.execute(snapshots.delete().where(snapshots.c.key == key))
            conn.execute(snapshots.insert(), [row])

    def load_snapshot(self, key: str) -> tuple[int, bytes] | None:
        """(next_offset, blob) of the snapshot under ``key``, checksum verified; None if none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(snapshots).where(snapshots.c.key == key)).first()
        if row is None:
            return None
        if hashlib.sha256(row.data).hexdigest() != row.checksum:
            raise ModelIntegrityError(f"snapshot {key}: checksum mismatch, refusing to load it")
        return row.next_offset, bytes(row.data)

    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    def recent_findings(self, limit: int = 50) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(findings.c.ocsf).order_by(findings.c.time.desc()).limit(limit)).all()
        return [orjson.loads(r.ocsf) for r in rows]

    def close(self) -> None:
        self.engine.dispose()
