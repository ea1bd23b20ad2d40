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

from secretscope import redact
from secretscope.configtypes import ConfigPath
from secretscope.errors import ConfigError
from secretscope.findings import SEVERITY_IDS

Severity = Literal["informational", "low", "medium", "high", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Credential(_Strict):
    """A secret named, never written, in the config: an environment variable or a file."""

    env: str | None = Field(None, description="Name of the environment variable holding it.")
    file: ConfigPath | None = Field(None, description="A file holding it (surrounding "
                                    "whitespace is stripped).")

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
        parts = urlsplit(redact.mask_url(url))
        return urlunsplit((parts.scheme, parts.netloc, parts.path,
                           "..." if parts.query else "", ""))
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
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="Unique sink name: the outbox key, used by `redrive --sink`.")
    min_severity: Severity = Field("low", description="Findings below are not routed to this "
                                   "sink.")
    versions: Literal["all", "raises"] = Field(
        "all", description="Which versions of a finding it gets: all (Create, Updates, Close), "
        "or only the Create and the Updates that raise its severity.")
    fields: tuple[str, ...] = Field(
        (), description="Field selection: dotted paths of the rendered OCSF document to keep "
        "(empty: all). The finding id, class, time and severity are always kept.")
    batch_size: int = Field(100, ge=1, le=10_000, description="Findings per request.")
    timeout_seconds: float = Field(10.0, gt=0, description="Per request.")
    ca_file: ConfigPath | None = Field(None, description="A CA bundle for TLS to this product "
                                       "(default: the system's).")

    @property
    def min_severity_id(self) -> int:
        return SEVERITY_IDS[self.min_severity]


class WebhookSink(_SinkBase):
    """Generic webhook, signed per Standard Webhooks (webhook-id/-timestamp/-signature)."""

    type: Literal["webhook"] = Field(description="Sink type.")
    url: HttpUrl = Field(description="http(s) URL findings are POSTed to.")
    secret: Credential = Field(description="Signing key: \"whsec_\" + base64, as Standard "
                               "Webhooks issues it.")
    format: Literal["ocsf", "ecs"] = Field("ocsf", description="Document format.")


class SplunkHecSink(_SinkBase):
    """Splunk HTTP Event Collector."""

    type: Literal["splunk_hec"] = Field(description="Sink type.")
    url: HttpUrl = Field(description="The HEC endpoint, e.g. "
                     "https://splunk:8088/services/collector/event.")
    token: Credential = Field(description="HEC token, sent as \"Authorization: Splunk <token>\".")
    index: str | None = Field(None, description="Splunk index (default: the token's).")
    source: str = Field("secretscope", description="Event source.")
    sourcetype: str = Field("secretscope:finding", description="Event sourcetype.")


class ElasticSink(_SinkBase):
    """Elasticsearch bulk API, ECS documents."""

    type: Literal["elastic"] = Field(description="Sink type.")
    url: HttpUrl = Field(description="The cluster; documents go to <url>/_bulk with _id = finding "
                     "id.")
    index: str = Field("logs-secretscope.findings",
                       description="Target index; the default is read by Elastic Security's "
                       "External Alerts rule (logs-*) and by the shipped index template.")
    api_key: Credential | None = Field(None, description="Sent as \"Authorization: ApiKey "
                                       "<key>\".")


class AzureLogsSink(_SinkBase):
    """Azure Monitor Logs Ingestion API (data collection endpoint + rule), Microsoft Sentinel."""

    type: Literal["azure_logs"] = Field(description="Sink type.")
    endpoint: HttpUrl = Field(description="The data collection endpoint, "
                          "https://<dce>.ingest.monitor.azure.com.")
    rule_id: str = Field(description="The data collection rule's immutable id, dcr-....")
    stream: str = Field("Custom-SecretscopeFindings_CL", description="The rule's stream.")
    tenant_id: str = Field(description="Entra ID tenant of the app registration.")
    client_id: str = Field(description="Application (client) id.")
    client_secret: Credential = Field(description="The application's client secret.")
    authority: HttpUrl = Field("https://login.microsoftonline.com", description="Token authority.")
    scope: str = Field("https://monitor.azure.com/.default", description="Token scope.")
    max_bytes: int = Field(1_000_000, gt=0, description="Request size cap (the API takes at "
                           "most 1 MB per call).")


class SecOpsSink(_SinkBase):
    """Google SecOps (Chronicle) webhook feed: newline-delimited JSON, size capped."""

    type: Literal["secops"] = Field(description="Sink type.")
    url: HttpUrl = Field(description="The feed's endpoint URL.")
    api_key: Credential = Field(description="Sent as X-goog-api-key.")
    feed_secret: Credential | None = Field(None, description="Sent as X-Webhook-Access-Key.")
    max_bytes: int = Field(1_000_000, gt=0, description="Request size cap.")


class SyslogSink(_SinkBase):
    """RFC 5424 syslog over TCP (TLS by default), CEF or LEEF messages."""

    type: Literal["syslog"] = Field(description="Sink type.")
    host: str = Field(description="Receiver host.")
    port: int = Field(6514, ge=1, le=65535, description="Receiver port.")
    tls: bool = Field(True, description="TLS (verified) to the receiver.")
    format: Literal["cef", "leef"] = Field("cef", description="Message format.")
    app_name: str = Field("secretscope", description="Syslog APP-NAME.")

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
    """Slack incoming webhook: one message per finding."""

    type: Literal["slack"] = Field(description="Sink type.")
    webhook_url: Credential = Field(description="The incoming-webhook URL (it is itself the "
                                    "secret).")
    min_severity: Severity = Field("high", description="Findings below are not routed to this "
                                   "sink.")
    versions: Literal["all", "raises"] = Field("raises", description="As for every sink; "
                                               "\"raises\" by default, since a chat message per "
                                               "change would be noise.")


class PagerDutySink(_SinkBase):
    """PagerDuty Events API v2; ``dedup_key`` is the finding id."""

    type: Literal["pagerduty"] = Field(description="Sink type.")
    routing_key: Credential = Field(description="The integration's routing key.")
    url: HttpUrl = Field("https://events.pagerduty.com/v2/enqueue", description="Events API URL.")
    min_severity: Severity = Field("high", description="Findings below are not routed to this "
                                   "sink.")


SinkSettings = Annotated[Union[WebhookSink, SplunkHecSink, ElasticSink, AzureLogsSink, SecOpsSink,
                               SyslogSink, SlackSink, PagerDutySink], Field(discriminator="type")]


class DeliverySettings(_Strict):
    """The one retry policy for all sinks (``secretscope.delivery.retry``) and the worker's pace."""

    retry_base_seconds: float = Field(0.5, gt=0, description="First retry delay (exponential "
                                      "backoff with jitter; Retry-After is honoured).")
    retry_cap_seconds: float = Field(60.0, gt=0, description="Longest delay between retries.")
    retry_budget_seconds: float = Field(900.0, gt=0, description="Time to keep retrying; then "
                                        "the delivery is dead-lettered.")
    poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks at the "
                                "outbox.")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="`secretscope deliver` "
                                     "serves its Prometheus metrics over HTTP here when set.")
    metrics_host: str = Field("127.0.0.1", description="Address of the metrics server.")
