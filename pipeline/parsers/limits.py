"""Bounds on untrusted input: how big a record and its fields may be.

Oversize records are rejected (dead-lettered); oversize fields are cut and the cut is recorded on
the event so it can be counted.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_record_bytes: int = 1 << 20
    max_field_chars: int = 1024
    # orjson refuses nesting deeper than 1024 itself; this lower bound is checked only on records
    # orjson accepted, and only when they are suspiciously bracket-heavy (see check_depth).
    max_depth: int = 64


def check_depth(raw: bytes, max_depth: int) -> int:
    """Return the JSON nesting depth of ``raw`` if it exceeds ``max_depth``, else 0.

    Counts brackets outside strings. Called only when a cheap pre-check says the record could be
    that deep, so ordinary lines never pay for it.
    """
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            depth += 1
            if depth > max_depth:
                return depth
        elif byte in (0x7D, 0x5D):
            depth -= 1
    return 0
