"""Sinks: one module per product, each implementing :class:`secretscope.delivery.model.Sink`.

``build_sink(settings, base_dir)`` picks the implementation by the settings' ``type`` and reads
its credentials (relative files resolve against ``base_dir``, the config file's directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from secretscope.delivery.model import Sink
from secretscope.delivery.sinks.azure import AzureLogs
from secretscope.delivery.sinks.elastic import Elastic
from secretscope.delivery.sinks.pagerduty import PagerDuty
from secretscope.delivery.sinks.secops import SecOps
from secretscope.delivery.sinks.slack import Slack
from secretscope.delivery.sinks.splunk import SplunkHec
from secretscope.delivery.sinks.syslog import Syslog
from secretscope.delivery.sinks.webhook import Webhook
from secretscope.errors import ConfigError

SINK_TYPES: dict[str, Any] = {
    "webhook": Webhook,
    "splunk_hec": SplunkHec,
    "elastic": Elastic,
    "azure_logs": AzureLogs,
    "secops": SecOps,
    "syslog": Syslog,
    "slack": Slack,
    "pagerduty": PagerDuty,
}

__all__ = ["SINK_TYPES", "build_sink", "AzureLogs", "Elastic", "PagerDuty", "SecOps", "Slack",
           "SplunkHec", "Syslog", "Webhook"]


def build_sink(settings: Any, base_dir: str | Path) -> Sink:
    """The sink for one entry of the ``sinks:`` config section; a relative ``ca_file`` is taken
    from the config file's directory, like credential files."""
    try:
        cls = SINK_TYPES[settings.type]
    except KeyError:
        raise ConfigError(f"sinks.{settings.name}: unknown sink type {settings.type!r}") from None
    if settings.ca_file and not Path(settings.ca_file).is_absolute():
        settings = settings.model_copy(update={"ca_file": str(Path(base_dir) / settings.ca_file)})
    return cls(settings, base_dir)
