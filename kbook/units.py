"""Durations as users type them (``100ms``, ``1s``, ``5m``, ``1h``, ``1d``), as integer nanoseconds,
and integer nanoseconds as text (durations, UTC times and dates): kbook's one home for both.

Integer nanoseconds match every timestamp inside kbook, so grids and rotation boundaries are exact:
``"0.1s"`` and ``"100ms"`` are the same 100_000_000 ns, with no float rounding.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
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


def parse_duration(text: str, option: str = "duration") -> int:
    """``"1.5s"`` -> 1_500_000_000. A unit is required; raises ``UsageError`` naming ``option``
    (``--every``) and the text.

    Zero and negative values parse (callers decide whether they make sense); a value that is not
    a whole number of nanoseconds is refused rather than rounded.
    """
    match = _DURATION.match(text.lower())
    if match is None or match.group(2) not in UNITS_NS:
        units = ", ".join(UNITS_NS)
        raise UsageError(f"{option} {text!r} is not a number with a unit ({units}), e.g. 1s")
    try:
        value = Decimal(match.group(1)) * UNITS_NS[match.group(2)]
    except InvalidOperation as exc:  # pragma: no cover - the pattern only admits numbers
        raise UsageError(f"{option} {text!r} is not a number") from exc
    if value != value.to_integral_value():
        raise UsageError(f"{option} {text!r} is not a whole number of nanoseconds")
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


SECOND = UNITS_NS["s"]
MS = UNITS_NS["ms"]
DAY = UNITS_NS["d"]


def format_duration(ns: int) -> str:
    """``100_000_000`` -> ``100ms``: the largest unit that divides ``ns`` exactly."""
    for unit, size in sorted(UNITS_NS.items(), key=lambda item: -item[1]):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"


def utc_text(ns: int | None, digits: int | None = None) -> str:
    """ISO 8601 UTC of integer ns since the epoch, ``-`` for None; exact by default
    (``2026-11-21T10:00:00.1Z``: every digit up to the last that is not zero), else with exactly
    ``digits`` decimals (3: milliseconds, 0: whole seconds), cut, never rounded up."""
    if ns is None:
        return "-"
    seconds, rest = divmod(ns, SECOND)
    text = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{rest:09d}"
    fraction = fraction.rstrip("0") if digits is None else fraction[:digits]
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def utc_day(ns: int) -> str:
    """The UTC date of ``ns``, ``YYYY-MM-DD`` (segment folders, the dataset's ``date``)."""
    return datetime.fromtimestamp(ns // SECOND, tz=UTC).strftime("%Y-%m-%d")


LATEST_NS = (1 << 63) - 1
"""The latest time a timestamp[ns] column holds (2262-04-11): later exchange times are none."""
_EXCHANGE_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,9}))?Z"
)


def seconds_text_ns(text: object) -> int | None:
    """A v1 level's exchange time (``"1693415327.935623"``, seconds since the epoch as text) as
    integer ns, exactly; None for anything else (Kraken sent no usable time), or after
    ``LATEST_NS``. Once per level
    of the deltas, hence string methods rather than a regular expression."""
    if type(text) is not str:
        return None
    whole, dot, fraction = text.partition(".")
    if not (0 < len(whole) <= 11 and whole.isascii() and whole.isdigit()):
        return None
    if dot and not (0 < len(fraction) <= 9 and fraction.isascii() and fraction.isdigit()):
        return None
    ns = int(whole) * SECOND + int(fraction.ljust(9, "0"))
    return ns if ns <= LATEST_NS else None


def rfc3339_ns(text: object) -> int | None:
    """A v2 update's exchange time (``"2026-11-21T10:00:00.123456Z"``) as integer ns, exactly;
    None for anything else (Kraken sent no usable time), before 1970 or after ``LATEST_NS``."""
    if type(text) is not str:
        return None
    match = _EXCHANGE_RFC3339.fullmatch(text)
    if match is None:
        return None
    try:
        moment = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    ns = int(moment.timestamp()) * SECOND + int((match.group(2) or "").ljust(9, "0"))
    return ns if 0 <= ns <= LATEST_NS else None
