from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT.parent / "shared" / "samples"
CANARY = "CANARY-PLAINTEXT-SECRET-8f3a"
VAULT_SAMPLES = sorted(SAMPLES.glob("vault_audit_*.jsonl")) + [SAMPLES / "vault_audit_prefixed.log"]


@pytest.fixture(scope="session")
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.fail(f"sample audit lines not found at {SAMPLES} (tests read ../shared/samples)")
    return SAMPLES


# Fixtures that start a real server, and the marker a test using them must carry (so the fast
# subset, -m "not kafka and not postgres ...", never waits for a broker or a database).
SERVER_FIXTURES = {"kafka_broker": "kafka", "postgres_url": "postgres"}


def pytest_collection_modifyitems(items):
    """Mark every test that uses a server fixture, even through other fixtures."""
    for item in items:
        for fixture, marker in SERVER_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker):
                item.add_marker(marker)
