"""Bounds on untrusted input: how big a record and its fields may be.

Oversize records are rejected (dead-lettered); oversize fields are cut and the cut is recorded on
the event so it can be counted. Nesting depth needs no knob of its own: parsers decode into
fixed-depth types (nothing deeper is ever built as Python objects) and the decoder rejects input
nested deeper than its recursion guard.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_record_bytes: int = 1 << 20
    max_field_chars: int = 1024
