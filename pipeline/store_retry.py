"""Waiting out a store outage: one retry policy for every database call.

A transient error (the server refused the connection, closed it, is shutting down or starting up;
SQLite's "database is locked") makes the call wait with exponential backoff and try again; any
other error is raised at once. An outage is logged twice, not once per attempt: a WARNING when it
starts ("store unreachable: <reason>; retrying") and one when it ends ("store reachable again
after 31.2 s"). The store URL in those lines has its password masked.

The caller's call must be safe to repeat: each Store method is one transaction that committed or
did not, and its writes are idempotent, so repeating one whose COMMIT may or may not have reached
the server stores nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from secretscope.errors import SecretscopeError

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE classes of a lost or refused connection: 08 connection exception, 57P01-57P03 admin
# shutdown, crash shutdown, cannot connect now (starting up, shutting down, in recovery).
_TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03")
_TRANSIENT_TEXT = (
    "connection refused", "server closed the connection", "the database system is shutting down",
    "the database system is starting up", "the database system is in recovery mode",
    "terminating connection due to administrator command", "could not connect to server",
    "connection failed", "connection reset", "connection timed out", "no connection to the server",
    "the connection is lost", "the connection is closed", "consuming input failed",
    "could not receive data", "could not send data", "ssl syscall error", "database is locked",
    # libpq left in pipeline mode (or mid-command) by a connection lost during executemany:
    # psycopg does not always mark such a connection broken, so its errors read like these
    "not allowed in pipeline mode", "another command is already in progress", "while busy",
)

# The server answered and refused for a reason that waiting does not fix (libpq reports these
# as "connection failed" too): fail at once rather than after store.outage_seconds.
_REFUSED_TEXT = ("password authentication failed", "no pg_hba.conf entry", "does not exist",
                 "permission denied")


class StoreUnavailableError(SecretscopeError, ConnectionError):
    """The store stayed unreachable longer than the outage limit (``store.outage_seconds``)."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` means the database is (for now) out of reach, not that the call is wrong."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig if exc.orig is not None else exc
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(state, str) and state.startswith(_TRANSIENT_STATES):
        return True
    name = type(exc).__name__
    if name not in ("OperationalError", "InterfaceError", "AdminShutdown", "CannotConnectNow"):
        return False
    message = str(exc).lower()
    if any(t in message for t in _REFUSED_TEXT):
        return False
    return any(t in message for t in _TRANSIENT_TEXT)


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: show none of it
        return "<store>"


def reason_of(exc: BaseException, url: str = "") -> str:
    """First line of the driver's message (not SQLAlchemy's, which quotes the statement and its
    parameters), with the URL's password removed in case the driver echoed it."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(inner).strip().splitlines()
    text = f"{type(inner).__name__}: {lines[0] if lines else ''}"[:300]
    password = _password(url)
    return text.replace(password, "***") if password else text


def _password(url: str) -> str | None:
    try:
        return make_url(url).password or None
    except Exception:
        return None


class StoreRetry:
    """Calls a store operation until it succeeds, waiting ``base_seconds`` doubling to
    ``cap_seconds`` between attempts, for at most ``limit_seconds`` of outage (None: no limit,
    as the service wants). ``stop``, when set, ends the wait early with
    :class:`StoreUnavailableError` (a service asked to stop during an outage).
    ``on_transient`` runs after each failed attempt (the store drops its pooled connections, so
    the next attempt does not reuse one the outage broke)."""

    def __init__(self, url: str, limit_seconds: float | None = 300.0,
                 base_seconds: float = 0.5, cap_seconds: float = 10.0,
                 stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_transient: Callable[[], None] | None = None) -> None:
        self.url = url
        self.limit_seconds = limit_seconds
        self.base_seconds = base_seconds
        self.cap_seconds = cap_seconds
        self.stop = stop
        self.clock = clock
        self.on_transient = on_transient
        self._lock = threading.Lock()
        self._down_since: float | None = None  # shared by threads: one outage, two lines

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        delay = self.base_seconds
        started = None
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                started = self._went_down(exc) if started is None else started
                if self.on_transient is not None:
                    self.on_transient()
                self._wait_or_give_up(exc, started, delay)
                delay = min(delay * 2, self.cap_seconds)
                continue
            self._came_back()
            return result

    def _went_down(self, exc: BaseException) -> float:
        now = self.clock()
        with self._lock:
            if self._down_since is None:
                self._down_since = now
                log.warning("store unreachable (%s): %s; retrying", masked(self.url),
                            reason_of(exc, self.url))
        return now

    def _came_back(self) -> None:
        if self._down_since is None:  # the common case, without taking the lock
            return
        with self._lock:
            if self._down_since is not None:
                log.warning("store reachable again after %.1f s",
                            self.clock() - self._down_since)
                self._down_since = None

    def _wait_or_give_up(self, exc: BaseException, started: float, delay: float) -> None:
        waited = self.clock() - started
        if self.limit_seconds is not None:
            if waited >= self.limit_seconds:
                raise StoreUnavailableError(
                    f"store {masked(self.url)} unreachable for {waited:.1f} s (limit "
                    f"store.outage_seconds={self.limit_seconds:g}): {reason_of(exc, self.url)}"
                ) from None
            delay = min(delay, self.limit_seconds - waited)  # one last try at the limit
        if self.stop is not None:
            if self.stop.wait(delay):
                raise StoreUnavailableError(
                    f"stopped while store {masked(self.url)} was unreachable: "
                    f"{reason_of(exc, self.url)}") from None
        else:
            time.sleep(delay)
