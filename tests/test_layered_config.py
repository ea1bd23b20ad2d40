"""Layered configuration: --config merged over the embedded default, paths resolved against the
file that names them, SECRETSCOPE_STORE_URL, `config show` provenance, the generated reference."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from secretscope.config import (DEFAULT_CONFIG, ENV_STORE_URL, Settings, load_settings,
                                merge)
from secretscope.configtypes import field_is_path
from secretscope.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "secretscope"]
DEFAULT = load_settings(env={})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def secretscope(*args, env: dict[str, str] | None = None, cwd: Path | None = None):
    environ = {k: v for k, v in os.environ.items() if k != ENV_STORE_URL}
    return subprocess.run([*EXE, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**environ, **(env or {})}, cwd=cwd)


# --- merge semantics --------------------------------------------------------------------------------

def test_merge_is_key_by_key_for_mappings_and_whole_for_lists():
    origins: dict = {}
    base = merge({}, {"a": {"x": 1, "y": [1, 2]}, "l": [{"n": 1}, {"n": 2}]}, "default", origins)
    out = merge(base, {"a": {"y": [3]}, "l": [{"n": 9}], "b": {"z": 0}}, "mine.yaml", origins)
    assert out == {"a": {"x": 1, "y": [3]}, "l": [{"n": 9}], "b": {"z": 0}}
    assert origins == {("a",): "default", ("a", "y"): "mine.yaml", ("l",): "mine.yaml",
                       ("b",): "mine.yaml"}


def test_a_mapping_key_keeps_every_other_default(tmp_path):
    s = load_settings(write(tmp_path / "c.yaml", "triage: {update_minutes: 9}\n"), env={})
    assert s.triage.update_minutes == 9
    assert s.triage.model_copy(update={"update_minutes": DEFAULT.triage.update_minutes}) \
        == DEFAULT.triage
    # the rest of the default layer, lists included, is untouched: the default's detectors with
    # the measures default.yaml sets (not the model's), its segments and environments
    assert s.detectors == DEFAULT.detectors and len(s.detectors) == 2
    assert s.detectors[1].measures == ("secrets_distinct_1h", "denied_count_5m")
    assert s.segments == DEFAULT.segments and len(s.segments) == 8
    assert s.environments == DEFAULT.environments and s.environments


def test_a_list_given_replaces_the_default_list_whole(tmp_path):
    s = load_settings(write(tmp_path / "c.yaml", "segments: [{name: lab, cidr: 10.9.0.0/16}]\n"
                            "detectors: []\n"), env={})
    assert [(g.name, g.cidr) for g in s.segments] == [("lab", "10.9.0.0/16")]
    assert s.detectors == ()
    assert s.environments == DEFAULT.environments  # a list not given stays the default's


def test_the_readme_isolationforest_snippet_keeps_the_default_segments(tmp_path):
    """The README's snippet used as a whole file: only `detectors:` with an isolationforest."""
    path = write(tmp_path / "cfg" / "iforest.yaml", """
detectors:
  - type: isolationforest
    model_path: models/iforest.skops   # relative to the config file
    threshold: 0.9999
    high_threshold: 1.0
    severity_at_threshold: low
    min_history: 50
""")
    s = load_settings(path, env={})
    assert [d.type for d in s.detectors] == ["isolationforest"]
    assert s.segments == DEFAULT.segments and s.environments == DEFAULT.environments
    assert s.rules_dir() == DEFAULT_CONFIG.parent / "rules"
    assert s.detectors[0].model_path == str(tmp_path / "cfg" / "models" / "iforest.skops")
    assert s.triage == DEFAULT.triage and s.input == DEFAULT.input


def test_a_file_with_only_sinks_validates(tmp_path):
    """It used to fail on the rules directory (relative to the user's file, and missing)."""
    path = write(tmp_path / "sinks.yaml", "sinks:\n  - {type: webhook, name: soar, "
                 "url: 'https://soar.example/hook', secret: {env: HOOK_SECRET}}\n")
    proc = secretscope("validate", path, cwd=tmp_path,
                       env={"HOOK_SECRET": "whsec_" + base64.b64encode(bytes(32)).decode()})
    rules = len(list((DEFAULT_CONFIG.parent / "rules").glob("*.yaml")))
    assert proc.returncode == 0, proc.stderr
    assert f"8 segments, {rules} rules, 2 detectors (hst, baseline)" in proc.stderr


# --- paths ------------------------------------------------------------------------------------------

def test_relative_paths_resolve_against_the_file_that_names_them(tmp_path, monkeypatch):
    mine = tmp_path / "etc" / "secretscope"
    write(mine / "svc.yaml", """
rules: {directory: my-rules}
detectors: [{type: isolationforest, model_path: ../models/if.skops}]
triage: {change_window_feed: feeds/windows.jsonl}
kafka: {security_protocol: SASL_SSL, sasl_mechanism: PLAIN, sasl_username: u,
        sasl_password_file: kafka.pass, ssl_cafile: /abs/ca.pem, ssl_certfile: tls/c.pem}
sinks:
  - {type: webhook, name: hook, url: 'https://soar.example/h', secret: {file: hook.key},
     ca_file: ca/soar.pem}
""")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    s = load_settings(Path("..") / "etc" / "secretscope" / "svc.yaml", env={})
    assert s.rules.directory == str(mine / "my-rules") == str(s.rules_dir())
    assert s.detectors[0].model_path == str(tmp_path / "etc" / "models" / "if.skops")
    assert s.triage.change_window_feed == str(mine / "feeds" / "windows.jsonl")
    k = s.kafka
    assert (k.sasl_password_file, k.ssl_cafile, k.ssl_certfile) == (
        str(mine / "kafka.pass"), "/abs/ca.pem", str(mine / "tls" / "c.pem"))
    assert s.sinks[0].secret.file == str(mine / "hook.key")
    assert s.sinks[0].ca_file == str(mine / "ca" / "soar.pem")
    # the helpers that took base_dir leave absolute paths alone
    assert s.resolve(s.triage.change_window_feed) == mine / "feeds" / "windows.jsonl"
    assert s.detectors[0].model_file("/elsewhere") == tmp_path / "etc" / "models" / "if.skops"


def test_the_default_rules_stay_the_packaged_rules_with_a_file_from_elsewhere(tmp_path):
    s = load_settings(write(tmp_path / "c.yaml", "runner: {batch_size: 64}\n"), env={})
    assert s.rules_dir() == DEFAULT_CONFIG.parent / "rules" and s.rules_dir().is_dir()
    assert s.base_dir == str(tmp_path)


def test_relative_credential_and_kafka_files_are_read_from_the_config_folder(tmp_path,
                                                                             monkeypatch):
    """The files are found whatever the working directory (Kafka's used to be read from it)."""
    from secretscope.sources.kafka import client_options

    write(tmp_path / "conf" / "kafka.pass", "kafka-pw\n")
    write(tmp_path / "conf" / "hook.key", "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHM=\n")
    path = write(tmp_path / "conf" / "c.yaml", """
kafka: {security_protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, sasl_username: u,
        sasl_password_file: kafka.pass}
sinks: [{type: webhook, name: hook, url: 'https://soar.example/h', secret: {file: hook.key}}]
""")
    monkeypatch.chdir(tmp_path)
    s = load_settings(path, env={})
    assert client_options(s.kafka)["sasl_plain_password"] == "kafka-pw"
    assert s.sinks[0].secret.read("/nowhere", "sinks.hook.secret").startswith("whsec_")


def _path_like(name: str) -> bool:
    return bool(re.search(r"(^|_)(file|path|directory|feed|cafile|certfile|keyfile)$", name))


def _models(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models(a)]


def _all_fields(model: type[BaseModel], prefix: str = ""):
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        subs = _models(info.annotation)
        yield f"{prefix}{name}", name, info, model
        for sub in subs:
            sep = "[]." if typing.get_origin(info.annotation) is tuple or any(
                typing.get_origin(a) is tuple for a in typing.get_args(info.annotation)) else "."
            yield from _all_fields(sub, f"{prefix}{name}{sep}")


def test_every_path_setting_is_marked_as_one():
    """Resolution finds paths by the ConfigPath mark; a path-named field without it would stay
    relative to the working directory."""
    fields = list(_all_fields(Settings))
    paths = {key for key, name, info, _ in fields if field_is_path(info)}
    named = {key for key, name, info, _ in fields if _path_like(name)}
    assert named == paths
    assert {"rules.directory", "detectors[].model_path", "triage.change_window_feed",
            "kafka.ssl_cafile", "sinks[].secret.file", "sinks[].ca_file"} <= paths


# --- errors name the file that set the value --------------------------------------------------------

@pytest.mark.parametrize("text, key", [
    ("triage: {update_minutes: -1}\n", "triage.update_minutes"),
    ("kafka: {ssl_cafile: ca.pem}\n", "kafka"),  # checked as a whole: PLAINTEXT has no TLS
    ("detectors: [{type: robustbaseline, min_hours: 500}]\n", "detectors.0.robustbaseline"),
    ("sinks: [{type: syslog, name: a, host: h}, {type: syslog, name: a, host: h}]\n", "unique"),
])
def test_a_bad_value_names_the_user_file_not_the_default(tmp_path, text, key):
    path = write(tmp_path / "mine.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    message = str(info.value)
    assert message.startswith(f"{path}: ") and key in message
    assert str(DEFAULT_CONFIG) not in message


# --- the store URL from the environment -------------------------------------------------------------

def test_store_url_precedence_store_option_over_env_over_file_over_default(tmp_path):
    path = write(tmp_path / "c.yaml", "store: {url: 'sqlite:///from-file.db'}\n")
    env = {ENV_STORE_URL: "sqlite:///from-env.db"}
    assert load_settings(env={}).store.url == DEFAULT.store.url == "sqlite:///secretscope.db"
    assert load_settings(path, env={}).store.url == "sqlite:///from-file.db"
    assert load_settings(path, env=env).store.url == "sqlite:///from-env.db"
    assert load_settings(None, env=env).store.url == "sqlite:///from-env.db"
    assert load_settings(path, env=env, store__url="sqlite://").store.url == "sqlite://"
    assert load_settings(path, env={ENV_STORE_URL: ""}).store.url == "sqlite:///from-file.db"


def test_commands_read_the_store_url_from_the_environment(tmp_path, samples):
    db = tmp_path / "env.db"
    proc = secretscope("replay", samples / "vault_audit_reference.jsonl",
                       "--no-table", "-q", env={ENV_STORE_URL: f"sqlite:///{db}"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert db.is_file() and not (tmp_path / "secretscope.db").exists()


# --- config show ------------------------------------------------------------------------------------

def _origins(output: str) -> dict[str, str]:
    """Dotted key -> origin comment, from the YAML `config show` prints."""
    out, stack = {}, []
    for line in output.splitlines():
        m = re.match(r"^( *)(- )?([A-Za-z_]+):(.*?)(?:\s+# (.+))?$", line)
        if not m or line.startswith("#"):
            continue
        depth = len(m[1]) // 2
        stack[depth:] = [m[3]]
        if m[5]:
            out[".".join(stack)] = m[5]
    return out


def test_config_show_prints_the_effective_config_and_each_origin(tmp_path):
    path = write(tmp_path / "c.yaml", "runner: {batch_size: 100}\n"
                 "triage: {change_window_feed: w.jsonl}\n"
                 "detectors: [{type: halfspacetrees, threshold: 0.98}]\n")
    proc = secretscope("config", "show", "--config", path,
                       env={ENV_STORE_URL: "sqlite:///env.db"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    origins = _origins(proc.stdout)
    assert origins["runner.batch_size"] == str(path)
    assert origins["runner.progress_seconds"] == "default"
    assert origins["detectors"] == str(path) and origins["segments"] == "default"
    assert origins["store.url"] == f"env {ENV_STORE_URL}"
    assert origins["triage.change_window_feed"] == str(path)
    assert origins["sinks"] == "default" and origins["kafka.ssl_cafile"] == "default"
    # the YAML loads back to the effective settings, paths already absolute
    shown = yaml.safe_load(proc.stdout)
    effective = load_settings(path, env={ENV_STORE_URL: "sqlite:///env.db"})
    assert shown == effective.model_dump(mode="json")
    assert shown["triage"]["change_window_feed"] == str(tmp_path / "w.jsonl")


def test_config_show_names_the_store_option_and_masks_passwords(tmp_path):
    url = "postgresql+psycopg://scope:Pa55-w0rd@db.internal:5432/secretscope"
    proc = secretscope("config", "show", "--store", url,
                       env={ENV_STORE_URL: "postgresql://other:env-Secret@db/x"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _origins(proc.stdout)["store.url"] == "--store"
    assert "Pa55-w0rd" not in proc.stdout and "env-Secret" not in proc.stdout
    assert yaml.safe_load(proc.stdout)["store"]["url"] == \
        "postgresql+psycopg://scope:***@db.internal:5432/secretscope"


def test_config_show_of_a_bad_file_is_one_error_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "runner: {batch_sise: 10}\n")
    proc = secretscope("config", "show", "--config", path, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: runner.batch_sise: Extra inputs are not permitted"]


# --- a partial file gives exactly the default's findings --------------------------------------------

@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fleet")
    proc = secretscope("simulate", d / "fleet.log", "--calls", "4000", cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d / "fleet.log"


def _replay(log: Path, out: Path, *config: Path) -> list[dict]:
    args = ["--config", config[0]] if config else []
    proc = secretscope("replay", log, "--alerts-out", out, "--store", "sqlite://", "--no-table",
                       "-q", *args, env={"HOOK_SECRET": "whsec_c2VjcmV0"}, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    return [yaml.safe_load(line) for line in out.read_text().splitlines()]


@pytest.mark.slow
def test_a_file_with_only_a_runner_setting_or_a_sink_gives_the_default_findings(small_fleet,
                                                                                 tmp_path):
    runner = write(tmp_path / "elsewhere" / "runner.yaml", "runner: {batch_size: 1000}\n")
    sink = write(tmp_path / "elsewhere" / "sink.yaml", "sinks:\n  - {type: webhook, name: soar, "
                 "url: 'http://127.0.0.1:9/hook', secret: {env: HOOK_SECRET}}\n")
    default = _replay(small_fleet, tmp_path / "default.jsonl")
    with_runner = _replay(small_fleet, tmp_path / "runner.jsonl", runner)
    with_sink = _replay(small_fleet, tmp_path / "sink.jsonl", sink)
    creates = [f for f in default if f["activity_id"] == 1]
    detectors = {d for f in default for d in f["unmapped"]["secretscope"]["detectors"]}
    assert len(creates) >= 10 and {"hst", "baseline"} & detectors  # models and rules both fire
    assert (tmp_path / "runner.jsonl").read_bytes() == (tmp_path / "default.jsonl").read_bytes()
    assert (tmp_path / "sink.jsonl").read_bytes() == (tmp_path / "default.jsonl").read_bytes()
    key = [(f["finding_info"]["uid"], f["activity_id"], f["severity"],
            [r["code"] for r in f["unmapped"]["secretscope"]["reasons"]]) for f in default]
    assert key == [(f["finding_info"]["uid"], f["activity_id"], f["severity"],
                    [r["code"] for r in f["unmapped"]["secretscope"]["reasons"]])
                   for f in with_runner] == [
        (f["finding_info"]["uid"], f["activity_id"], f["severity"],
         [r["code"] for r in f["unmapped"]["secretscope"]["reasons"]]) for f in with_sink]


# --- the configuration reference --------------------------------------------------------------------

DOC = ROOT / "docs" / "configuration.md"


def test_the_committed_reference_is_the_generated_one():
    from secretscope.configdoc import render

    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: python -m secretscope.configdoc > docs/configuration.md")


def _doc_sections() -> dict[str, str]:
    """Heading -> body of each `## ` section of the reference."""
    parts = re.split(r"^## (.+)$", DOC.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _type_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    return typing.get_args(field.annotation)[0] if field is not None else None


def _expected(model: type[BaseModel], prefix: str, heading: str):
    """(heading of the section that must document it, dotted key) for every configurable key,
    walking nested models, each detector type and each sink type."""
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        key = f"{prefix}{name}"
        subs = _models(info.annotation)
        listed = typing.get_origin(info.annotation) is tuple
        yield heading, key
        for sub in subs:
            if listed:
                kind = _type_of(sub) if len(subs) > 1 else None
                yield from _expected(sub, f"{key}[].", f"`{key}[]`"
                                     + (f": `type: {kind}`" if kind else ""))
            elif not prefix:
                yield from _expected(sub, f"{key}.", f"`{key}`")
            else:
                yield from _expected(sub, f"{key}.", heading)


def test_every_config_key_is_documented_in_its_section():
    sections = _doc_sections()
    expected = [(h, k) for h, k in _expected(Settings, "", "") if h]
    assert len(expected) > 200
    assert {h for h, _ in expected} >= {"`detectors[]`: `type: isolationforest`",
                                        "`sinks[]`: `type: syslog`", "`triage.allowlist[]`"}
    missing = [(h, k) for h, k in expected
               if h not in sections or f"| `{k}` |" not in sections[h]]
    assert missing == []
    # and every top-level key has its section or a row
    top = [k for k in Settings.model_fields if not Settings.model_fields[k].exclude]
    assert all(any(h.startswith(f"`{k}") for h in sections) for k in top)


def test_every_config_key_has_a_description():
    undocumented = [key for key, _, info, _ in _all_fields(Settings) if not info.description]
    assert undocumented == []


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://scope:pw@db:5432/x", "postgresql+psycopg://scope:***@db:5432/x"),
    ("postgresql://scope:p@ss/w:rd@db/x", "postgresql://scope:***@db/x"),  # should be %-encoded
    ("postgresql://scope:p@ss@db/x?sslmode=require", "postgresql://scope:***@db/x?sslmode=require"),
    ("postgresql://:only-pw@db/x", "postgresql://:***@db/x"),
    ("https://splunk:8088/services/collector/event", "https://splunk:8088/services/collector/event"),
    ("https://hooks.example:8443/in", "https://hooks.example:8443/in"),
    ("sqlite:///secretscope.db", "sqlite:///secretscope.db"),
])
def test_masked_hides_only_a_url_password(url, shown):
    from secretscope.cli_config import masked

    assert masked(url) == shown
