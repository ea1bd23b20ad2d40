"""README: "Secrets never go in the YAML": a literal credential in a config is refused at load,
naming the file and the key, and the error does not repeat the value."""

from __future__ import annotations

import pytest

from secretscope.config import load_settings
from secretscope.errors import ConfigError

VALUE = "hunter2-literal-credential"


@pytest.mark.parametrize("text, key", [
    (f"kafka: {{security_protocol: SASL_SSL, sasl_mechanism: PLAIN, sasl_username: u, "
     f"sasl_password: {VALUE}}}\n", "kafka.sasl_password"),
    (f"sinks: [{{type: splunk_hec, name: s, url: 'https://splunk:8088/services/collector/event', "
     f"token: {VALUE}}}]\n", "sinks.0"),
    (f"sinks: [{{type: webhook, name: w, url: 'https://soar.example/hook', secret: {VALUE}}}]\n",
     "sinks.0"),
    (f"sinks: [{{type: pagerduty, name: p, routing_key: {{value: {VALUE}}}}}]\n", "sinks.0"),
])
def test_literal_credential_is_refused_without_echoing_it(tmp_path, text, key):
    path = tmp_path / "literal.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    message = str(refused.value)
    assert str(path) in message and key in message
    assert VALUE not in message


def test_credential_from_the_environment_loads(tmp_path):
    """The control: the same sink with its token named by an environment variable."""
    path = tmp_path / "env.yaml"
    path.write_text("sinks: [{type: splunk_hec, name: s, "
                    "url: 'https://splunk:8088/services/collector/event', token: {env: HEC}}]\n")
    (sink,) = load_settings(path).sinks
    assert sink.token.env == "HEC"
