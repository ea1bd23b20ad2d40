"""The delivery worker: sends what the outbox holds to each sink, under the one retry policy.

Per outcome: delivered -> the row is marked delivered; retryable -> tried again after
``policy.next_delay`` (exponential backoff with full jitter, at least the sink's Retry-After), or
dead-lettered with "retry budget exhausted after N attempts: <last reason>" once the budget is
spent; permanent -> dead-lettered with the sink's reason. A sink that raises fails its whole
batch retryably. Counts are Prometheus metrics labelled by sink (and outcome): sink names come
from the config, so the label values are a small fixed set.

Given ``routes`` (its config's sinks), the worker also routes: before it delivers, and while it
runs, it queues the stored versions those sinks take that the outbox lacks
(:mod:`secretscope.delivery.routing`), so a sink gets its findings whatever config stored them.
A pass when idle looks at the versions stored since the previous pass (less a margin for
transactions that committed late and for clocks that differ between hosts), and every
``FULL_ROUTE_SECONDS`` a pass looks at them all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from secretscope.delivery.model import Outcome, Sink
from secretscope.delivery.outbox import Claimed, Dead, Delivered, Outbox, Result, Retry
from secretscope.delivery.retry import RetryPolicy
from secretscope.delivery.routing import route
from secretscope.store import Route, Store

log = logging.getLogger(__name__)

FULL_ROUTE_SECONDS = 900.0  # a routing pass over every stored version this often
ROUTE_MARGIN_SECONDS = 300.0  # a pass since the previous one looks this much further back


OUTCOMES = ("delivered", "retried", "dead_lettered")


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "secretscope_deliveries",
            "Delivery attempts by sink and outcome: delivered, retried (failed, will be tried "
            "again), dead_lettered (moved to delivery_dead_letters)", ["sink", "outcome"],
            registry=registry)
        self.pending = Gauge("secretscope_delivery_pending", "Outbox rows not yet delivered",
                             ["sink"], registry=registry)
        self.dead = Gauge("secretscope_delivery_dead_letters",
                          "Rows in delivery_dead_letters", ["sink"], registry=registry)


_default_metrics: DeliveryMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> DeliveryMetrics:
    """The process-wide metrics on prometheus_client's default registry (created once)."""
    global _default_metrics
    with _default_lock:
        if _default_metrics is None:
            _default_metrics = DeliveryMetrics()
        return _default_metrics


@dataclass
class Pass:
    """What one :meth:`DeliveryWorker.run_once` did."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    attempted: set[tuple[str, str, int]] = field(default_factory=set)  # (sink, finding, version)

    @property
    def claimed(self) -> int:
        return self.delivered + self.retried + self.dead_lettered


class DeliveryWorker:
    def __init__(self, store: Store, sinks: Mapping[str, Sink], policy: RetryPolicy,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, poll_seconds: float = 1.0,
                 metrics: DeliveryMetrics | None = None, routes: Sequence[Route] = (),
                 wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.sinks = sinks
        self.policy = policy
        self.clock = clock
        self.sleep = sleep
        self.poll_seconds = poll_seconds
        self.metrics = metrics or default_metrics()
        self.outbox = Outbox(store)
        self.routes = tuple(routes)
        # Routing compares with the times the store's writers gave each version, so it reads
        # the wall clock even when retries run on a test's clock.
        self.wall = wall
        self._routed_at: float | None = None
        self._full_at: float | None = None

    def route(self, full: bool = False) -> dict[str, int]:
        """Queue the stored versions the routes take that the outbox lacks: all of them on the
        first pass, when ``full``, and every FULL_ROUTE_SECONDS; otherwise those stored since
        the previous pass. Returns sink name -> rows queued."""
        if not self.routes:
            return {}
        started = self.wall()
        full = full or self._full_at is None or started - self._full_at >= FULL_ROUTE_SECONDS
        since = None
        if not full and self._routed_at is not None:
            since = datetime.fromtimestamp(self._routed_at - ROUTE_MARGIN_SECONDS, timezone.utc)
        queued = route(self.store, self.routes, since)
        self._routed_at = started
        if full:
            self._full_at = started
        if any(queued.values()):
            log.info("routed %s", ", ".join(f"{n} to {k}" for k, n in queued.items() if n))
        return queued

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Deliver until ``stop_event`` is set, polling every ``poll_seconds`` when idle (and
        routing what was stored meanwhile, at that pace too)."""
        while stop_event is None or not stop_event.is_set():
            if self._routed_at is None or self.wall() - self._routed_at >= self.poll_seconds:
                self.route()
            if self.run_once().claimed:
                continue
            if stop_event is not None:
                stop_event.wait(self.poll_seconds)
            else:
                self.sleep(self.poll_seconds)

    def run_once(self, due_by: float | None = None) -> Pass:
        """One batch of due rows per sink: due now, or by ``due_by`` (epoch seconds; a drain
        that must not pick up the retries it scheduled itself passes its start time)."""
        done = Pass()
        for name, sink in self.sinks.items():
            due = self._now() if due_by is None else datetime.fromtimestamp(due_by, timezone.utc)
            results = self.outbox.process(name, sink.batch_size, due,
                                          lambda claimed, s=sink: self._send(s, claimed))
            before = (done.delivered, done.retried, done.dead_lettered)
            for r in results:
                done.attempted.add((name, r.finding_id, r.version))
                if isinstance(r, Delivered):
                    done.delivered += 1
                elif isinstance(r, Retry):
                    done.retried += 1
                else:
                    done.dead_lettered += 1
            self._count(name, before, done)
        self.update_gauges()
        return done

    def _count(self, sink: str, before: tuple[int, int, int], done: Pass) -> None:
        """One increment per sink and outcome for the whole batch."""
        after = (done.delivered, done.retried, done.dead_lettered)
        for outcome, a, b in zip(OUTCOMES, before, after):
            if b > a:
                self.metrics.deliveries.labels(sink, outcome).inc(b - a)

    def update_gauges(self) -> None:
        counts = self.outbox.counts()
        for name in set(self.sinks) | set(counts):
            c = counts.get(name, {})
            self.metrics.pending.labels(name).set(c.get("pending", 0))
            self.metrics.dead.labels(name).set(c.get("dead", 0))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), timezone.utc)

    def _send(self, sink: Sink, claimed: list[Claimed]) -> list[Result]:
        try:
            outcomes = sink.send([c.delivery for c in claimed])
        except Exception as exc:  # a broken sink must not stop delivery to the others
            log.warning("sink %s raised %s; retrying its batch", sink.name, exc, exc_info=True)
            reason = f"sink raised {type(exc).__name__}: {exc}"
            outcomes = [Outcome(c.delivery.finding_id, False, retryable=True, reason=reason)
                        for c in claimed]
        by_id = {o.finding_id: o for o in outcomes}
        now = self._now()
        return [self._decide(c, by_id.get(c.delivery.finding_id), now) for c in claimed]

    def _decide(self, c: Claimed, outcome: Outcome | None, now: datetime) -> Result:
        fid, version = c.delivery.finding_id, c.delivery.version
        if outcome is None:
            outcome = Outcome(fid, False, retryable=True, reason="sink returned no outcome")
        if outcome.ok:
            return Delivered(fid, version, now)
        attempts = c.attempts + 1
        if not outcome.retryable:
            return Dead(fid, version, attempts, outcome.reason or "permanent failure", now)
        first = c.first_attempt_at or now
        delay = self.policy.next_delay(attempts, (now - first).total_seconds(),
                                       outcome.retry_after)
        if delay is None:
            return Dead(fid, version, attempts, f"retry budget exhausted after {attempts} "
                                                f"attempts: {outcome.reason}", now)
        return Retry(fid, version, attempts, first,
                     datetime.fromtimestamp(now.timestamp() + delay, timezone.utc),
                     outcome.reason)
