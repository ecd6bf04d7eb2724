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
