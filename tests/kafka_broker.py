"""A real Apache Kafka broker for tests, driven through ``scripts/kafka``.

Not a test module. Test modules that need Kafka import the session fixture::

    from kafka_broker import kafka_broker  # noqa: F401

    def test_something(kafka_broker):
        kafka_broker.create_topic("audit", partitions=3)
        producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)

The fixture starts one single-node KRaft broker (the version pinned in ``scripts/kafka-pom.xml``,
fetched from Maven Central on first use and cached) in a pytest tmp dir on free ports, shares it
across every module of the session that imports the fixture, and stops it at the end. If the
environment variable ``SECRETSCOPE_KAFKA_BOOTSTRAP`` (``host:port``) is set, that existing broker
is used instead and nothing is started; it cannot be restarted (``broker.managed`` is False).

``KafkaBroker`` can also be used on its own (e.g. for a test that needs a private broker)::

    with KafkaBroker(tmp_path / "kafka") as broker:
        ...
        broker.restart()   # stop + start on the same dir and ports: topics and data survive

A private broker can also have secured client listeners (the session broker never does)::

    with KafkaBroker(tmp_path / "kafka", sasl=True, ssl=True) as broker:
        broker.sasl_bootstrap       # SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
        broker.ssl_bootstrap        # SASL_SSL, same mechanisms, server cert signed by broker.ca_file
        broker.sasl_username, broker.sasl_password_file, broker.ca_file
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "kafka"
BOOTSTRAP_ENV = "SECRETSCOPE_KAFKA_BOOTSTRAP"

FETCH_TIMEOUT = 1200  # s: the first fetch downloads ~45 jars (and Maven's plugins) from Central
START_TIMEOUT = 180  # s: subprocess limit; the script itself gives up after KAFKA_START_TIMEOUT
STOP_TIMEOUT = 60  # s: the script waits 30 s for SIGTERM, then SIGKILLs
SASL_USERNAME = "secretscope"  # the one user scripts/kafka creates for --sasl-port / --ssl-port


class KafkaBrokerError(RuntimeError):
    """scripts/kafka failed; the message carries its stderr (with the broker's log tail)."""


def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            [str(SCRIPT), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired as e:
        raise KafkaBrokerError(f"scripts/kafka {' '.join(args)} timed out after {timeout}s") from e
    if proc.returncode != 0:
        raise KafkaBrokerError(
            f"scripts/kafka {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc


_fetch_lock = threading.Lock()
_fetched = False


def fetch() -> None:
    """Download the pinned broker into the cache (once per process; the script skips it if cached)."""
    global _fetched
    with _fetch_lock:
        if not _fetched:
            _run(["fetch"], FETCH_TIMEOUT)
            _fetched = True


class KafkaBroker:
    """A single-node KRaft broker in ``workdir``, started and stopped through ``scripts/kafka``.

    ``port`` (client port) and ``controller_port`` default to free ports picked at the first
    ``start()`` and kept for every later start, so ``restart()`` comes back on the same address.

    ``sasl=True`` (or a ``sasl_port``) adds a SASL_PLAINTEXT listener, ``ssl=True`` (or an
    ``ssl_port``) a SASL_SSL one (``scripts/kafka start --sasl-port/--ssl-port``); their ports are
    picked like ``port``. Both are off by default. SCRAM logins only work if the secured listeners
    were on when ``workdir`` was first started (the script adds SCRAM users at format time).
    """

    def __init__(self, workdir: Path, port: int | None = None, controller_port: int | None = None,
                 *, sasl: bool = False, ssl: bool = False, sasl_port: int | None = None,
                 ssl_port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port
        self.controller_port = controller_port
        self.sasl_port = sasl_port
        self.ssl_port = ssl_port
        self._sasl = sasl or sasl_port is not None
        self._ssl = ssl or ssl_port is not None
        self.managed = True
        self._external_bootstrap: str | None = None
        self._running = False
        self._atexit_registered = False

    @classmethod
    def external(cls, bootstrap: str) -> KafkaBroker:
        """An already running broker at ``host:port``; start/stop/restart are not available."""
        broker = cls.__new__(cls)
        broker.workdir = Path()
        port = bootstrap.rpartition(":")[2]
        broker.port = int(port) if port.isdigit() else None
        broker.controller_port = None
        broker.sasl_port = broker.ssl_port = None
        broker._sasl = broker._ssl = False
        broker.managed = False
        broker._external_bootstrap = bootstrap
        broker._running = True
        broker._atexit_registered = False
        return broker

    # --- lifecycle ------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` (or the external broker's ``host:port``)."""
        if self._external_bootstrap is not None:
            return self._external_bootstrap
        if self.port is None:
            raise KafkaBrokerError("the broker has no port yet: call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_PLAINTEXT listener (``sasl=True``)."""
        if self.sasl_port is None:
            raise KafkaBrokerError("this broker has no SASL_PLAINTEXT listener (KafkaBroker(..., sasl=True))")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """``127.0.0.1:PORT`` of the SASL_SSL listener (``ssl=True``)."""
        if self.ssl_port is None:
            raise KafkaBrokerError("this broker has no SASL_SSL listener (KafkaBroker(..., ssl=True))")
        return f"127.0.0.1:{self.ssl_port}"

    @property
    def sasl_username(self) -> str:
        return SASL_USERNAME

    @property
    def sasl_password_file(self) -> Path:
        """The test user's password (one line, mode 600), made by the first secured start."""
        return self.workdir / "sasl-password"

    @property
    def sasl_password(self) -> str:
        return self.sasl_password_file.read_text().strip()

    @property
    def ca_file(self) -> Path:
        """PEM certificate of the test CA that signed the SASL_SSL listener's certificate."""
        return self.workdir / "tls" / "ca.pem"

    @property
    def log_file(self) -> Path:
        return self.workdir / "logs" / "server.log"

    def _require_managed(self, what: str) -> None:
        if not self.managed:
            raise KafkaBrokerError(f"cannot {what} the external broker at {self.bootstrap} ({BOOTSTRAP_ENV})")

    def start(self) -> str:
        """Start the broker (fetching it first if needed); returns the bootstrap address."""
        self._require_managed("start")
        fetch()
        self.workdir.mkdir(parents=True, exist_ok=True)
        wanted = ["port", "controller_port"] + ["sasl_port"] * self._sasl + ["ssl_port"] * self._ssl
        auto = [name for name in wanted if getattr(self, name) is None]
        attempts = 3 if auto else 1
        for attempt in range(attempts):
            for name in auto:
                if getattr(self, name) is None:
                    setattr(self, name, free_port({getattr(self, n) for n in wanted} - {None}))
            args = ["start", "--dir", str(self.workdir), "--port", str(self.port),
                    "--controller-port", str(self.controller_port)]
            if self._sasl:
                args += ["--sasl-port", str(self.sasl_port)]
            if self._ssl:
                args += ["--ssl-port", str(self.ssl_port)]
            try:
                proc = _run(args, START_TIMEOUT)
                break
            except KafkaBrokerError as e:
                # Another process may have taken a freshly picked port between pick and bind.
                if attempt + 1 < attempts and "is using it" in str(e):
                    for name in auto:
                        setattr(self, name, None)
                    continue
                raise
        out = dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)
        if out.get("bootstrap") != self.bootstrap:
            raise KafkaBrokerError(f"unexpected output from scripts/kafka start: {proc.stdout!r}")
        # A dir started with secured listeners keeps them on a plain restart: report what runs.
        for key, name in (("sasl_bootstrap", "sasl_port"), ("ssl_bootstrap", "ssl_port")):
            listening = out.get(key, "").rpartition(":")[2]
            if getattr(self, name) is not None and listening != str(getattr(self, name)):
                raise KafkaBrokerError(f"scripts/kafka start printed no {key}=127.0.0.1:"
                                       f"{getattr(self, name)}: {proc.stdout!r}")
            setattr(self, name, int(listening) if listening.isdigit() else None)
        self._running = True
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        return self.bootstrap

    def stop(self) -> None:
        """SIGTERM the broker and wait for it (SIGKILL after 30 s). Data stays in ``workdir``."""
        self._require_managed("stop")
        if self.workdir.is_dir():
            _run(["stop", "--dir", str(self.workdir)], STOP_TIMEOUT)
        self._running = False

    def restart(self) -> str:
        """Stop, then start again on the same dir and ports (topics, data and offsets survive)."""
        self._require_managed("restart")
        self.stop()
        return self.start()

    def status(self) -> str:
        """The one-line status from ``scripts/kafka status``."""
        self._require_managed("query")
        proc = subprocess.run(
            [str(SCRIPT), "status", "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, cwd=ROOT,
        )
        return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else proc.stderr.strip()

    @property
    def running(self) -> bool:
        if not self.managed:
            return True
        return self.status().startswith("running ")

    def log_tail(self, lines: int = 50) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _stop_at_exit(self) -> None:
        if self._running:
            try:
                self.stop()
            except Exception:  # noqa: BLE001 - best effort at interpreter exit
                pass

    def __enter__(self) -> KafkaBroker:
        if self.managed:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.managed and self._running:
            self.stop()

    # --- admin ----------------------------------------------------------------------------------
    def admin(self, **config):
        """A kafka-python ``KafkaAdminClient`` for this broker (close it when done)."""
        from kafka.admin import KafkaAdminClient

        config.setdefault("client_id", "secretscope-tests-admin")
        config.setdefault("request_timeout_ms", 30000)
        return KafkaAdminClient(bootstrap_servers=self.bootstrap, **config)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1,
                     *, exist_ok: bool = False, timeout: float = 30.0) -> str:
        """Create a topic and wait until every partition has a leader; returns the name."""
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self.admin()
        try:
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor)],
                                    timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                if not exist_ok:
                    raise
            deadline = time.monotonic() + timeout
            while True:
                # Key names differ between kafka-python versions (name/topic, leader_id/leader).
                described = [t for t in admin.describe_topics([name])
                             if t.get("name", t.get("topic")) == name]
                parts = described[0].get("partitions", []) if described else []
                if (described and not described[0].get("error_code")
                        and len(parts) >= partitions
                        and all(p.get("leader_id", p.get("leader", -1)) >= 0 for p in parts)):
                    return name
                if time.monotonic() > deadline:
                    raise KafkaBrokerError(f"topic {name!r} has no leader for every partition after {timeout}s: "
                                           f"{described}")
                time.sleep(0.1)
        finally:
            admin.close()

    def __repr__(self) -> str:
        kind = "managed" if self.managed else "external"
        return f"KafkaBroker({kind}, bootstrap={self.bootstrap if self.port or not self.managed else None}, " \
               f"workdir={str(self.workdir)!r})"


# --- pytest fixture ---------------------------------------------------------------------------------
# A fixture imported into several test modules is registered once per module, so pytest would build
# it once per module even at session scope; this refcount keeps it one broker for the whole session.
_session_lock = threading.Lock()
_session_broker: KafkaBroker | None = None
_session_users = 0


def _acquire_session_broker(tmp_path_factory: pytest.TempPathFactory) -> KafkaBroker:
    global _session_broker, _session_users
    with _session_lock:
        if _session_broker is None:
            bootstrap = os.environ.get(BOOTSTRAP_ENV, "").strip()
            if bootstrap:
                _session_broker = KafkaBroker.external(bootstrap)
            else:
                broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
                broker.start()
                _session_broker = broker
        _session_users += 1
        return _session_broker


def _release_session_broker() -> None:
    global _session_broker, _session_users
    with _session_lock:
        _session_users -= 1
        if _session_users == 0 and _session_broker is not None:
            broker, _session_broker = _session_broker, None
            if broker.managed:
                broker.stop()


def kafka_broker_fixture(name: str = "kafka_broker", scope: str = "session"):
    """Build a pytest fixture that yields a running :class:`KafkaBroker`.

    At session scope every fixture built here shares one broker; at a narrower scope each use
    gets its own broker in its own tmp dir (slower: a start is a few seconds).
    """
    if scope == "session":
        @pytest.fixture(scope="session", name=name)
        def _session_fixture(tmp_path_factory: pytest.TempPathFactory):
            broker = _acquire_session_broker(tmp_path_factory)
            try:
                yield broker
            finally:
                _release_session_broker()

        return _session_fixture

    @pytest.fixture(scope=scope, name=name)
    def _private_fixture(tmp_path_factory: pytest.TempPathFactory):
        bootstrap = os.environ.get(BOOTSTRAP_ENV, "").strip()
        if bootstrap:
            yield KafkaBroker.external(bootstrap)
            return
        with KafkaBroker(tmp_path_factory.mktemp("kafka")) as broker:
            yield broker

    return _private_fixture


kafka_broker = kafka_broker_fixture()


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test (or earlier run against an external broker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
