"""Vault's socket audit device as a source: real sockets on 127.0.0.1, a consumer thread."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import msgspec
import pytest

from secretscope.config import load_settings
from secretscope.events import AccessEvent, DeadLetter
from secretscope.parsers.limits import InputLimits
from secretscope.runner import Pipeline
from secretscope.sources import socket as socket_source
from secretscope.sources.files import replay
from secretscope.sources.socket import SocketAuditSource
from secretscope.store import Store

from conftest import CANARY, SAMPLES

SAMPLE = SAMPLES / "vault_audit_reference.jsonl"
LINES = SAMPLE.read_bytes().splitlines(keepends=True)  # 14 lines; line 14 is the log_raw canary
WAIT = 5.0


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


class Consumer:
    """Iterates a started source in a thread, as the pipeline does."""

    def __init__(self, src: SocketAuditSource) -> None:
        self.src = src
        self.items: list[AccessEvent | DeadLetter] = []
        self.thread = threading.Thread(target=lambda: self.items.extend(src), daemon=True)
        self.thread.start()

    def finish(self) -> list[AccessEvent | DeadLetter]:
        self.src.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "iteration did not end after stop()"
        return self.items


@pytest.fixture
def source(request):
    """A listening source on a free port, iterated in a thread; stopped at the end regardless."""
    src = SocketAuditSource(port=0, **getattr(request, "param", {}))
    src.start()
    consumer = Consumer(src)
    yield src, consumer
    consumer.finish()


def connect(src: SocketAuditSource) -> socket.socket:
    return socket.create_connection(src.address, timeout=WAIT)


def send(src: SocketAuditSource, *lines: bytes) -> int:
    """One Vault connection writing ``lines`` and closing; returns its local port."""
    with connect(src) as client:
        client.sendall(b"".join(lines))
        return client.getsockname()[1]


def events(items) -> list[AccessEvent]:
    return [i for i in items if isinstance(i, AccessEvent)]


def letters(items) -> list[DeadLetter]:
    return [i for i in items if isinstance(i, DeadLetter)]


def test_sample_over_the_socket_equals_the_file_replay(source):
    src, consumer = source
    port = send(src, *LINES)
    wait_until(lambda: src.counters.lines == len(LINES), "all lines read")
    got = consumer.finish()
    expected = list(replay([SAMPLE]))
    assert len(expected) == 11 and len(got) == 11
    assert [e.event_id for e in got] == [e.event_id for e in expected]
    # the same events; only where they came from differs
    assert [msgspec.structs.replace(e, origin="") for e in got] == \
        [msgspec.structs.replace(e, origin="") for e in expected]
    assert got[0].origin == f"socket:127.0.0.1:{port}:1"
    assert got[-1].origin == f"socket:127.0.0.1:{port}:14"
    c = src.counters
    assert (c.lines, c.connections, c.disconnects_mid_line, c.dead_letters) == (14, 1, 0, 0)


def test_request_from_one_node_and_response_from_another_are_joined(source):
    src, consumer = source
    with connect(src) as node_a, connect(src) as node_b:
        wait_until(lambda: src.counters.connections == 2, "both connections")
        for n, (request, response) in enumerate([(LINES[0], LINES[1]), (LINES[2], LINES[3]),
                                                  (LINES[4], LINES[5])], 1):
            node_a.sendall(request)
            wait_until(lambda: src.counters.lines == 2 * n - 1, "the request entry")
            node_b.sendall(response)
            wait_until(lambda: src.counters.lines == 2 * n, "the response entry")
        port_a = node_a.getsockname()[1]
    got = consumer.finish()
    assert [e.phases for e in got] == ["request+response"] * 3
    assert [e.event_id for e in got] == [e.event_id for e in list(replay([SAMPLE]))[:3]]
    assert [e.outcome for e in got] == ["success", "denied", "success"]
    # each event names the node and line of its request entry, the first half seen
    assert [e.origin for e in got] == [f"socket:127.0.0.1:{port_a}:{n}" for n in (1, 2, 3)]


def test_copies_from_two_nodes_collapse(source):
    src, consumer = source
    senders = [threading.Thread(target=send, args=(src, *LINES)) for _ in range(2)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(WAIT)
    wait_until(lambda: src.counters.lines == 2 * len(LINES), "both copies read")
    got = events(consumer.finish())
    ids = Counter(e.event_id for e in got)
    assert set(ids) == {e.event_id for e in replay([SAMPLE])}
    # every call with a request id is emitted once (an entry without one, line 13, has nothing
    # to match its copy on)
    assert all(n == 1 for i, n in ids.items() if not i.startswith("derived:"))


def test_disconnect_mid_line_is_one_truncated_dead_letter_and_others_are_served(source):
    src, consumer = source
    partial = LINES[2][:700]
    first = send(src, LINES[0], LINES[1], partial)
    wait_until(lambda: src.counters.disconnects_mid_line == 1, "the cut-off line")
    second = send(src, LINES[2], LINES[3])
    wait_until(lambda: src.counters.lines == 5, "the second connection's lines")
    got = consumer.finish()
    assert [(e.event_id, e.phases, e.origin) for e in events(got)] == [
        ("0b0c4e2a-6f15-4d0e-8a57-3c1b2d9e7f01", "request+response", f"socket:127.0.0.1:{first}:1"),
        ("5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9", "request+response",
         f"socket:127.0.0.1:{second}:1"),
    ]
    (cut,) = letters(got)
    assert (cut.reason, cut.origin, cut.size) == ("truncated", f"socket:127.0.0.1:{first}:3", 700)
    c = src.counters
    assert (c.connections, c.disconnects_mid_line, c.dead_letters) == (2, 1, 1)


@pytest.mark.parametrize("source", [{"limits": InputLimits(max_record_bytes=2048)}],
                         indirect=True)
def test_oversize_line_is_dropped_as_it_arrives_and_the_next_line_is_parsed(source):
    src, consumer = source
    huge = b'{"type":"request","padding":"' + b"x" * 300_000 + b'"}\n'  # many reads' worth
    port = send(src, huge, LINES[0], LINES[1])
    wait_until(lambda: src.counters.lines == 3, "the lines after the oversize one")
    got = consumer.finish()
    (big,) = letters(got)
    assert (big.reason, big.origin) == ("oversize", f"socket:127.0.0.1:{port}:1")
    assert big.size == 2048  # only the first max_record_bytes were ever held
    assert big.detail.startswith(f"{len(huge) - 1} bytes > 2048")
    (event,) = events(got)
    assert (event.phases, event.origin) == ("request+response", f"socket:127.0.0.1:{port}:2")


def test_malformed_json_is_a_dead_letter_with_the_socket_origin(source):
    src, consumer = source
    port = send(src, b'{"time":"2026-03-04T10:00:01Z","type":"request",\n', LINES[0], LINES[1])
    wait_until(lambda: src.counters.lines == 3, "all lines read")
    got = consumer.finish()
    (bad,) = letters(got)
    assert (bad.reason, bad.origin) == ("not_json", f"socket:127.0.0.1:{port}:1")
    assert len(events(got)) == 1 and src.counters.dead_letters == 1


@pytest.mark.parametrize("source", [{"limits": InputLimits(max_record_bytes=4096)}],
                         indirect=True)
def test_canary_never_appears_in_events_or_dead_letters(source):
    src, consumer = source
    assert CANARY.encode() in LINES[13]
    secret = CANARY.encode()
    send(src, *LINES)
    send(src, b'{"time":"2026-03-04T11:06:00Z","type":"response","request":"x",'
              b'"response":{"data":{"password":"' + secret + b'"}}}\n',  # wrong type
         b'{"type":"response","response":{"data":{"password":"' + secret + b'"}}' + b" " * 5000
         + b"}\n",  # oversize
         b'{"type":"response","response":{"data":{"password":"' + secret)  # cut off
    wait_until(lambda: src.counters.lines == len(LINES) + 3, "all lines read")
    got = consumer.finish()
    assert "aa0f1a2b-3c4d-4e5f-9a6b-7c8d9e0f1a2d" in {e.event_id for e in events(got)}
    assert sorted(d.reason for d in letters(got)) == ["oversize", "truncated", "wrong_type"]
    for item in got:
        assert CANARY not in repr(item)


@pytest.mark.parametrize("source", [{"join_wait": None}], indirect=True)
def test_idle_time_releases_nothing_and_stop_flushes_pending_requests(source):
    # without a wall-time bound (join_wait=None); tests/test_live_latency.py tests it with one
    src, consumer = source
    with connect(src) as node:
        node.sendall(LINES[0])  # a request whose response never comes
        wait_until(lambda: src.counters.lines == 1, "the request entry")
        time.sleep(0.3)
        assert consumer.items == []  # waiting for the response: event time has not moved
    (event,) = consumer.finish()
    assert (event.event_id, event.phases) == ("0b0c4e2a-6f15-4d0e-8a57-3c1b2d9e7f01", "request")


def test_a_full_queue_stops_reading_instead_of_buffering(monkeypatch):
    monkeypatch.setattr(socket_source, "QUEUE_LINES", 8)
    lines = [LINES[0]] * 4000  # ~5.6 MB, far more than the queue and one read
    with SocketAuditSource(port=0) as src:
        sender = threading.Thread(target=send, args=(src, *lines), daemon=True)
        sender.start()
        wait_until(lambda: src.counters.lines > 0, "the first read")
        time.sleep(0.3)  # nobody consumes: the server thread must be parked on the full queue
        assert src.counters.lines < 200
        consumer = Consumer(src)
        sender.join(WAIT)
        wait_until(lambda: src.counters.lines == len(lines), "every line once consumed")
    consumer.thread.join(WAIT)
    assert not consumer.thread.is_alive()
    (event,) = events(consumer.items)  # copies of one entry collapse into one call
    assert event.phases == "request"


def test_context_manager_starts_and_stops():
    with SocketAuditSource(port=0) as src:
        host, port = src.address
        assert host == "127.0.0.1" and port > 0
        send(src, LINES[0], LINES[1])
        wait_until(lambda: src.counters.lines == 2, "both lines")
    (event,) = list(src)  # stopped: iteration drains what was read, then ends
    assert event.phases == "request+response"
    assert list(src) == []  # and a second iteration ends at once
    with pytest.raises(RuntimeError):
        src.start()


def test_through_the_real_pipeline_until_stop():
    src = SocketAuditSource(port=0)
    src.start()
    result = {}
    ready = threading.Event()

    def run():
        store = Store("sqlite://")  # an in-memory SQLite database lives in one thread
        pipeline = Pipeline(load_settings(), store=store)
        ready.set()
        result["stats"] = pipeline.run(src)
        result["findings"] = store.recent_findings()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert ready.wait(30), "the pipeline did not load"  # building it takes seconds on a busy box
    send(src, *LINES)
    wait_until(lambda: src.counters.lines == len(LINES), "all lines read")
    src.stop()
    runner.join(WAIT)
    assert not runner.is_alive(), "Pipeline.run did not return after stop()"
    assert result["stats"].events == 11 and result["stats"].dead_letters == 0
    detectors = {f["finding_info"]["analytic"]["name"] for f in result["findings"]}
    assert any("vault-audit-device-change" in d for d in detectors), detectors
    assert CANARY not in repr(result["findings"])
