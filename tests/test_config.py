"""Config is validated data: unknown keys and bad values fail at load, naming file and key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from secretscope.config import DEFAULT_CONFIG, load_settings
from secretscope.errors import ConfigError


def test_default_config_is_valid():
    s = load_settings()
    assert s.store.url.startswith("sqlite") and s.detectors[0].type == "halfspacetrees"
    assert s.rules_dir().is_dir()
    with pytest.raises(Exception):
        s.runner.batch_size = 3  # frozen


@pytest.mark.parametrize("text, key", [
    ("runner: {batch_sise: 10}\n", "runner.batch_sise"),
    ("segments: [{name: x, cidr: 10.0.0.300/8}]\n", "segments.0.cidr"),
    ("detectors: [{type: magic}]\n", "detectors.0"),
    ("detectors: [{type: halfspacetrees, threshold: 3}]\n", "detectors.0.halfspacetrees.threshold"),
    ("colour: red\n", "colour"),
    ("base_dir: /etc\n", "base_dir: not a configurable key"),
    ("- runner\n", "top level must be a mapping"),
    ("runner: {batch_size: [\n", "not valid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_cli_reports_bad_config_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("store: {uri: x}\n")
    proc = subprocess.run([sys.executable, "-m", "secretscope", "validate", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "store.uri" in proc.stderr and str(path) in proc.stderr.replace("\n", "")


def test_cli_validate_default():
    proc = subprocess.run([sys.executable, "-m", "secretscope", "validate", str(DEFAULT_CONFIG)],
                          capture_output=True, text=True)
    rules = len(list((DEFAULT_CONFIG.parent / "rules").glob("*.yaml")))
    assert proc.returncode == 0 and f"{rules} rules, 2 detectors (hst, baseline)" in proc.stderr


@pytest.mark.parametrize("name", ["kafka.yaml", "socket.yaml"])
def test_example_configs_are_valid(name):
    from secretscope.models.rules import load_rules

    settings = load_settings(DEFAULT_CONFIG.parent / "examples" / name)
    assert load_rules(settings.rules_dir())
    if name == "kafka.yaml":
        k = settings.kafka
        assert (k.security_protocol, k.sasl_password_env) == ("SASL_SSL", "SECRETSCOPE_KAFKA_PASSWORD")
    else:
        assert settings.run.source == "socket"
