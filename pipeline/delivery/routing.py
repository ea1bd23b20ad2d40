"""Routing at delivery time: the finding versions in the store that a sink's filters take, queued
in the outbox by the process that delivers them.

The store routes each version when it is stored (``Store(routes=...)``), but only to the sinks
of the config that stored it, so a sink added later would receive nothing. :func:`route` is the
guarantee: one ``INSERT ... SELECT`` per sink queues every stored version its filters take that
the outbox does not hold yet and that was not dead-lettered there. The outbox key (finding id,
version, sink) makes it safe to run any number of times, by several ``deliver`` processes, while
a pipeline stores and routes versions itself: a version enters a sink's outbox at most once
(``ON CONFLICT DO NOTHING`` settles a race), and a dead letter comes back only through
``redrive``.

A queued row takes the time its version was stored, so a back-fill goes out oldest first, in the
same order store-time routing would have queued it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Integer, String, and_, literal, or_, select
from sqlalchemy.sql.elements import ColumnElement

from secretscope.findings import CREATE
from secretscope.store import Route, Store, delivery_dead_letters, finding_versions, outbox

VERSION = finding_versions.alias("v")  # the version a route is asked about
_previous = finding_versions.alias("prev")


def routes_of(sinks: Iterable) -> tuple[Route, ...]:
    """Routes from sink settings (anything with ``name``, ``min_severity_id``, ``versions``)."""
    return tuple(Route(s.name, s.min_severity_id, getattr(s, "versions", "all")) for s in sinks)


def takes(route: Route) -> ColumnElement[bool]:
    """``route``'s filters over ``VERSION``, as :meth:`Route.takes` applies them at store time:
    a severity raise is a version more severe than the version before it."""
    at_least = VERSION.c.severity_id >= route.min_severity_id
    if route.versions == "all":
        return at_least
    before = (select(_previous.c.severity_id)
              .where(_previous.c.finding_id == VERSION.c.finding_id,
                     _previous.c.version == VERSION.c.version - 1)
              .scalar_subquery())
    return and_(at_least, or_(VERSION.c.activity_id == CREATE, VERSION.c.severity_id > before))


def _missing(route: Route, since: datetime | None):
    """The versions ``route`` takes that neither its outbox nor its dead letters hold."""
    queued = (select(outbox.c.version)
              .where(outbox.c.finding_id == VERSION.c.finding_id,
                     outbox.c.version == VERSION.c.version, outbox.c.sink == route.name)
              .exists())
    dead = (select(delivery_dead_letters.c.version)
            .where(delivery_dead_letters.c.finding_id == VERSION.c.finding_id,
                   delivery_dead_letters.c.version == VERSION.c.version,
                   delivery_dead_letters.c.sink == route.name)
            .exists())
    where = [takes(route), ~queued, ~dead]
    if since is not None:
        where.append(VERSION.c.created_at >= since)
    return (select(VERSION.c.finding_id, VERSION.c.version,
                   literal(route.name, String).label("sink"),
                   literal("pending", String).label("status"),
                   literal(0, Integer).label("attempts"), VERSION.c.created_at)
            .where(*where))


def route(store: Store, routes: Sequence[Route], since: datetime | None = None) -> dict[str, int]:
    """Queue for each of ``routes`` the stored versions it takes and has not had (only those
    stored at or after ``since`` when given); sink name -> rows queued now."""
    return store.retry.call(_route, store, tuple(routes), since)


def _route(store: Store, routes: tuple[Route, ...], since: datetime | None) -> dict[str, int]:
    queued: dict[str, int] = {}
    # Two routers on PostgreSQL lock the rows they insert in one order, so neither can hold a
    # row the other waits for while it waits for one the other holds (a deadlock); SQLite runs
    # one writer at a time and is spared the sort.
    ordered = store.engine.dialect.name == "postgresql"
    with store.engine.begin() as conn:
        for r in routes:
            rows = _missing(r, since)
            if ordered:
                rows = rows.order_by(VERSION.c.finding_id, VERSION.c.version)
            insert = store._insert_ignore(outbox).from_select(
                ["finding_id", "version", "sink", "status", "attempts", "created_at"], rows)
            # RETURNING counts the rows inserted on both backends (psycopg's rowcount of an
            # INSERT does not reach SQLAlchemy's result)
            queued[r.name] = len(conn.execute(insert.returning(outbox.c.version)).all())
    return queued
