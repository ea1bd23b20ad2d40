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
