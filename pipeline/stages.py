"""The two Kafka stages of ``secretscope run``.

**Parse** (consumer group ``kafka.parse_group`` on the audit topics): records are parsed and
joined per audit partition and produced to ``kafka.events_topic``, partitioned by identity, as
one record per events partition and poll (a msgpack array of events); bad records
go to ``kafka.dead_letter_topic`` with headers naming reason and origin. After each poll it
produces a *watermark* per audit partition to every events partition: the event time below
which that audit partition will produce nothing more. Offsets are committed after the producer
has flushed, and never past an entry still waiting for its other half.

**Score** (group ``kafka.score_group`` on the events topic): each events partition is owned by
one :class:`PartitionWorker` with its own pipeline state. Events wait in a buffer until every
audit partition's watermark has passed them and are then processed in event-time order, so the
findings do not depend on how many processes ran or how their polls interleaved. The worker's
state (baselines, model, buffer, watermarks) is saved with the offset it covers every
``kafka.snapshot_seconds``, and the offset is committed only after that. On a rebalance, or a
restart after a crash, the new owner restores the snapshot and continues from its offset;
events stage 1 produced twice after a crash fall below their partition's watermark or into the
buffer next to their twin, and are dropped.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from secretscope import snapshot
from secretscope.config import Settings
from secretscope.errors import ModelIntegrityError
from secretscope.events import AccessEvent, DeadLetter
from secretscope.findings import Finding
from secretscope.metrics import ServiceMetrics, arrival_of
from secretscope.parsers.limits import InputLimits
from secretscope.runner import Pipeline
from secretscope.sources import kafka as kafka_io
from secretscope.sources.decode import LIVE_MAX_AHEAD_SECONDS, Decoder
from secretscope.store import Store

log = logging.getLogger(__name__)
KIND = "secretscope-kind"  # header of every record the parse stage writes to the events topic
WATERMARK = b"watermark"
EVENTS = b"events"  # a msgpack array of events
# One record per events partition and poll, not per event: kafka-python spends ~15 us
# producing and ~10 us consuming each record, more than the record's event costs to score.
BATCH_BYTES = 256 * 1024  # below the broker's and the producer's 1 MB default record limit
_EVENT_ENCODER = msgspec.msgpack.Encoder()
_EVENT_DECODER = msgspec.msgpack.Decoder(AccessEvent)
_EVENTS_DECODER = msgspec.msgpack.Decoder(list[AccessEvent])


class Watermark(msgspec.Struct, frozen=True):
    source: str  # "topic/partition" of the audit input
    ts: float  # no event from ``source`` at or below this event time will follow
    idle: bool  # the source is caught up and quiet; do not wait for it


_WATERMARK_DECODER = msgspec.msgpack.Decoder(Watermark)
LAG_SECONDS = 1.0  # how often a stage reports its consumer lag (one broker call at most)


def _origin_offset(origin: str) -> int:
    return int(origin.rsplit("/", 1)[1])


def wait_for_topics(consumer, topics, timeout: float = 60.0) -> dict[str, set[int]]:
    """Partitions of each topic, once the client has metadata for all of them.

    Subscribing before that lets the group leader assign nothing for a topic it has no metadata
    for yet, and kafka-python does not rebalance when the metadata arrives later.
    """
    deadline = time.monotonic() + timeout
    found: dict[str, set[int]] = {}
    while True:
        for topic in topics:
            found[topic] = consumer.partitions_for_topic(topic) or set()
        missing = [t for t, parts in found.items() if not parts]
        if not missing:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {missing} have no partitions (do they exist?)")
        time.sleep(0.2)


@dataclass
class ParseCounters:
    records: int = 0
    events: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class ScoreCounters:
    events: int = 0  # events scored
    dropped: int = 0  # copies stage 1 produced again after a restart, or data later than allowed
    last_snapshot: float = field(default_factory=time.monotonic)  # monotonic clock


class _LagReport:
    """Consumer lag per assigned partition (end offset minus position) into the metrics, at
    most every LAG_SECONDS. The end offset is the one the last fetch reported; a partition not
    fetched yet costs one ``end_offsets`` call."""

    def __init__(self, metrics: ServiceMetrics | None) -> None:
        self.metrics = metrics
        self.at = float("-inf")
        self.reported: set = set()

    def __call__(self, consumer) -> None:
        now = time.monotonic()
        if self.metrics is None or now - self.at < LAG_SECONDS:
            return
        self.at = now
        tps = consumer.assignment()
        ends = {tp: consumer.highwater(tp) for tp in tps}
        unknown = [tp for tp, end in ends.items() if end is None]
        if unknown:
            ends.update(consumer.end_offsets(unknown))
        lags = {}
        for tp, end in ends.items():
            position = consumer.position(tp)
            if end is not None and position is not None:
                lags[(tp.topic, tp.partition)] = max(0, end - position)
        self.metrics.set_lag(lags, self.reported - set(lags))
        self.reported = set(lags)

    def forget(self) -> None:
        """The stage is gone (closed or abandoned): its partitions are no longer its lag."""
        if self.metrics is not None:
            self.metrics.set_lag({}, self.reported)
        self.reported = set()


class ParseStage:
    def __init__(self, settings: Settings, counters: ParseCounters | None = None,
                 metrics: ServiceMetrics | None = None, one_owner: bool = False) -> None:
        self.settings = settings
        self.k = settings.kafka
        self.limits = InputLimits(settings.input.max_record_bytes, settings.input.max_field_chars)
        self.consumer = kafka_io.consumer(self.k, self.k.parse_group,
                                          settings.input.max_record_bytes, one_owner)
        self.producer = kafka_io.producer(self.k)
        self.decoders: dict = {}
        self._parked: dict = {}  # decoders of revoked partitions, until the new assignment is known
        self.last_record_at: dict = {}
        self.idle: set = set()
        self.sent: dict = {}
        self.counters = counters if counters is not None else ParseCounters()
        self.last_commit = time.monotonic()
        self.event_partitions = self._event_partitions()
        self.batches: dict[int, list[bytes]] = {}  # events partition -> encoded events
        self.batch_bytes: dict[int, int] = {}
        found = wait_for_topics(self.consumer, self.k.audit_topics)
        self.sources = {f"{topic}/{p}" for topic, parts in found.items() for p in parts}
        self.rebalances = _Listener()
        self.consumer.subscribe(list(self.k.audit_topics), listener=self.rebalances)
        self.lag = _LagReport(metrics)
        self.ready = False  # joined its group; read by the readiness probe

    def _event_partitions(self) -> list[int]:
        return sorted(self.producer.partitions_for(self.k.events_topic))

    def _decoder(self, tp) -> Decoder:
        decoder = self.decoders.get(tp)
        if decoder is None:
            decoder = self.decoders[tp] = Decoder(None, self.limits,
                                                  self.settings.input.join_timeout_seconds,
                                                  LIVE_MAX_AHEAD_SECONDS,
                                                  join_wait=self.k.join_wait_seconds)
        return decoder

    def poll_once(self) -> None:
        self._apply_rebalances()
        batches = self.consumer.poll(timeout_ms=self.k.poll_timeout_ms,
                                     max_records=self.k.max_poll_records)
        self._apply_rebalances()
        now = time.monotonic()
        self._feed(batches, now)
        if now - self.last_commit >= self.k.commit_seconds or not batches:
            # Batching flushes and commits: each is a round trip to the broker.
            self._release_idle(now, batches)
            self._checkpoint(now)
            self.last_commit = now
        self.lag(self.consumer)

    def _feed(self, batches, now: float) -> None:
        assigned = self.consumer.assignment()
        emit, counters = self._emit, self.counters
        for tp, records in batches.items():
            if tp not in assigned:
                continue  # fetched before a rebalance took it away
            decoder = self._decoder(tp)
            self.idle.discard(tp)
            self.last_record_at[tp] = now
            prefix = f"{tp.topic}/{tp.partition}/"
            counters.records += len(records)
            for record in records:
                emit(decoder.feed(record.value or b"", prefix + str(record.offset), now))
        self._release_waiting(now)
        self._send_batches()

    def _release_waiting(self, now: float) -> None:
        """Calls read ``join_wait_seconds`` before ``now`` and still waiting for their other
        half go on alone, but only from partitions read up to their end as of the last fetch:
        there, the other half would have been read if it were on the topic. A partition still
        working through a backlog keeps its calls waiting (event time, moving fast through the
        backlog, releases them), so catching up never splits a call."""
        wait = self.k.join_wait_seconds
        if wait is None:
            return
        for tp in self.consumer.assignment():
            decoder = self.decoders.get(tp)
            if decoder is None:
                continue
            since = decoder.waiting_since()
            if since is None or since > now - wait:
                continue
            known = self.consumer.highwater(tp)
            if known is None or self.consumer.position(tp) < known:
                continue
            self._emit(decoder.release_waiting(now))

    def _checkpoint(self, now: float) -> None:
        """Events, then watermarks out, then the producer flushed, then the input offsets
        committed."""
        self._send_batches()  # events released by idle partitions
        self._send_watermarks()
        self.producer.flush()
        self._commit(self.consumer.assignment())

    def _emit(self, items) -> None:
        for item in items:
            if type(item) is AccessEvent:
                self.counters.events += 1
                # Our own partitioner: kafka-python's murmur2 is pure Python (~20 us a record);
                # crc32 is as stable across processes and versions.
                key = zlib.crc32(item.identity.encode()) % len(self.event_partitions)
                partition = self.event_partitions[key]
                encoded = _EVENT_ENCODER.encode(item)
                self.batches.setdefault(partition, []).append(encoded)
                size = self.batch_bytes.get(partition, 0) + len(encoded)
                self.batch_bytes[partition] = size
                if size >= BATCH_BYTES:
                    self._send_batch(partition)
            else:
                self._dead_letter(item)

    def _send_batches(self) -> None:
        for partition in list(self.batches):
            self._send_batch(partition)

    def _send_batch(self, partition: int) -> None:
        events = self.batches.pop(partition)
        self.batch_bytes.pop(partition)
        # msgpack array header, then the events as they were encoded one by one
        n = len(events)
        header = bytes((0x90 | n,)) if n < 16 else (
            b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big"))
        self.producer.send(self.k.events_topic, value=header + b"".join(events),
                           partition=partition, headers=[(KIND, EVENTS)])

    def _dead_letter(self, d: DeadLetter) -> None:
        self.counters.dead_letters += 1
        reasons = self.counters.dead_letter_reasons
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
        # The record itself stays at its origin: a malformed line may still carry a secret.
        headers = [("secretscope-reason", d.reason.encode()),
                   ("secretscope-origin", d.origin.encode()),
                   ("secretscope-field", d.field.encode()),
                   ("secretscope-detail", d.detail[:200].encode()),
                   ("secretscope-sha256", d.digest.encode())]
        self.producer.send(self.k.dead_letter_topic, key=d.origin.encode(), value=None,
                           headers=headers)

    def _release_idle(self, now: float, batches) -> None:
        """A caught-up partition quiet for ``idle_seconds`` emits its waiting calls and stops
        holding back the score stage."""
        for tp in self.consumer.assignment():
            if tp in batches or tp in self.idle:
                continue
            if now - self.last_record_at.setdefault(tp, now) < self.k.idle_seconds:
                continue
            position = self.consumer.position(tp)
            known = self.consumer.highwater(tp)  # from the last fetch, without a round trip
            if known is not None and position < known:
                continue
            end = self.consumer.end_offsets([tp]).get(tp)
            if end is not None and position >= end:
                self._emit(self._decoder(tp).flush())
                self.idle.add(tp)

    def _watermark(self, tp) -> Watermark:
        decoder = self._decoder(tp)
        source = f"{tp.topic}/{tp.partition}"
        latest = decoder.latest_ts
        if tp in self.idle:
            return Watermark(source, latest, True)
        pending = decoder.oldest_pending()
        low = min(latest, pending.ts) if pending is not None else latest
        return Watermark(source, low - self.k.allowed_lateness_seconds, False)

    def _send_watermarks(self) -> None:
        partitions = self.event_partitions
        for tp in self.consumer.assignment():
            mark = self._watermark(tp)
            if mark.ts == float("-inf") and not mark.idle:
                continue
            if self.sent.get(tp) == mark:
                continue
            value = _EVENT_ENCODER.encode(mark)
            for partition in partitions:
                self.producer.send(self.k.events_topic, value=value, partition=partition,
                                   headers=[(KIND, WATERMARK)])
            self.sent[tp] = mark

    def _commit(self, tps) -> None:
        offsets = {}
        for tp in tps:
            position = self.consumer.position(tp)
            if position is None:
                continue
            pending = self.decoders[tp].oldest_pending() if tp in self.decoders else None
            safe = _origin_offset(pending.origin) if pending is not None else position
            offsets[tp] = kafka_io.OffsetAndMetadata(min(safe, position), None, -1)
        if offsets:
            self.consumer.commit(offsets)

    def _apply_rebalances(self) -> None:
        """Forget partitions a rebalance took away; keep the state of those it gave back.

        A rebalance revokes every partition, then assigns the new set. A partition in both
        keeps its position in the consumer (kafka-python preserves it), so its decoder, with the
        requests still waiting for their responses, must be kept too: dropped, the waiting
        requests would be lost while reading went on past them. A partition that went elsewhere
        is forgotten; its next owner re-reads from the committed offset (never past a waiting
        request), and the score stage drops the copies."""
        for kind, tps in self.rebalances.drain():
            if kind == "revoked":
                for tp in tps:
                    if tp in self.decoders:
                        self._parked[tp] = self.decoders.pop(tp)
                    self.idle.discard(tp)
                    self.sent.pop(tp, None)
                continue
            for tp in tps:
                if tp in self._parked:
                    self.decoders[tp] = self._parked[tp]
            self._parked.clear()
            self._assigned(tps)
            self.ready = True

    def _assigned(self, tps) -> None:
        """Called with each new assignment, once the decoders of kept partitions are back."""

    def close(self) -> None:
        self.lag.forget()
        self._send_batches()
        self.producer.flush()
        self._commit(self.consumer.assignment())
        self.consumer.close()
        self.producer.close()
        for d in self.decoders.values():
            self.counters.duplicates += d.duplicates

    def abandon(self) -> None:
        """Give up without committing (after a Kafka error): what was read since the last
        commit is read again by the next consumer."""
        self.lag.forget()
        for client in (self.consumer, self.producer):
            try:
                client.close(timeout=5) if client is self.producer else client.close()
            except Exception:  # already broken; nothing more to save
                log.debug("closing after an error", exc_info=True)


class PartitionWorker:
    """One events partition: its pipeline state, reorder buffer and source watermarks.

    Buffered events keep the (monotonic) time they arrived, so the versions they raise can be
    timed from arrival to storage: ``arrivals`` holds those of versions not yet stored."""

    def __init__(self, pipeline: Pipeline, sources: set[str]) -> None:
        self.pipeline = pipeline
        self.sources = sources
        self.marks: dict[str, list] = {}  # source -> [ts, idle]
        self.buffer: list[tuple[float, str, AccessEvent]] = []
        self.buffered: dict[str, float] = {}  # event id -> arrival
        self.next_offset = 0
        self.late = 0
        self.dirty = False
        self.arrivals: dict[tuple[str, int], float] = {}  # (finding id, version) -> arrival
        self._released: list[AccessEvent] = []
        self._released_at: list[float] = []
        self._released_ids: dict[str, float] | None = None
        pipeline.on_version = self._version_raised

    def add_event(self, event: AccessEvent, at: float = 0.0) -> None:
        source = event.origin.rsplit("/", 1)[0]
        mark = self.marks.get(source)
        if (mark is not None and event.ts <= mark[0]) or event.event_id in self.buffered:
            self.late += 1  # a copy stage 1 produced again after a restart (or data too late)
            return
        heapq.heappush(self.buffer, (event.ts, event.event_id, event))
        self.buffered[event.event_id] = at

    def add_watermark(self, mark: Watermark) -> None:
        current = self.marks.get(mark.source)
        ts = max(mark.ts, current[0]) if current else mark.ts
        self.marks[mark.source] = [ts, mark.idle]

    def release(self) -> list[AccessEvent]:
        """Buffered events every audit partition has moved past, in event-time order."""
        active = [m[0] for s, m in self.marks.items() if not m[1]]
        waiting = self.sources - set(self.marks)
        if waiting:
            return []
        limit = min(active) if active else float("inf")
        out = []
        at = []
        buffer, buffered = self.buffer, self.buffered
        while buffer and buffer[0][0] <= limit:
            _, event_id, event = heapq.heappop(buffer)
            at.append(buffered.pop(event_id, 0.0))
            out.append(event)
        self._released, self._released_at, self._released_ids = out, at, None
        return out

    def score(self, events: list[AccessEvent], batch_size: int) -> None:
        """Score released events in batches of ``runner.batch_size``, as a replay does: one
        release after a long wait can hold many thousands of events, and the pipeline's cost per
        event grows with its batch (findings do not depend on the batching)."""
        for i in range(0, len(events), batch_size):
            self.pipeline.process_batch(events[i:i + batch_size])

    def _version_raised(self, f: Finding) -> None:
        """Called by the pipeline for each version it raises from the last released events;
        findings are rare, so the id -> arrival map is built only when one is raised."""
        if self._released_ids is None:
            self._released_ids = dict(zip((e.event_id for e in self._released),
                                          self._released_at))
        at = arrival_of(f, self._released_ids)
        if at is not None:
            self.arrivals[(f.id, f.version)] = at

    def dump(self) -> bytes:
        extra = {"next_offset": self.next_offset, "marks": self.marks, "late": self.late,
                 "buffer": [_EVENT_ENCODER.encode(e) for _, _, e in self.buffer]}
        return snapshot.dump(self.pipeline, extra)

    def load(self, blob: bytes) -> None:
        extra = snapshot.load(self.pipeline, blob)
        self.next_offset = extra["next_offset"]
        self.marks = extra["marks"]
        self.late = extra["late"]
        events = [_EVENT_DECODER.decode(b) for b in extra["buffer"]]
        self.buffer = [(e.ts, e.event_id, e) for e in events]
        heapq.heapify(self.buffer)
        now = time.monotonic()  # they arrive in this process now
        self.buffered = {e.event_id: now for e in events}


def save_worker(store: Store, key: str, worker: PartitionWorker,
                metrics: ServiceMetrics | None) -> None:
    """The worker's state with its offset and the findings raised since the last save, in one
    transaction (pipelines here defer their writes: see ``Pipeline.defer_writes``)."""
    versions = worker.pipeline.take_unsaved()
    store.save_snapshot(key, worker.next_offset, worker.dump(), versions)
    arrivals, worker.arrivals = worker.arrivals, {}
    if metrics is not None and versions:
        metrics.stored(versions, lambda f: arrivals.get((f.id, f.version)))
    worker.dirty = False


class ScoreStage:
    def __init__(self, settings: Settings, store: Store, make_pipeline: Callable[[], Pipeline],
                 counters: ScoreCounters | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.settings = settings
        self.k = settings.kafka
        self.store = store
        self.make_pipeline = make_pipeline
        self.consumer = kafka_io.consumer(self.k, self.k.score_group)
        self.workers: dict = {}
        self.assigned: set = set()
        self.sources = self._sources()
        self.last_snapshot = time.monotonic()
        self.counters = counters if counters is not None else ScoreCounters()
        self.metrics = metrics
        self.lag = _LagReport(metrics)
        self.joined = False
        self.ready = False  # joined, and every assigned partition's state restored
        self.rebalances = _Listener()
        self.consumer.subscribe([self.k.events_topic], listener=self.rebalances)

    def _sources(self) -> set[str]:
        found = wait_for_topics(self.consumer, [*self.k.audit_topics, self.k.events_topic])
        return {f"{topic}/{p}" for topic in self.k.audit_topics for p in found[topic]}

    def _key(self, tp) -> str:
        return f"score/{tp.topic}/{tp.partition}"

    def _apply_rebalances(self) -> None:
        """Act on rebalances in this thread, between polls, so a snapshot is never taken while
        a batch is half processed. A revoked partition's state is saved (the store, not the
        committed offset, is where its next owner resumes); an assigned one gets its worker
        when first polled."""
        for kind, tps in self.rebalances.drain():
            if kind == "assigned":
                self.assigned.update(tps)
                self.joined = True
                continue
            for tp in tps:
                self.assigned.discard(tp)
                worker = self.workers.pop(tp, None)
                if worker is not None and worker.dirty:
                    self._save(tp, worker)

    def _worker(self, tp) -> PartitionWorker:
        """The worker of a partition, restored from its snapshot the first time it is needed."""
        worker = self.workers.get(tp)
        if worker is None:
            worker, restored = restored_worker(self.make_pipeline, self.sources, self.store,
                                               self._key(tp))
            self.workers[tp] = worker
            if restored:
                log.info("score: %s restored at offset %d", self._key(tp), worker.next_offset)
            self.consumer.seek(tp, worker.next_offset)
        return worker

    def restore(self) -> None:
        """Build (and restore from snapshots) the workers of newly assigned partitions."""
        self._apply_rebalances()
        for tp in self.assigned - set(self.workers):
            self._worker(tp)
        self.ready = self.joined

    def poll_once(self) -> None:
        self.restore()
        batches = self.consumer.poll(timeout_ms=self.k.poll_timeout_ms,
                                     max_records=self.k.max_poll_records)
        arrived = time.monotonic()
        self._apply_rebalances()
        for tp, records in batches.items():
            if tp not in self.assigned:
                continue
            worker = self._worker(tp)
            late = worker.late
            for record in records:
                if record.offset < worker.next_offset:
                    continue  # fetched from the committed offset; the snapshot is further on
                kind = record.headers[0][1] if record.headers else None
                if kind == EVENTS:
                    for event in _EVENTS_DECODER.decode(record.value):
                        worker.add_event(event, arrived)
                elif kind == WATERMARK:
                    worker.add_watermark(_WATERMARK_DECODER.decode(record.value))
                else:  # one event a record, as earlier versions wrote them
                    worker.add_event(_EVENT_DECODER.decode(record.value), arrived)
                worker.next_offset = record.offset + 1
            worker.dirty = True
            self.counters.dropped += worker.late - late
            events = worker.release()
            if events:
                self.counters.events += len(events)
                worker.score(events, self.settings.runner.batch_size)
        if time.monotonic() - self.last_snapshot >= self.k.snapshot_seconds:
            self._checkpoint([tp for tp, w in self.workers.items() if w.dirty])
        self.lag(self.consumer)

    def _save(self, tp, worker: PartitionWorker) -> None:
        save_worker(self.store, self._key(tp), worker, self.metrics)

    def _checkpoint(self, tps) -> None:
        """Save each worker's state, offset and findings together, then commit the offsets."""
        offsets = {}
        for tp in tps:
            worker = self.workers[tp]
            self._save(tp, worker)
            offsets[tp] = kafka_io.OffsetAndMetadata(worker.next_offset, None, -1)
            worker.dirty = False
        if offsets:
            self.consumer.commit(offsets)
        self.last_snapshot = self.counters.last_snapshot = time.monotonic()

    def close(self) -> None:
        self.lag.forget()
        self._checkpoint([tp for tp, w in self.workers.items() if w.dirty])
        self.consumer.close()

    def abandon(self) -> None:
        """After a Kafka error: findings are stored, snapshots are the truth for offsets."""
        self.lag.forget()
        try:
            self.consumer.close()
        except Exception:
            log.debug("closing after an error", exc_info=True)


class InProcessStages(ParseStage):
    """Both stages in one process (``run.hop: memory``): events go from parse to score in
    memory, not through the events topic.

    The state covers every identity, so the audit group gives every partition to one process
    (:class:`~secretscope.sources.kafka.OneOwnerAssignor`); other processes of the group stand
    by and take over when it leaves. Events go to ``kafka.events_partitions`` workers by the
    hash the parse stage partitions the events topic with, and watermarks straight to every
    worker, so the findings are those of the topic path with as many events partitions.

    With no events topic to read again, the audit offsets are the only input position. A
    checkpoint (every ``kafka.snapshot_seconds``) saves each worker's state, reorder buffer
    and watermarks with the findings it raised, and only then commits the audit offsets,
    never past a request still waiting for its response. After a crash the records after the
    committed offsets are parsed again; each worker drops the events it already scored (at or
    below its watermark of their source) or holds (in its buffer), as the score stage drops
    copies from the topic.
    """

    def __init__(self, settings: Settings, store: Store, make_pipeline: Callable[[], Pipeline],
                 counters: ParseCounters | None = None,
                 score_counters: ScoreCounters | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.store = store
        self.make_pipeline = make_pipeline
        self.score_counters = score_counters if score_counters is not None else ScoreCounters()
        self.metrics = metrics
        self.workers: list[PartitionWorker] | None = None  # None: standing by
        self.last_snapshot = time.monotonic()
        self._arrived = 0.0
        self._late = 0  # copies the workers had dropped when last counted
        super().__init__(settings, counters, metrics, one_owner=True)

    def _event_partitions(self) -> list[int]:
        return list(range(self.k.events_partitions))

    def _key(self, slot: int) -> str:
        return f"inproc/{self.k.parse_group}/{slot}"

    def _assigned(self, tps) -> None:
        if not tps:
            self.workers = None  # another member owns the input; its state is in the store
        elif self.workers is None:
            self.workers = [self._restore(slot) for slot in self.event_partitions]
            self._late = sum(w.late for w in self.workers)

    def _restore(self, slot: int) -> PartitionWorker:
        worker, restored = restored_worker(self.make_pipeline, self.sources, self.store,
                                           self._key(slot))
        if restored:
            log.info("in-process stages: %s restored", self._key(slot))
        return worker

    def _feed(self, batches, now: float) -> None:
        if self.workers is None:
            return  # fetched before the assignment went to another member
        self._arrived = now
        super()._feed(batches, now)
        self._score()

    def _emit(self, items) -> None:
        workers = self.workers
        n = len(workers)
        for item in items:
            if type(item) is AccessEvent:
                self.counters.events += 1
                worker = workers[zlib.crc32(item.identity.encode()) % n]
                worker.add_event(item, self._arrived)
                worker.dirty = True
            else:
                self._dead_letter(item)

    def _score(self) -> None:
        """Apply each audit partition's watermark, then score what every worker can release."""
        marks = [m for m in map(self._watermark, self.consumer.assignment())
                 if m.idle or m.ts != float("-inf")]
        counters = self.score_counters
        for worker in self.workers:
            for mark in marks:
                if worker.marks.get(mark.source) != [mark.ts, mark.idle]:
                    worker.add_watermark(mark)
                    worker.dirty = True
            events = worker.release()
            if events:
                counters.events += len(events)
                worker.score(events, self.settings.runner.batch_size)
        late = sum(w.late for w in self.workers)
        counters.dropped += late - self._late
        self._late = late

    def _checkpoint(self, now: float) -> None:
        if self.workers is None:
            return
        self._score()
        if now - self.last_snapshot >= self.k.snapshot_seconds:
            self._save_and_commit()

    def _save_and_commit(self) -> None:
        for slot, worker in zip(self.event_partitions, self.workers):
            if worker.dirty:
                save_worker(self.store, self._key(slot), worker, self.metrics)
        self.producer.flush()  # the dead letters of the records about to be committed
        self._commit(self.consumer.assignment())
        self.last_snapshot = self.score_counters.last_snapshot = time.monotonic()

    def close(self) -> None:
        if self.workers is not None:
            self._score()
            self._save_and_commit()
        super().close()


def restored_worker(make_pipeline, sources, store, key: str) -> tuple[PartitionWorker, bool]:
    """A partition worker with the state of snapshot ``key`` if the store has one, and whether
    it had; a snapshot that fails its integrity check names its row, which the operator may
    delete."""
    worker = PartitionWorker(make_pipeline(), sources)
    saved = store.load_snapshot(key)
    if saved is None:
        return worker, False
    try:
        worker.load(saved[1])
    except ModelIntegrityError as exc:
        raise ModelIntegrityError(f"snapshot {key}: {exc}") from None
    return worker, True


class _Listener(kafka_io.ConsumerRebalanceListener):
    """Queues rebalance notices for the stage's own thread.

    kafka-python calls these on its IO thread, concurrently with the stage's processing, and
    forbids blocking consumer calls there; state is only touched by the stage between polls.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notices: list[tuple[str, list]] = []

    def on_partitions_revoked(self, revoked) -> None:
        with self._lock:
            self._notices.append(("revoked", list(revoked)))

    def on_partitions_assigned(self, assigned) -> None:
        with self._lock:
            self._notices.append(("assigned", list(assigned)))

    def drain(self) -> list[tuple[str, list]]:
        with self._lock:
            notices, self._notices = self._notices, []
        return notices
