"""``secretscope replay --workers 2``: a replay on two processes with the findings of one.

The pipeline's state is not split by identity: peer groups, AppRole lineage and the detectors'
forest all span identities, so identity partitions would change findings
(``benchmarks/partition_quality.py`` measures by how much). It is split by stage instead, at
the one seam where nothing flows back:

* the **reader** process reads the files, parses and joins the audit entries, and measures each
  event's windows (``FeatureExtractor.observe_windows``: counts, distinct secrets, bursts,
  networks, lineage), which never depend on the baseline;
* this process derives the baseline features, learns, runs rules and detectors, triages and
  stores, as a one-process replay does, taking each event's windows from the reader
  (``FeatureExtractor.observe_relayed``).

Both processes look for idle identities at the same event times and keep the same identities
(the reader replays the runner's batching to know which identities a batch still holds), so
the findings are those of a one-process replay; ``tests/test_replay_split.py`` compares them.
Rows cross the pipe pickled in chunks; the pipe's buffer holds the reader back when the
pipeline falls behind, so memory stays bounded.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from secretscope.errors import EXIT_FAILURE, SecretscopeError
from secretscope.events import AccessEvent, DeadLetter
from secretscope.features import FeatureExtractor
from secretscope.sources.files import STDIN, ReplayCounters, _total_size, replay

_CHUNK = 512  # rows per message: large enough to amortise a send, small enough to stream
_PIPE_BYTES = 1 << 20  # the most an unprivileged process may ask for by default


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: its CPU affinity, within a cgroup's CPU quota when one is
    set (a container limited to one CPU sees every core of its host in its affinity)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota here
    return cores


def workers_for(asked: int | None) -> int:
    """Processes for a replay: as asked (more than 2 is 2), else 2 when two cores are usable
    and processes can be forked."""
    if asked is not None:
        return min(asked, 2)
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return 2 if usable_cores() >= 2 else 1


class ReaderFailed(SecretscopeError):
    """The reader process ended without finishing its input (killed, or out of memory)."""

    exit_status = EXIT_FAILURE


class RelayedCounters:
    """The reader's ``ReplayCounters`` as last reported, with the same attributes."""

    def __init__(self) -> None:
        self.lines = self.dead_letters = self.duplicates = self.self_tests = 0
        self.incomplete: list[str] = []
        self.unrecognised: list[str] = []
        self._fraction: float | None = None

    def update(self, report: tuple) -> None:
        (self.lines, self.dead_letters, self.duplicates, self.self_tests, self.incomplete,
         self.unrecognised, self._fraction) = report

    def fraction_done(self) -> float | None:
        return self._fraction


def _report(counters) -> tuple:
    return (counters.lines, counters.dead_letters, counters.duplicates, counters.self_tests,
            counters.incomplete, counters.unrecognised, counters.fraction_done())


def _end_with(parent: int) -> None:
    """The reader can block on its input (a pipe, stdin) where it would not notice that the
    pipeline's process is gone: have the kernel end it then (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # gone before the request took effect
        os._exit(1)


def _read(conn, parent: int, stdin: int | None, files: list[str], limits, join_timeout: float,
          settings) -> None:
    """The reader process: events with their windows, dead letters, and progress, in order."""
    from secretscope.runner import _fewer_collections

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pipeline's process handles Ctrl-C
    _end_with(parent)
    if stdin is not None:  # multiprocessing gave the reader /dev/null: the input is ours
        sys.stdin = io.TextIOWrapper(open(stdin, "rb"))
    counters = ReplayCounters(_total_size(files))
    try:
        extractor = FeatureExtractor.for_settings(settings)
        extractor.windows_only = True
        observe, pending = extractor.observe_windows, extractor._pending
        rows: list = []
        batch_size = settings.runner.batch_size
        held = 0  # events of the runner's current batch
        with _fewer_collections():
            for item in replay(files, limits, join_timeout, counters):
                if type(item) is AccessEvent:
                    rows.append((item, observe(item)))
                    held += 1
                    if held == batch_size:
                        # The runner derives a full batch before it observes the next: its
                        # identities are no longer pending (FeatureExtractor.expire_idle).
                        pending.clear()
                        held = 0
                else:
                    if item is None and held:
                        pending.clear()  # an idle source: the runner processes what it holds
                        held = 0
                    rows.append(item)
                if len(rows) >= _CHUNK:
                    conn.send_bytes(pickle.dumps(("rows", rows, _report(counters)),
                                                 pickle.HIGHEST_PROTOCOL))
                    rows = []
        conn.send_bytes(pickle.dumps(("end", rows, _report(counters)), pickle.HIGHEST_PROTOCOL))
    except BrokenPipeError:
        pass  # the pipeline's process ended first; it reports why
    except BaseException as exc:  # handed over whole, so the CLI names it as in one process
        try:
            payload = pickle.dumps(("error", exc, _report(counters)))
        except Exception:
            payload = pickle.dumps(("error", ReaderFailed(f"{type(exc).__name__}: {exc}"),
                                    _report(counters)))
        try:
            conn.send_bytes(payload)
        except OSError:
            pass
    finally:
        conn.close()


def _widen(conn) -> None:
    """A pipe holds 64 KiB by default, a fraction of one chunk of rows: a wider one lets the
    reader run a chunk or two ahead instead of waking the pipeline every few rows (Linux)."""
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), 1031, _PIPE_BYTES)  # F_SETPIPE_SZ
    except (ImportError, OSError):
        pass


class SplitReader:
    """The running reader process, as seen from the pipeline's."""

    def __init__(self, conn, process) -> None:
        self._conn = conn
        self._process = process
        self.counters = RelayedCounters()

    def items(self, relayed: deque) -> Iterator[AccessEvent | DeadLetter | None]:
        """The reader's items in order, for ``Pipeline.run``; each event's windows are put on
        ``relayed`` (the extractor's) as the event is yielded."""
        conn, counters, loads = self._conn, self.counters, pickle.loads
        while True:
            try:
                kind, rows, report = loads(conn.recv_bytes())
            except EOFError:
                self._process.join(5)
                raise ReaderFailed(f"the reader process ended before its input did "
                                   f"(exit code {self._process.exitcode})") from None
            counters.update(report)
            if kind == "error":
                raise rows
            for row in rows:
                if type(row) is tuple:
                    event, windows = row
                    relayed.append(windows)
                    yield event
                else:
                    yield row
            if kind == "end":
                return


@contextmanager
def split_replay(files: list[str], limits, join_timeout: float, settings):
    """Start the reader process over ``files`` and yield its :class:`SplitReader`; the reader
    is stopped on the way out, whatever happened."""
    ctx = multiprocessing.get_context("fork")  # the reader starts with this process's imports
    receive, send = ctx.Pipe(duplex=False)
    _widen(send)
    stdin = os.dup(0) if STDIN in files else None
    process = ctx.Process(
        target=_read, name="secretscope-reader", daemon=True,
        args=(send, os.getpid(), stdin, files, limits, join_timeout, settings))
    process.start()
    send.close()
    if stdin is not None:
        os.close(stdin)
    try:
        yield SplitReader(receive, process)
    finally:
        receive.close()
        if process.is_alive():
            process.terminate()
        process.join(5)


@contextmanager
def replay_source(files: list[str], settings, workers: int = 1):
    """The input of a replay of ``files`` on ``workers`` processes (1, or 2 and more for a
    reader process): yields ``(counters, attach)``, where ``attach(pipeline)`` returns the
    items for ``pipeline.run``. The reader is forked on entry: enter this before opening a store
    or starting a thread, so the reader holds neither."""
    from secretscope.parsers.limits import InputLimits

    limits = InputLimits(settings.input.max_record_bytes, settings.input.max_field_chars)
    join_timeout = settings.input.join_timeout_seconds
    if workers <= 1:
        counters = ReplayCounters(_total_size(files))
        yield counters, lambda pipeline: replay(files, limits, join_timeout, counters)
        return

    def attach(pipeline):
        pipeline.windows_relayed = True
        return reader.items(pipeline.extractor.relayed)

    with split_replay(files, limits, join_timeout, settings) as reader:
        yield reader.counters, attach
