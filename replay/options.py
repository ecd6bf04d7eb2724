"""What a replay is asked for, checked once and held as integer nanoseconds.

Users pass ISO strings (naive means UTC), aware datetimes or integer ns for times, and ``"1s"``
style text (or ``timedelta``/int ns) for the interval; everything below this module sees only
``ReplayOptions`` with integers, so the grid arithmetic is exact.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from kbook.api import parse_api
from kbook.errors import UsageError
from kbook.pairs import common_name, parse_pair
from kbook.units import parse_duration, utc_text

MAX_SILENCE_NS = 10_000_000_000
"""``--max-silence``'s default: the recorder's stall bound (Kraken sends a heartbeat every second
on an idle connection, so ten silent seconds mean the connection was gone)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

TimeLike = str | datetime | date | int | None
DurationLike = str | timedelta | int


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """A checked replay request; times are integer ns since the Unix epoch (UTC)."""

    every_ns: int = 1_000_000_000
    levels: int = 10
    pairs: frozenset[str] | None = None
    """Common pair names (``BTC/USD``) to keep, or None for every pair found."""
    start_ns: int | None = None
    """First row time wanted (inclusive)."""
    end_ns: int | None = None
    """Rows stop before this time (exclusive)."""
    workers: int = 1
    task_bytes: int = 16 << 20
    """A UTC day of one source with more compressed segment bytes than this is cut into tasks
    of about this size (``replay.plan.plan_tasks``): a day of a busy pair keeps several cores
    busy, and a task stays bounded in time and memory."""
    api: str | None = None
    """Replay only segments of this Kraken WebSocket API (``v1``/``v2``), or None for all."""
    max_silence_ns: int = MAX_SILENCE_NS
    """A source's book is valid at ``t`` only if the source received a line (any frame,
    heartbeats included) within this long before ``t`` (``replay.sampler``)."""


def make_options(
    every: DurationLike = "1s",
    levels: int = 10,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    workers: int | None = 1,
    api: str | None = None,
    max_silence: DurationLike = MAX_SILENCE_NS,
) -> ReplayOptions:
    """Check and convert user input; raises ``UsageError`` naming the bad value."""
    every_ns = parse_every(every)
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise UsageError(f"--levels must be a positive whole number, got {levels!r}")
    start_ns = to_ns(start, "--start")
    end_ns = to_ns(end, "--end")
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise UsageError(
            f"empty time range: --start {utc_text(start_ns)} is not before --end {utc_text(end_ns)}"
        )
    if api is not None:
        api = parse_api(api)
    max_silence_ns = parse_every(max_silence, "--max-silence")
    return ReplayOptions(
        max_silence_ns=max_silence_ns,
        api=api,
        every_ns=every_ns,
        levels=levels,
        pairs=parse_pairs(pairs),
        start_ns=start_ns,
        end_ns=end_ns,
        workers=resolve_workers(workers),
    )


def parse_every(value: DurationLike, name: str = "--every") -> int:
    """A positive duration in ns (the sampling interval, or ``--max-silence``)."""
    if isinstance(value, timedelta):
        ns = (value.days * 86_400 + value.seconds) * 1_000_000_000 + value.microseconds * 1_000
    elif isinstance(value, int) and not isinstance(value, bool):
        ns = value
    elif isinstance(value, str):
        ns = parse_duration(value, name)
    else:
        raise UsageError(f"{name} must be a duration such as 1s or 100ms, got {value!r}")
    if ns <= 0:
        raise UsageError(f"{name} must be positive, got {value!r}")
    return ns


def parse_pairs(pairs: Iterable[str] | str | None) -> frozenset[str] | None:
    """User pairs in either spelling (``XBT/USD``, ``BTC/USD``, ``btc-usd``) as common names."""
    if pairs is None:
        return None
    if isinstance(pairs, str):
        pairs = [pairs]
    names = frozenset(common_name(parse_pair(pair)) for pair in pairs)
    return names or None


def resolve_workers(workers: int | None) -> int:
    """``None`` or 0 means every core; negative counts are refused."""
    if workers is None or workers == 0:
        return os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"--workers must be a positive whole number, got {workers!r}")
    return workers


def to_ns(value: TimeLike, name: str = "time") -> int | None:
    """A time as integer ns since the epoch; naive datetimes and ISO strings are taken as UTC."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise UsageError(
                f"{name} {value!r} is not an ISO date/time such as 2026-11-21T00:00"
            ) from exc
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if not isinstance(value, datetime):
        raise UsageError(f"{name} must be an ISO string or a datetime, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    nanos = getattr(value, "nanosecond", 0)  # pandas.Timestamp keeps ns beyond microseconds
    return (
        (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000 + nanos
    )
