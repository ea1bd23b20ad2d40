"""Kafka security settings end to end: SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS against a
real broker, and the config checks that reject inconsistent ``kafka:`` security keys.

The broker is a private one (``scripts/kafka start --sasl-port P --ssl-port Q``) with a
SASL_PLAINTEXT and a SASL_SSL listener, the user ``secretscope`` and a random password in
DIR/sasl-password; its server certificate is signed by a test CA the script makes (DIR/tls/ca.pem).
The shared session broker stays plain. Clients come from ``secretscope.sources.kafka``.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from kafka_broker import BOOTSTRAP_ENV, SCRIPT, KafkaBroker, unique_topic
from secretscope.config import KafkaSettings, load_settings
from secretscope.errors import ConfigError
from secretscope.sources.kafka import client_options, consumer, ensure_topics, producer

MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# kafka-python keeps retrying a failed bootstrap until this runs out, then raises KafkaTimeoutError
# (the broker closes the connection on bad credentials without an error response it can report).
FAIL_BOOTSTRAP_MS = 1500


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    if os.environ.get(BOOTSTRAP_ENV, "").strip():
        pytest.skip(f"{BOOTSTRAP_ENV} names an external broker; the secured listeners need a private one")
    with KafkaBroker(tmp_path_factory.mktemp("kafka-secured"), sasl=True, ssl=True) as b:
        yield b


def settings(bootstrap: str, mechanism: str, protocol: str = "SASL_PLAINTEXT", **keys) -> KafkaSettings:
    topic = unique_topic("secured")
    keys.setdefault("sasl_username", "secretscope")
    return KafkaSettings(bootstrap_servers=[bootstrap], security_protocol=protocol,
                         sasl_mechanism=mechanism, events_topic=topic,
                         dead_letter_topic=f"{topic}-dead", session_timeout_ms=6000,
                         heartbeat_interval_ms=500, **keys)


def round_trip(k: KafkaSettings, count: int = 5) -> None:
    """Create the topics, produce ``count`` records and read them back in a new consumer group."""
    ensure_topics(k, partitions=2, replication=1)
    ensure_topics(k, partitions=2, replication=1)  # existing topics are fine
    sent = [f"{k.sasl_mechanism}-{i}" for i in range(count)]
    p = producer(k)
    try:
        futures = [p.send(k.events_topic, key=f"k{i % 3}".encode(), value=v.encode())
                   for i, v in enumerate(sent)]
        p.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)
    finally:
        p.close()
    c = consumer(k, unique_topic("group"))
    try:
        # Know the topic before joining: a group leader without its metadata assigns nothing
        # (kafka-python: "No partition metadata for topic") and would not rebalance for minutes.
        deadline = time.monotonic() + 30
        while len(c.partitions_for_topic(k.events_topic)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        c.subscribe([k.events_topic])
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=200).values():
                got.extend(r.value.decode() for r in batch)
        c.commit()
    finally:
        c.close()
    assert sorted(got) == sorted(sent)


def bootstrap_fails(k: KafkaSettings) -> None:
    """A client with these settings cannot get in (same options as producer/consumer)."""
    with pytest.raises(KafkaError):
        KafkaAdminClient(**client_options(k), bootstrap_timeout_ms=FAIL_BOOTSTRAP_MS).close()


def broker_log_since(broker: KafkaBroker, offset: int, needle: str, timeout: float = 5.0) -> str:
    """The broker log written after ``offset`` once it contains ``needle`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        with broker.log_file.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


# --- SASL -------------------------------------------------------------------------------------------
@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_round_trip_with_password_file(broker, mechanism):
    round_trip(settings(broker.sasl_bootstrap, mechanism,
                        sasl_password_file=str(broker.sasl_password_file)))


@pytest.mark.kafka
def test_sasl_round_trip_with_password_env(broker, monkeypatch):
    monkeypatch.setenv("SECRETSCOPE_TEST_KAFKA_PASSWORD", broker.sasl_password)
    round_trip(settings(broker.sasl_bootstrap, "SCRAM-SHA-256",
                        sasl_password_env="SECRETSCOPE_TEST_KAFKA_PASSWORD"))


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_wrong_password_is_an_authentication_failure(broker, mechanism, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text(broker.sasl_password + "x\n")
    offset = broker.log_file.stat().st_size
    bootstrap_fails(settings(broker.sasl_bootstrap, mechanism, sasl_password_file=str(wrong)))
    reason = ("Invalid username or password" if mechanism == "PLAIN"
              else f"invalid credentials with SASL mechanism {mechanism}")
    log = broker_log_since(broker, offset, reason)
    assert "Failed authentication" in log and reason in log, log[-2000:]


@pytest.mark.kafka
def test_sasl_unknown_user_is_rejected(broker):
    offset = broker.log_file.stat().st_size
    bootstrap_fails(settings(broker.sasl_bootstrap, "SCRAM-SHA-512", sasl_username="mallory",
                             sasl_password_file=str(broker.sasl_password_file)))
    assert "Failed authentication" in broker_log_since(broker, offset, "Failed authentication")


# --- TLS --------------------------------------------------------------------------------------------
@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_ssl_round_trip_with_the_test_ca(broker, mechanism):
    # ssl_check_hostname stays on: the server certificate is for IP 127.0.0.1 (and localhost).
    round_trip(settings(broker.ssl_bootstrap, mechanism, "SASL_SSL",
                        sasl_password_file=str(broker.sasl_password_file),
                        ssl_cafile=str(broker.ca_file)))


def other_ca(tmp_path: Path) -> Path:
    """A self-signed CA that signed nothing the broker has."""
    ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=some other CA", "-keyout", str(tmp_path / "other-ca.key"),
                    "-out", str(ca), "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True, timeout=60)
    return ca


@pytest.mark.kafka
@pytest.mark.parametrize("cafile", ["other", "system"])
def test_sasl_ssl_fails_verification_without_the_test_ca(broker, cafile, tmp_path, caplog):
    keys = {"ssl_cafile": str(other_ca(tmp_path))} if cafile == "other" else {}
    k = settings(broker.ssl_bootstrap, "SCRAM-SHA-256", "SASL_SSL",
                 sasl_password_file=str(broker.sasl_password_file), **keys)
    with caplog.at_level(logging.WARNING, logger="kafka"):
        bootstrap_fails(k)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text, caplog.text[-2000:]


@pytest.mark.kafka
def test_script_files_and_outputs(broker):
    mode = stat.S_IMODE(broker.sasl_password_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert len(broker.sasl_password) >= 16
    assert broker.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(broker.ca_file),
                             str(broker.workdir / "tls" / "server.crt")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # `start` on the running broker's dir only reports its addresses, secured ones included.
    out = subprocess.run([str(SCRIPT), "start", "--dir", str(broker.workdir)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == [f"bootstrap={broker.bootstrap}", f"sasl_bootstrap={broker.sasl_bootstrap}",
                           f"ssl_bootstrap={broker.ssl_bootstrap}"]
    assert f"sasl_bootstrap={broker.sasl_bootstrap}" in broker.status()
    # The plain listener is still there, unauthenticated.
    admin = broker.admin()
    try:
        assert admin.list_topics() is not None
    finally:
        admin.close()


# --- config validation (no broker) ------------------------------------------------------------------
def load_kafka_section(tmp_path: Path, body: str):
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n" + "".join(f"  {line}\n" for line in body.strip().splitlines()))
    return load_settings(path)


BAD_KAFKA_SECTIONS = {
    "sasl protocol without sasl_mechanism": (
        "security_protocol: SASL_PLAINTEXT\nsasl_username: u\nsasl_password_env: PW",
        ["sasl_mechanism"]),
    "sasl_* keys with PLAINTEXT": (
        "sasl_mechanism: PLAIN\nsasl_username: u\nsasl_password_env: PW",
        ["sasl_", "PLAINTEXT"]),
    "both password sources": (
        "security_protocol: SASL_SSL\nsasl_mechanism: PLAIN\nsasl_username: u\n"
        "sasl_password_env: PW\nsasl_password_file: /run/pw",
        ["sasl_password_env", "sasl_password_file"]),
    "no password source": (
        "security_protocol: SASL_PLAINTEXT\nsasl_mechanism: PLAIN\nsasl_username: u",
        ["sasl_password_env", "sasl_password_file"]),
    "sasl without sasl_username": (
        "security_protocol: SASL_PLAINTEXT\nsasl_mechanism: PLAIN\nsasl_password_env: PW",
        ["sasl_username"]),
    "ssl_* keys with PLAINTEXT": ("ssl_cafile: /etc/ca.pem", ["ssl_", "PLAINTEXT"]),
    "ssl_* keys with SASL_PLAINTEXT": (
        "security_protocol: SASL_PLAINTEXT\nsasl_mechanism: PLAIN\nsasl_username: u\n"
        "sasl_password_env: PW\nssl_certfile: /etc/client.pem",
        ["ssl_", "SASL_PLAINTEXT"]),
    "misspelt key": (
        "security_protocol: SASL_PLAINTEXT\nsasl_mechanism: PLAIN\nsasl_username: u\n"
        "sasl_pasword: hunter2",
        ["kafka.sasl_pasword"]),
    "bad mechanism": (
        "security_protocol: SASL_PLAINTEXT\nsasl_mechanism: SCRAM-SHA-1\nsasl_username: u\n"
        "sasl_password_env: PW",
        ["kafka.sasl_mechanism", "SCRAM-SHA-512"]),
    "bad protocol": ("security_protocol: TLS", ["kafka.security_protocol"]),
}


@pytest.mark.parametrize("case", list(BAD_KAFKA_SECTIONS))
def test_inconsistent_kafka_security_is_a_config_error(tmp_path, case):
    body, named = BAD_KAFKA_SECTIONS[case]
    with pytest.raises(ConfigError) as info:
        load_kafka_section(tmp_path, body)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: kafka"), message
    for text in named:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize("body, key", [("sasl_username: u", "sasl_username"),
                                       ("ssl_cafile: /etc/ca.pem", "ssl_cafile")])
def test_security_key_without_its_protocol_is_named(tmp_path, body, key):
    with pytest.raises(ConfigError, match=key):
        load_kafka_section(tmp_path, body)


def test_consistent_security_settings_load(tmp_path):
    s = load_kafka_section(tmp_path, "security_protocol: SASL_SSL\nsasl_mechanism: SCRAM-SHA-512\n"
                                     "sasl_username: u\nsasl_password_file: /run/pw\n"
                                     "ssl_cafile: /etc/ca.pem\nssl_check_hostname: false")
    assert (s.kafka.security_protocol, s.kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert s.kafka.bootstrap_servers == KafkaSettings().bootstrap_servers  # merged with defaults


def test_client_options_with_unset_password_env(monkeypatch):
    monkeypatch.delenv("SECRETSCOPE_TEST_UNSET_PASSWORD", raising=False)
    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                      sasl_password_env="SECRETSCOPE_TEST_UNSET_PASSWORD")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_env.*SECRETSCOPE_TEST_UNSET_PASSWORD"):
        client_options(k)


def test_client_options_with_missing_password_file(tmp_path):
    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                      sasl_password_file=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password_file"):
        client_options(k)


def test_client_options_pass_security_through(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRETSCOPE_TEST_PASSWORD", "s3cret")
    k = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="u",
                      sasl_password_env="SECRETSCOPE_TEST_PASSWORD", ssl_cafile="/etc/ca.pem")
    o = client_options(k)
    assert (o["security_protocol"], o["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (o["sasl_plain_username"], o["sasl_plain_password"]) == ("u", "s3cret")
    assert (o["ssl_cafile"], o["ssl_check_hostname"]) == ("/etc/ca.pem", True)
    plain = client_options(KafkaSettings())
    assert plain["security_protocol"] == "PLAINTEXT" and "sasl_mechanism" not in plain
