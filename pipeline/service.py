"""``secretscope run``: the long-running service.

``run.source: kafka`` runs the parse and/or score stage (``run.stages``); both together hand
events over in memory in one thread (``run.hop: memory``,
:class:`~secretscope.stages.InProcessStages`) or go through the events topic in two threads
(``run.hop: topic``). ``run.source: socket`` listens for Vault's socket audit device and runs
the pipeline in process. SIGTERM or SIGINT stops the loops after their current poll; each
stage then saves its state and commits before leaving its consumer group. A summary of the
counters is printed as one JSON line on stderr at exit.

With ``metrics.port`` set, /metrics, /livez and /readyz are served from before the store is
connected (so probes answer while an outage is waited out) until the loops have stopped.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator

import orjson

from secretscope.config import Settings
from secretscope.events import AccessEvent
from secretscope.health import OpsServer, Readiness, address, serve
from secretscope.metrics import Arrivals, Counts, ServiceMetrics
from secretscope.parsers.limits import InputLimits
from secretscope.runner import Pipeline
from secretscope.store import Store

log = logging.getLogger(__name__)


def run_service(settings: Settings, metrics: ServiceMetrics | None = None) -> dict:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    metrics = metrics if metrics is not None else ServiceMetrics()
    readiness = Readiness()
    readiness.require("state", lambda: "starting")
    server: OpsServer | None = serve(*address(settings), metrics.registry, readiness)
    try:
        # A service waits a store outage out however long it lasts (processing pauses
        # meanwhile); only a stop request ends the wait.
        store = Store(settings.store.url, routes=settings.sinks, outage_seconds=None, stop=stop)
        readiness.set_store(store)
        try:
            if settings.run.source == "socket":
                summary = _run_socket(settings, store, stop, metrics, readiness)
            else:
                summary = _run_kafka(settings, store, stop, metrics, readiness)
        finally:
            store.close()
    finally:
        if server is not None:
            server.close()
    print(orjson.dumps({"secretscope": "stopped", **summary}).decode(), file=sys.stderr,
          flush=True)
    return summary


def _noting_arrivals(items: Iterable, arrivals: Arrivals) -> Iterator:
    clock = time.monotonic
    for item in items:
        if type(item) is AccessEvent:
            arrivals.note(item.event_id, clock())
        yield item


def _run_socket(settings: Settings, store: Store, stop: threading.Event,
                metrics: ServiceMetrics, readiness: Readiness) -> dict:
    from secretscope.sources.socket import SocketAuditSource

    limits = InputLimits(settings.input.max_record_bytes, settings.input.max_field_chars)
    source = SocketAuditSource(settings.socket.host, settings.socket.port, limits,
                               settings.input.join_timeout_seconds,
                               join_wait=settings.input.join_wait_seconds,
                               batch_wait=settings.runner.batch_wait_seconds)
    source.start()
    host, port = source.address
    log.warning("listening for Vault's socket audit device on %s:%d", host, port)
    threading.Thread(target=lambda: (stop.wait(), source.stop()), daemon=True).start()
    # A batch holds at most batch_size events, so the events that raise a version are among
    # the last two batches' worth.
    arrivals = Arrivals(keep=2 * settings.runner.batch_size)
    # The pipeline calls on_version after the store has the version.
    pipeline = Pipeline(settings, store=store,
                        on_version=lambda f: metrics.stored((f,), arrivals.of))
    counted = pipeline.stats
    metrics.count_from(lambda: Counts(received=source.counters.lines, parsed=counted.events,
                                      scored=counted.events,
                                      dead_letters=counted.dead_letter_reasons))
    readiness.require("state", lambda: None)  # nothing to restore: ready once listening
    stats = pipeline.run(_noting_arrivals(source, arrivals))
    return {"events": stats.events, "findings": stats.findings,
            "dead_letters": stats.dead_letters, "lines": source.counters.lines,
            "duplicates": source.duplicates}


def _not_ready(stages: list) -> str | None:
    waiting = [f"stage-{i}" for i, stage in enumerate(stages)
               if stage is None or not stage.ready]
    if waiting:
        return (f"{', '.join(waiting)} not yet in its consumer group with its partitions' "
                f"state restored")
    return None


def _run_kafka(settings: Settings, store: Store, stop: threading.Event,
               metrics: ServiceMetrics, readiness: Readiness) -> dict:
    from secretscope.sources import kafka as kafka_io
    from secretscope.stages import (InProcessStages, ParseCounters, ParseStage, ScoreCounters,
                                    ScoreStage)

    from kafka.errors import KafkaError

    k = settings.kafka
    in_process = settings.run.stages == "both" and settings.run.hop == "memory"
    kafka_io.ensure_topics(k, k.events_partitions, k.replication_factor,
                           events=not in_process)
    parse_counters, score_counters = ParseCounters(), ScoreCounters()
    factories = []

    def pipeline() -> Pipeline:
        return Pipeline(settings, store=store, defer_writes=True)

    if in_process:
        factories.append(lambda: InProcessStages(settings, store, pipeline, parse_counters,
                                                 score_counters, metrics))
    if settings.run.stages in ("both", "parse"):
        if not in_process:
            factories.append(lambda: ParseStage(settings, parse_counters, metrics))
        metrics.count_from(lambda: Counts(received=parse_counters.records,
                                          parsed=parse_counters.events,
                                          dead_letters=parse_counters.dead_letter_reasons))
    if settings.run.stages in ("both", "score"):
        if not in_process:
            factories.append(lambda: ScoreStage(settings, store, pipeline, score_counters,
                                                metrics))
        metrics.count_from(lambda: Counts(scored=score_counters.events,
                                          dropped=score_counters.dropped))
        metrics.snapshots_from(lambda: score_counters.last_snapshot)
    stages: list = [None] * len(factories)
    failures: list[BaseException] = []
    readiness.require("state", lambda: _not_ready(stages))

    def loop(i: int) -> None:
        """Run one stage; on a Kafka error (broker down, coordinator moved, ...) drop it and
        build it again, as a restarted process would: it resumes from committed offsets and
        saved snapshots, and the score stage drops what is read twice."""
        delay = 0.5
        stage = None
        try:
            while not stop.is_set():
                try:
                    if stage is None:
                        stage = stages[i] = factories[i]()
                    stage.poll_once()
                    delay = 0.5
                except KafkaError as exc:
                    log.warning("%s: %s; reconnecting in %.1fs",
                                type(stage).__name__ if stage else "stage", exc, delay)
                    if stage is not None:
                        stage.abandon()
                        stage = None
                    stop.wait(delay)
                    delay = min(delay * 2, 10.0)
        except BaseException as exc:  # anything else stops the process: a restart is safe
            log.exception("stage failed")
            failures.append(exc)
            stop.set()
        finally:
            if stage is not None:
                stage.close()

    threads = [threading.Thread(target=loop, args=(i,), name=f"stage-{i}")
               for i in range(len(factories))]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    summary: dict = {}
    if settings.run.stages in ("both", "parse"):
        c = parse_counters
        summary["parse"] = {"records": c.records, "events": c.events,
                            "dead_letters": c.dead_letters, "duplicates": c.duplicates,
                            "dead_letter_reasons": c.dead_letter_reasons}
    if settings.run.stages in ("both", "score"):
        summary["score"] = {"events": score_counters.events,
                            "dropped_copies": score_counters.dropped}
    if failures:
        raise failures[0]
    return summary
