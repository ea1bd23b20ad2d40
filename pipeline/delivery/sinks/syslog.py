"""Syslog over TCP (RFC 6587 octet counting) or TLS (RFC 5425): one RFC 5424 message per
finding with its CEF or LEEF line as MSG.

TCP syslog has no acknowledgements, and bytes the kernel accepted are lost if the receiver stops
before reading them (rsyslog on restart, for one). So each batch gets its own connection, ended
by us (TLS close_notify, or a TCP half-close) and then by the receiver: a receiver closes its end
only after reading everything before our end, so its close is the batch's receipt. Only then are
the items delivered; a reset, a timeout or any other error makes the whole batch retryable
(duplicates are possible, silent losses are not, short of a receiver that closes at the very
moment our bytes arrive). The clean TLS shutdown also keeps rsyslog from logging an error for
every connection, as it does for a bare TCP close.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

from secretscope.delivery.config import SyslogSink
from secretscope.delivery.model import Delivery, Outcome
from secretscope.delivery.renderings import to_cef, to_leef
from secretscope.delivery.sinks._common import failed, iso_time, selected

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
            self._sock = self._connect()
            self._sock.sendall(data)
            _end_and_wait_for_receipt(self._sock)
        except ssl.SSLCertVerificationError as exc:
            return failed([d.finding_id for d in items],
                          f"TLS error ({where}): certificate verify failed: {exc.verify_message}",
                          retryable=True)
        except OSError as exc:  # ssl.SSLError included
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return failed([d.finding_id for d in items], f"{kind} ({where})", retryable=True)
        finally:
            self.close()
        return [Outcome.delivered(d.finding_id) for d in items]

    def _connect(self) -> socket.socket:
        s = self.settings
        sock = socket.create_connection((s.host, s.port), timeout=s.timeout_seconds)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is None:
            return sock
        try:
            return self._tls.wrap_socket(sock, server_hostname=s.host)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def _end_and_wait_for_receipt(sock: socket.socket) -> None:
    """End our side, then wait (the socket's timeout) for the receiver to end its side. Raises
    OSError (reset, timeout) when it did not, so the batch is not counted delivered."""
    if isinstance(sock, ssl.SSLSocket):
        try:
            sock.unwrap()  # returns once the receiver's close_notify arrives
        except ssl.SSLEOFError:
            pass  # rsyslog answers close_notify with a TCP close and no close_notify of its own
        return
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(4096):
        pass  # a syslog receiver sends nothing; drain whatever it did until its close
