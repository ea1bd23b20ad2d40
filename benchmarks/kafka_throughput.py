"""Kafka throughput: the service's paths against raw kafka-python consumption, in one run.

    python benchmarks/kafka_throughput.py --calls 100000          # starts its own broker
    SECRETSCOPE_KAFKA_BOOTSTRAP=127.0.0.1:9092 python benchmarks/kafka_throughput.py

Simulates a Vault audit log, produces it to a fresh audit topic (keyed by request id), then
measures, one after the other in the same run:

1. a plain kafka-python consumer reading every record (the baseline);
2. both stages in one process, events handed over in memory (``run.hop: memory``);
3. both stages in two threads of one process, through the events topic (``run.hop: topic``);
4. one ``score`` process over that run's events topic, then two (each half the partitions).

Throughput excludes start-up (joining the group, building the pipelines). Each line gives wall
time and CPU time per call: on a shared machine (the broker runs on it too) wall figures follow
the load, so compare the ratios, and CPU, of one run.
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


def raw_consume(bootstrap: str, topic: str, expect: int) -> tuple[float, float]:
    """A plain consumer reading every record: (wall, CPU) seconds for all of them."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4()}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=500)
    seen = 0
    while not seen:  # the clock starts at the first records: joining the group is start-up
        seen = sum(map(len, consumer.poll(timeout_ms=500).values()))
    start, cpu, first = time.perf_counter(), time.process_time(), seen
    while seen < expect:
        for records in consumer.poll(timeout_ms=500).values():
            seen += len(records)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    consumer.close()
    scale = expect / (expect - first)  # for all records at that rate
    return elapsed * scale, cpu * scale


def settings_for(bootstrap: str, topic: str, tag: str, hop: str = "memory"):
    from secretscope.config import Settings, load_settings

    base = load_settings()
    doc = base.model_dump(exclude={"base_dir"})
    doc["base_dir"] = base.base_dir
    doc["run"]["hop"] = hop
    doc["kafka"].update(bootstrap_servers=[bootstrap], audit_topics=[topic],
                        events_topic=f"events-{tag}", dead_letter_topic=f"dlq-{tag}",
                        parse_group=f"parse-{tag}", score_group=f"score-{tag}",
                        snapshot_seconds=5.0, idle_seconds=1.0)
    return Settings.model_validate(doc)


def in_process(bootstrap: str, topic: str, calls: int, db: Path) -> tuple[float, float]:
    """Both stages in one thread, events handed over in memory: (wall, CPU) seconds."""
    from secretscope.runner import Pipeline
    from secretscope.sources import kafka as kafka_io
    from secretscope.stages import InProcessStages
    from secretscope.store import Store

    settings = settings_for(bootstrap, topic, uuid.uuid4().hex[:8])
    kafka_io.ensure_topics(settings.kafka, 1, 1, events=False)
    store = Store(f"sqlite:///{db}")
    stage = InProcessStages(settings, store,
                            lambda: Pipeline(settings, store=store, defer_writes=True))
    started = time.perf_counter()
    while not stage.ready:  # joined, state restored, pipelines built: start-up
        stage.poll_once()
    start, cpu, first = time.perf_counter(), time.process_time(), stage.score_counters.events
    print(f"  (in memory: start-up {start - started:.1f}s)")
    while stage.score_counters.events < calls:
        stage.poll_once()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    stage.close()
    store.close()
    done = calls - first
    return elapsed * calls / done, cpu * calls / done  # for all calls at that rate


def via_topic(bootstrap: str, topic: str, calls: int, db: Path, tag: str) -> tuple[float, float]:
    """Parse and score stages in two threads of one process, through the events topic: (wall,
    CPU) seconds, start-up included."""
    from secretscope.runner import Pipeline
    from secretscope.sources import kafka as kafka_io
    from secretscope.stages import ParseStage, ScoreStage
    from secretscope.store import Store

    settings = settings_for(bootstrap, topic, tag, hop="topic")
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
    start, cpu = time.perf_counter(), time.process_time()
    thread.start()
    while score.counters.events < calls:
        score.poll_once()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    # the parse stage tells the events partitions it is idle before it stops, so the score
    # processes below can release every event
    wait_until = time.monotonic() + 30
    while len(parse.idle) < len(parse.consumer.assignment()) and time.monotonic() < wait_until:
        time.sleep(0.1)
    time.sleep(1.5)
    done.set()
    thread.join()
    parse.close()
    score.close()
    store.close()
    return elapsed, cpu


def score_worker(bootstrap: str, topic: str, tag: str, partitions: list[int], db: str) -> None:
    """One score process over the given events partitions (``--score-worker``): prints
    ``{"start", "end", "cpu", "events"}`` once every partition is read to its end and scored."""
    import orjson

    from secretscope.runner import Pipeline
    from secretscope.sources import kafka as kafka_io
    from secretscope.stages import ScoreStage
    from secretscope.store import Store

    settings = settings_for(bootstrap, topic, tag, hop="topic")
    store = Store(f"sqlite:///{db}")
    stage = ScoreStage(settings, store,
                       lambda: Pipeline(settings, store=store, defer_writes=True))
    # Fixed partitions instead of the group's assignment, so the two processes share the work
    # from the first poll.
    tps = [kafka_io.TopicPartition(settings.kafka.events_topic, p) for p in partitions]
    stage.consumer.unsubscribe()
    stage.consumer.assign(tps)
    stage.consumer.seek_to_beginning(*tps)  # the topic path's run committed its group's offsets
    stage.rebalances.on_partitions_assigned(tps)
    ends = stage.consumer.end_offsets(tps)
    stage.restore()  # builds the pipelines: start-up
    start, cpu, first = time.time(), time.process_time(), stage.counters.events
    while any(stage.consumer.position(tp) < ends[tp] for tp in tps) or \
            any(w.buffer for w in stage.workers.values()):
        stage.poll_once()
    end, cpu = time.time(), time.process_time() - cpu
    print(orjson.dumps({"start": start, "end": end, "cpu": cpu,
                        "events": stage.counters.events - first}).decode(), flush=True)
    stage.consumer.close()
    store.close()


def score_processes(bootstrap: str, topic: str, tag: str, split: list[list[int]],
                    tmp: Path) -> tuple[float, int, float]:
    """Score processes started together, one per partition list: (span from the first start
    to the last end, events scored, CPU seconds)."""
    import orjson

    procs = [subprocess.Popen([sys.executable, __file__, "--score-worker", bootstrap, topic, tag,
                               ",".join(map(str, parts)),
                               str(tmp / f"score-{tag}-{len(split)}-{i}.db")],
                              stdout=subprocess.PIPE)
             for i, parts in enumerate(split)]
    results = [orjson.loads(p.communicate()[0].splitlines()[-1]) for p in procs]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return span, sum(r["events"] for r in results), sum(r["cpu"] for r in results)


def main() -> int:
    if sys.argv[1:2] == ["--score-worker"]:
        bootstrap, topic, tag, parts, db = sys.argv[2:7]
        sys.path.insert(0, str(ROOT))
        score_worker(bootstrap, topic, tag, [int(p) for p in parts.split(",")], db)
        return 0
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
        calls = summary.calls
        bootstrap, stop = broker(tmp / "kafka")
        try:
            topic = f"audit-{uuid.uuid4().hex[:8]}"
            t = time.perf_counter()
            produce(bootstrap, topic, lines, args.partitions)
            print(f"produced {len(lines):,} audit records ({calls:,} calls) in "
                  f"{time.perf_counter() - t:.1f}s to {args.partitions} partitions")
            raw, raw_cpu = raw_consume(bootstrap, topic, len(lines))
            print(f"raw kafka-python consumer:          {len(lines) / raw:,.0f} records/s = "
                  f"{calls / raw:,.0f} calls/s ({raw:.1f}s, {raw_cpu / calls * 1e6:.0f} us CPU "
                  f"per call)")
            memory, memory_cpu = in_process(bootstrap, topic, calls, tmp / "memory.db")
            print(f"parse + score in memory, 1 process: {calls / memory:,.0f} calls/s "
                  f"({memory:.1f}s, {memory_cpu / calls * 1e6:.0f} us CPU per call, "
                  f"{memory_cpu / memory:.2f} cores busy)")
            tag = uuid.uuid4().hex[:8]
            piped, piped_cpu = via_topic(bootstrap, topic, calls, tmp / "topic.db", tag)
            print(f"parse + score via events topic:     {calls / piped:,.0f} calls/s "
                  f"({piped:.1f}s with start-up, {piped_cpu / calls * 1e6:.0f} us CPU per call, "
                  f"{piped_cpu / piped:.2f} cores busy)")
            one = score_processes(bootstrap, topic, tag, [[0, 1, 2, 3]], tmp)
            two = score_processes(bootstrap, topic, tag, [[0, 1], [2, 3]], tmp)
            for name, (span, events, cpu) in (("1 score process:  ", one),
                                               ("2 score processes:", two)):
                # cores busy: how much CPU the processes got (the broker and others share it)
                print(f"{name}                 {events / span:,.0f} calls/s ({span:.1f}s, "
                      f"{cpu / events * 1e6:.0f} us CPU per call, {cpu / span:.2f} cores busy)")
            print(f"ratio (in memory / raw consumption): {raw / memory:.2f} wall, "
                  f"{raw_cpu / memory_cpu:.2f} CPU")
            print(f"ratio (via topic / raw consumption): {raw / piped:.2f} wall, "
                  f"{raw_cpu / piped_cpu:.2f} CPU")
            print(f"ratio (2 score processes / 1):       "
                  f"{(two[1] / two[0]) / (one[1] / one[0]):.2f}")
        finally:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
