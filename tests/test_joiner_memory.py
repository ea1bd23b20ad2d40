"""The joiner remembers released request ids for a span of event time, not for a count: copies
from a second audit device inside the span are dropped, ids older than it are forgotten, and
its memory stays flat however long the stream runs."""

from __future__ import annotations

import tracemalloc
from datetime import datetime, timedelta, timezone

import orjson

from secretscope.parsers.vault import VaultJoiner, parse_entry

START = datetime(2026, 3, 4, tzinfo=timezone.utc)


def call(i: int, at: float, request_id: str | None = None) -> list[bytes]:
    """The request and response lines of one read, ``at`` seconds after START."""
    stamp = (START + timedelta(seconds=at)).isoformat().replace("+00:00", "Z")
    req = {"id": request_id or f"req-{i:08d}", "operation": "read", "path": f"secret/data/app/k{i % 50}",
           "mount_point": "secret/", "mount_type": "kv", "remote_address": "10.0.0.7"}
    auth = {"entity_id": f"e{i % 40}", "accessor": f"acc{i % 40}", "display_name": "approle",
            "policies": ["default", "app"]}
    return [orjson.dumps({"time": stamp, "type": kind, "auth": auth, "request": req})
            for kind in ("request", "response")]


def feed(joiner: VaultJoiner, lines: list[bytes], name: str = "a.log") -> list:
    out = []
    for n, raw in enumerate(lines, 1):
        out += joiner.feed(parse_entry(raw, name, lineno=n))
    return out


def test_a_copy_inside_the_horizon_is_dropped_and_one_after_it_is_not():
    joiner = VaultJoiner(remember_seconds=100, min_remembered=0)
    assert [e.event_id for e in feed(joiner, call(0, 0.0))] == ["req-00000000"]
    # other calls move event time on; the second device's copy of call 0 comes 60 s late
    feed(joiner, [line for i in range(1, 7) for line in call(i, i * 10.0)])
    assert feed(joiner, call(0, 60.0, "req-00000000"), "b.log") == []
    assert joiner.duplicates == 2
    # 2 horizons later the id is forgotten: the same id is a new call again
    feed(joiner, [line for i in range(7, 30) for line in call(i, i * 10.0)])
    again = feed(joiner, call(0, 300.0, "req-00000000"), "b.log")
    assert [e.event_id for e in again] == ["req-00000000"] and joiner.duplicates == 2


def test_an_id_is_remembered_for_at_least_the_horizon():
    joiner = VaultJoiner(remember_seconds=100, min_remembered=0)
    for i in range(400):  # one call per second; each id's copy comes 99 s after the original
        feed(joiner, call(i, float(i)))
        if i >= 99:
            assert feed(joiner, call(i - 99, float(i), f"req-{i - 99:08d}"), "b.log") == []
    assert joiner.duplicates == 2 * (400 - 99)


def test_memory_stays_bounded_on_a_long_stream():
    """14,000 calls, 50 per second of event time, over a 40 s horizon: the ids remembered and
    the bytes held stop growing once two horizons have passed."""
    joiner = VaultJoiner(remember_seconds=40, min_remembered=1000)
    rate = 50
    lines = [line for i in range(14_000) for line in call(i, i / rate)]
    horizon_calls = 2 * (max(40 * rate, 1000) + rate)
    tracemalloc.start()
    try:
        feed(joiner, lines[: 2 * 5_000])  # two horizons and more: memory at its steady size
        peaks = []
        for start, end in ((5_000, 9_000), (10_000, 14_000)):  # each spans 2 generations
            tracemalloc.reset_peak()
            for n in range(2 * start, 2 * end):
                joiner.feed(parse_entry(lines[n], "a.log", lineno=n + 1))
                assert joiner.remembered() <= horizon_calls
            peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    # 5,000 more calls released between the two peaks; a count-bounded memory would have
    # grown by about 600 KB
    assert abs(peaks[1] - peaks[0]) < 64 * 1024, peaks


def test_out_of_order_event_time_still_drops_the_recent_copies():
    """Copies of calls whose times are hours apart, within the last MIN_REMEMBERED ids."""
    joiner = VaultJoiner(remember_seconds=100)
    hours = [line for i in range(50) for line in call(i, (i % 7) * 3600.0)]
    assert len(feed(joiner, hours)) == 50
    assert feed(joiner, hours, "b.log") == [] and joiner.duplicates == 100
