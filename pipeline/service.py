"""``secretscope run``: the long-running service.

``run.source: kafka`` runs the parse and/or score stage (``run.stages``) in threads of one
process; ``run.source: socket`` listens for Vault's socket audit device and runs the pipeline in
process. SIGTERM or SIGINT stops the loops after their current poll; each stage then saves its
state and commits before leaving its consumer group. A summary of the counters is printed as one
JSON line on stderr at exit.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import orjson

from pipeline.config import Settings
from pipeline.parsers.limits import InputLimits
from pipeline.runner import Pipeline
from pipeline.store import Store

log = logging.getLogger(__name__)


def run_service(settings: Settings) -> dict:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    store = Store(settings.store.url)
    try:
        if settings.run.source == "socket":
            summary = _run_socket(settings, store, stop)
        else:
            summary = _run_kafka(settings, store, stop)
    finally:
        store.close()
    print(orjson.dumps({"secretscope": "stopped", **summary}).decode(), file=sys.stderr,
          flush=True)
    return summary


def _run_socket(settings: Settings, store: Store, stop: threading.Event) -> dict:
    from pipeline.sources.socket import SocketAuditSource

    limits = InputLimits(settings.input.max_record_bytes, settings.input.max_field_chars)
    source = SocketAuditSource(settings.socket.host, settings.socket.port, limits,
                               settings.input.join_timeout_seconds)
    source.start()
    host, port = source.address
    log.warning("listening for Vault's socket audit device on %s:%d", host, port)
    threading.Thread(target=lambda: (stop.wait(), source.stop()), daemon=True).start()
    pipeline = Pipeline(settings, store=store)
    stats = pipeline.run(source)
    return {"events": stats.events, "findings": stats.findings,
            "dead_letters": stats.dead_letters, "lines": source.counters.lines}


def _run_kafka(settings: Settings, store: Store, stop: threading.Event) -> dict:
    from pipeline.sources import kafka as kafka_io
    from pipeline.stages import ParseStage, ScoreStage

    k = settings.kafka
    kafka_io.ensure_topics(k, k.events_partitions, k.replication_factor)
    stages = []
    if settings.run.stages in ("both", "parse"):
        stages.append(ParseStage(settings))
    if settings.run.stages in ("both", "score"):
        stages.append(ScoreStage(settings, store, lambda: Pipeline(settings, store=store)))
    failures: list[BaseException] = []

    def loop(stage) -> None:
        try:
            while not stop.is_set():
                stage.poll_once()
        except BaseException as exc:  # one stage failing stops the process: restart is safe
            log.exception("%s failed", type(stage).__name__)
            failures.append(exc)
            stop.set()
        finally:
            stage.close()

    threads = [threading.Thread(target=loop, args=(s,), name=type(s).__name__) for s in stages]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    summary: dict = {}
    for stage in stages:
        if hasattr(stage, "counters"):
            c = stage.counters
            summary["parse"] = {"records": c.records, "events": c.events,
                                "dead_letters": c.dead_letters, "duplicates": c.duplicates,
                                "dead_letter_reasons": c.dead_letter_reasons}
        else:
            summary["score"] = {"events": stage.events,
                                "late_or_duplicate": sum(w.late for w in stage.workers.values())}
    if failures:
        raise failures[0]
    return summary
