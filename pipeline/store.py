"""SQL storage through SQLAlchemy: findings, dead letters, snapshots, feature history,
analysts' labels and the delivery outbox (SQLite file by default).

Writes are idempotent on the finding id (and feature history on the event id), so a replay after
a crash does not duplicate them. Nothing stored here holds a secret value: findings carry
identifiers and reasons, dead letters a digest of the bad record rather than the record, feature
history numbers only.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import orjson
from sqlalchemy import (BigInteger, CheckConstraint, Column, DateTime, Float, ForeignKey, Index,
                        Integer, LargeBinary, MetaData, String, Table, Text, func,
                        select)
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from secretscope.errors import ModelIntegrityError, SecretscopeError, UnknownFindingError
from secretscope.events import DeadLetter
from secretscope.features import FEATURE_NAMES
from secretscope.findings import (CLOSE, CREATE, IN_PROGRESS, RESOLVED, STATUS_NAMES, UPDATE,
                               Finding, to_ocsf)
from secretscope.history import NAMES_HASH, HistoryRow, decode_values
from secretscope.store_retry import StoreRetry
from secretscope.store_url import open_engine

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
    Column("ocsf", Text, nullable=False),  # the newest version
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False, server_default="1"),
    Column("status_id", Integer, nullable=False, server_default="1"),
    Column("analyst_status_id", Integer, nullable=True),  # set by an analyst: it sticks
)

# Every version of every finding (Create, Updates, Close), in order. ``pipeline_seq`` is the
# version number the pipeline gave it, deterministic for a given input, so a replay after a crash
# stores (and queues) nothing twice; versions an analyst adds (acknowledge, close) have none and
# take the next number, which the pipeline's later versions then follow.
finding_versions = Table(
    "finding_versions", metadata,
    Column("finding_id", String(36),
           ForeignKey("findings.id", name="fk_finding_versions_finding_id", ondelete="CASCADE"),
           primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("pipeline_seq", Integer, nullable=True),
    Column("origin", String(16), nullable=False),  # pipeline | analyst
    Column("activity_id", Integer, nullable=False),
    Column("status_id", Integer, nullable=False),
    Column("severity_id", Integer, nullable=False),
    Column("ocsf", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_finding_versions_seq", "finding_id", "pipeline_seq", unique=True),
    # deliver routes the versions stored since its last pass (pipeline/delivery/routing.py)
    Index("ix_finding_versions_created_at", "created_at"),
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

# The delivery outbox (pipeline/delivery/outbox.py): one row per finding version per sink it is
# routed to, written in the transaction that stores the version; the worker marks it delivered,
# or moves it to delivery_dead_letters with the reason.
OUTBOX_STATUSES = ("pending", "delivered")
outbox = Table(
    "outbox", metadata,
    Column("finding_id", String(36),
           ForeignKey("findings.id", name="fk_outbox_finding_id", ondelete="CASCADE"),
           primary_key=True),
    Column("version", Integer, primary_key=True),
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
    Column("version", Integer, primary_key=True),
    Column("sink", String(128), primary_key=True),
    Column("reason", String(1024), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_at", DateTime(timezone=True), nullable=False),
)


class Route(NamedTuple):
    """Finding versions at or above ``min_severity_id`` go to the sink called ``name``: every
    version, or with ``versions="raises"`` only Creates and severity raises (sink settings have
    these attributes, so ``settings.sinks`` can be passed as routes directly)."""

    name: str
    min_severity_id: int
    versions: str = "all"

    def takes(self, severity_id: int, activity_id: int, raised: bool) -> bool:
        if severity_id < self.min_severity_id:
            return False
        return self.versions == "all" or activity_id == CREATE or raised


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


def _retried(method):
    """Run a Store method under the store's retry policy: an outage is waited out (see
    pipeline/store_retry.py). Only for methods that are one transaction and safe to repeat."""
    @functools.wraps(method)
    def call(self: "Store", *args, **kwargs):
        return self.retry.call(method, self, *args, **kwargs)
    return call


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


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
    if _at_head(engine):
        return  # without importing alembic (~60 ms of every start-up) to find nothing to do
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


def _at_head(engine: Engine) -> bool:
    """True if the database's alembic revision is the newest shipped one."""
    head = _head_revision()
    if head is None:
        return False
    with engine.connect() as conn:  # a store that cannot be reached fails here, as in alembic
        try:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except SQLAlchemyError:  # no version table yet: alembic creates it
            return False
    return versions == [head]


@functools.lru_cache(maxsize=1)
def _head_revision() -> str | None:
    """The revision no shipped migration names as its ``down_revision`` (None if not exactly one:
    then alembic decides)."""
    revisions, downs = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = path.read_text()
        revisions.update(_REVISION.findall(source))
        downs.update(_DOWN_REVISION.findall(source))
    heads = revisions - downs
    return heads.pop() if len(heads) == 1 else None


_REVISION = re.compile(r'^revision(?:: str)? = "([^"]+)"', re.M)
_DOWN_REVISION = re.compile(r'^down_revision(?:: [^=]+)? = "([^"]+)"', re.M)


DEFAULT_OUTAGE_SECONDS = 300.0  # StoreSettings.outage_seconds


class Store:
    """``outage_seconds``: how long a call waits out an unreachable database before raising
    StoreUnavailableError (None: as long as it takes); ``stop`` ends such a wait early."""

    def __init__(self, url: str, routes: Iterable[Route] = (),
                 outage_seconds: float | None = DEFAULT_OUTAGE_SECONDS,
                 stop: threading.Event | None = None) -> None:
        self.engine: Engine = open_engine(url)
        self.retry = StoreRetry(url, outage_seconds, stop=stop,
                                on_transient=self.engine.dispose)
        self.retry.call(migrate, self.engine)
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
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(table).on_conflict_do_nothing()
        if dialect == "postgresql":
            # imported here: a SQLite store's start-up does not load PostgreSQL's dialect
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(table).on_conflict_do_nothing()
        return table.insert()

    @_retried
    def add_versions(self, versions: Sequence[Finding]) -> None:
        """Store finding versions (in order) and queue each for its sinks, in one transaction."""
        if not versions:
            return
        with self._history_taken() as pending, self.engine.begin() as conn:
            self._insert_versions(conn, versions)
            self._write_history(conn, pending)

    def add_findings(self, items: Sequence[Finding]) -> None:
        """Store findings (their Create versions) and queue them for their sinks."""
        self.add_versions(items)

    def _insert_versions(self, conn: Connection, versions: Sequence[Finding]) -> None:
        """Each pipeline version is stored once (by finding id and the pipeline's version
        number), becomes the finding's current state and is queued for the sinks that take it.
        A version whose number an analyst's took already is stored under the next free one."""
        if not versions:
            return
        now = datetime.now(timezone.utc)
        ids = {f.id for f in versions}
        creates = {f.id: f for f in versions if f.activity_id == CREATE}
        if creates:
            conn.execute(self._insert_ignore(findings), [
                {"id": f.id, "time": f.time, "identity": f.identity[:512],
                 "display_name": f.display_name[:512], "title": f.title[:512],
                 "severity_id": f.severity_id, "score": f.score,
                 "detectors": ",".join(f.detectors)[:512], "trigger_event_id": f.trigger.event_id,
                 "ocsf": "{}", "created_at": now, "version": 0, "status_id": f.status_id}
                for f in creates.values()])
        stored = self._versions_of(conn, ids)
        rows, queued = [], []
        current: dict[str, tuple[Finding, int, str]] = {}
        for f in versions:
            known = stored.get(f.id)
            if known is None:  # the finding itself is not stored: never its Create
                continue
            seqs, top, sticky = known
            if f.version in seqs:
                continue  # stored by an earlier run over the same input
            number = top + 1
            known[0].add(f.version)
            stored[f.id] = (seqs, number, sticky)
            if sticky is not None and f.activity_id != CLOSE:
                f = replace(f, status_id=sticky)
            doc = orjson.dumps(to_ocsf(replace(f, version=number))).decode()
            rows.append({"finding_id": f.id, "version": number, "pipeline_seq": f.version,
                         "origin": "pipeline", "activity_id": f.activity_id,
                         "status_id": f.status_id, "severity_id": f.severity_id, "ocsf": doc,
                         "created_at": now})
            current[f.id] = (f, number, doc)
            queued += self._routed(f.id, number, f.severity_id, f.activity_id, f.raised, now)
        if rows:
            conn.execute(finding_versions.insert(), rows)
        for fid, (f, number, doc) in current.items():
            conn.execute(findings.update().where(findings.c.id == fid,
                                                 findings.c.version < number).values(
                title=f.title[:512], severity_id=f.severity_id, score=f.score,
                detectors=",".join(f.detectors)[:512], ocsf=doc, version=number,
                status_id=f.status_id))
        if queued:
            self._enqueue(conn, queued)

    def _versions_of(self, conn: Connection, ids: set[str]
                     ) -> dict[str, tuple[set[int], int, int | None]]:
        """finding id -> (pipeline version numbers stored, highest version number, the status an
        analyst set or None), for those of ``ids`` that are stored."""
        out: dict[str, tuple[set[int], int, int | None]] = {}
        for chunk in _chunks(sorted(ids), 500):
            for r in conn.execute(select(findings.c.id, findings.c.analyst_status_id)
                                  .where(findings.c.id.in_(chunk))):
                out[r.id] = (set(), 0, r.analyst_status_id)
            for r in conn.execute(select(finding_versions.c.finding_id,
                                         finding_versions.c.version,
                                         finding_versions.c.pipeline_seq)
                                  .where(finding_versions.c.finding_id.in_(chunk))):
                seqs, top, sticky = out[r.finding_id]
                if r.pipeline_seq is not None:
                    seqs.add(r.pipeline_seq)
                out[r.finding_id] = (seqs, max(top, r.version), sticky)
        return out

    def _routed(self, finding_id: str, version: int, severity_id: int, activity_id: int,
                raised: bool, now: datetime) -> list[dict]:
        return [{"finding_id": finding_id, "version": version, "sink": r.name,
                 "status": "pending", "attempts": 0, "created_at": now}
                for r in self.routes if r.takes(severity_id, activity_id, raised)]

    def _enqueue(self, conn: Connection, queued: list[dict]) -> None:
        """Queue outbox rows; a replay queues nothing twice (the key is (finding id, version,
        sink)) and nothing that was dead-lettered (only ``redrive`` brings those back)."""
        dead = set()
        for chunk in _chunks(sorted({q["finding_id"] for q in queued}), 500):
            dead |= {tuple(r) for r in conn.execute(
                select(delivery_dead_letters.c.finding_id, delivery_dead_letters.c.version,
                       delivery_dead_letters.c.sink)
                .where(delivery_dead_letters.c.finding_id.in_(chunk)))}
        queued = [q for q in queued if (q["finding_id"], q["version"], q["sink"]) not in dead]
        if queued:
            conn.execute(self._insert_ignore(outbox), queued)

    def set_routes(self, routes: Iterable[Route]) -> None:
        """The sinks new finding versions are queued for (by their ``name``,
        ``min_severity_id`` and ``versions``); none by default."""
        self.routes = tuple(Route(r.name, r.min_severity_id, getattr(r, "versions", "all"))
                            for r in routes)
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            raise SecretscopeError(f"outbox routes: duplicate sink names in {names}")

    # --- analysts' status changes ---------------------------------------------------------

    def set_status(self, finding_id: str, status: Literal["ack", "close"],
                   note: str = "") -> int:
        """An analyst acknowledges (In Progress) or closes (Resolved) a finding: a new version,
        queued for the sinks like the pipeline's; returns its version number. A closed finding
        takes no more firings: the running pipeline opens a new finding for the next one."""
        if status not in ("ack", "close"):
            raise SecretscopeError(f"status must be ack or close, not {status!r}")
        status_id = IN_PROGRESS if status == "ack" else RESOLVED
        activity = UPDATE if status == "ack" else CLOSE
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            query = select(findings.c.ocsf, findings.c.version, findings.c.severity_id,
                           findings.c.status_id).where(findings.c.id == finding_id)
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise UnknownFindingError(f"no finding {finding_id!r} in the store")
            if row.status_id == RESOLVED:
                raise SecretscopeError(f"finding {finding_id} is closed already")
            number = row.version + 1
            doc = orjson.loads(row.ocsf)
            doc.update(activity_id=activity, activity_name="Update" if status == "ack" else "Close",
                       type_uid=200400 + activity,
                       type_name=f"Detection Finding: {'Update' if status == 'ack' else 'Close'}",
                       status_id=status_id, status=STATUS_NAMES[status_id],
                       time=int(now.timestamp() * 1000))
            if note:
                doc["comment"] = note[:1024]
            if status == "close":
                doc["end_time"] = doc["time"]
            doc["unmapped"]["secretscope"]["version"] = number
            text_doc = orjson.dumps(doc).decode()
            conn.execute(finding_versions.insert().values(
                finding_id=finding_id, version=number, pipeline_seq=None, origin="analyst",
                activity_id=activity, status_id=status_id, severity_id=row.severity_id,
                ocsf=text_doc, created_at=now))
            conn.execute(findings.update().where(findings.c.id == finding_id).values(
                ocsf=text_doc, version=number, status_id=status_id,
                analyst_status_id=status_id))
            queued = self._routed(finding_id, number, row.severity_id, activity, False, now)
            if queued:
                self._enqueue(conn, queued)
        return number

    @_retried
    def closed_by_analyst(self, finding_ids: Iterable[str]) -> set[str]:
        """Those of ``finding_ids`` an analyst has closed."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(finding_ids)), 500):
                out |= set(conn.execute(select(findings.c.id).where(
                    findings.c.id.in_(chunk),
                    findings.c.analyst_status_id == RESOLVED)).scalars())
        return out

    @_retried
    def acknowledged_by_analyst(self, finding_ids: Iterable[str]) -> set[str]:
        """Those of ``finding_ids`` an analyst has acknowledged (and not closed)."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted(set(finding_ids)), 500):
                out |= set(conn.execute(select(findings.c.id).where(
                    findings.c.id.in_(chunk),
                    findings.c.analyst_status_id == IN_PROGRESS)).scalars())
        return out

    @_retried
    def versions(self, finding_id: str | None = None) -> list[dict]:
        """Stored versions (OCSF documents), oldest first (per finding when none is named)."""
        query = select(finding_versions.c.ocsf).order_by(finding_versions.c.finding_id,
                                                         finding_versions.c.version)
        if finding_id is not None:
            query = query.where(finding_versions.c.finding_id == finding_id)
        with self.engine.connect() as conn:
            return [orjson.loads(r.ocsf) for r in conn.execute(query)]

    @_retried
    def add_dead_letters(self, items: Iterable[DeadLetter]) -> None:
        """Store dead letters; one already stored (same origin and digest) is left as it is."""
        now = datetime.now(timezone.utc)
        rows = [{"origin": d.origin[:1024], "reason": d.reason, "detail": d.detail[:512],
                 "field": d.field[:128], "digest": d.digest, "size": d.size, "created_at": now}
                for d in items]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(self._insert_ignore(dead_letters), rows)

    @_retried
    def save_snapshot(self, key: str, next_offset: int, blob: bytes,
                      versions: Sequence[Finding] = ()) -> None:
        """Replace the snapshot under ``key`` (with the input offset it covers), and store the
        finding versions the state since the last snapshot emitted (queued in the outbox) in the
        same transaction: processing progress and its findings are committed together."""
        row = {"key": key, "next_offset": next_offset, "checksum": hashlib.sha256(blob).hexdigest(),
               "data": blob, "updated_at": datetime.now(timezone.utc)}
        with self._history_taken() as pending, self.engine.begin() as conn:
            self._insert_versions(conn, versions)
            self._write_history(conn, pending)
            conn.execute(snapshots.delete().where(snapshots.c.key == key))
            conn.execute(snapshots.insert(), [row])

    @_retried
    def load_snapshot(self, key: str) -> tuple[int, bytes] | None:
        """(next_offset, blob) of the snapshot under ``key``, checksum verified; None if none."""
        with self.engine.connect() as conn:
            row = conn.execute(select(snapshots).where(snapshots.c.key == key)).first()
        if row is None:
            return None
        if hashlib.sha256(row.data).hexdigest() != row.checksum:
            raise ModelIntegrityError(f"snapshot {key}: checksum mismatch, refusing to load it")
        return row.next_offset, bytes(row.data)

    @_retried
    def count(self, table: Table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table)).scalar_one()

    @_retried
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

    @_retried
    def flush(self) -> None:
        with self._history_taken() as pending:
            if pending:
                with self.engine.begin() as conn:
                    self._write_history(conn, pending)

    @contextmanager
    def _history_taken(self):
        """The buffered history rows, for a transaction to write; put back in front of the
        buffer if it fails, so a retried transaction (or the next one) writes them."""
        with self._history_lock:
            pending, self._history = self._history, []
        try:
            yield pending
        except BaseException:
            with self._history_lock:
                self._history[:0] = pending
                self._sets_known = False  # its feature_sets row may have been rolled back
            raise

    def _write_history(self, conn: Connection, rows: list[HistoryRow]) -> None:
        if not rows:
            return
        if any(r.names_hash != NAMES_HASH for r in rows):
            raise SecretscopeError("feature history rows for a feature set this build does not "
                                   "know; record them with secretscope.history.HistoryRecorder")
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

    @_retried
    def feature_history(self, since: datetime | None = None, until: datetime | None = None,
                        limit: int | None = None) -> "pd.DataFrame":
        """Stored feature rows with ``since <= time < until`` (the newest ``limit`` of them), as
        a DataFrame shaped like ``secretscope.features.feature_frame``: index ``event_id``, columns
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

    @_retried
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

    @_retried
    def labels_of(self, finding_ids: Iterable[str]) -> dict[str, str]:
        """finding id -> "tp"/"fp" for those of ``finding_ids`` that are labelled."""
        ids = list(finding_ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(labels.c.finding_id, labels.c.label)
                                .where(labels.c.finding_id.in_(ids))).all()
        return {r.finding_id: r.label for r in rows}

    @_retried
    def false_positive_labels(self) -> list[FalsePositiveLabel]:
        """Findings labelled "fp", oldest label first, with the detectors and reason codes of
        their Create: what raised the finding, not what a long incident or a reopened campaign
        merged into it later."""
        query = (select(labels.c.finding_id, labels.c.identity, labels.c.labelled_at,
                        findings.c.time, finding_versions.c.ocsf)
                 .join(findings, findings.c.id == labels.c.finding_id)
                 .join(finding_versions, (finding_versions.c.finding_id == labels.c.finding_id)
                       & (finding_versions.c.version == 1))
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
