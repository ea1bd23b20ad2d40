"""A real rsyslogd (Debian packages ``rsyslog`` and ``rsyslog-gnutls``) for the syslog sink tests.

Use it from a test module with::

    from rsyslog_server import rsyslog, rsyslog_ca  # noqa: F401

and ask for the ``rsyslog`` fixture: an :class:`Rsyslog` already running in the foreground
(``rsyslogd -n``) with a private config in a temporary directory under /tmp. It listens on
127.0.0.1 only: ``tls_port`` (imtcp with the gtls driver, TLS-only, anonymous client
authentication, server certificate for 127.0.0.1 signed by the session's test CA ``rsyslog_ca``)
and ``tcp_port`` (plain TCP). Every message received is written as one JSON object per line with
the fields rsyslog parsed (:meth:`Rsyslog.received`); rsyslogd's own messages (errors about
connections among them) go to a separate file (:meth:`Rsyslog.internal`). The fixture stops the
daemon and removes the directory at the end of the test. If rsyslogd is missing it runs
``scripts/rsyslog install`` first (apt-get, once per machine).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fake_siems import LocalCA, make_local_ca

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "rsyslog"
START_SECONDS = 20.0
STOP_SECONDS = 20.0
INSTALL_SECONDS = 900  # a fresh machine runs apt-get

# Severities of rsyslogd's internal messages that mean something went wrong.
TROUBLE = ("emerg", "alert", "crit", "err", "warning")

CONFIG = """\
global(
    workDirectory="{dir}"
    processInternalMessages="on"
    parser.escapeControlCharacterTab="off"
    defaultNetstreamDriverCAFile="{ca}"
    defaultNetstreamDriverCertFile="{cert}"
    defaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
# Octet-counted framing (RFC 5425 / RFC 6587 3.4.1) is what the sink sends; on by default, said
# here so a change of default cannot pass unnoticed.
input(type="imtcp" address="127.0.0.1" port="{tls_port}" supportOctetCountedFraming="on")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" supportOctetCountedFraming="on"
      streamDriver.name="ptcp" streamDriver.mode="0")

template(name="received" type="list" option.jsonf="on") {{
    property(outname="facility" name="syslogfacility" format="jsonf")
    property(outname="severity" name="syslogseverity" format="jsonf")
    property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
    property(outname="hostname" name="hostname" format="jsonf")
    property(outname="app_name" name="app-name" format="jsonf")
    property(outname="procid" name="procid" format="jsonf")
    property(outname="msgid" name="msgid" format="jsonf")
    property(outname="version" name="protocol-version" format="jsonf")
    property(outname="structured_data" name="structured-data" format="jsonf")
    property(outname="msg" name="msg" format="jsonf")
    property(outname="rawmsg" name="rawmsg" format="jsonf")
}}
template(name="internal" type="string"
         string="%timegenerated:::date-rfc3339% %syslogseverity-text% %msg%\\n")

# rsyslogd's own messages (facility syslog) are kept apart from what the tests send.
if $programname == "rsyslogd" or $syslogfacility-text == "syslog" then {{
    action(type="omfile" file="{internal}" template="internal")
    stop
}}
action(type="omfile" file="{received}" template="received")
"""


@dataclass(frozen=True)
class Received:
    """One message as rsyslog parsed it (RFC 5424 header fields, MSG, and the raw frame)."""

    facility: int
    severity: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    version: str
    structured_data: str
    msg: str
    rawmsg: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rsyslogd_path() -> str:
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if found:
        return found
    res = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True,
                         timeout=INSTALL_SECONDS, stdin=subprocess.DEVNULL)
    found = shutil.which("rsyslogd", path="/usr/sbin:/sbin:/usr/bin")
    if res.returncode != 0 or not found:
        pytest.fail(f"scripts/rsyslog install failed (exit {res.returncode}):\n"
                    f"{res.stdout}{res.stderr}", pytrace=False)
    return found


class Rsyslog:
    """An rsyslogd with a private config in ``directory``; ports stay the same across restarts."""

    def __init__(self, directory: Path, ca: LocalCA) -> None:
        self.directory = directory
        self.ca = ca
        self.tls_port = _free_port()
        self.tcp_port = _free_port()
        self.received_file = directory / "received.jsonl"
        self.internal_file = directory / "internal.log"
        self.stderr_file = directory / "rsyslogd.stderr"
        self.config_file = directory / "rsyslog.conf"
        self.pid_file = directory / "rsyslogd.pid"
        self.config_file.write_text(CONFIG.format(
            dir=directory, ca=ca.ca_file, cert=ca.cert_file, key=ca.key_file,
            tls_port=self.tls_port, tcp_port=self.tcp_port,
            internal=self.internal_file, received=self.received_file))
        self._proc: subprocess.Popen | None = None

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        assert self._proc is None, "rsyslogd is already running"
        with open(self.stderr_file, "ab") as err:
            self._proc = subprocess.Popen(
                [rsyslogd_path(), "-n", "-f", str(self.config_file), "-i", str(self.pid_file)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM and wait for the exit: afterwards both output files are complete."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGCONT)  # a paused daemon would not act on SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"rsyslogd did not stop within {STOP_SECONDS}s of SIGTERM")

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AssertionError(f"rsyslogd exited with {self._proc.returncode} at start:\n"
                                     f"{self.stderr_file.read_text(errors='replace')[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.tcp_port), timeout=1):
                    pass
                self._tls_probe()
                return
            except OSError as exc:
                last = exc
                time.sleep(0.02)
        raise AssertionError(f"rsyslogd not accepting on 127.0.0.1:{self.tls_port}/"
                             f"{self.tcp_port} within {START_SECONDS}s: {last}")

    def _tls_probe(self) -> None:
        """A full handshake ended with close_notify: a bare TCP connect to the TLS port would
        itself make rsyslogd log an error and spoil :meth:`trouble`. rsyslogd answers our
        close_notify by closing the TCP connection without one of its own, hence the EOF."""
        ctx = ssl.create_default_context(cafile=str(self.ca.ca_file))
        raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=2)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            try:
                tls.unwrap()
            except ssl.SSLEOFError:
                pass

    # --- what it wrote ---------------------------------------------------------------------

    def received(self) -> list[Received]:
        if not self.received_file.exists():
            return []
        out = []
        for n, line in enumerate(self.received_file.read_text().splitlines(), 1):
            try:
                fields = json.loads(line)
            except ValueError as exc:
                raise AssertionError(f"{self.received_file}:{n}: not JSON ({exc}): {line[:200]}")
            fields["facility"] = int(fields["facility"])
            fields["severity"] = int(fields["severity"])
            out.append(Received(**fields))
        return out

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """The received messages once there are at least ``n`` (or all there are at the
        deadline: the caller's assertion then says what is missing)."""
        deadline = time.monotonic() + timeout
        got = self.received()
        while len(got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
            got = self.received()
        return got

    def internal(self) -> list[str]:
        return self.internal_file.read_text().splitlines() if self.internal_file.exists() else []

    def trouble(self) -> list[str]:
        """rsyslogd's own error and warning lines."""
        return [ln for ln in self.internal() if ln.split(" ", 2)[1:2] in ([t] for t in TROUBLE)]

    def wait_connections_closed(self, timeout: float = 10.0) -> None:
        """Until rsyslogd has closed every accepted connection on its two ports: it has then
        read to the end of each and logged whatever it thought of the way it ended."""
        deadline = time.monotonic() + timeout
        while self._accepted() and time.monotonic() < deadline:
            time.sleep(0.02)
        left = self._accepted()
        assert not left, f"rsyslogd still holds connections on 127.0.0.1:{left}"

    def _accepted(self) -> list[int]:
        """Local ports of server-side sockets (not listening) on our ports, from /proc/net/tcp."""
        ours = {self.tls_port, self.tcp_port}
        found = []
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            port = int(parts[1].split(":")[1], 16)
            # ESTABLISHED or CLOSE_WAIT: rsyslogd has not closed it yet.
            if port in ours and parts[3] in ("01", "08"):
                found.append(port)
        return found


@pytest.fixture(scope="session")
def rsyslog_ca(tmp_path_factory) -> LocalCA:
    return make_local_ca(tmp_path_factory.mktemp("rsyslog-ca"))


@pytest.fixture
def rsyslog(rsyslog_ca) -> Iterator[Rsyslog]:
    # Own directory under /tmp (not pytest's tmp tree): short paths, removed at the end.
    directory = Path(tempfile.mkdtemp(prefix="ss-rsyslog-", dir="/tmp"))
    server = Rsyslog(directory, rsyslog_ca)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
