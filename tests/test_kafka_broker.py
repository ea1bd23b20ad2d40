"""Round trips through a real Apache Kafka broker (scripts/kafka, pinned in scripts/kafka-pom.xml).

Covers what secretscope's Kafka source relies on: keyed produce to a multi-partition topic,
consumer groups with manual commits (only committed progress survives), and clients riding
through a broker restart with topics, data and committed offsets intact.
"""

from __future__ import annotations

import subprocess
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from kafka_broker import SCRIPT, kafka_broker, unique_topic  # noqa: F401

pytestmark = pytest.mark.kafka

# Reconnect quickly after a broker restart (kafka-python backs off up to 30 s by default).
CLIENT = {"reconnect_backoff_ms": 50, "reconnect_backoff_max_ms": 1000, "retry_backoff_ms": 100,
          "request_timeout_ms": 15000}


def producer(broker) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5,
                         delivery_timeout_ms=60000, max_block_ms=60000, **CLIENT)


def consumer(broker, topic: str, group: str) -> KafkaConsumer:
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False,
                      auto_offset_reset="earliest", session_timeout_ms=10000,
                      heartbeat_interval_ms=1000, max_poll_records=500, fetch_max_wait_ms=200, **CLIENT)
    c.subscribe([topic])
    return c


def produce(p: KafkaProducer, topic: str, start: int, count: int) -> list[int]:
    """Send messages start..start+count-1 (36 distinct keys); returns the partition of each."""
    futures = [p.send(topic, key=f"key-{i % 36}".encode(), value=f"msg-{i}".encode())
               for i in range(start, start + count)]
    p.flush(timeout=60)
    return [f.get(timeout=60).partition for f in futures]


def consume(c: KafkaConsumer, count: int, timeout: float = 30.0, settle: float = 1.0) -> list:
    """Poll until ``count`` records came in, then keep polling ``settle`` s to catch any extra."""
    records: list = []
    deadline = time.monotonic() + timeout
    settle_until = None
    while time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=200).values():
            records.extend(batch)
        if len(records) >= count:
            settle_until = settle_until or time.monotonic() + settle
            if time.monotonic() >= settle_until:
                break
    return records


def values(records) -> list[str]:
    return [r.value.decode() for r in records]


def committed_total(c: KafkaConsumer, topic: str, partitions: int) -> int:
    return sum(c.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))


def test_produce_consume_manual_commit(kafka_broker):
    topic = kafka_broker.create_topic(unique_topic("roundtrip"), partitions=3)
    group = unique_topic("group")
    p = producer(kafka_broker)
    try:
        parts = produce(p, topic, 0, 1000)
        assert len(parts) == 1000
        assert set(parts) == {0, 1, 2}, "36 keys should spread over all 3 partitions"

        c1 = consumer(kafka_broker, topic, group)
        try:
            got = consume(c1, 1000)
            assert len(got) == 1000
            assert sorted(values(got)) == sorted(f"msg-{i}" for i in range(1000))
            # Same key -> same partition, and order is kept within a partition.
            by_key: dict[bytes, set[int]] = {}
            for r in got:
                by_key.setdefault(r.key, set()).add(r.partition)
            assert all(len(ps) == 1 for ps in by_key.values())
            for part in range(3):
                offsets = [r.offset for r in got if r.partition == part]
                assert offsets == sorted(offsets)
            assert committed_total(c1, topic, 3) == 0  # nothing is committed behind our back
            c1.commit()
            assert committed_total(c1, topic, 3) == 1000
        finally:
            c1.close()  # enable_auto_commit=False: close() commits nothing

        produce(p, topic, 1000, 100)

        # A new member of the group resumes after the committed offsets: only the 100 new ones.
        c2 = consumer(kafka_broker, topic, group)
        try:
            got = consume(c2, 100)
            assert sorted(values(got)) == sorted(f"msg-{i}" for i in range(1000, 1100))
        finally:
            c2.close()  # ... and it did not commit them

        # Uncommitted progress is not kept: the next member gets the same 100 again.
        c3 = consumer(kafka_broker, topic, group)
        try:
            got = consume(c3, 100)
            assert sorted(values(got)) == sorted(f"msg-{i}" for i in range(1000, 1100))
            c3.commit()
            assert committed_total(c3, topic, 3) == 1100
        finally:
            c3.close()
    finally:
        p.close()


def test_clients_reconnect_across_broker_restart(kafka_broker):
    if not kafka_broker.managed:
        pytest.skip("an external broker (SECRETSCOPE_KAFKA_BOOTSTRAP) cannot be restarted")
    topic = kafka_broker.create_topic(unique_topic("restart"), partitions=3)
    group = unique_topic("group")
    p = producer(kafka_broker)
    c = consumer(kafka_broker, topic, group)
    try:
        produce(p, topic, 0, 300)
        before = consume(c, 300)
        assert sorted(values(before)) == sorted(f"msg-{i}" for i in range(300))
        c.commit()

        t0 = time.monotonic()
        bootstrap = kafka_broker.bootstrap
        assert kafka_broker.restart() == bootstrap  # same dir, same ports
        restart_s = time.monotonic() - t0
        assert restart_s < 60

        # The same producer and consumer objects reconnect by themselves.
        parts = produce(p, topic, 300, 300)
        assert set(parts) == {0, 1, 2}
        after = consume(c, 300, timeout=60)
        # Offsets committed before the restart hold: nothing from before comes back.
        assert sorted(values(after)) == sorted(f"msg-{i}" for i in range(300, 600))
        c.commit()
        assert committed_total(c, topic, 3) == 600
    finally:
        c.close()
        p.close()

    # The restart kept the topic and all its data: a new group reads all 600 from the start.
    fresh = consumer(kafka_broker, topic, unique_topic("group"))
    try:
        assert sorted(values(consume(fresh, 600))) == sorted(f"msg-{i}" for i in range(600))
    finally:
        fresh.close()


def test_status_reports_the_running_broker(kafka_broker):
    if not kafka_broker.managed:
        pytest.skip("an external broker has no scripts/kafka dir")
    line = kafka_broker.status()
    assert line.startswith("running "), line
    assert f"bootstrap={kafka_broker.bootstrap}" in line
    # Starting the same dir again is a no-op that reports the same address.
    out = subprocess.run([str(SCRIPT), "start", "--dir", str(kafka_broker.workdir)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == f"bootstrap={kafka_broker.bootstrap}"
