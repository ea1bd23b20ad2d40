"""Prometheus metrics of ``secretscope run`` (and the registry ``deliver`` shares).

The per-event counts the stages already keep (records read, events parsed and scored, dead
letters by reason) are read when Prometheus scrapes, never incremented per event, so the hot
path pays nothing for them. What happens rarely (finding versions) or per poll (consumer lag)
is recorded where it happens.

No label carries an identity, a secret, a path or an address. Label values come from small
fixed sets: severity names, detector names and rule ids from the config, dead-letter reason
codes, activity names, Kafka topics from the config with partition numbers, and sink names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR,
                               CollectorRegistry, Counter, Gauge, Histogram)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from secretscope.findings import CLOSE, CREATE, Finding

ACTIVITIES = {CREATE: "create", CLOSE: "close"}  # anything else is an update
# From a finding raised in well under a second (socket source) to the Kafka score stage's
# snapshot interval plus watermark waits (seconds to minutes).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
                   300.0)
_REASON = re.compile(r"^[a-z_]{1,32}$")  # reason codes are short snake_case constants


@dataclass
class Counts:
    """What one part of the process has counted so far (monotonic totals)."""

    received: int = 0  # audit records (Kafka records, socket lines) read
    parsed: int = 0  # events (joined request and response) parsed from them
    scored: int = 0  # events that went through features, detectors and triage
    dropped: int = 0  # copies a restarted parse stage produced again, or data too late
    dead_letters: Mapping[str, int] = field(default_factory=dict)  # by reason code


class ServiceMetrics:
    """The metrics of one ``run`` process, on their own registry (tests build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)  # CPU, memory, open files, Python version and GC, as usual
        self.findings = Counter(
            "secretscope_findings", "Findings created, by severity and leading detector",
            ["severity", "detector"], registry=r)
        self.versions = Counter(
            "secretscope_finding_versions",
            "Finding versions stored, by activity (create, update, close)", ["activity"],
            registry=r)
        self.latency = Histogram(
            "secretscope_processing_latency_seconds",
            "Arrival in this process of the event that raised a finding version, to the "
            "version stored", buckets=LATENCY_BUCKETS, registry=r)
        self.lag = Gauge(
            "secretscope_consumer_lag",
            "Kafka records not yet consumed: end offset minus position, per partition",
            ["topic", "partition"], registry=r)
        self._counts: list[Callable[[], Counts]] = []
        self._snapshots: list[Callable[[], float]] = []
        r.register(_CountsCollector(self._counts, self._snapshots))

    def count_from(self, read: Callable[[], Counts]) -> None:
        """Add a part of the process whose :class:`Counts` are read at each scrape."""
        self._counts.append(read)

    def snapshots_from(self, last: Callable[[], float]) -> None:
        """Add a stage that saves state: ``last`` gives its last snapshot's monotonic time."""
        self._snapshots.append(last)

    def stored(self, versions: Iterable[Finding],
               arrival: Callable[[Finding], float | None]) -> None:
        """Finding versions just written to the store; ``arrival`` gives the monotonic time
        the event that raised a version arrived, where known."""
        now = time.monotonic()
        for f in versions:
            activity = ACTIVITIES.get(f.activity_id, "update")
            self.versions.labels(activity).inc()
            if f.activity_id == CREATE:
                leading = f.detectors[0] if f.detectors else ""
                self.findings.labels(f.severity.lower(), leading).inc()
            arrived = arrival(f)
            if arrived is not None:
                self.latency.observe(max(0.0, now - arrived))

    def set_lag(self, lags: Mapping[tuple[str, int], int], gone: Iterable[tuple[str, int]]
                ) -> None:
        for (topic, partition), lag in lags.items():
            self.lag.labels(topic, str(partition)).set(lag)
        for topic, partition in gone:
            try:
                self.lag.remove(topic, str(partition))
            except KeyError:
                pass


class _CountsCollector(Collector):
    def __init__(self, counts: list[Callable[[], Counts]],
                 snapshots: list[Callable[[], float]]) -> None:
        self.counts = counts
        self.snapshots = snapshots

    def collect(self):
        parts = [read() for read in self.counts]
        for name, doc, attr in (
                ("secretscope_records_received", "Audit records read (Kafka records, socket "
                 "lines)", "received"),
                ("secretscope_events_parsed", "Events parsed from audit records (a request "
                 "and its response are one event)", "parsed"),
                ("secretscope_events_scored", "Events through features, detectors and triage",
                 "scored"),
                ("secretscope_events_dropped", "Events dropped as copies produced again after "
                 "a restart, or later than allowed", "dropped")):
            yield CounterMetricFamily(name, doc, value=sum(getattr(p, attr) for p in parts))
        reasons: dict[str, int] = {}
        for p in parts:
            for reason, n in dict(p.dead_letters).items():
                key = reason if _REASON.match(reason) else "other"
                reasons[key] = reasons.get(key, 0) + n
        dead = CounterMetricFamily("secretscope_dead_letters", "Records dead-lettered, by reason",
                                   labels=["reason"])
        for reason, n in sorted(reasons.items()):
            dead.add_metric([reason], n)
        yield dead
        age = GaugeMetricFamily("secretscope_snapshot_age_seconds",
                                "Seconds since the score stage last saved its state and "
                                "committed (since start before the first snapshot)")
        if self.snapshots:
            now = time.monotonic()
            age.add_metric([], max(now - last() for last in self.snapshots))
        yield age


class Arrivals:
    """When the events of the current batch arrived, to time the versions they raise.

    Bounded: only the newest ``keep`` events are remembered, enough for a batch in progress."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._at: dict[str, float] = {}

    def note(self, event_id: str, at: float) -> None:
        at_ = self._at
        at_[event_id] = at
        if len(at_) > self.keep:
            for old in list(at_)[: len(at_) - self.keep // 2]:  # amortized: rarely runs
                del at_[old]

    def of(self, f: Finding) -> float | None:
        return arrival_of(f, self._at)


def arrival_of(f: Finding, arrived: Mapping[str, float]) -> float | None:
    """Arrival of the event that raised version ``f``: its trigger for a Create, the newest of
    its events known to ``arrived`` for an Update; None when none of them is known (a Close
    or an Update decided later by event time passing)."""
    at = arrived.get(f.trigger.event_id)
    if at is not None and f.activity_id == CREATE:
        return at
    for event_id in reversed(f.related_event_ids):
        at = arrived.get(event_id)
        if at is not None:
            return at
    return None
