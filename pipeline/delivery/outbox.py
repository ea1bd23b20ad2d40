"""The SQL outbox: which finding versions each sink still has to receive, which it has, and
which were given up on (``delivery_dead_letters``, with the reason).

Rows are keyed on (finding id, version, sink) and queued by
:meth:`secretscope.store.Store.add_versions` in the transaction that stores the versions. A sink gets
the versions of one finding in order: a version is due only once the sink has no earlier version
of that finding pending, so an Update never overtakes its Create and a Close comes last. :meth:`Outbox.process` claims a sink's due rows and records what became of them. On
PostgreSQL the claim is ``SELECT ... FOR UPDATE SKIP LOCKED`` held until the outcomes are
written, so several workers never send the same row; on SQLite (one worker) the claim and the
outcomes are short transactions of their own, so a slow sink does not lock the pipeline's writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Union

import orjson
from sqlalchemy import and_, delete, func, or_, select, tuple_, update
from sqlalchemy.engine import Connection

from secretscope.delivery.model import Delivery
from secretscope.store import (Store, _chunks, _utc, delivery_dead_letters, finding_versions,
                            outbox)


@dataclass(frozen=True, slots=True)
class Claimed:
    """A due outbox row with the finding to send."""

    delivery: Delivery
    attempts: int  # attempts made before this one
    first_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Delivered:
    finding_id: str
    version: int
    at: datetime


@dataclass(frozen=True, slots=True)
class Retry:
    finding_id: str
    version: int
    attempts: int  # including the one that just failed
    first_attempt_at: datetime
    next_attempt_at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class Dead:
    finding_id: str
    version: int
    attempts: int
    reason: str
    at: datetime


Result = Union[Delivered, Retry, Dead]


class Outbox:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine
        self._hold = self.engine.dialect.name == "postgresql"

    def process(self, sink: str, limit: int, now: datetime,
                handle: Callable[[list[Claimed]], Sequence[Result]]) -> list[Result]:
        """Claim up to ``limit`` rows of ``sink`` due at ``now`` (oldest first), let ``handle``
        send them, and record the results it returns.

        A store outage is waited out (``store.retry``). Once ``handle`` has sent a batch its
        results stay in memory until they are recorded: if the store goes away before they are,
        they are recorded in a new transaction when it is back, so a claimed batch is neither
        lost nor sent again."""
        sent: list[list[Result]] = []
        if self._hold:
            return self.store.retry.call(self._claim_send_record, sink, limit, now, handle, sent)
        claimed = self.store.retry.call(self._claim, sink, limit, now)
        if not claimed:
            return []
        results = list(handle(claimed))
        self.store.retry.call(self._record_apart, sink, results)
        return results

    def _claim_send_record(self, sink: str, limit: int, now: datetime,
                           handle: Callable[[list[Claimed]], Sequence[Result]],
                           sent: list[list[Result]]) -> list[Result]:
        """One attempt: on PostgreSQL the claim (row locks) is held while the sink sends, so
        several workers never send the same row; after a failed attempt that sent, only the
        recording is left to do."""
        if sent:
            self._record_apart(sink, sent[0])
            return sent[0]
        with self.engine.begin() as conn:
            claimed = self._due(conn, sink, limit, now, lock=True)
            if not claimed:
                return []
            sent.append(list(handle(claimed)))
            self._record(conn, sink, sent[0])
        return sent[0]

    def _claim(self, sink: str, limit: int, now: datetime) -> list[Claimed]:
        with self.engine.connect() as conn:
            return self._due(conn, sink, limit, now, lock=False)

    def _record_apart(self, sink: str, results: Sequence[Result]) -> None:
        with self.engine.begin() as conn:
            self._record(conn, sink, results)

    def _due(self, conn: Connection, sink: str, limit: int, now: datetime,
             lock: bool) -> list[Claimed]:
        earlier = outbox.alias("earlier")
        waiting = (select(earlier.c.version)
                   .where(earlier.c.finding_id == outbox.c.finding_id, earlier.c.sink == sink,
                          earlier.c.status == "pending", earlier.c.version < outbox.c.version)
                   .exists())
        query = (select(outbox.c.finding_id, outbox.c.version, outbox.c.attempts,
                        outbox.c.first_attempt_at, finding_versions.c.severity_id,
                        finding_versions.c.ocsf)
                 .join(finding_versions, and_(finding_versions.c.finding_id == outbox.c.finding_id,
                                              finding_versions.c.version == outbox.c.version))
                 .where(outbox.c.sink == sink, outbox.c.status == "pending",
                        or_(outbox.c.next_attempt_at.is_(None), outbox.c.next_attempt_at <= now),
                        ~waiting)
                 .order_by(outbox.c.created_at, outbox.c.finding_id, outbox.c.version)
                 .limit(limit))
        if lock:
            query = query.with_for_update(skip_locked=True, of=outbox)
        return [Claimed(Delivery(r.finding_id, r.severity_id, orjson.loads(r.ocsf), r.version),
                        r.attempts, r.first_attempt_at and _utc(r.first_attempt_at))
                for r in conn.execute(query)]

    def _record(self, conn: Connection, sink: str, results: Sequence[Result]) -> None:
        """Record outcomes of pending rows only: recording again after a COMMIT whose fate was
        unknown (connection lost) changes nothing, and an outcome recorded outside the claim's
        lock never undoes a delivery another worker recorded meanwhile."""
        for r in results:
            key = and_(outbox.c.finding_id == r.finding_id, outbox.c.version == r.version,
                       outbox.c.sink == sink, outbox.c.status == "pending")
            if isinstance(r, Delivered):
                conn.execute(update(outbox).where(key).values(
                    status="delivered", delivered_at=r.at, next_attempt_at=None))
            elif isinstance(r, Retry):
                conn.execute(update(outbox).where(key).values(
                    attempts=r.attempts, first_attempt_at=r.first_attempt_at,
                    next_attempt_at=r.next_attempt_at, last_error=r.error[:1024]))
            elif conn.execute(delete(outbox).where(key)).rowcount:
                conn.execute(delete(delivery_dead_letters).where(
                    delivery_dead_letters.c.finding_id == r.finding_id,
                    delivery_dead_letters.c.version == r.version,
                    delivery_dead_letters.c.sink == sink))
                conn.execute(delivery_dead_letters.insert().values(
                    finding_id=r.finding_id, version=r.version, sink=sink,
                    reason=r.reason[:1024], attempts=r.attempts, dead_at=r.at))

    # --- redrive and state -----------------------------------------------------------------

    def redrive(self, sink: str | None = None, finding_id: str | None = None,
                now: datetime | None = None) -> int:
        """Move dead letters (of ``sink``, of ``finding_id``, or all when both are None) back to
        the outbox as new, due deliveries; returns how many."""
        return self.store.retry.call(self._redrive, sink, finding_id, now)

    def _redrive(self, sink: str | None, finding_id: str | None, now: datetime | None) -> int:
        now = now or datetime.now(timezone.utc)
        where = []
        if sink is not None:
            where.append(delivery_dead_letters.c.sink == sink)
        if finding_id is not None:
            where.append(delivery_dead_letters.c.finding_id == finding_id)
        with self.engine.begin() as conn:
            query = select(delivery_dead_letters.c.finding_id, delivery_dead_letters.c.version,
                           delivery_dead_letters.c.sink)
            if self._hold:
                query = query.with_for_update(skip_locked=True)
            keys = [tuple(k) for k in conn.execute(query.where(*where))]
            if not keys:
                return 0
            for chunk in _chunks(keys, 500):
                conn.execute(delete(delivery_dead_letters).where(
                    tuple_(delivery_dead_letters.c.finding_id, delivery_dead_letters.c.version,
                           delivery_dead_letters.c.sink).in_(chunk)))
                conn.execute(delete(outbox).where(
                    tuple_(outbox.c.finding_id, outbox.c.version, outbox.c.sink).in_(chunk)))
                conn.execute(outbox.insert(), [
                    {"finding_id": f, "version": v, "sink": s, "status": "pending",
                     "attempts": 0, "created_at": now} for f, v, s in chunk])
        return len(keys)

    def states(self, finding_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """finding id -> {sink: state of its newest version there}: "delivered", "pending",
        "pending(N)" (N failed attempts so far) or "dead", with " vK" naming the version when
        the finding has more than one."""
        return self.store.retry.call(self._states, list(finding_ids))

    def _states(self, finding_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        ids = list(dict.fromkeys(finding_ids))
        out: dict[str, dict[str, tuple[int, str]]] = {}
        if not ids:
            return {}

        def note(fid: str, version: int, sink: str, state: str) -> None:
            held = out.setdefault(fid, {}).get(sink)
            if held is None or version >= held[0]:
                out[fid][sink] = (version, state)

        with self.engine.connect() as conn:
            for chunk in _chunks(ids, 500):
                for r in conn.execute(select(outbox.c.finding_id, outbox.c.version,
                                             outbox.c.sink, outbox.c.status, outbox.c.attempts)
                                      .where(outbox.c.finding_id.in_(chunk))):
                    state = r.status
                    if r.status == "pending" and r.attempts:
                        state = f"pending({r.attempts})"
                    note(r.finding_id, r.version, r.sink, state)
                for r in conn.execute(select(delivery_dead_letters.c.finding_id,
                                             delivery_dead_letters.c.version,
                                             delivery_dead_letters.c.sink)
                                      .where(delivery_dead_letters.c.finding_id.in_(chunk))):
                    note(r.finding_id, r.version, r.sink, "dead")
        return {f: {sink: state if version == 1 else f"{state} v{version}"
                    for sink, (version, state) in sorted(s.items())}
                for f, s in out.items()}

    def counts(self) -> dict[str, dict[str, int]]:
        """sink -> {"pending": n, "delivered": n, "dead": n}."""
        return self.store.retry.call(self._counts)

    def _counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(select(outbox.c.sink, outbox.c.status, func.count())
                                  .group_by(outbox.c.sink, outbox.c.status)):
                out.setdefault(r[0], {"pending": 0, "delivered": 0, "dead": 0})[r[1]] = r[2]
            for r in conn.execute(select(delivery_dead_letters.c.sink, func.count())
                                  .group_by(delivery_dead_letters.c.sink)):
                out.setdefault(r[0], {"pending": 0, "delivered": 0, "dead": 0})["dead"] = r[1]
        return out


def format_states(states: dict[str, str]) -> str:
    """``{"hook": "delivered", "pd": "dead"}`` -> ``"hook:delivered pd:dead"``."""
    return " ".join(f"{sink}:{state}" for sink, state in states.items())

