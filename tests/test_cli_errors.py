"""Wrong invocations and broken surroundings, through the real `secretscope` command.

Each ends with its documented exit status (docs/errors.md) and exactly one stderr line
``error: ...`` naming the cause: no traceback unless --debug is given, no password ever.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from secretscope.cli_errors import describe
from secretscope.errors import ConfigError
from secretscope.models.rules import compile_rule
from secretscope.redact import RedactFilter, mask_url, redact

from conftest import ROOT, SAMPLES
from postgres_server import free_port, postgres_url  # noqa: F401
from test_store_postgres import fresh_schema

PASSWORD = "Pw-7c1d-NOT-FOR-EYES"
REFERENCE = SAMPLES / "vault_audit_reference.jsonl"
RULES = ROOT / "config" / "rules"
USAGE, FAILURE = 2, 1


def secretscope(*args, cwd: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("secretscope") or str(ROOT / ".venv" / "bin" / "secretscope")
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "secretscope"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRETSCOPE_")}
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, input=stdin,
                          capture_output=True, env=env, timeout=60)


def the_error_line(proc: subprocess.CompletedProcess, logs_allowed: bool = False) -> str:
    """The one ``error:`` line; stderr holds nothing else (but log lines, where allowed)."""
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert "Traceback" not in err + out
    assert PASSWORD not in err + out
    lines = err.splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0], err
    others = lines[:-1]
    if logs_allowed:
        assert all(ln.startswith(("WARNING ", "INFO ")) for ln in others), err
    else:
        assert others == [], err
    return errors[0]


def write_config(tmp_path: Path, name: str, doc: dict) -> Path:
    doc = {"rules": {"directory": str(RULES)}, **doc}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def write_text(path: Path, content: str) -> Path:
    path.write_text(content)
    return path


def bad_rule_config(tmp_path: Path, clause: dict) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    rule = yaml.safe_load((RULES / "root-token-use.yaml").read_text())
    rule["when"] = [clause]
    (rules / "typed.yaml").write_text(yaml.safe_dump(rule))
    return write_config(tmp_path, "typed.yaml", {"rules": {"directory": str(rules)}})


@dataclass(frozen=True)
class Case:
    """A wrong invocation: ``args(tmp_path)`` builds the command line; ``cause`` must appear in
    the error line."""

    args: Callable[[Path], list]
    status: int
    cause: Callable[[Path], str] | str
    stdin: bytes | None = None
    logs_allowed: bool = False


def closed_port_config(tmp_path: Path) -> Path:
    url = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:{free_port()}/audit"
    return write_config(tmp_path, "down.yaml", {"store": {"url": url, "outage_seconds": 1}})


CSV = b"time,user,path\n2026-03-04T10:00:00Z,alice,secret/data/app\n"


def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "x.csv"
    path.write_bytes(CSV)
    return path


CASES = {
    "missing file": Case(lambda t: ["replay", t / "nope.jsonl"], USAGE, "nope.jsonl: no such file"),
    "directory as a file": Case(lambda t: ["replay", t], USAGE,
                                lambda t: f"{t}: is a directory, not a file"),
    "csv file": Case(lambda t: ["replay", csv_file(t)], USAGE,
                     lambda t: f"{t / 'x.csv'}: not an audit log: none of its 2 lines is a "
                     "record of a format secretscope reads (vault); first refused: "
                     f"{t / 'x.csv'}:1: not_json"),
    "csv on stdin": Case(lambda t: ["replay", "-"], USAGE,
                         "stdin: not an audit log: none of its 2 lines", stdin=CSV,
                         logs_allowed=True),
    "unsupported format": Case(lambda t: ["replay", SAMPLES / "cloudtrail_secretsmanager.jsonl"],
                               USAGE, "cloudtrail audit records are recognized but not "
                               "supported yet"),
    "a good file and a csv": Case(
        lambda t: ["replay", REFERENCE, csv_file(t)], USAGE,
        lambda t: f"{t / 'x.csv'}: not an audit log"),
    "store url not a url": Case(lambda t: ["replay", REFERENCE, "--store", "nonsense"], USAGE,
                                "store URL 'nonsense' is not a database URL"),
    "store driver not installed": Case(
        lambda t: ["replay", REFERENCE, "--store", f"mysql://app:{PASSWORD}@127.0.0.1/audit"],
        USAGE, "store URL 'mysql://app:***@127.0.0.1/audit': the driver for 'mysql' is not "
        "installed"),
    "store dialect unknown": Case(lambda t: ["alerts", "--store", "nosuchdb://h/x"], USAGE,
                                  "unknown database 'nosuchdb'"),
    "store port not a number": Case(
        lambda t: ["alerts", "--store", f"postgresql://app:{PASSWORD}@h:port/db"], USAGE,
        "store URL 'postgresql://app:***@h:port/db' is not a database URL"),
    "sqlite file in a missing folder": Case(
        lambda t: ["alerts", "--store", f"sqlite:///{t}/no/such/dir/s.db"], USAGE,
        lambda t: f"folder {t}/no/such/dir does not exist"),
    "sqlite file is a directory": Case(lambda t: ["alerts", "--store", f"sqlite:///{t}"], USAGE,
                                       lambda t: f"{t} is a directory, not a database file"),
    "store unreachable": Case(lambda t: ["replay", REFERENCE, "-q", "--config",
                                         closed_port_config(t)], FAILURE,
                              "unreachable for 1.0 s (limit store.outage_seconds=1)",
                              logs_allowed=True),
    "store unreachable for alerts": Case(lambda t: ["alerts", "--config", closed_port_config(t)],
                                         FAILURE, "app:***@127.0.0.1", logs_allowed=True),
    "alerts-out folder missing": Case(
        lambda t: ["replay", REFERENCE, "--alerts-out", t / "out" / "a.jsonl"], USAGE,
        lambda t: f"--alerts-out {t / 'out' / 'a.jsonl'}: folder {t / 'out'} does not exist"),
    "alerts-out is a directory": Case(lambda t: ["replay", REFERENCE, "--alerts-out", t], USAGE,
                                      lambda t: f"--alerts-out {t}: is a directory"),
    "alerts-out disk full": Case(lambda t: ["replay", REFERENCE, "-q", "--no-table",
                                            "--store", "sqlite://", "--alerts-out", "/dev/full"],
                                 FAILURE, "/dev/full: No space left on device"),
    "train out folder under a file": Case(
        lambda t: ["train", "--out", csv_file(t) / "models" / "m.skops"], USAGE,
        lambda t: f"cannot create folder {t / 'x.csv' / 'models'}: {t / 'x.csv'} is a file"),
    "train out is a directory": Case(lambda t: ["train", "--out", t], USAGE,
                                     lambda t: f"--out {t}: is a directory, not a file"),
    "rule compares text with a number": Case(
        lambda t: ["replay", REFERENCE, "--config",
                   bad_rule_config(t, {"field": "path", "gte": 5})],
        USAGE, "typed.yaml: when[0]: 'gte' does not apply to 'path', which holds text"),
    "rule compares a number with text": Case(
        lambda t: ["replay", REFERENCE, "--config",
                   bad_rule_config(t, {"field": "denied_count_5m", "equals": "many"})],
        USAGE, "'denied_count_5m' holds a number, but 'equals' compares it with str 'many'"),
    "simulate into a missing folder": Case(
        lambda t: ["simulate", t / "out" / "sim.log", "--days", "1"], USAGE,
        lambda t: f"OUT {t / 'out' / 'sim.log'}: folder {t / 'out'} does not exist"),
    "evaluate a csv file": Case(lambda t: ["evaluate", csv_file(t), "--labels", csv_file(t)],
                                USAGE, "x.csv: not an audit log"),
    "evaluate with labels that are not labels": Case(
        lambda t: ["evaluate", REFERENCE, "--labels", csv_file(t)], USAGE,
        lambda t: f"{t / 'x.csv'}:1: not a label line of `secretscope simulate`"),
    "config not yaml": Case(lambda t: ["validate", write_text(t / "c.yaml", "store: [\n")], USAGE,
                            "c.yaml: not valid YAML: while parsing a flow node"),
    "config missing": Case(lambda t: ["replay", REFERENCE, "--config", t / "none.yaml"], USAGE,
                           "none.yaml: cannot read config: No such file or directory"),
    "config is a directory": Case(lambda t: ["validate", t], USAGE,
                                  "cannot read config: Is a directory"),
    "unknown sink": Case(lambda t: ["redrive", "--sink", "nope", "--store", "sqlite://"], USAGE,
                         "redrive: no sink named 'nope'"),
    "option out of range": Case(lambda t: ["alerts", "--limit", "0"], USAGE,
                                "Invalid value for '--limit'"),
    "option not a number": Case(lambda t: ["train", "--out", "m.skops", "--contamination", "lots"],
                                USAGE, "--contamination: 'auto' or a number in (0, 0.5]"),
    "option not a date": Case(lambda t: ["train", "--out", "m.skops", "--since", "last week"],
                              USAGE, "--since: not an ISO date or time: 'last week'"),
    "option not a choice": Case(lambda t: ["simulate", "o.log", "--world", "mars"], USAGE,
                                "'mars' is not one of default, drift"),
    "no such command": Case(lambda t: ["replya", REFERENCE], USAGE,
                            "No such command 'replya'. Did you mean 'replay'? (usage: "
                            "secretscope [OPTIONS] COMMAND"),
    "no such option": Case(lambda t: ["replay", REFERENCE, "--frobnicate"], USAGE,
                           "No such option: --frobnicate (usage: secretscope replay [OPTIONS]"),
    "missing argument": Case(lambda t: ["replay"], USAGE,
                             "see 'secretscope replay --help'"),
}


@pytest.mark.parametrize("name", CASES)
def test_wrong_invocation_gives_one_error_line_and_its_status(tmp_path, name):
    case = CASES[name]
    proc = secretscope(*case.args(tmp_path), cwd=tmp_path, stdin=case.stdin)
    line = the_error_line(proc, case.logs_allowed)
    cause = case.cause(tmp_path) if callable(case.cause) else case.cause
    assert cause in line
    assert proc.returncode == case.status, line


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback_too(tmp_path, where):
    args = ["replay", REFERENCE, "--store", f"mysql://app:{PASSWORD}@127.0.0.1/audit"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    proc = secretscope(*args, cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == USAGE
    assert "Traceback (most recent call last)" in err and "store_url.py" in err
    assert err.splitlines()[-1].startswith("error: store URL 'mysql://app:***@")
    assert PASSWORD not in err


def test_without_debug_the_same_failure_has_no_traceback(tmp_path):
    proc = secretscope("replay", REFERENCE, "--store", "nosuchdb://h/x", cwd=tmp_path)
    assert proc.stderr.decode().splitlines() == [
        "error: store URL 'nosuchdb://h/x': unknown database 'nosuchdb' (for example "
        "sqlite:///secretscope.db or postgresql+psycopg://user@host:5432/database)"]


def test_empty_file_is_an_empty_log_not_an_error(tmp_path):
    (tmp_path / "empty.log").write_bytes(b"")
    proc = secretscope("replay", tmp_path / "empty.log", "--store", "sqlite://", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert b"replayed 0 lines" in proc.stderr


def test_bare_command_prints_the_help_and_exits_2_but_help_exits_0(tmp_path):
    bare, asked = secretscope(cwd=tmp_path), secretscope("--help", cwd=tmp_path)
    assert (bare.returncode, asked.returncode) == (USAGE, 0)
    assert b"--debug" in asked.stdout
    assert b"replay" in bare.stdout and bare.stderr == b""


# --- rules: type errors caught when they load, by validate -----------------------------------


BAD_CLAUSES = {
    "text field, number": ({"field": "operation", "equals": 5},
                           "'operation' holds text, but 'equals' compares it with int 5"),
    "text field, order": ({"field": "path", "gte": 5}, "'gte' does not apply to 'path'"),
    "number field, text": ({"field": "history_days", "gte": "1"},
                           "'history_days' holds a number, but 'gte' compares it with str '1'"),
    "number field, prefix": ({"field": "requests_count_1h", "prefix": "1"},
                             "'prefix' does not apply to 'requests_count_1h', which holds "
                             "a number"),
    "number field, true": ({"field": "network_unfamiliar", "equals": True},
                           "compares it with bool True"),
    "flag field, number": ({"field": "is_login", "in": [1]}, "'is_login' holds true or false"),
    "list field": ({"field": "policies", "in": ["root"]}, "is_root tests for the root policy"),
    "regex on a number": ({"field": "idle_days", "matches": "^1"}, "'matches' does not apply"),
    "unhashable member": ({"field": "operation", "in": [["read"]]}, "compares it with ['read']"),
}


@pytest.mark.parametrize("name", BAD_CLAUSES)
def test_validate_catches_a_rule_type_error(tmp_path, name):
    clause, why = BAD_CLAUSES[name]
    proc = secretscope("validate", bad_rule_config(tmp_path, clause), cwd=tmp_path)
    line = the_error_line(proc)
    assert proc.returncode == USAGE
    assert line.startswith(f"error: {tmp_path / 'rules' / 'typed.yaml'}: when[0]: ")
    assert why in line


@pytest.mark.parametrize("clause", [
    {"field": "operation", "in": ["read", "list"]}, {"field": "history_days", "gte": 1},
    {"field": "policy_writer_role", "equals": 0.0}, {"field": "secret_access", "equals": True},
    {"field": "path", "prefix": ["sys/audit", "sys/policy"]}, {"field": "ts", "lte": 2e9},
])
def test_validate_accepts_well_typed_clauses(tmp_path, clause):
    proc = secretscope("validate", bad_rule_config(tmp_path, clause), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(b"ok: ")


def test_every_shipped_rule_passes_the_type_checks():
    for path in sorted(RULES.glob("*.yaml")):
        compile_rule(yaml.safe_load(path.read_text()), str(path))


def test_a_rule_type_error_names_the_file_and_clause():
    doc = yaml.safe_load((RULES / "root-token-use.yaml").read_text())
    doc["when"] = [{"field": "is_root", "equals": True}, {"field": "path", "gte": 5}]
    with pytest.raises(ConfigError, match=r"^r\.yaml: when\[1\]: 'gte' does not apply to 'path'"):
        compile_rule(doc, "r.yaml")


# --- passwords masked wherever a URL is shown ------------------------------------------------


@pytest.fixture
def password_store(postgres_url):  # noqa: F811
    """A fresh schema on the test PostgreSQL, reached with the server's URL."""
    with fresh_schema(postgres_url) as url:
        yield make_url(url)


@pytest.mark.postgres
def test_alerts_table_title_masks_the_store_password(tmp_path, password_store):
    url = password_store.render_as_string(hide_password=False)
    password = password_store.password
    proc = secretscope("alerts", "--store", url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode() + proc.stderr.decode()
    # the test server's password is also its user and database name: look for it as a password
    assert f":{password}@" not in out
    assert f"{password_store.username}:***@" in " ".join(out.split())


@pytest.mark.postgres
@pytest.mark.parametrize("change, cause", [
    ({"password": PASSWORD}, "password authentication failed"),
    ({"database": "no_such_db"}, 'database "no_such_db" does not exist'),
])
def test_a_store_that_refuses_fails_at_once(tmp_path, postgres_url, change, cause):  # noqa: F811
    url = make_url(postgres_url).set(**change).render_as_string(hide_password=False)
    # the default store.outage_seconds is 300: the 60 s timeout fails the test if it waits
    proc = secretscope("alerts", "--store", url, cwd=tmp_path)
    line = the_error_line(proc)
    assert proc.returncode == FAILURE
    assert line.startswith("error: store: OperationalError: connection failed: ") and cause in line


def test_mask_url_hides_passwords_and_credential_parameters():
    assert mask_url(f"postgresql+psycopg://app:{PASSWORD}@db:5432/a?sslmode=require") == \
        "postgresql+psycopg://app:***@db:5432/a?sslmode=require"
    assert mask_url(f"https://bot:{PASSWORD}@siem.example/hook?token={PASSWORD}&team=7") == \
        "https://bot:***@siem.example/hook?token=***&team=7"
    assert mask_url(f"postgresql://app:p@ss:{PASSWORD}@db/a") == "postgresql://app:***@db/a"
    assert mask_url("postgresql://app@db/a?password=x1&sig=y2") == \
        "postgresql://app@db/a?password=***&sig=***"
    assert mask_url("https://siem.example:8088/services/collector") == \
        "https://siem.example:8088/services/collector"
    assert redact(f"host=db password={PASSWORD} dbname=a") == "host=db password=*** dbname=a"


def test_log_records_and_their_tracebacks_are_masked():
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "cannot reach %s", (
        f"kafka://user:{PASSWORD}@127.0.0.1:9092",), None)
    try:
        raise ConnectionError(f"refused by https://u:{PASSWORD}@hooks.example/x")
    except ConnectionError:
        record.exc_info = sys.exc_info()
    assert RedactFilter().filter(record)
    shown = logging.Formatter().format(record)
    assert PASSWORD not in shown
    assert "kafka://user:***@127.0.0.1:9092" in shown and "https://u:***@hooks.example" in shown


def test_an_unexpected_exception_is_an_internal_error_with_status_70():
    status, message = describe(KeyError("features"))
    assert status == 70
    assert message == ("internal error, please report it: KeyError: 'features' (rerun with "
                       "--debug for the traceback)")


def test_a_failing_surrounding_library_is_a_runtime_failure():
    from sqlalchemy.exc import OperationalError

    status, message = describe(OperationalError("SELECT 1", {}, Exception("disk I/O error")))
    assert (status, message) == (1, "store: OperationalError: disk I/O error")
