"""One HTTP port for operators: ``/metrics`` (Prometheus), ``/livez`` and ``/readyz``.

``/livez`` answers 200 while the process serves HTTP at all. ``/readyz`` answers 200 only once
the process has restored its state (each part it runs says so through :class:`Readiness`) and
the store answers a query; otherwise 503 with the reasons, one per line. Store checks are
cached for a second and never run two at a time, so a hanging database cannot pile up probe
threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from secretscope.errors import ConfigError
from secretscope.store_retry import masked, reason_of

log = logging.getLogger(__name__)
STORE_CHECK_SECONDS = 1.0


class Readiness:
    """What still keeps the process from being ready: named conditions, each a callable that
    returns None when met or a short reason when not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, Callable[[], str | None]] = {}
        self._store = None
        self._store_state: tuple[float, str | None] = (float("-inf"), "store not connected")
        self._store_checking = threading.Lock()

    def require(self, name: str, check: Callable[[], str | None]) -> None:
        with self._lock:
            self._checks[name] = check

    def set_store(self, store) -> None:
        """The store to check (it is built after the server starts: building it waits out an
        outage, and the probes must answer meanwhile)."""
        self._store = store
        self._store_state = (float("-inf"), None)

    def problems(self) -> list[str]:
        with self._lock:
            checks = list(self._checks.items())
        found = []
        for name, check in checks:
            try:
                problem = check()
            except Exception as exc:  # a probe must answer, not fail
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                found.append(f"{name}: {problem}")
        store = self._store_problem()
        if store:
            found.append(f"store: {store}")
        return found

    def _store_problem(self) -> str | None:
        checked_at, problem = self._store_state
        if self._store is None:
            return problem
        if time.monotonic() - checked_at < STORE_CHECK_SECONDS:
            return problem
        if not self._store_checking.acquire(blocking=False):
            return problem  # another probe is checking; report what was last seen
        try:
            problem = _ping(self._store)
            self._store_state = (time.monotonic(), problem)
        finally:
            self._store_checking.release()
        return problem


def _ping(store) -> str | None:
    try:
        with store.engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:
        url = str(store.engine.url.render_as_string(hide_password=False))
        return f"{masked(url)} does not answer: {reason_of(exc, url)}"
    return None


class OpsServer:
    """The HTTP server, in a daemon thread; :meth:`close` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 readiness: Readiness) -> None:
        handler = type("Handler", (_Handler,), {"registry": registry, "readiness": readiness})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ops-http",
                                       daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def start(self) -> "OpsServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    readiness: Readiness

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/livez":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            problems = self.readiness.problems()
            if problems:
                self._send(503, ("\n".join(problems) + "\n").encode())
            else:
                self._send(200, b"ok\n")
        else:
            self._send(404, b"not found: try /metrics, /livez or /readyz\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's name)
        pass  # a probe every few seconds must not fill the log


def serve(host: str, port: int | None, registry: CollectorRegistry,
          readiness: Readiness) -> OpsServer | None:
    """Start serving on host:port, or None when no port is set. A port that cannot be bound is
    a configuration error naming it."""
    if port is None:
        return None
    try:
        server = OpsServer(host, port, registry, readiness)
    except OSError as exc:
        raise ConfigError(f"metrics: cannot listen on {host}:{port}: "
                          f"{exc.strerror or exc}") from None
    server.start()
    host, port = server.address
    log.warning("metrics and health on http://%s:%d (/metrics, /livez, /readyz)", host, port)
    return server


def address(settings) -> tuple[str, int | None]:
    """Where to serve: ``metrics.host``/``metrics.port``; when ``metrics.port`` is unset, the
    older ``delivery.metrics_host``/``metrics_port`` (which only ``deliver`` read) still work."""
    m, d = settings.metrics, settings.delivery
    if m.port is None and d.metrics_port is not None:
        return d.metrics_host, d.metrics_port
    return m.host, m.port
