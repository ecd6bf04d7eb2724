"""``kbook verify --coverage``/``--by-day``: how much of the time each pair had a valid book.

Coverage is measured on replay's own timeline (``replay.api.replay_table``, one level a side),
never by a second implementation of its rules: a grid time counts as covered exactly when replay
writes a valid row there (a source with a checked book that showed life within ``--max-silence``,
``replay.timeline``), and as invalid when replay writes an invalid row. So verify's invalid time
for an outage is what a replay at the same ``--every`` marks invalid, to the grid step. Days with
no data at all get no rows in replay and no entry here; a day's invalid time includes the grid
times between two recordings of that day (no recorder running).

Each grid time stands for ``every`` of time: ``valid_ns`` is the valid rows times ``every``, and
an invalid span ``(first, stop)`` runs from the first invalid grid time to one step after the
last. Per source (``replay.plan.Stream.label``, ``v2 book-100 run 1f2e3d4c``): the time its rows
were the ones chosen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kbook.errors import UsageError
from kbook.units import DAY, utc_day, utc_text
from replay.options import DurationLike, parse_every


@dataclass
class DayCoverage:
    """One UTC day of one pair."""

    valid_ns: int = 0
    invalid_ns: int = 0


@dataclass
class PairCoverage:
    """One pair's coverage over the whole recording."""

    valid_ns: int = 0
    invalid_ns: int = 0
    invalid_spans: list[tuple[int, int]] = field(default_factory=list)
    """``(first, stop)``: from the first invalid grid time to one step after the last."""
    sources: dict[str, int] = field(default_factory=dict)
    """Source label -> the time its rows were chosen (valid)."""
    days: dict[str, DayCoverage] = field(default_factory=dict)
    """``YYYY-MM-DD`` -> that day's coverage, for days with data."""

    def to_json(self) -> dict[str, Any]:
        return {
            "valid_s": self.valid_ns / 1e9,
            "invalid_s": self.invalid_ns / 1e9,
            "invalid_spans": [[utc_text(a), utc_text(b)] for a, b in self.invalid_spans],
            "sources": {label: ns / 1e9 for label, ns in sorted(self.sources.items())},
            "days": {
                day: {"valid_s": d.valid_ns / 1e9, "invalid_s": d.invalid_ns / 1e9}
                for day, d in sorted(self.days.items())
            },
        }


def measure_coverage(
    paths: Iterable[Path], every: DurationLike = "1s", max_silence: DurationLike = "10s"
) -> dict[str, PairCoverage]:
    """Each pair's coverage (common name -> ``PairCoverage``), from replay's timeline on a grid
    of ``every``, stale after ``max_silence`` (both as ``kbook replay`` takes them; a bad value
    is a ``UsageError``). Segments with no book replay gives rows for have no pairs here."""
    from replay.api import replay_table

    every_ns = parse_every(every)
    max_silence_ns = parse_every(max_silence, "--max-silence")
    try:
        table = replay_table(list(paths), every=every_ns, levels=1, max_silence=max_silence_ns)
    except UsageError:  # the options are good: no book to replay (verify's counts say why)
        return {}
    table = table.select(["ts", "pair", "valid", "source"])
    found: dict[str, PairCoverage] = {}
    for pair in sorted(pc.unique(table.column("pair")).to_pylist()):
        rows = table.filter(pc.equal(table.column("pair"), pair))
        found[pair] = _pair_coverage(rows, every_ns)
    return found


def _pair_coverage(rows: pa.Table, every_ns: int) -> PairCoverage:
    ts = rows.column("ts").cast(pa.int64()).to_numpy()
    valid = rows.column("valid").to_numpy(zero_copy_only=False).astype(bool)
    coverage = PairCoverage(
        valid_ns=int(valid.sum()) * every_ns, invalid_ns=int((~valid).sum()) * every_ns
    )
    invalid_ts = ts[~valid]
    if len(invalid_ts):
        breaks = np.flatnonzero(np.diff(invalid_ts) != every_ns) + 1
        for run in np.split(invalid_ts, breaks):
            coverage.invalid_spans.append((int(run[0]), int(run[-1]) + every_ns))
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
    return coverage
