"""Kafka throughput: events/s through parse + score stages vs raw kafka-python consumption.

    python benchmarks/kafka_throughput.py --calls 100000          # starts its own broker
    SECRETSCOPE_KAFKA_BOOTSTRAP=127.0.0.1:9092 python benchmarks/kafka_throughput.py

Simulates a Vault audit log, produces it to a fresh audit topic (keyed by request id), then in
the same run measures (1) a plain kafka-python consumer reading every record and (2) the parse
and score stages of ``secretscope run`` (one process, one thread each) until every call is
scored. Prints calls/s for both and their ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def broker(workdir: Path) -> tuple[str, callable]:
    bootstrap = os.environ.get("SECRETSCOPE_KAFKA_BOOTSTRAP")
    if bootstrap:
        return bootstrap, lambda: None
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    out = subprocess.run([str(ROOT / "scripts" / "kafka"), "start", "--dir", str(workdir),
                          "--port", str(ports[0]), "--controller-port", str(ports[1])],
                         check=True, capture_output=True, text=True).stdout
    bootstrap = out.strip().splitlines()[-1].split("=", 1)[1]
    return bootstrap, lambda: subprocess.run([str(ROOT / "scripts" / "kafka"), "stop", "--dir",
                                              str(workdir)], check=False, capture_output=True)


def produce(bootstrap: str, topic: str, lines: list[bytes], partitions: int) -> None:
    import orjson
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    KafkaAdminClient(bootstrap_servers=bootstrap).create_topics([NewTopic(topic, partitions, 1)])
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20,
                             batch_size=1 << 18)
    for line in lines:
        producer.send(topic, key=orjson.loads(line)["request"]["id"].encode(), value=line)
    producer.flush()
    producer.close()


def raw_consume(bootstrap: str, topic: str, expect: int) -> float:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4()}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=500)
    seen = 0
    start = time.perf_counter()
    while seen < expect:
        for records in consumer.poll(timeout_ms=500).values():
            seen += len(records)
    elapsed = time.perf_counter() - start
    consumer.close()
    return elapsed


def stages(bootstrap: str, topic: str, calls: int, db: Path) -> float:
    from secretscope.config import Settings, load_settings
    from secretscope.runner import Pipeline
    from secretscope.sources import kafka as kafka_io
    from secretscope.stages import ParseStage, ScoreStage
    from secretscope.store import Store

    base = load_settings()
    tag = uuid.uuid4().hex[:8]
    doc = base.model_dump(exclude={"base_dir"})
    doc["base_dir"] = base.base_dir
    doc["kafka"].update(bootstrap_servers=[bootstrap], audit_topics=[topic],
                        events_topic=f"events-{tag}", dead_letter_topic=f"dlq-{tag}",
                        parse_group=f"parse-{tag}", score_group=f"score-{tag}",
                        snapshot_seconds=5.0, idle_seconds=1.0)
    settings = Settings.model_validate(doc)
    k = settings.kafka
    kafka_io.ensure_topics(k, k.events_partitions, k.replication_factor)
    store = Store(f"sqlite:///{db}")
    parse = ParseStage(settings)
    score = ScoreStage(settings, store, lambda: Pipeline(settings, store=store, defer_writes=True))
    done = threading.Event()

    def run_parse():
        while not done.is_set():
            parse.poll_once()

    thread = threading.Thread(target=run_parse)
    start = time.perf_counter()
    thread.start()
    while score.counters.events < calls:
        score.poll_once()
    elapsed = time.perf_counter() - start
    done.set()
    thread.join()
    parse.close()
    score.close()
    store.close()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from secretscope.simulate import SimulationSpec, simulate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log = tmp / "audit.log"
        summary = simulate(SimulationSpec(days=7, seed=args.seed, target_calls=args.calls), log,
                           tmp / "labels.jsonl")
        lines = log.read_bytes().splitlines()
        bootstrap, stop = broker(tmp / "kafka")
        try:
            topic = f"audit-{uuid.uuid4().hex[:8]}"
            t = time.perf_counter()
            produce(bootstrap, topic, lines, args.partitions)
            print(f"produced {len(lines):,} audit records ({summary.calls:,} calls) in "
                  f"{time.perf_counter() - t:.1f}s to {args.partitions} partitions")
            raw = raw_consume(bootstrap, topic, len(lines))
            print(f"raw kafka-python consumer: {len(lines) / raw:,.0f} records/s = "
                  f"{summary.calls / raw:,.0f} calls/s ({raw:.1f}s)")
            piped = stages(bootstrap, topic, summary.calls, tmp / "store.db")
            print(f"parse + score stages:      {summary.calls / piped:,.0f} calls/s ({piped:.1f}s)")
            print(f"ratio (stages / raw consumption): {raw / piped:.2f}")
        finally:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
