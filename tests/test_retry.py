"""The one retry policy of every sink, and sink credentials from the environment or a file."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from secretscope.delivery.config import Credential
from secretscope.delivery.retry import RetryPolicy, retry_after_seconds, retryable_status
from secretscope.errors import ConfigError


@pytest.mark.parametrize("status, retry", [
    (408, True), (429, True), (500, True), (502, True), (503, True), (504, True), (599, True),
    (501, False), (400, False), (401, False), (403, False), (404, False), (409, False),
    (413, False), (422, False), (200, False), (301, False)])
def test_which_statuses_are_retried(status, retry):
    assert retryable_status(status) is retry


def test_retry_after_as_seconds_or_http_date():
    now = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True),
                               now) == pytest.approx(90.0)
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=5), usegmt=True),
                               now) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None


def test_backoff_is_exponential_with_full_jitter_capped_and_within_budget():
    policy = RetryPolicy(base_seconds=1.0, cap_seconds=8.0, budget_seconds=100.0,
                         rng=random.Random(1))
    for attempt in range(1, 8):
        ceiling = min(8.0, 2.0 ** attempt)
        draws = [policy.next_delay(attempt, 0.0) for _ in range(400)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.8 * ceiling and min(draws) < 0.2 * ceiling  # the whole range
    # a Retry-After is a floor; past the budget the delivery is given up
    assert policy.next_delay(1, 0.0, retry_after=30.0) >= 30.0
    assert policy.next_delay(1, 95.0, retry_after=30.0) is None
    late = [policy.next_delay(3, 99.99) for _ in range(50)]
    assert all(d is None or d <= 0.01 for d in late) and None in late


def test_credentials_come_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HEC_TOKEN", "s3cret")
    assert Credential(env="HEC_TOKEN").read(tmp_path, "sinks.0.token") == "s3cret"
    (tmp_path / "pd.key").write_text("routing-key\n")
    assert Credential(file="pd.key").read(tmp_path, "sinks.1.routing_key") == "routing-key"
    monkeypatch.delenv("HEC_TOKEN")
    with pytest.raises(ConfigError, match="sinks.0.token: environment variable HEC_TOKEN"):
        Credential(env="HEC_TOKEN").read(tmp_path, "sinks.0.token")
    with pytest.raises(ConfigError, match="sinks.1.routing_key: cannot read"):
        Credential(file="missing.key").read(tmp_path, "sinks.1.routing_key")
    with pytest.raises(ValueError, match="exactly one of env or file"):
        Credential(env="A", file="b")
