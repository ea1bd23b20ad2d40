"""A state snapshot is restored only if it is intact and was written by this layout version;
anything else is refused with the reason, before any state is touched."""

from __future__ import annotations

import hashlib
import zlib
from datetime import timedelta

import msgspec
import pytest

from helpers import T0, make_event
from secretscope import snapshot
from secretscope.config import load_settings
from secretscope.errors import ModelIntegrityError
from secretscope.runner import Pipeline
from secretscope.stages import PartitionWorker
from secretscope.store import Store, snapshots


def warm_pipeline() -> Pipeline:
    """A pipeline that has learned something: identities, peers, detector state."""
    p = Pipeline(load_settings())
    events = [make_event(at=T0 + timedelta(minutes=5 * i), identity=f"entity:svc-{i % 3}",
                         path=f"secret/data/team/s{i % 4}") for i in range(300)]
    p.process_batch(events)
    assert p.extractor.identities  # the snapshot below has state to refuse
    return p


def with_version(blob: bytes, version) -> bytes:
    """``blob`` as another secretscope version would have written it (same content)."""
    state = msgspec.msgpack.decode(zlib.decompress(blob))
    state["version"] = version
    return zlib.compress(msgspec.msgpack.encode(state), 3)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


def test_this_versions_snapshot_is_restored(store):
    """The control case: the same round trip without a changed version works."""
    store.save_snapshot("score/events/0", 300, snapshot.dump(warm_pipeline()))
    _, blob = store.load_snapshot("score/events/0")
    fresh = Pipeline(load_settings())
    snapshot.load(fresh, blob)
    assert set(fresh.extractor.identities) == {"entity:svc-0", "entity:svc-1", "entity:svc-2"}


@pytest.mark.parametrize("version", [snapshot.VERSION - 1, snapshot.VERSION + 1, None])
def test_snapshot_of_another_version_is_refused_with_the_reason(store, version):
    blob = with_version(snapshot.dump(warm_pipeline()), version)
    store.save_snapshot("score/events/0", 300, blob)
    offset, loaded = store.load_snapshot("score/events/0")  # intact: the checksum matches
    assert offset == 300
    fresh = Pipeline(load_settings())
    with pytest.raises(ModelIntegrityError) as refused:
        snapshot.load(fresh, loaded)
    message = str(refused.value)
    assert f"snapshot version {version} is not {snapshot.VERSION}" in message
    assert "written by another secretscope version" in message
    assert "delete the snapshot row" in message
    assert fresh.extractor.identities == {} and fresh.extractor.peers == {}  # nothing restored


def test_score_stage_worker_refuses_it_too(store):
    """The Kafka score stage restores a partition through its worker: same refusal, and the
    worker keeps its empty state and offset 0."""
    blob = with_version(snapshot.dump(warm_pipeline()), snapshot.VERSION + 1)
    worker = PartitionWorker(Pipeline(load_settings()), {"audit/0"})
    with pytest.raises(ModelIntegrityError, match="written by another secretscope version"):
        worker.load(blob)
    assert worker.next_offset == 0 and worker.buffer == []
    assert worker.pipeline.extractor.identities == {}


def test_snapshot_whose_checksum_does_not_match_is_refused(store):
    blob = snapshot.dump(warm_pipeline())
    store.save_snapshot("score/events/1", 300, blob)
    # the data intact, the recorded checksum not: refused all the same, naming the snapshot
    with store.engine.begin() as conn:
        conn.execute(snapshots.update().values(checksum=hashlib.sha256(b"other").hexdigest()))
    with pytest.raises(ModelIntegrityError, match="snapshot score/events/1: checksum mismatch"):
        store.load_snapshot("score/events/1")
    # and a blob changed after its checksum was taken
    with store.engine.begin() as conn:
        conn.execute(snapshots.update().values(checksum=hashlib.sha256(blob).hexdigest(),
                                               data=blob[:-1] + bytes([blob[-1] ^ 1])))
    with pytest.raises(ModelIntegrityError, match="checksum mismatch"):
        store.load_snapshot("score/events/1")
