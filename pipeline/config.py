"""Configuration: YAML into validated, frozen settings, layered over the embedded default.

``--config FILE`` is merged over the embedded default (``config/default.yaml``, shipped as
``secretscope.defaults``): mappings key by key, lists replaced as a whole when given. Then
``SECRETSCOPE_STORE_URL`` and command-line overrides (``--store``) set ``store.url``. A relative
path is resolved against the directory of the file that set it (fields typed
:data:`~secretscope.configtypes.ConfigPath`). Unknown keys are errors, and every error names the
file that set the bad value and the dotted key. Detector ``type`` values are looked up in
:data:`DETECTOR_TYPES`. Secrets never live in the YAML; they come from the environment or files
when sinks need them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import as_file
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from secretscope.configtypes import ConfigPath, field_is_path
from secretscope.delivery.config import DeliverySettings, SinkSettings
from secretscope.errors import ConfigError
from secretscope.features import FEATURE_NAMES

ENV_STORE_URL = "SECRETSCOPE_STORE_URL"
DEFAULT_ORIGIN = "default"


def _embedded_default() -> Path:
    """The default config shipped as ``secretscope.defaults`` (the checkout's config/ folder, or
    its copy inside an installed wheel)."""
    from importlib.resources import files

    with as_file(files("secretscope.defaults") / "default.yaml") as path:
        return Path(path)


DEFAULT_CONFIG = _embedded_default()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(_Strict):
    url: str = Field("sqlite:///secretscope.db",
                     description="SQLAlchemy URL of the store (findings, outbox, snapshots, "
                     "labels). Also set by SECRETSCOPE_STORE_URL or --store; a password in it is "
                     "better given that way than in the file.")
    feature_history_sample: float = Field(
        0.02, ge=0, le=1,
        description="Share of learned (non-flagged) feature vectors kept, by a hash of the event "
        "id, for `secretscope train`; 0 disables.")
    outage_seconds: float | None = Field(
        300.0, gt=0,
        description="How long a command waits out an unreachable store (retrying with backoff) "
        "before it fails; null: as long as it takes. `run` and the `deliver` worker always wait "
        "as long as it takes.")


class InputSettings(_Strict):
    max_record_bytes: int = Field(1 << 20, gt=0,
                                  description="Longer records are dead-lettered (reason oversize).")
    max_field_chars: int = Field(1024, gt=0,
                                 description="Longer fields are cut (and counted).")
    join_timeout_seconds: float = Field(
        30.0, ge=0,
        description="Event time to wait for a response entry before a request is processed "
        "alone.")
    join_wait_seconds: float | None = Field(
        0.25, gt=0,
        description="Live sources (socket): wall time to wait for a response entry after its "
        "request was received before the request is processed alone, so a lost response does "
        "not hold later calls back. OpenBao logs a response a few ms after its request (p99 2 "
        "ms, max 5 ms measured on a dev server); a response later than this is dropped as a "
        "duplicate. null: only join_timeout_seconds applies. File replays never use it.")


class Segment(_Strict):
    """A network segment: the most specific CIDR containing an address names it; an address no
    segment contains is "unknown"."""

    name: str = Field(min_length=1, description="Segment name, used in findings and allowlists.")
    cidr: str = Field(description="IPv4 or IPv6 network, e.g. 10.20.0.0/16.")

    @field_validator("cidr")
    @classmethod
    def _valid_cidr(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"not a CIDR network: {exc}") from None
        return value


class Environment(_Strict):
    """Secrets whose path matches ``paths`` (a regex, searched) belong to environment ``name``;
    a path no entry matches is production."""

    name: str = Field(min_length=1, description="Environment name, e.g. staging.")
    paths: str = Field(description="Regular expression searched in secret paths; the first "
                       "entry that matches names the environment.")

    @field_validator("paths")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class RulesSettings(_Strict):
    directory: ConfigPath = Field("rules", description="Folder of rule YAML files (one rule per "
                                  "file); the default is the packaged rules.")


class _DetectorBase(_Strict):
    severity_at_threshold: Literal["low", "medium"] = Field(
        "medium",
        description="What a firing exactly at `threshold` counts as before the ensemble combines "
        "it with the other detectors: \"low\" makes a detector corroborating evidence that raises "
        "a finding on its own only well above its threshold.")


class HalfSpaceTreesSettings(_DetectorBase):
    """Streaming Half-Space Trees over each event's features (models/streaming.py)."""

    type: Literal["halfspacetrees"] = Field(description="Detector type.")
    name: str = Field("hst", description="Detector name in findings, allowlists and metrics.")
    n_trees: int = Field(10, ge=1, le=100, description="Number of trees.")
    height: int = Field(8, ge=1, le=16, description="Height of each tree.")
    window_size: int = Field(250, ge=2, description="Events per reference window.")
    seed: int = Field(42, description="Random seed (same seed, same scores).")
    threshold: float = Field(0.97, gt=0, le=1, description="Score (0..1, higher = more "
                             "anomalous) at which a finding is raised.")
    high_threshold: float = Field(0.99, gt=0, le=1,
                                  description="Score from which the finding is high severity.")
    min_history: int = Field(50, ge=0, description="Events an identity needs in its baseline "
                             "before this detector may fire.")
    min_history_days: float = Field(1.0, ge=0, description="And how long (event time) the "
                                    "identity must have been seen.")
    min_peer_history: int = Field(1000, ge=0, description="Cold start: a new identity is scored "
                                  "once its peer group (same policies) has this much history...")
    min_peer_members: int = Field(2, ge=1, description="...and this many members.")


class RobustBaselineSettings(_DetectorBase):
    """Per-identity rolling median and MAD of hourly peaks (models/baseline.py)."""

    type: Literal["robustbaseline"] = Field(description="Detector type.")
    name: str = Field("baseline", description="Detector name in findings, allowlists and "
                      "metrics.")
    measures: tuple[str, ...] = Field(("requests_count_1m", "requests_count_1h",
                                       "secrets_distinct_1h", "denied_count_5m"),
                                      description="Feature names whose hourly peaks are "
                                      "baselined.")
    window_hours: int = Field(168, ge=3, le=24 * 366,
                              description="Active hours of baseline kept per identity.")
    min_hours: int = Field(24, ge=1, description="Active hours in the window before it may fire.")
    threshold: float = Field(0.95, gt=0, lt=1,
                             description="Score at which it fires; score = 1 - exp(-z / z_scale).")
    high_threshold: float = Field(0.99, gt=0, lt=1,
                                  description="Score from which the finding is high severity.")
    z_floor: float = Field(0.3, gt=0, description="Added to 1.4826 * MAD (log1p scale), so a "
                           "flat baseline does not make every change infinite.")
    z_scale: float = Field(2.0, gt=0, description="Scale of z in the score.")

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one measure is needed")
        unknown = [m for m in value if m not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(map(repr, unknown))}")
        if len(set(value)) != len(value):
            raise ValueError("measures must be distinct")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "RobustBaselineSettings":
        if self.min_hours > self.window_hours:
            raise ValueError(f"min_hours ({self.min_hours}) exceeds window_hours "
                             f"({self.window_hours})")
        if self.high_threshold < self.threshold:
            raise ValueError("high_threshold is below threshold")
        return self


class IsolationForestSettings(_DetectorBase):
    """A scikit-learn IsolationForest trained by ``secretscope train`` (models/batch.py)."""

    type: Literal["isolationforest"] = Field(description="Detector type.")
    name: str = Field("iforest", description="Detector name in findings, allowlists and metrics.")
    model_path: ConfigPath = Field(description="The .skops file written by `secretscope train` "
                                   "(its manifest beside it).")
    threshold: float = Field(0.999, gt=0, le=1, description="Calibrated score at which it fires: "
                             "the share of training rows scoring below.")
    high_threshold: float = Field(0.9999, gt=0, le=1,
                                  description="Score from which the finding is high severity.")
    min_history: int = Field(50, ge=0, description="Events an identity needs in its baseline "
                             "before this detector may fire.")

    def model_file(self, base_dir: str | Path) -> Path:
        path = Path(self.model_path)
        return path if path.is_absolute() else Path(base_dir) / path


# The registry of detector types: add a settings model here and a factory in models/registry.
DETECTOR_TYPES = {"halfspacetrees": HalfSpaceTreesSettings,
                  "robustbaseline": RobustBaselineSettings,
                  "isolationforest": IsolationForestSettings}
DetectorSettings = Annotated[Union[HalfSpaceTreesSettings, RobustBaselineSettings,
                                   IsolationForestSettings],
                             Field(discriminator="type")]


_IDENTITIES = "Identity ids (entity or token accessor ids) covered."
_DISPLAY_NAMES = "fnmatch globs over display names, e.g. \"kubernetes-payments-*\"."
_POLICIES = "Any identity holding one of these policies is covered."


class _IdentityMatch(_Strict):
    """Which identities an entry covers: exact ids, display-name globs, or holders of a policy."""

    identities: tuple[str, ...] = Field((), description=_IDENTITIES)
    display_names: tuple[str, ...] = Field((), description=_DISPLAY_NAMES)
    policies: tuple[str, ...] = Field((), description=_POLICIES)

    @model_validator(mode="after")
    def _names_someone(self) -> "_IdentityMatch":
        if not (self.identities or self.display_names or self.policies):
            raise ValueError("name at least one of identities, display_names or policies")
        return self


# Detectors whose firings a deploy or rotation window explains away: the volume and novelty
# models and the breadth rules. Rules about control-plane changes (root, audit, policies) and
# attacks on authentication still fire inside a window.
WINDOW_DETECTORS = ("hst", "baseline", "iforest", "vault-bulk-read",
                    "vault-dynamic-credential-burst", "vault-peer-new-folder-read")


class AllowEntry(_Strict):
    """A suppression rule: firings of these detectors for the identities and/or network segments
    named are expected until ``expires`` (event time)."""

    identities: tuple[str, ...] = Field((), description=_IDENTITIES)
    display_names: tuple[str, ...] = Field((), description=_DISPLAY_NAMES)
    policies: tuple[str, ...] = Field((), description=_POLICIES)
    segments: tuple[str, ...] = Field((), description="Segment names from `segments`, e.g. a "
                                      "scanner's network.")
    detectors: tuple[str, ...] = Field(("*",), description="Globs over detector names and rule "
                                       "ids.")
    expires: AwareDatetime = Field(description="An allowlist entry must end; compared with event "
                                   "time.")
    note: str = Field(min_length=1, description="Why it is allowed, and who said so.")

    @model_validator(mode="after")
    def _names_someone(self) -> "AllowEntry":
        if not (self.identities or self.display_names or self.policies or self.segments):
            raise ValueError("name at least one of identities, display_names, policies or "
                             "segments")
        return self


class ChangeWindow(_IdentityMatch):
    """A deploy, rotation or maintenance window: an expected burst for these identities."""

    start: AwareDatetime = Field(description="Start (event time, with a timezone).")
    end: AwareDatetime = Field(description="End, after start.")
    kind: Literal["deploy", "rotation", "maintenance"] = Field("maintenance",
                                                               description="What the window is.")
    detectors: tuple[str, ...] = Field(WINDOW_DETECTORS, description="Detectors whose firings "
                                       "the window explains away (the volume and breadth ones by "
                                       "default).")
    note: str = Field("", description="Free text, e.g. the change ticket.")

    @model_validator(mode="after")
    def _ordered(self) -> "ChangeWindow":
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class TriageSettings(_Strict):
    incident_minutes: float = Field(
        60, ge=0,
        description="One finding per identity per incident: later firings within this much "
        "event time of the incident's last one are merged into it (unless more severe); it is "
        "closed after this much quiet.")
    campaign_hours: float = Field(
        24, ge=0,
        description="A closed finding whose activity resumes (a shared reason code or detector) "
        "within this much event time of its close is reopened rather than a new finding: a slow "
        "campaign is one finding that grows. 0: never reopened.")
    update_minutes: float = Field(
        5, ge=0,
        description="A growing incident's finding is re-sent (an Update version) at most once "
        "per this much event time, and at once when its severity rises; the Close carries "
        "whatever is left.")
    max_related_events: int = Field(100, ge=1, le=10_000,
                                    description="Raw event ids kept per finding.")
    min_severity: Literal["informational", "low", "medium", "high", "critical"] = Field(
        "medium",
        description="Findings below this severity are counted but not raised (a low rule on its "
        "own is a signal; it still adds to the calibrated score of an event other detectors "
        "flag).")
    allowlist: tuple[AllowEntry, ...] = Field((), description="Suppression entries (below).")
    change_windows: tuple[ChangeWindow, ...] = Field((), description="Deploy, rotation and "
                                                     "maintenance windows (below).")
    change_window_feed: ConfigPath | None = Field(
        None, description="JSON lines of change windows (the fields of `change_windows`) from a "
        "deploy or rotation system.")
    false_positive_days: float = Field(
        7, ge=0,
        description="A finding labelled false positive suppresses findings of the same identity "
        "with the same leading reason for this long (event time) after it.")
    labels_refresh_seconds: float = Field(60, ge=0, description="How often a running pipeline "
                                          "rereads analysts' labels (wall clock).")


class RunnerSettings(_Strict):
    batch_size: int = Field(256, ge=1, le=100_000,
                            description="Events scored per batch (findings do not depend on it).")
    progress_seconds: float = Field(5, ge=0, description="Interval of progress lines on stderr "
                                    "during long replays.")
    batch_wait_seconds: float = Field(
        0.1, gt=0, le=60,
        description="Live sources (socket): wall time an event waits for its batch to fill "
        "before the partial batch is processed.")


class StateSettings(_Strict):
    """Per-identity state kept in memory."""

    idle_days: float = Field(30, gt=0, description="Identities idle longer than this (event "
                             "time) are expired: their windows and per-secret, per-folder and "
                             "per-address counts are dropped and a compact summary is kept, so "
                             "a returning identity is still judged as a dormant one.")


class KafkaSettings(_Strict):
    """Kafka in (audit topics) and between the stages. Credentials come from the environment
    or a file named here, never from the YAML itself."""

    bootstrap_servers: tuple[str, ...] = Field(("127.0.0.1:9092",),
                                               description="host:port of the brokers.")
    audit_topics: tuple[str, ...] = Field(("vault-audit",), description="Topics of raw audit "
                                          "lines (keyed by request id, or one partition).")
    events_topic: str = Field("secretscope.events", description="Stage 1 -> stage 2, keyed by "
                              "identity.")
    dead_letter_topic: str = Field("secretscope.dead-letters",
                                   description="Records that could not be parsed, with reason.")
    parse_group: str = Field("secretscope-parse", description="Consumer group of stage 1.")
    score_group: str = Field("secretscope-score", description="Consumer group of stage 2.")
    client_id: str = Field("secretscope", description="Kafka client id.")
    events_partitions: int = Field(4, ge=1, description="Partitions of the events topic (created "
                                   "if missing): the unit of scale-out for scoring.")
    replication_factor: int = Field(1, ge=1, description="Of the topics secretscope creates.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="Required with SASL_*.")
    sasl_username: str | None = Field(None, description="Required with SASL_*.")
    sasl_password_env: str | None = Field(None, description="Name of the environment variable "
                                          "holding the SASL password.")
    sasl_password_file: ConfigPath | None = Field(None, description="Or a file holding it.")
    ssl_cafile: ConfigPath | None = Field(None, description="CA bundle for the brokers' "
                                          "certificates (SSL, SASL_SSL).")
    ssl_certfile: ConfigPath | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: ConfigPath | None = Field(None, description="Client key (mutual TLS).")
    ssl_check_hostname: bool = Field(True, description="Check the brokers' host names.")
    max_poll_records: int = Field(2000, ge=1, le=10_000, description="Records per poll.")
    poll_timeout_ms: int = Field(200, ge=1, description="Longest wait of one poll.")
    session_timeout_ms: int = Field(10_000, ge=1000, description="Consumer group session "
                                    "timeout.")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="Consumer heartbeat interval.")
    allowed_lateness_seconds: float = Field(5.0, gt=0, description="Disorder tolerated within "
                                            "one partition (event time).")
    idle_seconds: float = Field(2.0, gt=0, description="A caught-up partition this quiet (wall "
                                "time) releases its waiting calls.")
    join_wait_seconds: float | None = Field(
        2.0, gt=0,
        description="Wall time a call waits for its other half after its first entry was read, "
        "once its partition is read up to its end, before it is processed alone: so a lost "
        "response holds later calls back this long, not input.join_timeout_seconds of event "
        "time. Longer than input.join_wait_seconds (the socket's) because a log shipper may put "
        "a request and its response in batches sent apart; a half read later is dropped as a "
        "duplicate. null: only join_timeout_seconds applies.")
    snapshot_seconds: float = Field(5.0, ge=0, description="How often stage 2 saves state and "
                                    "commits.")
    commit_seconds: float = Field(1.0, ge=0, description="How often stage 1 flushes, sends "
                                  "watermarks and commits.")

    @model_validator(mode="after")
    def _security_is_consistent(self) -> "KafkaSettings":
        sasl = self.security_protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism is None:
                raise ValueError("sasl_mechanism is required with security_protocol "
                                 f"{self.security_protocol}")
            if not self.sasl_username:
                raise ValueError("sasl_username is required with SASL")
            if bool(self.sasl_password_env) == bool(self.sasl_password_file):
                raise ValueError("set exactly one of sasl_password_env or sasl_password_file")
        else:
            given = [name for name in ("sasl_mechanism", "sasl_username", "sasl_password_env",
                                       "sasl_password_file") if getattr(self, name)]
            if given:
                raise ValueError(f"{', '.join(given)} need(s) security_protocol SASL_PLAINTEXT "
                                 f"or SASL_SSL, not {self.security_protocol}")
        if not self.security_protocol.endswith("SSL"):
            given = [name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
                     if getattr(self, name)]
            if given:
                raise ValueError(f"{', '.join(given)} need(s) security_protocol SSL or SASL_SSL, "
                                 f"not {self.security_protocol}")
        return self


class SocketSettings(_Strict):
    """Vault's socket audit device connects here."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(9090, ge=0, le=65535, description="Port to listen on (0: any free port).")


class RunSettings(_Strict):
    source: Literal["kafka", "socket"] = Field("kafka", description="Where `secretscope run` "
                                               "reads audit lines.")
    stages: Literal["both", "parse", "score"] = Field("both", description="Which Kafka stages "
                                                      "this process runs.")
    hop: Literal["memory", "topic"] = Field(
        "memory", description="With `stages: both`, how events go from parse to score: "
        "`memory` inside the process (one process of the group owns every audit partition, "
        "others stand by); `topic` through `kafka.events_topic`, as between separate `parse` "
        "and `score` processes, so several processes share the scoring.")


class MetricsSettings(_Strict):
    """`run` and `deliver` serve /metrics (Prometheus), /livez and /readyz on this address when
    ``port`` is set (0: any free port, logged at start)."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int | None = Field(None, ge=0, le=65535, description="Port to listen on; null: no "
                             "server, 0: any free port (logged at start).")


class Settings(_Strict):
    store: StoreSettings = Field(StoreSettings(), description="The SQL store.")
    input: InputSettings = Field(InputSettings(), description="Bounds on input records.")
    segments: tuple[Segment, ...] = Field((), description="Network segments (below).")
    environments: tuple[Environment, ...] = Field((), description="Environments of secret paths "
                                                  "(below).")
    rules: RulesSettings = Field(RulesSettings(), description="Explicit detection rules.")
    detectors: tuple[DetectorSettings, ...] = Field((), description="Anomaly detectors, one "
                                                    "entry per detector (below).")
    triage: TriageSettings = Field(TriageSettings(), description="Scores to findings.")
    runner: RunnerSettings = Field(RunnerSettings(), description="The processing loop.")
    state: StateSettings = Field(StateSettings(), description="Per-identity state in memory.")
    run: RunSettings = Field(RunSettings(), description="`secretscope run`, the service.")
    kafka: KafkaSettings = Field(KafkaSettings(), description="Kafka in and between stages.")
    socket: SocketSettings = Field(SocketSettings(), description="Vault's socket audit device.")
    sinks: tuple[SinkSettings, ...] = Field((), description="Where findings are delivered, one "
                                            "entry per sink (below).")
    delivery: DeliverySettings = Field(DeliverySettings(), description="Retry policy and pace "
                                       "of delivery.")
    metrics: MetricsSettings = Field(MetricsSettings(), description="/metrics, /livez and "
                                     "/readyz of `run` and `deliver`.")
    base_dir: str = Field("", exclude=True)  # the config file's directory; not configurable

    @model_validator(mode="after")
    def _sink_names_unique(self) -> "Settings":
        names = [s.name for s in self.sinks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"sink names must be unique: {', '.join(twice)}")
        return self

    def resolve(self, path: str) -> Path:
        """A path from the config (absolute once loaded; relative to ``base_dir`` for settings
        built without :func:`load_settings`)."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def rules_dir(self) -> Path:
        return self.resolve(self.rules.directory)


# --- layering ------------------------------------------------------------------------------------

Loc = tuple[Union[str, int], ...]


@dataclass
class Provenance:
    """Where each value of the effective config came from: ``origins`` maps a key path to the
    layer that set it (a whole list, or a mapping key); ``dirs`` maps each layer to the folder
    its relative paths start from."""

    origins: dict[Loc, str] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the layers that are config files, in order

    def origin(self, loc: Loc) -> str:
        """The layer that set the value at ``loc``; built-in model defaults are "default"."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.origins:
                return self.origins[loc[:n]]
        return DEFAULT_ORIGIN

    def blame(self, loc: Loc) -> str:
        """The layer to name in an error at ``loc``: the one that set it, or for a mapping
        checked as a whole, the last layer that set anything inside it (the default is valid on
        its own, so a later layer's value made it wrong)."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.origins:
                return self.origins[loc[:n]]
        inside = {o for k, o in self.origins.items() if k[:len(loc)] == loc and o in self.files}
        return max(inside, key=self.files.index) if inside else DEFAULT_ORIGIN

    def where(self, origin: str) -> str:
        """An origin as an error names it: the default by its file path."""
        return str(DEFAULT_CONFIG) if origin == DEFAULT_ORIGIN else origin


def merge(base: Mapping[str, Any], over: Mapping[str, Any], origin: str,
          origins: dict[Loc, str], loc: Loc = ()) -> dict[str, Any]:
    """``over`` merged onto ``base``: mappings key by key, anything else (lists included)
    replaced as a whole; ``origins`` records ``origin`` for every key ``over`` set."""
    out = dict(base)
    for key, value in over.items():
        here = loc + (key,)
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value, origin, origins, here)
            continue
        out[key] = value
        for inner in [k for k in origins if k[:len(here)] == here]:
            del origins[inner]
        origins[here] = origin
    return out


def _read_layer(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if "base_dir" in doc:
        raise ConfigError(f"{path}: base_dir: not a configurable key")
    return doc


def _nested(dotted: str, value: object) -> dict[str, Any]:
    """``store__url`` -> ``{"store": {"url": value}}``."""
    doc: Any = value
    for key in reversed(dotted.split("__")):
        doc = {key: doc}
    return doc


def _layers(path: str | Path | None, env: Mapping[str, str], overrides: Mapping[str, object],
            overrides_origin: str) -> list[tuple[str, dict[str, Any], Path, bool]]:
    """(origin, document, folder of its relative paths, whether it is a config file), lowest
    precedence first."""
    if not DEFAULT_CONFIG.is_file():
        raise ConfigError(f"embedded default config not found at {DEFAULT_CONFIG}: the "
                          "installation is incomplete; reinstall secretscope")
    default_dir = DEFAULT_CONFIG.resolve().parent
    layers = [(DEFAULT_ORIGIN, _read_layer(DEFAULT_CONFIG), default_dir, True)]
    if path is not None:
        path = Path(path)
        layers.append((str(path), _read_layer(path), path.resolve().parent, True))
    if env.get(ENV_STORE_URL):
        layers.append((f"env {ENV_STORE_URL}", _nested("store__url", env[ENV_STORE_URL]),
                       Path.cwd(), False))
    for dotted, value in overrides.items():
        layers.append((overrides_origin, _nested(dotted, value), Path.cwd(), False))
    return layers


def _resolve_paths(model: BaseModel, prov: Provenance, loc: Loc = ()) -> BaseModel:
    """``model`` with every relative ConfigPath made absolute against the folder of the layer
    that set it (a frozen model is rebuilt, not changed)."""
    updates: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value, here = getattr(model, name), loc + (name,)
        if isinstance(value, str) and field_is_path(info):
            folder = prov.dirs.get(prov.origin(here), prov.dirs[DEFAULT_ORIGIN])
            resolved = os.path.normpath(folder / Path(value).expanduser())
            if resolved != value:
                updates[name] = resolved
        elif isinstance(value, BaseModel):
            new = _resolve_paths(value, prov, here)
            if new is not value:
                updates[name] = new
        elif isinstance(value, tuple) and any(isinstance(v, BaseModel) for v in value):
            items = tuple(_resolve_paths(v, prov, here + (i,)) if isinstance(v, BaseModel) else v
                          for i, v in enumerate(value))
            if any(a is not b for a, b in zip(items, value)):
                updates[name] = items
    return model.model_copy(update=updates) if updates else model


def _problems(exc: ValidationError, prov: Provenance) -> str:
    """One message naming, per layer at fault, the dotted keys and what is wrong with them."""
    by_layer: dict[str, list[str]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        by_layer.setdefault(prov.where(prov.blame(loc)), []).append(
            f"{key}: {err['msg']}" if key else err["msg"])
    return "; ".join(f"{where}: {'; '.join(items)}" for where, items in by_layer.items())


def load_layered(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                 overrides_origin: str = "override",
                 **overrides: object) -> tuple[Settings, Provenance]:
    """The effective settings and where each value came from: the embedded default, ``path``
    merged over it, ``SECRETSCOPE_STORE_URL`` from ``env`` (``os.environ`` by default), then
    ``overrides`` given as ``section__key=value``."""
    env = os.environ if env is None else env
    prov = Provenance()
    doc: dict[str, Any] = {}
    for origin, layer, folder, is_file in _layers(path, env, overrides, overrides_origin):
        prov.dirs[origin] = folder
        if is_file:
            prov.files.append(origin)
        doc = merge(doc, layer, origin, prov.origins)
    base_dir = Path(path).resolve().parent if path is not None else prov.dirs[DEFAULT_ORIGIN]
    try:
        settings = Settings.model_validate({**doc, "base_dir": str(base_dir)})
    except ValidationError as exc:
        raise ConfigError(_problems(exc, prov)) from None
    return _resolve_paths(settings, prov), prov


def load_settings(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                  overrides_origin: str = "override", **overrides: object) -> Settings:
    """The effective settings: ``path`` (if any) layered over the embedded default, see
    :func:`load_layered`."""
    settings, _ = load_layered(path, env=env, overrides_origin=overrides_origin, **overrides)
    return settings  # type: ignore[return-value]
