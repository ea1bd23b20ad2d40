"""SQL storage through SQLAlchemy: findings, dead letters, snapshots, feature history,
analysts' labels and the delivery outbox (SQLite file by default).

Writes are idempotent on the finding id (and feature history on the event id), so a replay after
a crash does not duplicate them. Nothing stored here holds a secret value: findings carry
identifiers and reasons, dead letters a digest of the bad record rather than the record, feature
history numbers only.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import orjson
from sqlalchemy import (BigInteger, CheckConstraint, Column, DateTime, Float, ForeignKey, Index,
                        Integer, LargeBinary, MetaData, String, Table, Text, create_engine, func,
                        select)
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from pipeline.errors import ModelIntegrityError, SecretscopeError, UnknownFindingError
from pipeline.events import DeadLetter
from pipeline.features import FEATURE_NAMES
from pipeline.findings import Finding, to_ocsf
from pipeline.history import NAMES_HASH, HistoryRow, decode_values

if TYPE_CHECKING:
    import pandas as pd

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
    Column("size", BigInteger, nullable=False),  # an oversize line skipped unread can pass 2 GiB
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the same record from the same place is one dead letter, however often it is replayed
    Index("uq_dead_letters_origin_digest", "origin", "digest", unique=True),
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

# Sampled baseline feature vectors for batch training (see pipeline/history.py); the values are
# float64 packed little-endian, aligned with the names that `feature_sets` keeps for names_hash.
feature_history = Table(
    "feature_history", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("identity", String(512), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False, index=True),
    Column("names_hash", String(16), nullable=False),
    Column("feature_values", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_feature_history_event_id", "event_id", unique=True),
)

feature_sets = Table(
    "feature_sets", metadata,
    Column("names_hash", String(16), primary_key=True),
    Column("names", Text, nullable=False),  # JSON list of feature names
    Column("created_at", DateTime(timezone=True), nullable=False),
)

LABELS = ("tp", "fp")
labels = Table(
    "labels", metadata,
    Column("finding_id", String(36),
           ForeignKey("findings.id", name="fk_labels_finding_id", ondelete="CASCADE"),
           primary_key=True),
    Column("identity", String(512), nullable=False, index=True),
    Column("label", String(2), nullable=False),
    Column("note", String(1024), nullable=False),
    Column("labelled_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("label IN ('tp', 'fp')", name="ck_labels_label"),
)

# The delivery outbox (pipeline/delivery/outbox.py): one row per finding per sink it is routed
# to, written in the transaction that stores the finding; the worker marks it delivered, or moves
# it to delivery_dead_letters with the reason.
OUTBOX_STATUSES = ("pending", "delivered")
outbox = Table(
    "outbox", metadata,
    Column("finding_id", String(36),
           ForeignKey("findings.id", name="fk_outbox_finding_id", ondelete="CASCADE"),
           primary_key=True),
    Column("sink", String(128), primary_key=True),
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("first_attempt_at", DateTime(timezone=True), nullable=True),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),  # NULL: due now
    Column("last_error", String(1024), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("status IN ('pending', 'delivered')", name="ck_outbox_status"),
    Index("ix_outbox_due", "sink", "status", "next_attempt_at"),
)

delivery_dead_letters = Table(
    "delivery_dead_letters", metadata,
    Column("finding_id", String(36),
           ForeignKey("findings.id", name="fk_delivery_dead_letters_finding_id",
                      ondelete="CASCADE"),
           primary_key=True),
    Column("sink", String(128), primary_key=True),
    Column("reason", String(1024), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_at", DateTime(timezone=True), nullable=False),
)


class Route(NamedTuple):
    """Findings at or above ``min_severity_id`` go to the sink called ``name`` (sink settings
    have both attributes, so ``settings.sinks`` can be passed as routes directly)."""

    name: str
    min_severity_id: int


_HISTORY_FLUSH_ROWS = 2000  # buffered history rows written on their own when nothing else is


@dataclass(frozen=True, slots=True)
class FalsePositiveLabel:
    """A finding an analyst labelled a false positive, with what made it fire."""

    finding_id: str
    identity: str
    detectors: tuple[str, ...]
    reason_codes: tuple[str, ...]
    finding_time: datetime
    labelled_at: datetime


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


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
    def __init__(self, url: str, routes: Iterable[Route] = ()) -> None:
        self.engine: Engine = create_engine(url)
        migrate(self.engine)
        self.routes: tuple[Route, ...] = ()
        self.set_routes(routes)
        # Feature history is buffered and written in the transaction of the next findings or
        # snapshot (so a snapshot never covers history that is not stored), or on close.
        self._history: list[HistoryRow] = []
        self._history_lock = threading.Lock()
        self._sets_known = False

    def _insert_ignore(self, table: Table):
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing()
        if dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return table.insert()

    def add_findings(self, items: Sequence[Finding]) -> None:
        """Store new findings and queue them for their sinks, in one transaction."""
        if not items:
            return
        pending = self._take_history()
        with self.engine.begin() as conn:
            self._insert_findings(conn, items)
            self._write_history(conn, pending)

    def _insert_findings(self, conn: Connection, items: Sequence[Finding]) -> None:
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
        queued = [{"finding_id": f.id, "sink": r.name, "status": "pending", "attempts": 0,
                   "created_at": now}
                  for f in items for r in self.routes if f.severity_id >= r.min_severity_id]
        conn.execute(self._insert_ignore(findings), rows)
        if queued:
            self._enqueue(conn, queued)

    def _enqueue(self, conn: Connection, queued: list[dict]) -> None:
        """Queue outbox rows; a replay queues nothing twice (the key is (finding_id, sink))
        and nothing that was dead-lettered (only ``redrive`` brings those back)."""
        dead = {(r.finding_id, r.sink) for r in conn.execute(
            select(delivery_dead_letters.c.finding_id, delivery_dead_letters.c.sink)
            .where(delivery_dead_letters.c.finding_id.in_({q["finding_id"] for q in queued})))}
        queued = [q for q in queued if (q["finding_id"], q["sink"]) not in dead]
        if queued:
            conn.execute(self._insert_ignore(outbox), queued)

    def set_routes(self, routes: Iterable[Route]) -> None:
        """The sinks new findings are queued for in the outbox (by their ``name`` and
        ``min_severity_id``); none by default."""
        self.routes = tuple(Route(r.name, r.min_severity_id) for r in routes)
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise SecretscopeError(f"outbox routes: duplicate sink names in {names}")

    def update_findings(self, items: Sequence[Finding]) -> None:
        """Replace stored findings by their newer version (an incident that grew by merged
        firings); same id, so delivery downstream can update rather than duplicate."""
        if not items:
            return
        with self.engine.begin() as conn:
            self._update_findings(conn, items)

    def _update_findings(self, conn: Connection, items: Sequence[Finding]) -> None:
        if not items:
            return
        now = datetime.now(timezone.utc)
        # a finding whose severity grew now also goes to the sinks it meets (once, by id)
        queued = [{"finding_id": f.id, "sink": r.name, "status": "pending", "attempts": 0,
                   "created_at": now}
                  for f in items for r in self.routes if f.severity_id >= r.min_severity_id]
        for f in items:
            conn.execute(findings.update().where(findings.c.id == f.id).values(
                severity_id=f.severity_id, score=f.score,
                detectors=",".join(f.detectors)[:512],
                ocsf=orjson.dumps(to_ocsf(f)).decode()))
        if queued:  # only findings stored already (an update may precede its insert)
            stored = set(conn.execute(select(findings.c.id).where(
                findings.c.id.in_({q["finding_id"] for q in queued}))).scalars())
            queued = [q for q in queued if q["finding_id"] in stored]
        if queued:
            self._enqueue(conn, queued)

    def add_dead_letters(self, items: Iterable[DeadLetter]) -> None:
        """Store dead letters; one already stored (same origin and digest) is left as it is."""
        now = datetime.now(timezone.utc)
        rows = [{"origin": d.origin[:1024], "reason": d.reason, "detail": d.detail[:512],
                 "field": d.field[:128], "digest": d.digest, "size": d.size, "created_at": now}
                for d in items]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self._insert_ignore(dead_letters), rows)

    def save_snapshot(self, key: str, next_offset: int, blob: bytes,
                      created: Sequence[Finding] = (), updated: Sequence[Finding] = ()) -> None:
        """Replace the snapshot under ``key`` (with the input offset it covers), and store the
        findings the state since the last snapshot raised (queued in the outbox) in the same
        transaction: processing progress and its findings are committed together."""
        row = {"key": key, "next_offset": next_offset, "checksum": hashlib.sha256(blob).hexdigest(),
               "data": blob, "updated_at": datetime.now(timezone.utc)}
        pending = self._take_history()
        with self.engine.begin() as conn:
            self._insert_findings(conn, created)
            self._update_findings(conn, updated)
            self._write_history(conn, pending)
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

    # --- feature history ----------------------------------------------------------------

    def add_feature_history(self, rows: Sequence[HistoryRow]) -> None:
        """Queue sampled feature rows; they are written with the next findings or snapshot,
        once enough are pending, or by ``flush``/``close``. Rows already stored are ignored."""
        with self._history_lock:
            self._history.extend(rows)
            if len(self._history) < _HISTORY_FLUSH_ROWS:
                return
        self.flush()

    def flush(self) -> None:
        pending = self._take_history()
        if pending:
            with self.engine.begin() as conn:
                self._write_history(conn, pending)

    def _take_history(self) -> list[HistoryRow]:
        with self._history_lock:
            pending, self._history = self._history, []
        return pending

    def _write_history(self, conn: Connection, rows: list[HistoryRow]) -> None:
        if not rows:
            return
        if any(r.names_hash != NAMES_HASH for r in rows):
            raise SecretscopeError("feature history rows for a feature set this build does not "
                                   "know; record them with pipeline.history.HistoryRecorder")
        now = datetime.now(timezone.utc)
        if not self._sets_known:
            conn.execute(self._insert_ignore(feature_sets), [
                {"names_hash": NAMES_HASH, "names": orjson.dumps(FEATURE_NAMES).decode(),
                 "created_at": now}])
            self._sets_known = True
        conn.execute(self._insert_ignore(feature_history), [
            {"identity": r.identity[:512], "event_id": r.event_id[:128], "event_time": r.time,
             "names_hash": r.names_hash, "feature_values": r.values, "created_at": now}
            for r in rows])

    def feature_history(self, since: datetime | None = None, until: datetime | None = None,
                        limit: int | None = None) -> "pd.DataFrame":
        """Stored feature rows with ``since <= time < until`` (the newest ``limit`` of them), as
        a DataFrame shaped like ``pipeline.features.feature_frame``: index ``event_id``, columns
        ``time``, ``identity`` and one per feature name. Rows recorded under another feature
        set are aligned by name; features they lack are NaN."""
        import pandas as pd

        self.flush()
        query = select(feature_history.c.identity, feature_history.c.event_id,
                       feature_history.c.event_time, feature_history.c.names_hash,
                       feature_history.c.feature_values)
        if since is not None:
            query = query.where(feature_history.c.event_time >= since)
        if until is not None:
            query = query.where(feature_history.c.event_time < until)
        query = query.order_by(feature_history.c.event_time.desc(), feature_history.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            sets = {r.names_hash: tuple(orjson.loads(r.names))
                    for r in conn.execute(select(feature_sets))}
        parts = []
        for key in dict.fromkeys(r.names_hash for r in rows):
            names = sets.get(key)
            if names is None:
                raise SecretscopeError(f"feature history: no names stored for feature set {key}")
            block = [r for r in rows if r.names_hash == key]
            frame = pd.DataFrame(decode_values([bytes(r.feature_values) for r in block],
                                               len(names)), columns=list(names))
            frame.insert(0, "identity", [r.identity for r in block])
            frame.insert(0, "time", pd.to_datetime([_utc(r.event_time) for r in block], utc=True))
            frame.index = pd.Index([r.event_id for r in block], name="event_id")
            parts.append(frame)
        if not parts:
            empty = pd.DataFrame(columns=["time", "identity", *FEATURE_NAMES])
            empty.index.name = "event_id"
            return empty
        frame = pd.concat(parts) if len(parts) > 1 else parts[0]
        return frame.sort_values("time", kind="stable")

    # --- labels --------------------------------------------------------------------------

    def label_finding(self, finding_id: str, label: Literal["tp", "fp"], note: str = "") -> str:
        """Store an analyst's verdict on a finding (replacing an earlier one); returns the
        finding's identity."""
        if label not in LABELS:
            raise SecretscopeError(f"label must be one of {', '.join(LABELS)}, not {label!r}")
        with self.engine.begin() as conn:
            identity = conn.execute(select(findings.c.identity)
                                    .where(findings.c.id == finding_id)).scalar_one_or_none()
            if identity is None:
                raise UnknownFindingError(f"no finding {finding_id!r} in the store")
            conn.execute(labels.delete().where(labels.c.finding_id == finding_id))
            conn.execute(labels.insert().values(
                finding_id=finding_id, identity=identity, label=label, note=note[:1024],
                labelled_at=datetime.now(timezone.utc)))
        return identity

    def labels_of(self, finding_ids: Iterable[str]) -> dict[str, str]:
        """finding id -> "tp"/"fp" for those of ``finding_ids`` that are labelled."""
        ids = list(finding_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(labels.c.finding_id, labels.c.label)
                                .where(labels.c.finding_id.in_(ids))).all()
        return {r.finding_id: r.label for r in rows}

    def false_positive_labels(self) -> list[FalsePositiveLabel]:
        """Findings labelled "fp", oldest label first, with their detectors and reason codes."""
        query = (select(labels.c.finding_id, labels.c.identity, labels.c.labelled_at,
                        findings.c.time, findings.c.ocsf)
                 .join(findings, findings.c.id == labels.c.finding_id)
                 .where(labels.c.label == "fp")
                 .order_by(labels.c.labelled_at, labels.c.finding_id))
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out = []
        for r in rows:
            ocsf = orjson.loads(r.ocsf)
            out.append(FalsePositiveLabel(
                finding_id=r.finding_id, identity=r.identity,
                detectors=tuple(ocsf["unmapped"]["secretscope"]["detectors"]),
                reason_codes=tuple(ocsf["finding_info"].get("types") or ()),
                finding_time=_utc(r.time), labelled_at=_utc(r.labelled_at)))
        return out

    def close(self) -> None:
        self.flush()
        self.engine.dispose()
