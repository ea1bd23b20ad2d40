"""Command line: ``secretscope replay | simulate | evaluate | run | validate | train | alerts |
deliver | redrive``."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from secretscope.cli_config import config_app
from secretscope.errors import (EXIT_INPUT_INCOMPLETE, InputFormatError, SecretscopeError,
                                UsageError)
from secretscope.redact import mask_url

if TYPE_CHECKING:  # commands import what they use, so --version and --help start fast
    from secretscope.findings import Finding

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="secretscope: anomaly detection for secret-store audit logs.")


class _Stderr:
    """rich's console on stderr, imported at the first message: rich costs ~30 ms of start-up,
    before the first event, that a replay only needs for its closing lines."""

    _console = None

    def print(self, *args, **kwargs) -> None:
        if self._console is None:
            from rich.console import Console

            _Stderr._console = Console(stderr=True, soft_wrap=True)
        self._console.print(*args, **kwargs)


err = _Stderr()

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (default: the embedded one).")


class LogFormat(str, Enum):
    text = "text"
    json = "json"


LogFormatOpt = typer.Option(LogFormat.text, "--log-format",
                            help="Log lines as text, or as one JSON object per line.")
StoreOpt = typer.Option(None, "--store", help="SQLAlchemy URL, overrides store.url.")


def _print_version(value: bool) -> None:
    if value:
        from secretscope import __version__

        print(f"secretscope {__version__}")
        raise typer.Exit()


@app.callback()
def _global(version: bool = typer.Option(False, "--version", callback=_print_version,
                                         is_eager=True, help="Print the version and exit."),
            debug: bool = typer.Option(False, "--debug",
                                       help="On an error, print its traceback too (accepted "
                                       "anywhere on the command line).")) -> None:
    """secretscope: anomaly detection for secret-store audit logs."""


def _settings(config: Optional[Path], store: Optional[str]):
    from secretscope.config import load_settings

    overrides = {"store__url": store} if store else {}
    return load_settings(config, overrides_origin="--store", **overrides)


def _check_inputs(files: list[str]) -> None:
    for f in files:
        if f == "-":
            continue
        path = Path(f)
        if path.is_dir():
            raise UsageError(f"{f}: is a directory, not a file")
        if not path.is_file():
            raise UsageError(f"{f}: no such file")


def _check_audit_files(files: list[str], settings) -> None:
    """Refuse, before anything runs, a file that has lines but no audit record (a CSV file, a
    log of another kind): replaying it would only dead-letter every line."""
    from secretscope.parsers.limits import InputLimits
    from secretscope.sources.files import check_format

    limits = InputLimits(settings.input.max_record_bytes, settings.input.max_field_chars)
    for f in files:
        if f != "-":
            check_format(f, limits)


def _check_output(path: Optional[Path], option: str, creates_folder: bool = False) -> None:
    """An output file must be creatable: not a folder itself, and in a folder that exists (or,
    for commands that create their folder, that can be created)."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory, not a file")
    folder = path.absolute().parent
    if folder.is_dir():
        return
    if not creates_folder:
        raise UsageError(f"{option} {path}: folder {folder} does not exist")
    blocker = next(p for p in folder.parents if p.exists())
    if not blocker.is_dir():
        raise UsageError(f"{option} {path}: cannot create folder {folder}: {blocker} is a file")


def _run_replay(files: list[str], settings, alerts_out, quiet: bool,
                collect: dict[str, Finding] | None = None, workers: int = 1):
    """Replay ``files``; ``collect``, if given, receives the newest version of every finding.
    With ``workers`` of 2 or more, files are read in a second process
    (``secretscope.replay_split``); the findings are the same."""
    from secretscope.replay_split import replay_source
    from secretscope.runner import Pipeline, stderr_progress
    from secretscope.store import Store

    with ExitStack() as stack:
        counters, attach = stack.enter_context(replay_source(files, settings, workers))
        store = Store(settings.store.url, routes=settings.sinks,
                      outage_seconds=settings.store.outage_seconds)
        stack.callback(store.close)
        keep = collect.__setitem__ if collect is not None else None
        pipeline = Pipeline(settings, store=store, alerts_out=alerts_out,
                            on_version=keep and (lambda f: keep(f.id, f)))
        stats = pipeline.run(attach(pipeline), None if quiet else stderr_progress(counters))
    return stats, counters, pipeline


def _workers(asked: int | None) -> int:
    """Processes for replay and evaluate (``secretscope.replay_split.workers_for``)."""
    from secretscope.replay_split import workers_for

    return workers_for(asked)


def _console():
    """Wide enough for the findings table when output goes to a file or a CI log."""
    from rich.console import Console

    detected = Console()
    return detected if detected.is_terminal else Console(width=160)


def _print_findings(findings: list[Finding], limit: int = 25) -> None:
    console = _console()
    from rich.table import Table

    table = Table(title=f"{len(findings)} findings", show_lines=False)
    for col in ("time (UTC)", "severity", "identity", "what", "why"):
        table.add_column(col, overflow="fold")
    ranked = sorted(findings, key=lambda f: (-f.severity_id, f.time))
    for f in ranked[:limit]:
        why = "; ".join(f"{r.code}: {r.observed} (baseline {r.baseline})" for r in f.reasons[:3])
        table.add_row(f.time.strftime("%Y-%m-%d %H:%M:%S"), f.severity,
                      f.display_name or f.identity,
                      f"{f.trigger.operation} {f.trigger.secret} from {f.segment}", why)
    console.print(table)
    if len(findings) > limit:
        console.print(f"... and {len(findings) - limit} more (see the alerts file or store)")


@app.command()
def replay(
    files: list[str] = typer.Argument(..., metavar="FILE", help="Audit files (.gz accepted; '-' for stdin)."),
    alerts_out: Optional[Path] = typer.Option(None, "--alerts-out", help="Write OCSF findings here (JSONL)."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
    table: bool = typer.Option(True, "--table/--no-table", help="Print a table of findings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
    windows: Optional[Path] = typer.Option(None, "--windows", help="Change windows feed (JSONL), overrides triage.change_window_feed."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes: 1, or 2 to read and parse in a second process (same findings). Default: 2 when the machine has two cores or more; more than 2 is used as 2."),
) -> None:
    """Run the whole pipeline over audit files, in event-time order. Exit status 3: the run
    completed but an input file was cut short or corrupt (named on stderr)."""
    settings = _settings(config, store)
    _check_inputs(files + ([str(windows)] if windows else []))
    _check_audit_files(files, settings)
    _check_output(alerts_out, "--alerts-out")
    if windows:
        settings = settings.model_copy(update={"triage": settings.triage.model_copy(
            update={"change_window_feed": str(windows.resolve())})})
    collected: dict[str, Finding] = {}
    try:
        with ExitStack() as stack:
            out = stack.enter_context(open(alerts_out, "w")) if alerts_out else None
            stats, counters, pipeline = _run_replay(files, settings, out, quiet, collected,
                                                    _workers(workers))
    except OSError as exc:
        # inputs' read errors end as "input incomplete" and opens name their file, so an error
        # without a name is a write to the alerts file (a full disk): name it
        if exc.filename is None and alerts_out is not None:
            raise OSError(exc.errno, exc.strerror, str(alerts_out)) from exc
        raise
    if counters.unrecognised:  # stdin, which cannot be checked before it is read
        raise InputFormatError("; ".join(counters.unrecognised))
    err.print(f"replayed {counters.lines:,} lines -> {stats.events:,} calls in {stats.seconds:.1f}s "
              f"({stats.events_per_second:,.0f} calls/s"
              f"{', 2 processes' if pipeline.windows_relayed else ''}); {stats.findings:,} findings "
              f"({stats.updates:,} updates, {stats.closes:,} closed); "
              f"{stats.dead_letters:,} dead letters; {counters.duplicates:,} duplicate entries dropped"
              + (f"; {counters.self_tests:,} audit device self-tests dropped"
                 if counters.self_tests else "")
              + (f"; {stats.truncated_fields:,} fields cut" if stats.truncated_fields else ""))
    if table:
        _print_findings(list(collected.values()))
    if counters.incomplete:
        # the run completed, but on part of its input: say which, and exit non-zero for scripts
        err.print("input incomplete: " + "; ".join(counters.incomplete), markup=False,
                  highlight=False)
        raise typer.Exit(EXIT_INPUT_INCOMPLETE)


@app.command()
def simulate(
    out: Path = typer.Argument(..., metavar="OUT", help="Where to write the simulated Vault audit log (.gz ok)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Attack labels (JSONL); default OUT.labels.jsonl"),
    windows: Optional[Path] = typer.Option(None, "--windows", help="Expected-burst windows (rotations, deploys; JSONL); default OUT.windows.jsonl"),
    days: Optional[int] = typer.Option(None, min=1, max=366, help="Default 7 (default world), 14 (drift world)."),
    seed: int = typer.Option(7),
    calls: Optional[int] = typer.Option(None, "--calls", help="Scale the fleet to about this many calls."),
    attacks: bool = typer.Option(True, "--attacks/--no-attacks"),
    world: str = typer.Option("default", "--world", help="default, or drift: staging churn, migrations, reorganisations, home working, on-call, and the attacks that hide in them."),
) -> None:
    """Write a labelled, simulated Vault audit log of a company fleet."""
    from secretscope.simulate import WORLDS, simulate as run_simulation, world_spec

    if world not in WORLDS:
        raise typer.BadParameter(f"{world!r} is not one of {', '.join(WORLDS)}", param_hint="--world")
    labels = labels or out.with_name(out.name.removesuffix(".gz") + ".labels.jsonl")
    windows = windows or out.with_name(out.name.removesuffix(".gz") + ".windows.jsonl")
    for path, option in ((out, "OUT"), (labels, "--labels"), (windows, "--windows")):
        _check_output(path, option)
    try:
        spec = world_spec(world, days, seed, calls, attacks)
        summary = run_simulation(spec, out, labels, windows)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--days") from None
    classes = ", ".join(f"{k} {v}" for k, v in sorted(summary.episodes.items()))
    err.print(f"wrote {summary.calls:,} calls ({summary.lines:,} lines) to {out}; "
              f"{summary.attack_calls:,} attack calls in episodes: {classes or 'none'}; labels in {labels}; "
              f"change windows in {windows}")


@app.command()
def evaluate(
    log_file: Path = typer.Argument(..., metavar="LOG", help="Simulated audit log."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Labels (default LOG.labels.jsonl)."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = typer.Option("sqlite://", "--store", help="SQLAlchemy URL (default in-memory)."),
    windows: Optional[Path] = typer.Option(None, "--windows", help="Change windows feed (default LOG.windows.jsonl if present)."),
    use_windows: bool = typer.Option(True, "--use-windows/--no-windows", help="Let the change windows explain expected bursts."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes, as for replay (same figures)."),
) -> None:
    """Replay a labelled log; print recall per attack class, precision, false findings per 10k
    benign calls and detection delay. Incident updates count: an episode merged into a finding
    is detected at the time of the merge."""
    from secretscope.models.evaluation import evaluate_log
    from secretscope.runner import stderr_progress

    stem = log_file.name.removesuffix(".gz")
    labels = labels or log_file.with_name(stem + ".labels.jsonl")
    _check_inputs([str(log_file), str(labels)])
    settings = _settings(config, store)
    _check_audit_files([str(log_file)], settings)
    report = evaluate_log(log_file, settings, labels, windows,
                          None if quiet else stderr_progress(None), use_windows,
                          _workers(workers))
    from rich.table import Table

    table = Table(title="detection by attack class")
    for col in ("class", "episodes", "detected", "recall", "median delay", "findings/episode"):
        table.add_column(col)
    for c in report.classes:
        delay = f"{c.median_delay_seconds:.0f}s" if c.median_delay_seconds is not None else "-"
        table.add_row(c.attack_class, str(c.episodes), str(c.detected), f"{c.recall:.2f}", delay,
                      f"<= {c.max_findings}")
    console = _console()
    console.print(table)
    delay = report.median_delay_seconds
    console.print(
        f"recall {report.recall:.3f} | precision {report.precision:.3f} "
        f"({report.true_findings}/{report.findings} findings) | "
        f"false findings per 10k benign events {report.false_per_10k_benign:.2f} "
        f"({report.false_findings} over {report.benign_events:,} benign calls) | "
        f"median detection delay {'-' if delay is None else f'{delay:.0f}s'} | "
        f"at most {report.max_findings_per_episode} findings per episode")


@app.command()
def run(config: Path = typer.Option(..., "--config", "-c", help="Service config (YAML)."),
        log_format: LogFormat = LogFormatOpt) -> None:
    """The long-running service: Kafka audit topics (or Vault's socket audit device) in,
    findings to the store; with metrics.port set, /metrics, /livez and /readyz on that port."""
    from secretscope.config import load_settings
    from secretscope.logs import configure
    from secretscope.service import run_service

    configure(log_format.value)
    run_service(load_settings(config))


@app.command()
def validate(config: Optional[Path] = typer.Argument(None, metavar="CONFIG", help="Config file (default: embedded).")) -> None:
    """Check a config file, its rules, model files, change-window feed and sinks (credentials
    present, webhook secrets well-formed, CA files there); exit 2 with the problem if anything
    is invalid."""
    from secretscope.config import load_settings
    from secretscope.delivery.checks import sink_problems
    from secretscope.models.registry import build_detectors
    from secretscope.models.rules import load_rules
    from secretscope.suppression import Suppressions

    settings = load_settings(config)
    problems = sink_problems(settings.sinks, settings.base_dir)
    if problems:
        raise SecretscopeError(f"{config or 'embedded default config'}: {'; '.join(problems)}")
    rules = load_rules(settings.rules_dir())
    detectors = build_detectors(settings.detectors, settings.base_dir)
    suppressions = Suppressions.from_settings(settings)
    err.print(f"ok: {len(settings.segments)} segments, {len(rules)} rules, "
              f"{len(detectors)} detectors ({', '.join(d.name for d in detectors)}), "
              f"{suppressions.windows} change windows, {suppressions.allowlisted} allowlist "
              f"entries, {len(settings.sinks)} sinks")


def _utc_option(value: Optional[str], option: str) -> Optional[datetime]:
    if value is None:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option}: not an ISO date or time: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (.skops); the "
                             "manifest goes beside it as OUT.manifest.json."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
    since: Optional[str] = typer.Option(None, "--since", help="Only history from this time "
                                        "(ISO 8601; UTC if no offset)."),
    until: Optional[str] = typer.Option(None, "--until", help="Only history before this time."),
    max_rows: Optional[int] = typer.Option(None, "--max-rows", min=1,
                                           help="Use at most the newest N rows."),
    n_estimators: int = typer.Option(100, "--n-estimators", min=1, max=5000),
    contamination: str = typer.Option("auto", "--contamination",
                                      help="'auto' or a share in (0, 0.5]; only scikit-learn's "
                                      "own offset, the detector is calibrated."),
    min_history: int = typer.Option(50, "--min-history", min=0,
                                    help="Skip rows of identities with fewer baseline events."),
    min_rows: int = typer.Option(1000, "--min-rows", min=1, help="Refuse to train on fewer."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Train the IsolationForest detector on the feature history in the store."""
    from secretscope.models.batch import manifest_path, save_model, train_isolation_forest
    from secretscope.store import Store

    settings = _settings(config, store)
    _check_output(out, "--out", creates_folder=True)  # save_model creates it
    if contamination != "auto":
        try:
            share = float(contamination)
        except ValueError:
            share = -1.0
        if not 0.0 < share <= 0.5:
            raise UsageError(f"--contamination: 'auto' or a number in (0, 0.5], "
                             f"not {contamination!r}")
    window = _utc_option(since, "--since"), _utc_option(until, "--until")
    started = time.perf_counter()
    st = Store(settings.store.url, outage_seconds=settings.store.outage_seconds)
    try:
        frame = st.feature_history(*window, max_rows)
    finally:
        st.close()
    trained = train_isolation_forest(
        frame, n_estimators=n_estimators,
        contamination=contamination if contamination == "auto" else float(contamination),
        seed=seed, min_history=min_history, min_rows=min_rows)
    saved = save_model(trained, out)
    m = saved.manifest
    err.print(f"trained on {m['rows']:,} of {len(frame):,} history rows "
              f"({m['trained_from']} .. {m['trained_until']}) in "
              f"{time.perf_counter() - started:.1f}s; wrote {out} and {manifest_path(out)} "
              f"(sha256 {m['sha256'][:16]}...)")


class Verdict(str, Enum):
    tp = "tp"
    fp = "fp"


alerts_app = typer.Typer(help="Stored findings: list them (no sub-command) or label them.")
app.add_typer(alerts_app, name="alerts")
app.add_typer(config_app, name="config")


@alerts_app.callback(invoke_without_command=True)
def alerts(
    ctx: typer.Context,
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
    limit: int = typer.Option(20, min=1),
) -> None:
    """List the most recent stored findings, with analysts' labels."""
    ctx.obj = {"config": config, "store": store}
    if ctx.invoked_subcommand is not None:
        return
    from secretscope.store import Store

    from secretscope.delivery.outbox import Outbox, format_states

    settings = _settings(config, store)
    st = Store(settings.store.url, outage_seconds=settings.store.outage_seconds)
    try:
        rows = st.recent_findings(limit)
        verdicts = st.labels_of(r["finding_info"]["uid"] for r in rows)
        delivery = Outbox(st).states(r["finding_info"]["uid"] for r in rows)
    finally:
        st.close()
    from rich.table import Table

    table = Table(title=f"latest {len(rows)} findings in {mask_url(settings.store.url)}")
    for col in ("id", "severity", "identity", "title", "delivery", "label"):
        table.add_column(col, overflow="fold")
    for r in rows:
        uid = r["finding_info"]["uid"]
        table.add_row(uid, r["severity"], r["actor"]["user"]["name"] or r["actor"]["user"]["uid"],
                      r["finding_info"]["title"], format_states(delivery.get(uid, {})),
                      verdicts.get(uid, ""))
    _console().print(table)


@alerts_app.command("label")
def alerts_label(
    ctx: typer.Context,
    finding_id: str = typer.Argument(..., metavar="FINDING_ID", help="Finding id (finding_info.uid)."),
    verdict: Verdict = typer.Argument(..., metavar="tp|fp", help="tp (true positive) or fp (false positive)."),
    note: str = typer.Option("", "--note", help="Why; kept with the label."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Label a stored finding a true or false positive (a new label replaces the old one)."""
    from secretscope.store import Store

    group = ctx.obj or {}
    settings = _settings(config or group.get("config"), store or group.get("store"))
    st = Store(settings.store.url, outage_seconds=settings.store.outage_seconds)
    try:
        identity = st.label_finding(finding_id, verdict.value, note)
    finally:
        st.close()
    err.print(f"labelled {finding_id} ({identity}) {verdict.value}")


def _set_status(ctx: typer.Context, finding_id: str, status: str, note: str,
                config: Optional[Path], store: Optional[str]) -> None:
    from secretscope.store import Store

    group = ctx.obj or {}
    settings = _settings(config or group.get("config"), store or group.get("store"))
    st = Store(settings.store.url, routes=settings.sinks,
               outage_seconds=settings.store.outage_seconds)
    try:
        version = st.set_status(finding_id, status, note)
    finally:
        st.close()
    done = "acknowledged" if status == "ack" else "closed"
    err.print(f"{done} {finding_id} (version {version})")


@alerts_app.command("ack")
def alerts_ack(
    ctx: typer.Context,
    finding_id: str = typer.Argument(..., metavar="FINDING_ID", help="Finding id (finding_info.uid)."),
    note: str = typer.Option("", "--note", help="Kept with the new version (OCSF comment)."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Acknowledge a finding: a new version with status In Progress, sent to the sinks."""
    _set_status(ctx, finding_id, "ack", note, config, store)


@alerts_app.command("close")
def alerts_close(
    ctx: typer.Context,
    finding_id: str = typer.Argument(..., metavar="FINDING_ID", help="Finding id (finding_info.uid)."),
    note: str = typer.Option("", "--note", help="Kept with the Close version (OCSF comment)."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Close a finding: a Close version (status Resolved), sent to the sinks; later firings of
    the identity open a new finding."""
    _set_status(ctx, finding_id, "close", note, config, store)


@app.command()
def deliver(
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
    once: bool = typer.Option(False, "--once", help="Try everything due now once, then exit."),
    log_format: LogFormat = LogFormatOpt,
) -> None:
    """Route the stored findings to the sinks of the config (their filters decide which), then
    send them (retrying, dead-lettering). Prints what is left per sink, or why nothing is. With
    metrics.port set, /metrics, /livez and /readyz on that port."""
    from prometheus_client import REGISTRY  # the worker's metrics are on it

    from secretscope.delivery.routing import routes_of
    from secretscope.delivery.sinks import build_sink
    from secretscope.health import Readiness, address, serve
    from secretscope.logs import configure
    from secretscope.store import Store
    from secretscope.store_retry import StoreUnavailableError

    global _json_status

    configure(log_format.value)
    _json_status = log_format is LogFormat.json
    settings = _settings(config, store)
    if not settings.sinks:
        where = config or "the embedded default config"
        raise SecretscopeError(f"deliver: no sinks configured in {where}: name them under "
                               "sinks: in the file given with --config (see docs/delivery.md)")
    # The worker waits a store outage out however long it lasts; a stop request (SIGTERM,
    # SIGINT) ends that wait as it ends the delivery loop.
    stop = threading.Event()
    if not once:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        st = Store(settings.store.url, routes=settings.sinks,
                   outage_seconds=settings.store.outage_seconds if once else None,
                   stop=None if once else stop)
    except StoreUnavailableError:
        if stop.is_set():
            _say("stopped while waiting for the store")
            return
        raise
    sinks: dict = {}
    ops_server = None
    try:
        for s in settings.sinks:
            sinks[s.name] = build_sink(s, settings.base_dir)
        readiness = Readiness()
        readiness.set_store(st)
        ops_server = serve(*address(settings), REGISTRY, readiness)
        worker = _delivery_worker(st, sinks, settings.delivery, routes_of(settings.sinks))
        queued = worker.route()
        if any(queued.values()):
            _say("routed " + ", ".join(f"{n:,} finding versions to {k}"
                                       for k, n in queued.items() if n))
        if once:
            _deliver_once(worker)
        else:
            _deliver_until_stopped(worker, stop)
    except StoreUnavailableError:
        if not stop.is_set():
            raise
        _say("stopped while waiting for the store")
    finally:
        if ops_server is not None:
            ops_server.close()
        for sink in sinks.values():
            sink.close()
        st.close()


_status_log = logging.getLogger("secretscope.deliver")
_json_status = False  # set by --log-format json: status lines become log records too


def _say(line: str) -> None:
    """A status line for the operator: plain text, or with --log-format json an INFO record
    (so every line on stderr is one JSON object)."""
    if _json_status:
        _status_log.setLevel(logging.INFO)
        _status_log.info(line)
    else:
        err.print(line, markup=False, highlight=False)


def _delivery_worker(st, sinks: dict, d, routes):
    from secretscope.delivery.retry import RetryPolicy
    from secretscope.delivery.worker import DeliveryWorker

    policy = RetryPolicy(d.retry_base_seconds, d.retry_cap_seconds, d.retry_budget_seconds)
    return DeliveryWorker(st, sinks, policy, poll_seconds=d.poll_seconds, routes=routes)


def _deliver_once(worker) -> None:
    """Each delivery due at the start is tried once; then a line per sink on what is left."""
    from secretscope.delivery.backlog import backlog, explain

    started = time.time()
    total, seen = {"delivered": 0, "retried": 0, "dead-lettered": 0}, set()
    while True:
        done = worker.run_once(due_by=started)
        total["delivered"] += done.delivered
        total["retried"] += done.retried
        total["dead-lettered"] += done.dead_lettered
        if not done.attempted - seen:
            break
        seen |= done.attempted
    _say("; ".join(f"{v:,} {k}" for k, v in total.items()))
    for line in explain(backlog(worker.store, worker.routes), datetime.now(timezone.utc)):
        _say(line)


def _deliver_until_stopped(worker, stop: threading.Event) -> None:
    from secretscope.delivery.backlog import backlog, explain

    for line in explain(backlog(worker.store, worker.routes), datetime.now(timezone.utc)):
        _say(line)
    worker.run(stop)


@app.command()
def redrive(
    sink: Optional[str] = typer.Option(None, "--sink", help="Only this sink's dead letters."),
    finding: Optional[str] = typer.Option(None, "--finding", help="Only this finding's."),
    all_: bool = typer.Option(False, "--all", help="Every dead letter."),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Move delivery dead letters back to the outbox (attempts reset) for the next delivery.
    A --sink that neither the config nor the dead letters name is an error (exit 2)."""
    from secretscope.delivery.outbox import Outbox
    from secretscope.store import Store

    if not (sink or finding or all_):
        raise SecretscopeError("redrive: choose --sink NAME, --finding ID or --all")
    settings = _settings(config, store)
    st = Store(settings.store.url)
    try:
        outbox = Outbox(st)
        if sink is not None:
            _known_sink(sink, [s.name for s in settings.sinks], outbox.counts(), config)
        moved = outbox.redrive(sink=sink, finding_id=finding)
    finally:
        st.close()
    print(f"redriven {moved} dead letter{'' if moved == 1 else 's'}")


def _known_sink(name: str, configured: list[str], counts: dict, config: Optional[Path]) -> None:
    """A typo in --sink would redrive nothing and say so quietly: name what would be valid."""
    dead = sorted(k for k, c in counts.items() if c.get("dead"))
    if name in configured or name in dead:
        return
    where = config or "the embedded default config"
    raise SecretscopeError(
        f"redrive: no sink named {name!r}: {where} names "
        f"{', '.join(configured) if configured else 'no sinks'}, and "
        + (f"the dead letters are for {', '.join(dead)}" if dead else "there are no dead letters"))


def main(argv: Optional[list[str]] = None) -> None:
    from secretscope.cli_errors import run as run_cli, take_debug
    from secretscope.redact import RedactFilter

    debug, args = take_debug(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactFilter())
    sys.exit(run_cli(app, args, debug))
