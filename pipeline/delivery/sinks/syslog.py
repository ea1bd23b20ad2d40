"""Syslog over TCP (RFC 6587 octet counting) or TLS (RFC 5425): one RFC 5424 message per
finding with its CEF or LEEF line as MSG.

The connection is kept open between batches and reopened after any error or after the receiver
closed its end. TCP syslog has no acknowledgements, so "delivered" means the bytes were handed to
the connection; a batch whose write fails is retried whole (duplicates are possible, losses after
a silent peer close too). A TLS connection is ended with a TLS shutdown (close_notify both ways):
receivers such as rsyslog treat a bare TCP close as an error on every connection.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from pipeline.delivery.config import SyslogSink
from pipeline.delivery.model import Delivery, Outcome
from pipeline.delivery.renderings import to_cef, to_leef
from pipeline.delivery.sinks._common import failed, iso_time, selected

SHUTDOWN_SECONDS = 1.0  # at most this long waiting for the receiver's close_notify
FACILITY = 10  # security/authorization (authpriv)
# OCSF severity_id -> syslog severity: critical->crit, high->err, medium->warning, low->notice
SYSLOG_SEVERITY = {5: 2, 4: 3, 3: 4, 2: 5, 1: 6}
MSGID = "finding"


def _header_field(value: str, limit: int) -> str:
    """A header field is printable US-ASCII without spaces, or the NILVALUE."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def frame(d: Delivery, line: str, hostname: str, app_name: str, procid: str) -> bytes:
    pri = FACILITY * 8 + SYSLOG_SEVERITY.get(d.severity_id, 5)
    msg = (f"<{pri}>1 {iso_time(d.ocsf.get('time'))} {hostname} {app_name} {procid} {MSGID} - "
           f"{line}").encode()
    return f"{len(msg)} ".encode() + msg


class Syslog:
    def __init__(self, settings: SyslogSink, base_dir: str | Path) -> None:
        self.settings = settings
        self.name = settings.name
        self.batch_size = settings.batch_size
        self._render = to_leef if settings.format == "leef" else to_cef
        self._hostname = _header_field(socket.gethostname(), 255)
        self._app = _header_field(settings.app_name, 48)
        self._procid = str(os.getpid())
        self._tls = None
        if settings.tls:
            self._tls = ssl.create_default_context(cafile=settings.ca_file)
        self._sock: socket.socket | None = None

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        if not items:
            return []
        data = b"".join(frame(d, self._render(selected(self.settings, d)), self._hostname,
                              self._app, self._procid) for d in items)
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            sock = self._connected()
            sock.sendall(data)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            return failed([d.finding_id for d in items],
                          f"TLS error ({where}): certificate verify failed: {exc.verify_message}",
                          retryable=True)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return failed([d.finding_id for d in items], f"{kind} ({where})", retryable=True)
        return [Outcome.delivered(d.finding_id) for d in items]

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()
        if self._sock is None:
            s = self.settings
            sock = socket.create_connection((s.host, s.port), timeout=s.timeout_seconds)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                try:
                    sock = self._tls.wrap_socket(sock, server_hostname=s.host)
                except BaseException:
                    sock.close()
                    raise
            self._sock = sock
        return self._sock

    def _peer_closed(self, sock: socket.socket) -> bool:
        """A syslog receiver never writes: readable means it closed (or sent TLS records such as
        session tickets, which a non-blocking read consumes without data)."""
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(1) == b""
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(self.settings.timeout_seconds)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if isinstance(sock, ssl.SSLSocket):
                _tls_shutdown(sock, min(SHUTDOWN_SECONDS, self.settings.timeout_seconds))
        finally:
            sock.close()


def _tls_shutdown(sock: ssl.SSLSocket, timeout: float) -> None:
    """Send close_notify and wait (bounded) for the receiver's: waiting also drains what it sent
    (session tickets), so the TCP close is a FIN rather than a reset. A dead or rude peer only
    costs the wait; its errors are of no use once the connection is being dropped."""
    try:
        sock.settimeout(timeout)
        sock.unwrap()
    except (OSError, ValueError):
        pass
