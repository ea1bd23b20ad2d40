"""Kafka clients for the two stages (the only module that imports kafka-python).

Builds consumers and producers from :class:`~secretscope.config.KafkaSettings`: security options
are passed through to kafka-python, and a SASL password is read from the environment variable or
file the config names, at start-up, with an error that says which one is missing.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.coordinator.assignors.abstract import (AbstractPartitionAssignor,
                                                  ConsumerProtocolAssignment,
                                                  ConsumerProtocolSubscription)
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from secretscope.config import KafkaSettings
from secretscope.errors import ConfigError

__all__ = ["ConsumerRebalanceListener", "OffsetAndMetadata", "OneOwnerAssignor", "TopicPartition",
           "client_options", "consumer", "ensure_topics", "producer"]


def _password(k: KafkaSettings) -> str:
    if k.sasl_password_env:
        value = os.environ.get(k.sasl_password_env)
        if value is None:
            raise ConfigError(f"kafka.sasl_password_env: environment variable "
                              f"{k.sasl_password_env} is not set")
        return value
    assert k.sasl_password_file
    try:
        return Path(k.sasl_password_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"kafka.sasl_password_file: cannot read {k.sasl_password_file}: "
                          f"{exc.strerror}") from None


def client_options(k: KafkaSettings) -> dict:
    """Connection and security options common to consumers, producers and the admin client."""
    options: dict = {"bootstrap_servers": list(k.bootstrap_servers), "client_id": k.client_id,
                     "security_protocol": k.security_protocol}
    if k.security_protocol.startswith("SASL_"):
        options.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username,
                       sasl_plain_password=_password(k))
    if k.security_protocol.endswith("SSL"):
        options.update(ssl_cafile=k.ssl_cafile, ssl_certfile=k.ssl_certfile,
                       ssl_keyfile=k.ssl_keyfile, ssl_check_hostname=k.ssl_check_hostname)
    return options


_FETCH_SLACK = 64 * 1024  # record batch and header overhead above one record's value


class OneOwnerAssignor(AbstractPartitionAssignor):
    """Every partition to one member of the group, the one running longest; the others stand
    by until it leaves. For state that covers every identity (the in-process stages), which a
    split assignment would divide. Start times travel in the subscription's user data, so the
    owner stays the owner when a newer process joins."""

    name = "secretscope-one-owner"
    version = 0

    def __init__(self) -> None:
        self.started = struct.pack(">d", time.time())

    @staticmethod
    def _started(member) -> float:
        data = member.metadata.user_data or b""
        return struct.unpack(">d", data[:8])[0] if len(data) >= 8 else float("inf")

    def assign(self, cluster, members):
        owner = min(members, key=lambda m: (self._started(m), m.member_id)).member_id
        topics = sorted({t for m in members for t in m.metadata.topics})
        everything = [(t, sorted(cluster.partitions_for_topic(t) or ())) for t in topics]
        return {m.member_id: ConsumerProtocolAssignment(
                    self.version, everything if m.member_id == owner else [], b"")
                for m in members}

    def metadata(self, topics):
        return ConsumerProtocolSubscription(self.version, sorted(topics), self.started)

    def on_assignment(self, assignment, generation):
        pass


def consumer(k: KafkaSettings, group: str, max_record_bytes: int | None = None,
             one_owner: bool = False) -> KafkaConsumer:
    """A consumer of ``group``. With ``max_record_bytes`` (the parse stage), fetches are sized to
    one record over that limit per partition, so normal fetches stay bounded. kafka-python cannot
    stream a record: the broker still returns a first batch larger than the limits (so the
    consumer makes progress), and a compressed batch is inflated whole, so one oversize record
    costs memory in proportion to its uncompressed size (which the topic's
    ``max.message.bytes`` bounds only for uncompressed batches); the parse stage dead-letters it
    without decoding it. With ``one_owner``, the group gives every partition to one member
    (:class:`OneOwnerAssignor`)."""
    options: dict = {}
    if one_owner:
        options["partition_assignment_strategy"] = [OneOwnerAssignor()]
    if max_record_bytes is not None:
        per_partition = max_record_bytes + _FETCH_SLACK
        options.update(max_partition_fetch_bytes=per_partition,
                       fetch_max_bytes=max(per_partition, 50 * 1024 * 1024))
    return KafkaConsumer(
        **client_options(k), group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=k.max_poll_records,
        session_timeout_ms=k.session_timeout_ms, heartbeat_interval_ms=k.heartbeat_interval_ms,
        **options,
    )


def producer(k: KafkaSettings) -> KafkaProducer:
    # acks=all and idempotence: an event stage 1 produced is on the broker before its input
    # offset is committed, and retries do not write it twice. Large batches: with kafka-python
    # the per-batch cost dominates (16 KB batches cap it near 5k records/s, 256 KB ones at 25k).
    return KafkaProducer(**client_options(k), acks="all", enable_idempotence=True,
                         linger_ms=20, batch_size=256 * 1024)


def ensure_topics(k: KafkaSettings, partitions: int, replication: int,
                  events: bool = True) -> None:
    """Create the internal topics if they do not exist (the events topic's partition count is
    the unit of scale-out for stage 2); ``events=False``: the dead-letter topic only."""
    admin = KafkaAdminClient(**client_options(k))
    try:
        for name in (k.events_topic, k.dead_letter_topic)[0 if events else 1:]:
            try:
                admin.create_topics([NewTopic(name, partitions, replication)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
