"""The types at the delivery boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Delivery:
    """One finding to send to one sink: its id, severity and OCSF document (the canonical form
    stored in the findings table; sinks render other formats from it)."""

    finding_id: str
    severity_id: int
    ocsf: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one delivery. ``retryable`` failures are tried again under the retry
    policy (honouring ``retry_after`` seconds if the product said so); others are dead-lettered
    with ``reason``."""

    finding_id: str
    ok: bool
    retryable: bool = False
    reason: str = ""
    retry_after: float | None = None

    @classmethod
    def delivered(cls, finding_id: str) -> "Outcome":
        return cls(finding_id, True)


@runtime_checkable
class Sink(Protocol):
    name: str
    batch_size: int

    def send(self, items: Sequence[Delivery]) -> list[Outcome]:
        """Send up to ``batch_size`` deliveries; one outcome per item, in order. Must not raise
        for network errors or product errors: those become outcomes."""
        ...

    def close(self) -> None:
        ...
