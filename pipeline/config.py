"""Configuration: YAML into validated, frozen settings.

Unknown keys are errors, and every error names the file and the key. Detector ``type`` values
are looked up in :data:`DETECTOR_TYPES`. Secrets never live in the YAML; they come from the
environment when sinks need them.
"""

from __future__ import annotations

import ipaddress
import re
from importlib.resources import as_file
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, ValidationError,
                      field_validator, model_validator)

from secretscope.delivery.config import DeliverySettings, SinkSettings
from secretscope.errors import ConfigError
from secretscope.features import FEATURE_NAMES

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
    url: str = "sqlite:///secretscope.db"
    # Share of baseline (non-flagged) feature vectors kept for `secretscope train`; 0 disables.
    # share of learned feature vectors kept for `secretscope train` (by a hash of the event id)
    feature_history_sample: float = Field(0.02, ge=0, le=1)
    # How long a command waits out an unreachable store (retrying with backoff) before it fails;
    # null: as long as it takes. `run` and the `deliver` worker always wait as long as it takes.
    outage_seconds: float | None = Field(300.0, gt=0)


class InputSettings(_Strict):
    max_record_bytes: int = Field(1 << 20, gt=0)
    max_field_chars: int = Field(1024, gt=0)
    join_timeout_seconds: float = Field(30.0, ge=0)


class Segment(_Strict):
    name: str = Field(min_length=1)
    cidr: str

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

    name: str = Field(min_length=1)
    paths: str

    @field_validator("paths")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


class RulesSettings(_Strict):
    directory: str = "rules"


class _DetectorBase(_Strict):
    # What a firing exactly at ``threshold`` counts as before the ensemble combines it with the
    # other detectors (models/ensemble.py): "low" makes a detector corroborating evidence that
    # raises a finding on its own only well above its threshold.
    severity_at_threshold: Literal["low", "medium"] = "medium"


class HalfSpaceTreesSettings(_DetectorBase):
    type: Literal["halfspacetrees"]
    name: str = "hst"
    n_trees: int = Field(10, ge=1, le=100)
    height: int = Field(8, ge=1, le=16)
    window_size: int = Field(250, ge=2)
    seed: int = 42
    threshold: float = Field(0.97, gt=0, le=1)
    high_threshold: float = Field(0.99, gt=0, le=1)
    min_history: int = Field(50, ge=0)
    min_history_days: float = Field(1.0, ge=0)
    # Cold start: a new identity is scored once its peer group has this much history and members.
    min_peer_history: int = Field(1000, ge=0)
    min_peer_members: int = Field(2, ge=1)


class RobustBaselineSettings(_DetectorBase):
    """Per-identity rolling median and MAD of hourly peaks (models/baseline.py)."""

    type: Literal["robustbaseline"]
    name: str = "baseline"
    measures: tuple[str, ...] = ("requests_count_1m", "requests_count_1h",
                                 "secrets_distinct_1h", "denied_count_5m")  # feature names
    window_hours: int = Field(168, ge=3, le=24 * 366)  # active hours kept per identity
    min_hours: int = Field(24, ge=1)  # active hours in the window before it may fire
    threshold: float = Field(0.95, gt=0, lt=1)  # score = 1 - exp(-z / z_scale)
    high_threshold: float = Field(0.99, gt=0, lt=1)
    z_floor: float = Field(0.3, gt=0)  # added to 1.4826 * MAD (log1p scale)
    z_scale: float = Field(2.0, gt=0)

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

    type: Literal["isolationforest"]
    name: str = "iforest"
    model_path: str  # the .skops file; relative to the config file's directory
    threshold: float = Field(0.999, gt=0, le=1)  # calibrated: share of training rows below
    high_threshold: float = Field(0.9999, gt=0, le=1)
    min_history: int = Field(50, ge=0)

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


class _IdentityMatch(_Strict):
    """Which identities an entry covers: exact ids, display-name globs, or holders of a policy."""

    identities: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()  # fnmatch globs, e.g. "kubernetes-payments-*"
    policies: tuple[str, ...] = ()  # any identity holding one of these

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

    identities: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()  # fnmatch globs
    policies: tuple[str, ...] = ()  # any identity holding one of these
    segments: tuple[str, ...] = ()  # segment names from `segments`, e.g. a scanner's network
    detectors: tuple[str, ...] = ("*",)  # globs over detector names and rule ids
    expires: AwareDatetime  # an allowlist entry must end; compared with event time
    note: str = Field(min_length=1)  # why it is allowed, and who said so

    @model_validator(mode="after")
    def _names_someone(self) -> "AllowEntry":
        if not (self.identities or self.display_names or self.policies or self.segments):
            raise ValueError("name at least one of identities, display_names, policies or "
                             "segments")
        return self


class ChangeWindow(_IdentityMatch):
    """A deploy, rotation or maintenance window: an expected burst for these identities."""

    start: AwareDatetime
    end: AwareDatetime
    kind: Literal["deploy", "rotation", "maintenance"] = "maintenance"
    detectors: tuple[str, ...] = WINDOW_DETECTORS
    note: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> "ChangeWindow":
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class TriageSettings(_Strict):
    # One finding per identity per incident: later firings within this much event time of the
    # incident's last one are merged into it (unless they are more severe).
    incident_minutes: float = Field(60, ge=0)
    # A closed finding whose activity resumes (a shared reason code or detector) within this much
    # event time of its close is reopened rather than a new finding: a slow campaign is one
    # finding that grows. 0: never reopened.
    campaign_hours: float = Field(24, ge=0)
    # A growing incident's finding is re-sent (an Update version) at most once per this much
    # event time, and at once when its severity rises; the Close carries whatever is left.
    update_minutes: float = Field(5, ge=0)
    max_related_events: int = Field(100, ge=1, le=10_000)
    # Findings below this severity are counted but not raised (a low rule on its own is a
    # signal; it still adds to the calibrated score of an event other detectors flag).
    min_severity: Literal["informational", "low", "medium", "high", "critical"] = "medium"
    allowlist: tuple[AllowEntry, ...] = ()
    change_windows: tuple[ChangeWindow, ...] = ()
    # JSON lines of change windows (the fields of ChangeWindow) from a deploy or rotation system;
    # relative to the config file's directory.
    change_window_feed: str | None = None
    # A finding labelled false positive suppresses findings of the same identity with the same
    # leading reason for this long (event time) after it.
    false_positive_days: float = Field(7, ge=0)
    labels_refresh_seconds: float = Field(60, ge=0)  # how often a running pipeline rereads labels


class RunnerSettings(_Strict):
    batch_size: int = Field(256, ge=1, le=100_000)
    progress_seconds: float = Field(5, ge=0)


class KafkaSettings(_Strict):
    """Kafka in (audit topics) and between the stages. Credentials come from the environment
    or a file named here, never from the YAML itself."""

    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    audit_topics: tuple[str, ...] = ("vault-audit",)
    events_topic: str = "secretscope.events"  # stage 1 -> stage 2, keyed by identity
    dead_letter_topic: str = "secretscope.dead-letters"
    parse_group: str = "secretscope-parse"
    score_group: str = "secretscope-score"
    client_id: str = "secretscope"
    events_partitions: int = Field(4, ge=1)  # created if missing; the unit of scale-out for scoring
    replication_factor: int = Field(1, ge=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password_env: str | None = None  # name of the environment variable holding it
    sasl_password_file: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    max_poll_records: int = Field(2000, ge=1, le=10_000)
    poll_timeout_ms: int = Field(200, ge=1)
    session_timeout_ms: int = Field(10_000, ge=1000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    allowed_lateness_seconds: float = Field(5.0, gt=0)  # disorder tolerated within one partition
    idle_seconds: float = Field(2.0, gt=0)  # a caught-up partition this quiet releases its calls
    snapshot_seconds: float = Field(5.0, ge=0)  # how often stage 2 saves state and commits
    commit_seconds: float = Field(1.0, ge=0)  # how often stage 1 flushes, sends watermarks, commits

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

    host: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535)


class RunSettings(_Strict):
    source: Literal["kafka", "socket"] = "kafka"
    stages: Literal["both", "parse", "score"] = "both"  # which Kafka stages this process runs


class MetricsSettings(_Strict):
    """`run` and `deliver` serve /metrics (Prometheus), /livez and /readyz on this address when
    ``port`` is set (0: any free port, logged at start)."""

    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=0, le=65535)


class Settings(_Strict):
    store: StoreSettings = StoreSettings()
    input: InputSettings = InputSettings()
    segments: tuple[Segment, ...] = ()
    environments: tuple[Environment, ...] = ()
    rules: RulesSettings = RulesSettings()
    detectors: tuple[DetectorSettings, ...] = ()
    triage: TriageSettings = TriageSettings()
    runner: RunnerSettings = RunnerSettings()
    run: RunSettings = RunSettings()
    kafka: KafkaSettings = KafkaSettings()
    socket: SocketSettings = SocketSettings()
    sinks: tuple[SinkSettings, ...] = ()
    delivery: DeliverySettings = DeliverySettings()
    metrics: MetricsSettings = MetricsSettings()
    base_dir: str = Field("", exclude=True)  # directory of the config file; relative paths start here

    @model_validator(mode="after")
    def _sink_names_unique(self) -> "Settings":
        names = [s.name for s in self.sinks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"sink names must be unique: {', '.join(twice)}")
        return self

    def resolve(self, path: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def rules_dir(self) -> Path:
        path = Path(self.rules.directory)
        return path if path.is_absolute() else Path(self.base_dir) / path


def load_settings(path: str | Path | None = None, **overrides: object) -> Settings:
    """Load and validate a config file (the embedded default when ``path`` is None)."""
    if path is None and not DEFAULT_CONFIG.is_file():
        raise ConfigError(f"embedded default config not found at {DEFAULT_CONFIG}: the "
                          "installation is incomplete; reinstall secretscope or pass --config")
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if "base_dir" in doc:
        raise ConfigError(f"{path}: base_dir: not a configurable key")
    doc = {**doc, "base_dir": str(path.resolve().parent)}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition("__")
        doc[section] = {**doc.get(section, {}), key: value}
    try:
        return Settings.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
