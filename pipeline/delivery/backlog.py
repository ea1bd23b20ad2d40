"""Where each sink stands, in words: what ``secretscope deliver`` prints so an operator sees what
is left to send, or why nothing is (no findings stored, none passing the sink's filters, all
delivered, dead letters waiting for ``redrive``, retries waiting after failures and the last
error)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from secretscope.delivery.routing import VERSION, takes
from secretscope.findings import SEVERITY_NAMES
from secretscope.store import Route, Store, _utc, delivery_dead_letters, finding_versions, outbox


@dataclass(frozen=True, slots=True)
class SinkBacklog:
    """One sink: how many stored versions its filters take (``taken``), and its outbox rows:
    pending (``retrying`` of them after failed attempts, the next at ``next_attempt_at``, the
    newest failure ``last_error``), delivered, and dead-lettered."""

    name: str
    route: Route | None  # None: a sink the outbox holds rows for that the config does not name
    taken: int = 0
    pending: int = 0
    retrying: int = 0
    delivered: int = 0
    dead: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Backlog:
    versions: int  # finding versions in the store
    sinks: tuple[SinkBacklog, ...]


def backlog(store: Store, routes: Sequence[Route]) -> Backlog:
    """The configured sinks, then any other sink the outbox or its dead letters hold rows for."""
    return store.retry.call(_backlog, store, tuple(routes))


def _backlog(store: Store, routes: tuple[Route, ...]) -> Backlog:
    with store.engine.connect() as conn:
        versions = conn.execute(select(func.count()).select_from(finding_versions)).scalar_one()
        rows = _rows(conn)
        sinks = [SinkBacklog(r.name, r, _taken(conn, r), **rows.pop(r.name, {})) for r in routes]
        sinks += [SinkBacklog(name, None, **rows[name]) for name in sorted(rows)]
    return Backlog(versions, tuple(sinks))


def _taken(conn: Connection, r: Route) -> int:
    return conn.execute(select(func.count()).select_from(VERSION).where(takes(r))).scalar_one()


def _rows(conn: Connection) -> dict[str, dict]:
    """sink -> SinkBacklog fields counted from the outbox and the delivery dead letters."""
    out: dict[str, dict] = {}
    failed = outbox.c.attempts > 0
    for sink, status, retrying, n, nxt in conn.execute(
            select(outbox.c.sink, outbox.c.status, failed, func.count(),
                   func.min(outbox.c.next_attempt_at))
            .group_by(outbox.c.sink, outbox.c.status, failed)):
        s = out.setdefault(sink, {})
        s[status] = s.get(status, 0) + n
        if status == "pending" and retrying:
            s["retrying"] = n
            s["next_attempt_at"] = nxt and _utc(nxt)
            s["last_error"] = _last_error(conn, sink)
    for sink, n in conn.execute(select(delivery_dead_letters.c.sink, func.count())
                                .group_by(delivery_dead_letters.c.sink)):
        out.setdefault(sink, {})["dead"] = n
    return out


def _last_error(conn: Connection, sink: str) -> str | None:
    """The error of the retry scheduled last: the newest failure, near enough."""
    return conn.execute(select(outbox.c.last_error)
                        .where(outbox.c.sink == sink, outbox.c.status == "pending",
                               outbox.c.attempts > 0)
                        .order_by(outbox.c.next_attempt_at.desc()).limit(1)).scalar()


def describe_filters(r: Route) -> str:
    severity = SEVERITY_NAMES.get(r.min_severity_id, str(r.min_severity_id)).lower()
    which = "every version" if r.versions == "all" else "Creates and severity raises"
    return f"min_severity {severity}, {which}"


def explain(b: Backlog, now: datetime) -> list[str]:
    """One line per sink: what is left for it, or why nothing is."""
    return [f"{s.name}: {_state(s, b.versions, now)}" for s in b.sinks]


def _state(s: SinkBacklog, versions: int, now: datetime) -> str:
    if s.route is None:
        return (f"not in this config, left alone ({s.pending:,} pending, {s.delivered:,} "
                f"delivered, {s.dead:,} dead-lettered)")
    if versions == 0:
        return "nothing to deliver: the store holds no findings yet"
    routed = s.pending + s.delivered + s.dead
    if routed == 0:
        return (f"nothing routed: none of the {versions:,} finding versions in the store passes "
                f"its filters ({describe_filters(s.route)})")
    parts = [f"{routed:,} routed", f"{s.delivered:,} delivered"]
    if s.pending:
        parts.append(f"{s.pending:,} pending{_retrying(s, now)}")
    elif not s.dead:
        parts.append("nothing pending: all delivered")
    if s.dead:
        parts.append(f"{s.dead:,} dead-lettered (secretscope redrive --sink {s.name})")
    return ", ".join(parts)


def _retrying(s: SinkBacklog, now: datetime) -> str:
    if not s.retrying:
        return ""
    when = ""
    if s.next_attempt_at is not None:
        wait = max(0.0, (s.next_attempt_at - now).total_seconds())
        when = f", next attempt in {wait:.0f} s"
    error = f"; last error: {s.last_error}" if s.last_error else ""
    return f" ({s.retrying:,} after failed attempts{when}{error})"
