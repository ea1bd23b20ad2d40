"""What ``secretscope validate`` checks in the ``sinks:`` section beyond its schema.

The schema (:mod:`secretscope.delivery.config`) already refuses URLs that are not http(s) and
syslog hosts that are not bare host names, so ``load_settings`` names the file and key. What may
rightly differ between the machine that writes a config and the one that runs it is checked
here: each credential's environment variable is set or its file readable and not empty, a
webhook secret is a well-formed Standard Webhooks secret, a Slack webhook URL is an http(s) URL,
and each ``ca_file`` exists. Problems name the sink and the key, never a secret's value.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secretscope.delivery.config import Credential, http_url_problem
from secretscope.delivery.sinks.webhook import secret_problem
from secretscope.errors import ConfigError


def resolve(path: str, base_dir: str | Path) -> Path:
    """A path from the config, relative to the config file's directory."""
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir) / p


def credentials(sink: Any) -> Iterator[tuple[str, Credential]]:
    """(key, credential) for each credential a sink's settings hold."""
    for key in type(sink).model_fields:
        value = getattr(sink, key)
        if isinstance(value, Credential):
            yield key, value


def sink_problems(sinks: tuple, base_dir: str | Path) -> list[str]:
    """Every problem found, one sentence each (empty when all is well)."""
    problems: list[str] = []
    for sink in sinks:
        problems += _problems(sink, base_dir)
    return problems


def _problems(sink: Any, base_dir: str | Path) -> list[str]:
    where = f"sinks.{sink.name}"
    out = []
    for key, cred in credentials(sink):
        try:
            value = cred.read(base_dir, f"{where}.{key}")
        except ConfigError as exc:
            out.append(str(exc))
            continue
        problem = _value_problem(sink.type, key, value)
        if problem:
            out.append(f"{where}.{key} ({_source(cred)}): {problem}")
    if sink.ca_file:
        ca = resolve(sink.ca_file, base_dir)
        if not ca.is_file():
            out.append(f"{where}.ca_file: {ca}: no such file")
    return out


def _value_problem(sink_type: str, key: str, value: str) -> str | None:
    if sink_type == "webhook" and key == "secret":
        problem = secret_problem(value)
        return problem and f"the secret {problem}"
    if sink_type == "slack" and key == "webhook_url":
        problem = http_url_problem(value)
        return problem and f"the webhook URL {problem}"  # the URL is the secret: not quoted
    return None


def _source(cred: Credential) -> str:
    return f"environment variable {cred.env}" if cred.env else f"file {cred.file}"
