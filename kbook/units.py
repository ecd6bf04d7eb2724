"""Durations as users type them (``100ms``, ``1s``, ``5m``, ``1h``, ``1d``), as integer nanoseconds.

Integer nanoseconds match every timestamp inside kbook, so grids and rotation boundaries are exact:
``"0.1s"`` and ``"100ms"`` are the same 100_000_000 ns, with no float rounding.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from kbook.errors import UsageError

UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3_600 * 1_000_000_000,
    "d": 86_400 * 1_000_000_000,
}
_DURATION = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([a-z]+)\s*$")


def parse_duration(text: str) -> int:
    """``"1.5s"`` -> 1_500_000_000. A unit is required; raises ``UsageError`` naming the text.

    Zero and negative values parse (callers decide whether they make sense); a value that is not
    a whole number of nanoseconds is refused rather than rounded.
    """
    match = _DURATION.match(text.lower())
    if match is None or match.group(2) not in UNITS_NS:
        units = ", ".join(UNITS_NS)
        raise UsageError(f"duration {text!r} is not a number with a unit ({units}), e.g. 1s")
    try:
        value = Decimal(match.group(1)) * UNITS_NS[match.group(2)]
    except InvalidOperation as exc:  # pragma: no cover - the pattern only admits numbers
        raise UsageError(f"duration {text!r} is not a number") from exc
    if value != value.to_integral_value():
        raise UsageError(f"duration {text!r} is not a whole number of nanoseconds")
    return int(value)


SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*$")


def parse_size(text: str) -> int:
    """``"500MB"`` -> 500_000_000, ``"2GiB"`` -> 2_147_483_648 (decimal and binary units, as
    ``df -H`` and ``df -h`` show them); a unit is required. Raises ``UsageError`` naming the text."""
    match = _SIZE.match(text.lower())
    if match is None or match.group(2) not in SIZE_UNITS:
        raise UsageError(
            f"size {text!r} is not a number with a unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), "
            "e.g. 2GB"
        )
    return int(Decimal(match.group(1)) * SIZE_UNITS[match.group(2)])
