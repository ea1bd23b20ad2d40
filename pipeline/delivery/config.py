"""Sink settings (the ``sinks:`` and ``delivery:`` sections of the config).

Credentials are never in the YAML: each is a :class:`Credential` naming an environment variable
or a file (relative to the config file's directory) that holds it.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit, urlunsplit

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo,
                      field_validator, model_validator)

from secretscope.errors import ConfigError
from secretscope.findings import SEVERITY_IDS

Severity = Literal["informational", "low", "medium", "high", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credential(_Strict):
    env: str | None = None  # name of the environment variable holding it
    file: str | None = None  # a file holding it (surrounding whitespace is stripped)

    @model_validator(mode="after")
    def _one_source(self) -> "Credential":
        if bool(self.env) == bool(self.file):
            raise ValueError("set exactly one of env or file")
        return self

    def read(self, base_dir: str | Path, where: str) -> str:
        """The secret itself; ConfigError naming ``where`` and the source if it is missing."""
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"{where}: environment variable {self.env} is not set")
            return value
        path = Path(self.file)  # type: ignore[arg-type]
        path = path if path.is_absolute() else Path(base_dir) / path
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{where}: {path} is empty")
        return value


def mask_url(url: str) -> str:
    """``url`` fit to print: its password masked and its query (tokens, SAS signatures) cut."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
        return urlunsplit((parts.scheme, netloc, parts.path, "..." if parts.query else "", ""))
    except ValueError:
        return "<unparsable URL>"


def http_url_problem(url: str) -> str | None:
    """Why ``url`` is not an http(s) URL a sink can post to, or None."""
    if not url.strip() or any(c.isspace() for c in url):
        return "is not a URL (it is empty or holds spaces)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        found = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"is not an http:// or https:// URL ({found})"
    if not parts.hostname:
        return "has no host"
    return None


def _http_url(value: str, info: ValidationInfo) -> str:
    problem = http_url_problem(value)
    if problem:
        name = info.data.get("name", "?")
        raise ValueError(f"sink {name!r}: {info.field_name} {mask_url(value)!r} {problem}")
    return value


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class _SinkBase(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")  # the outbox key
    min_severity: Severity = "low"  # findings below are not routed to this sink
    # Which versions of a finding it gets: all (Create, Updates, Close), or only the Create and
    # the Updates that raise its severity.
    versions: Literal["all", "raises"] = "all"
    # Field selection: dotted paths of the rendered OCSF document to keep (empty: all). The
    # finding id, class, time and severity are always kept.
    fields: tuple[str, ...] = ()
    batch_size: int = Field(100, ge=1, le=10_000)
    timeout_seconds: float = Field(10.0, gt=0)
    ca_file: str | None = None  # a CA bundle for TLS to this product (tests use their own CA)

    @property
    def min_severity_id(self) -> int:
        return SEVERITY_IDS[self.min_severity]


class WebhookSink(_SinkBase):
    """Generic webhook, signed per Standard Webhooks (webhook-id/-timestamp/-signature)."""

    type: Literal["webhook"]
    url: HttpUrl
    secret: Credential  # "whsec_" + base64 key, as Standard Webhooks issues it
    format: Literal["ocsf", "ecs"] = "ocsf"


class SplunkHecSink(_SinkBase):
    type: Literal["splunk_hec"]
    url: HttpUrl  # https://splunk:8088/services/collector/event
    token: Credential  # sent as "Authorization: Splunk <token>"
    index: str | None = None
    source: str = "secretscope"
    sourcetype: str = "secretscope:finding"


class ElasticSink(_SinkBase):
    type: Literal["elastic"]
    url: HttpUrl  # the cluster; documents go to <url>/_bulk with _id = finding id
    index: str = "secretscope-findings"
    api_key: Credential | None = None  # "Authorization: ApiKey <key>"


class AzureLogsSink(_SinkBase):
    """Azure Monitor Logs Ingestion API (data collection endpoint + rule), Microsoft Sentinel."""

    type: Literal["azure_logs"]
    endpoint: HttpUrl  # the data collection endpoint, https://<dce>.ingest.monitor.azure.com
    rule_id: str  # the data collection rule's immutable id, dcr-...
    stream: str = "Custom-SecretscopeFindings_CL"
    tenant_id: str
    client_id: str
    client_secret: Credential
    authority: HttpUrl = "https://login.microsoftonline.com"
    scope: str = "https://monitor.azure.com/.default"
    max_bytes: int = Field(1_000_000, gt=0)  # the API takes at most 1 MB per call


class SecOpsSink(_SinkBase):
    """Google SecOps (Chronicle) webhook feed: newline-delimited JSON, size capped."""

    type: Literal["secops"]
    url: HttpUrl  # the feed's endpoint URL
    api_key: Credential  # X-goog-api-key
    feed_secret: Credential | None = None  # X-Webhook-Access-Key
    max_bytes: int = Field(1_000_000, gt=0)


class SyslogSink(_SinkBase):
    type: Literal["syslog"]
    host: str
    port: int = Field(6514, ge=1, le=65535)
    tls: bool = True
    format: Literal["cef", "leef"] = "cef"
    app_name: str = "secretscope"

    @field_validator("host")
    @classmethod
    def _bare_host(cls, value: str, info: ValidationInfo) -> str:
        """A host name or address alone: the port has its own key, and there is no scheme."""
        name = info.data.get("name", "?")
        if not value or any(c.isspace() or c in "/@" for c in value):
            raise ValueError(f"sink {name!r}: host {value!r} is not a host name or address")
        if ":" in value:
            try:
                return str(ipaddress.IPv6Address(value.strip("[]")))  # sockets take it bare
            except ValueError:
                raise ValueError(f"sink {name!r}: host {value!r} is not a host name or address "
                                 "(give the port as port:)") from None
        return value


class SlackSink(_SinkBase):
    type: Literal["slack"]
    webhook_url: Credential  # an incoming-webhook URL is itself the secret
    min_severity: Severity = "high"
    versions: Literal["all", "raises"] = "raises"  # a chat message per change would be noise


class PagerDutySink(_SinkBase):
    """PagerDuty Events API v2; ``dedup_key`` is the finding id."""

    type: Literal["pagerduty"]
    routing_key: Credential
    url: HttpUrl = "https://events.pagerduty.com/v2/enqueue"
    min_severity: Severity = "high"


SinkSettings = Annotated[Union[WebhookSink, SplunkHecSink, ElasticSink, AzureLogsSink, SecOpsSink,
                               SyslogSink, SlackSink, PagerDutySink], Field(discriminator="type")]


class DeliverySettings(_Strict):
    """The one retry policy for all sinks (``secretscope.delivery.retry``) and the worker's pace."""

    retry_base_seconds: float = Field(0.5, gt=0)
    retry_cap_seconds: float = Field(60.0, gt=0)
    retry_budget_seconds: float = Field(900.0, gt=0)  # then the delivery is dead-lettered
    poll_seconds: float = Field(1.0, gt=0)  # how often an idle worker looks at the outbox
    # `secretscope deliver` serves its Prometheus metrics over HTTP here when set
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
