"""Vault's ``socket`` audit device as a live source.

Vault connects to us as a TCP client and writes one JSON audit entry per line, request and
response entries, from every node that has the device enabled, reconnecting when a connection
drops. One server thread accepts and reads every connection (a selector, so one slow or silent
node costs nothing) and splits bytes into lines; the iterating thread parses and joins them
through a single :class:`~secretscope.sources.decode.Decoder`, so a request logged by one node and
its response by another are joined, and copies from several nodes collapse.

Between the two threads sits a bounded queue: when the consumer falls behind, the server thread
blocks on it and stops reading, and TCP flow control slows Vault down instead of memory growing.
Vault's device gives up on a write after its ``write_timeout`` (2 s by default), so a consumer
that stays behind turns into audit write errors on the Vault side, not into lost lines here.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Iterator

from secretscope.errors import ParseError
from secretscope.events import AccessEvent, DeadLetter
from secretscope.parsers.limits import InputLimits
from secretscope.sources.decode import LIVE_MAX_AHEAD_SECONDS, Decoder, dead_letter

log = logging.getLogger(__name__)

# Defaults of input.join_wait_seconds and runner.batch_wait_seconds (see config.py for why).
JOIN_WAIT_SECONDS = 0.25
BATCH_WAIT_SECONDS = 0.1
QUEUE_LINES = 1024  # lines read but not yet parsed; bounds memory at QUEUE_LINES * max line
_RECV_BYTES = 1 << 16
_END = object()  # put by the server thread after its last line: the stream is over
_HEARTBEAT_SECONDS = 0.02  # how stale the consumer's idea of "all read" gets on a quiet stream
_UNDER_PRESSURE = float("inf")  # _pressure_end while a full queue holds reading back
# A line to parse, with its origin, when it was read, and a time before which every line that
# arrived on its connection had been read before it (see _Connection.read_until); or a line
# already refused.
_Read = tuple[bytes, str, float, float] | DeadLetter


class SocketCounters:
    """What the source has seen so far; each counter has one writing thread."""

    __slots__ = ("lines", "connections", "disconnects_mid_line", "dead_letters")

    def __init__(self) -> None:
        self.lines = 0  # lines received, blank, oversize and cut-off ones included
        self.connections = 0  # connections accepted
        self.disconnects_mid_line = 0  # connections that ended inside a line
        self.dead_letters = 0  # dead letters yielded, from the socket and from the decoder


class _Connection:
    """Splits one connection's bytes into lines, never holding more than ``limit`` bytes of one:
    the rest of an oversize line is counted and dropped as it arrives."""

    __slots__ = ("origin", "limit", "counters", "line_no", "buf", "skipped", "read_until")

    def __init__(self, peer: tuple, limit: int, counters: SocketCounters) -> None:
        self.origin = f"socket:{peer[0]}:{peer[1]}"
        self.limit = limit
        self.counters = counters
        self.line_no = 0
        self.buf = bytearray()
        self.skipped = 0  # bytes of the current line dropped because it is over the limit
        # Everything that arrived before this time has been read: the time of the last read
        # that emptied the kernel's buffer. While a full queue stops the server thread, it stays
        # put, so lines read late are never taken for lines that arrived late.
        self.read_until = time.monotonic()

    def feed(self, data: bytes, received: float, complete: float) -> list[_Read]:
        """Lines completed by ``data``, as (raw, origin, received, complete) to parse or as a
        dead letter."""
        out: list[_Read] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            item = self._line(data[start:end], received, complete)
            if item is not None:
                out.append(item)
            start = end + 1
        self._keep(data[start:])
        return out

    def close(self) -> DeadLetter | None:
        """End of the connection: bytes after the last newline are a cut-off line. It is not
        parsed, because a prefix of an entry can still parse as something it was not."""
        if self.skipped == 0 and (not self.buf or self.buf.isspace()):
            return None
        origin = self._next_origin()
        self.counters.disconnects_mid_line += 1
        size = len(self.buf) + self.skipped
        return dead_letter(bytes(self.buf), ParseError(
            "truncated", f"connection closed {size} bytes into a line, before its newline", origin))

    def _next_origin(self) -> str:
        self.line_no += 1
        self.counters.lines += 1
        return f"{self.origin}:{self.line_no}"

    def _keep(self, piece: bytes) -> None:
        if self.skipped:
            self.skipped += len(piece)
            return
        self.buf += piece
        if len(self.buf) > self.limit:
            self.skipped = len(self.buf) - self.limit
            del self.buf[self.limit:]

    def _line(self, tail: bytes, received: float, complete: float) -> _Read | None:
        origin = self._next_origin()
        size = len(self.buf) + self.skipped + len(tail)
        if size > self.limit:
            # the digest covers the first `limit` bytes: all that was ever held of the line
            prefix = bytes((self.buf + tail)[:self.limit])
            self.buf.clear()
            self.skipped = 0
            return dead_letter(prefix, ParseError(
                "oversize", f"{size} bytes > {self.limit} (digest of the first {len(prefix)})",
                origin))
        raw = bytes(self.buf + tail) if self.buf else tail
        self.buf.clear()
        if not raw or raw.isspace():
            return None
        return raw, origin, received, complete


class SocketAuditSource:
    """TCP listener for Vault's socket audit device. Iterating yields AccessEvent | DeadLetter,
    and None whenever the consumer should process what it holds (see below).

    ``start()`` binds and listens (port 0 picks a free port, see ``address``); iteration blocks
    while Vault is quiet and ends after ``stop()``, once every line already read is parsed and
    the calls still waiting for their other half are released. A line longer than
    ``max_line_bytes`` (default ``limits.max_record_bytes``) is dropped as it arrives and
    becomes an "oversize" dead letter; a connection that ends inside a line (including
    connections cut by ``stop()``) leaves a "truncated" one; an entry timed more than
    ``LIVE_MAX_AHEAD_SECONDS`` ahead of this host's clock is a "bad_time" one. Origins read
    ``socket:<peer ip>:<peer port>:<line on that connection>``.

    Wall time bounds two waits, so a finding is never held back by a quiet stream:

    * a call whose other half has not been received ``join_wait`` seconds after its first
      entry is released alone (None: only ``join_timeout`` of event time releases it). Times
      are those the lines were read, and a call is only given up on once every line that
      arrived before its deadline is parsed, so a backlog in the queue never splits a call; nor
      does back-pressure (a full queue stops reading, and so holds Vault's writes back): no
      call is given up on until ``join_wait`` after reading has caught up again. A late half is
      dropped as a duplicate by the joiner (``duplicates``);
    * a None is yielded at most ``batch_wait`` seconds after the first event the consumer has
      not yet been told to process, and when nothing arrives for ``idle_tick_seconds``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 9090,
                 limits: InputLimits = InputLimits(), join_timeout: float = 30.0,
                 max_line_bytes: int | None = None, idle_tick_seconds: float = 1.0,
                 join_wait: float | None = JOIN_WAIT_SECONDS,
                 batch_wait: float = BATCH_WAIT_SECONDS) -> None:
        self.idle_tick_seconds = idle_tick_seconds
        self.join_wait = join_wait
        self.batch_wait = batch_wait
        self.host = host
        self.port = port
        self.max_line_bytes = limits.max_record_bytes if max_line_bytes is None else max_line_bytes
        self.counters = SocketCounters()
        self._decoder = Decoder("vault", limits, join_timeout, LIVE_MAX_AHEAD_SECONDS,
                                join_wait=join_wait)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_LINES)
        self._address: tuple[str, int] | None = None
        self._wake: socket.socket | None = None  # closed by stop() to wake the server thread
        self._stopping = threading.Event()
        self._failure: Exception | None = None
        # written by the server thread, read by the iterating one (see _select)
        self._drained_at = float("-inf")
        self._pressure_end = float("-inf")  # when reading last caught up after back-pressure

    @property
    def duplicates(self) -> int:
        """Entries dropped as copies of a call already emitted, late halves included."""
        return self._decoder.duplicates

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the socket source is not started")
        return self._address

    def start(self) -> None:
        if self._address is not None:
            raise RuntimeError("the socket source was already started")
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        server = socket.socket(family, kind, proto)
        try:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(addr)
            server.listen()
            server.setblocking(False)
        except OSError:
            server.close()
            raise
        wake_in, self._wake = socket.socketpair()
        self._address = server.getsockname()[:2]
        threading.Thread(target=self._serve, args=(server, wake_in), daemon=True,
                         name=f"vault-socket-audit:{self._address[1]}").start()

    def stop(self) -> None:
        """Stop accepting and close every connection; iteration ends once the lines already
        read are through. Safe to call more than once, and from the iterating thread."""
        if self._wake is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.close()

    def __enter__(self) -> SocketAuditSource:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __iter__(self) -> Iterator[AccessEvent | DeadLetter | None]:
        if self._address is None:
            raise RuntimeError("start() the socket source before iterating it")
        decoder = self._decoder  # fed from this thread only: it is not thread-safe
        counters = self.counters
        clock = time.monotonic
        join_wait = self.join_wait
        # Releasing waiting calls is checked no earlier than needed: the oldest waiting call's
        # deadline, or one join wait after the last check (no call received since can be due).
        check_at = float("inf") if join_wait is None else float("-inf")
        held_since: float | None = None  # first event yielded since the last None
        while True:
            item = self._next(held_since)
            if item is _END:
                break
            if item is None:  # every line queued is parsed
                complete = self._drained_at
            elif type(item) is DeadLetter:
                complete = float("-inf")
            else:
                complete = item[3]
            out = []
            # No call waits less than join_wait after back-pressure ended: its other half may
            # have been held back by it. Release first, so a half received late is not joined.
            if complete >= check_at:
                if complete >= self._pressure_end + join_wait:
                    out = decoder.release_waiting(complete)
                since = decoder.waiting_since()  # also forgets the times of released calls
                check_at = (complete if since is None else since) + join_wait
            if type(item) is tuple:
                out += decoder.feed(item[0], item[1], item[2])
            elif item is not None:
                out.append(item)
            for event in out:
                if type(event) is DeadLetter:
                    counters.dead_letters += 1
                elif held_since is None:
                    held_since = clock()
                yield event
            if item is None or (held_since is not None
                                and clock() - held_since >= self.batch_wait):
                held_since = None
                yield None  # process what is held now
        self._queue.put(_END)  # a later iteration ends at once instead of waiting forever
        yield from decoder.flush()
        if self._failure is not None:
            raise RuntimeError("the socket audit listener failed") from self._failure

    def _next(self, held_since: float | None) -> object:
        """The next queued item; when caught up, None once something is due (see _timeout)."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            pass
        try:
            return self._queue.get(timeout=self._timeout(held_since, time.monotonic()))
        except queue.Empty:
            return None

    def _timeout(self, held_since: float | None, now: float) -> float:
        """How long to wait for the next line before acting on the clock: the held events'
        batch wait, a waiting call's join wait, or the idle tick, whichever ends first."""
        ends = [now + self.idle_tick_seconds]
        if held_since is not None:
            ends.append(held_since + self.batch_wait)
        since = self._decoder.waiting_since() if self.join_wait is not None else None
        if since is not None:
            ends.append(max(since, self._pressure_end) + self.join_wait)
        # at least 1 ms: what is due may wait on the server thread draining a backlog
        return max(0.001, min(ends) - now)

    def _serve(self, server: socket.socket, wake_in: socket.socket) -> None:
        """Server thread: accept, read and split lines until stop(); then end the stream."""
        connections: dict[socket.socket, _Connection] = {}
        put = self._queue.put
        with selectors.DefaultSelector() as selector:
            selector.register(server, selectors.EVENT_READ)
            selector.register(wake_in, selectors.EVENT_READ)
            try:
                while not self._stopping.is_set():
                    for key, _ in self._select(selector, connections):
                        sock = key.fileobj
                        if sock is server:
                            self._accept(server, selector, connections)
                        elif sock is not wake_in:
                            for item in self._read(sock, selector, connections):
                                self._put(item)
            except Exception as exc:  # re-raised in the iterating thread once it has drained
                log.exception("socket audit listener failed")
                self._failure = exc
            finally:
                for sock, conn in connections.items():
                    sock.close()
                    cut = conn.close()
                    if cut is not None:
                        put(cut)
                server.close()
                wake_in.close()
                put(_END)

    def _put(self, item: _Read) -> None:
        """Queue a line; when the queue is full, wait, and note the back-pressure: Vault's
        writes are held back too, so how late lines arrive says nothing about how late they
        were logged until everything held back has been read (see _select)."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._pressure_end = _UNDER_PRESSURE
            self._queue.put(item)

    def _select(self, selector: selectors.BaseSelector,
                connections: dict[socket.socket, _Connection]) -> list:
        """The sockets ready to read. Whenever none is, everything that arrived has been read:
        that time is noted for the consumer (``_drained_at``), at least every
        ``_HEARTBEAT_SECONDS`` while the stream is quiet. The consumer never takes its own clock
        for it: if this process was not scheduled for a while, lines may be waiting unread."""
        ready = selector.select(0)
        if ready:
            return ready
        now = time.monotonic()
        for conn in connections.values():
            conn.read_until = now
        self._drained_at = now
        if self._pressure_end == _UNDER_PRESSURE:
            self._pressure_end = now
        return selector.select(_HEARTBEAT_SECONDS)

    def _accept(self, server: socket.socket, selector: selectors.BaseSelector,
                connections: dict[socket.socket, _Connection]) -> None:
        try:
            sock, peer = server.accept()
        except OSError as exc:  # the client gave up before we got to it, or out of descriptors
            log.warning("socket audit: accept failed: %s", exc)
            return
        sock.setblocking(False)
        connections[sock] = _Connection(peer, self.max_line_bytes, self.counters)
        selector.register(sock, selectors.EVENT_READ)
        self.counters.connections += 1
        log.info("socket audit: connection from %s:%s", peer[0], peer[1])

    def _read(self, sock: socket.socket, selector: selectors.BaseSelector,
              connections: dict[socket.socket, _Connection]) -> list[_Read]:
        conn = connections[sock]
        try:
            data = sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return []
        except OSError as exc:  # reset by the peer: as good as a close
            log.info("socket audit: %s: %s", conn.origin, exc)
            data = b""
        if data:
            received = time.monotonic()
            complete = conn.read_until  # lines of this read may have arrived any time since
            if _drained(sock, len(data)):
                conn.read_until = received
            return conn.feed(data, received, complete)
        selector.unregister(sock)
        sock.close()
        del connections[sock]
        cut = conn.close()
        return [cut] if cut is not None else []


def _drained(sock: socket.socket, read: int) -> bool:
    """Whether a read of ``read`` bytes left the connection's kernel buffer empty."""
    if read < _RECV_BYTES:
        return True
    try:
        return not sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False  # the next read finds out what went wrong
