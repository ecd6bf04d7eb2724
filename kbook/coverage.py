"""``kbook verify --coverage``/``--by-day``: how much of the time each pair had a valid book.

Coverage is measured on replay's own timeline (``replay.api.replay_table``, one level a side),
never by a second implementation of its rules: a grid time counts as covered exactly when replay
writes a valid row there (a source with a checked book that showed life within ``--max-silence``,
``replay.timeline``), and as invalid when replay writes an invalid row. So verify's invalid time
for an outage is what a replay at the same ``--every`` marks invalid, to the grid step. Days with
no data at all get no rows in replay and no entry here; a day's invalid time includes the grid
times between two recordings of that day (no recorder running).

Each grid time stands for ``every`` of time: ``valid_ns`` is the valid rows times ``every``, and
an invalid span ``(first, stop, cause)`` runs from the first invalid grid time to one step after
the last. The spans and their causes (disconnect, checksum, malformed, silence, no recorder
running: ``replay.sampler.Cause``) are the ones replay noted in its summary while writing the
rows, never worked out again here. Per source (``replay.plan.Stream.label``,
``v2 book-100 run 1f2e3d4c``): the time its rows were the ones chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kbook.errors import UsageError
from kbook.segment import SegmentPath
from kbook.units import DAY, utc_day, utc_text
from replay.options import DurationLike, make_options
from replay.sampler import Cause, PairSummary


@dataclass
class DayCoverage:
    """One UTC day of one pair."""

    valid_ns: int = 0
    invalid_ns: int = 0
    causes: dict[Cause, int] = field(default_factory=dict)
    """Cause -> that day's invalid time for it (they add up to ``invalid_ns``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "valid_s": self.valid_ns / 1e9,
            "invalid_s": self.invalid_ns / 1e9,
            "causes": {str(cause): ns / 1e9 for cause, ns in sorted(self.causes.items())},
        }


@dataclass
class PairCoverage:
    """One pair's coverage over the whole recording."""

    valid_ns: int = 0
    invalid_ns: int = 0
    invalid_spans: list[tuple[int, int, Cause]] = field(default_factory=list)
    """``(first, stop, cause)``: from the first invalid grid time to one step after the last."""
    sources: dict[str, int] = field(default_factory=dict)
    """Source label -> the time its rows were chosen (valid)."""
    days: dict[str, DayCoverage] = field(default_factory=dict)
    """``YYYY-MM-DD`` -> that day's coverage, for days with data."""

    def to_json(self) -> dict[str, Any]:
        return {
            "valid_s": self.valid_ns / 1e9,
            "invalid_s": self.invalid_ns / 1e9,
            "invalid_spans": [
                {"from": utc_text(a), "to": utc_text(b), "cause": str(cause)}
                for a, b, cause in self.invalid_spans
            ],
            "sources": {label: ns / 1e9 for label, ns in sorted(self.sources.items())},
            "days": {day: d.to_json() for day, d in sorted(self.days.items())},
        }


def measure_coverage(
    paths: Iterable[SegmentPath], every: DurationLike = "1s", max_silence: DurationLike = "10s"
) -> dict[str, PairCoverage]:
    """Each pair's coverage (common name -> ``PairCoverage``), from replay's timeline on a grid
    of ``every``, stale after ``max_silence`` (both as ``kbook replay`` takes them; a bad value
    is a ``UsageError``). Segments with no book replay gives rows for have no pairs here."""
    from replay.api import table_and_result

    options = make_options(every, levels=1, max_silence=max_silence)
    try:
        table, result = table_and_result(list(paths), options)
    except UsageError:  # the options are good: no book to replay (verify's counts say why)
        return {}
    table = table.select(["ts", "pair", "valid", "source"])
    found: dict[str, PairCoverage] = {}
    for pair in sorted(pc.unique(table.column("pair")).to_pylist()):
        rows = table.filter(pc.equal(table.column("pair"), pair))
        found[pair] = _pair_coverage(rows, result.pairs[pair], options.every_ns)
    return found


def _pair_coverage(rows: pa.Table, summary: PairSummary, every_ns: int) -> PairCoverage:
    ts = rows.column("ts").cast(pa.int64()).to_numpy()
    valid = rows.column("valid").to_numpy(zero_copy_only=False).astype(bool)
    coverage = PairCoverage(
        valid_ns=int(valid.sum()) * every_ns, invalid_ns=int((~valid).sum()) * every_ns
    )
    coverage.invalid_spans = [(a, b + every_ns, cause) for a, b, cause in summary.invalid_spans]
    chosen = pc.value_counts(pc.filter(rows.column("source"), pa.array(valid)))
    for item in chosen.to_pylist():
        if item["values"] is not None:
            coverage.sources[item["values"]] = item["counts"] * every_ns
    days = ts // DAY
    for day in np.unique(days):
        on_day = days == day
        good = int(valid[on_day].sum())
        coverage.days[utc_day(int(day) * DAY)] = DayCoverage(
            valid_ns=good * every_ns, invalid_ns=(int(on_day.sum()) - good) * every_ns
        )
    for first, stop, cause in coverage.invalid_spans:
        while first < stop:  # a span may run past midnight into the next day's rows
            rows = -(-(min(stop, (first // DAY + 1) * DAY) - first) // every_ns)
            causes = coverage.days[utc_day(first)].causes
            causes[cause] = causes.get(cause, 0) + rows * every_ns
            first += rows * every_ns
    return coverage
