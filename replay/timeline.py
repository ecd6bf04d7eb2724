"""One timeline per pair: at each grid time, the row of the best source valid then.

Each source of a pair (``replay.plan``) is replayed on its own and writes its rows, exactly as a
lone recording would, into a spool (an Arrow IPC file, or in-memory batches); a pair with a single
source skips this stage. ``merge`` then reads the sources' rows side by side, in grid order, a
block of at most one row group at a time (memory stays bounded however long the recording), and
keeps, per grid time ``t``, the row of:

1. a source whose row at ``t`` is valid (it had a book, checked, and showed life within
   ``--max-silence``), the deepest channel first;
2. among equals, the one whose latest frame (``last_update``) is the most recent;
3. then the fixed order of sources (``replay.plan``: v2 first, then by first receive time, then
   by path).

If no source is valid at ``t`` the row is invalid (levels, ``depth`` and ``source`` null); it
keeps the counts of the first source (in the fixed order) with a row at ``t``, and that row's
cause (``replay.sampler.Cause``) in the summary's invalid spans; a grid time no source has a row
for is invalid for ``Cause.NO_RECORDER``. Rows exist where
any source has one; within one UTC day the grid is dense from the day's first row to its last
(grid times no source covers in between are invalid rows with zero counts and the latest
``last_update`` seen), and a day no source covers gets no rows. ``updates`` and
``checksum_failures`` are the chosen source's counts.

The output is cut into batches as one ``RowBuffer`` cuts them (``replay.tasks.Stitcher``), and
nothing here depends on how the sources were computed, so any number of workers writes the same
bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kbook.units import DAY
from replay.sampler import Cause, PairSummary, Span
from replay.tasks import Stitcher

CAUSES = list(Cause)
"""Causes by code (``_causes``); -1 is a valid row."""

NO_TIME = np.iinfo(np.int64).min


@dataclass
class SourceRows:
    """One source's rows of a pair, in time order, the depth its rows follow, and the causes
    of its invalid rows (its ``PairSummary.invalid_spans``)."""

    depth: int
    batches: Iterator[pa.Table]
    spans: Sequence[Span] = ()


class _Cursor:
    """Reads one source's batches in order, a slice at a time."""

    def __init__(self, source: SourceRows) -> None:
        self.depth = source.depth
        self.batches = source.batches
        spans = source.spans
        self.span_first = np.array([span[0] for span in spans], np.int64)
        self.span_last = np.array([span[1] for span in spans], np.int64)
        self.span_cause = np.array([CAUSES.index(span[2]) for span in spans], np.int8)
        self.table: pa.Table | None = None
        self.ts: np.ndarray = np.empty(0, np.int64)
        self.offset = 0
        self._advance()

    def _advance(self) -> None:
        while True:
            table = next(self.batches, None)
            if table is None:
                self.table = None
                return
            if table.num_rows:
                self.table = table
                self.ts = _ints(table.column("ts"))
                self.offset = 0
                return

    @property
    def next_ts(self) -> int | None:
        return None if self.table is None else int(self.ts[self.offset])

    def take_before(self, limit: int) -> pa.Table | None:
        """The rows with ``ts < limit`` (batches never span a day, blocks never do either)."""
        parts = []
        while self.table is not None:
            stop = int(np.searchsorted(self.ts, limit, side="left"))
            if stop > self.offset:
                parts.append(self.table.slice(self.offset, stop - self.offset))
            if stop < self.table.num_rows:
                self.offset = stop
                break
            self._advance()
        return pa.concat_tables(parts) if parts else None

    def causes(self, ts: np.ndarray) -> np.ndarray:
        """The cause code of this source's invalid rows at grid times ``ts``."""
        at = np.searchsorted(self.span_first, ts, side="right") - 1
        inside = (at >= 0) & (ts <= self.span_last[np.maximum(at, 0)])
        # Rows of a source are noted in its spans exactly; outside one, nothing voided it.
        return np.where(inside, self.span_cause[np.maximum(at, 0)], CAUSES.index(Cause.MALFORMED))


def merge(
    pair: str,
    channel: str,
    sources: Sequence[SourceRows],
    every: int,
    capacity: int,
    sink: Callable[[pa.Table], None],
    schema: pa.Schema,
) -> PairSummary:
    """Write ``pair``'s timeline from its ``sources`` (in the fixed order) into ``sink``, as
    tables of ``schema`` (``replay.columns.file_schema``)."""
    summary = PairSummary(pair, channel)
    stitcher = Stitcher(capacity, sink)
    cursors = [_Cursor(source) for source in sources]
    previous: int | None = None
    last_seen = NO_TIME
    while True:
        pending = [c.next_ts for c in cursors if c.next_ts is not None]
        if not pending:
            break
        first = min(pending)
        day_end = (first // DAY + 1) * DAY
        start = first
        if previous is not None and previous // DAY == first // DAY:
            start = previous + every  # dense within the day
        stop = min(start + capacity * every, day_end)
        count = (stop - start + every - 1) // every
        pieces = [(cursor, cursor.take_before(stop)) for cursor in cursors]
        table, choice, owner = _choose(pieces, start, every, count)
        more_today = any((t := c.next_ts) is not None and t < day_end for c in cursors)
        present = np.flatnonzero(choice >= 0)
        end = count if more_today else int(present[-1]) + 1 if len(present) else 0
        if end == 0:
            continue
        choice = choice[:end]
        out, last_seen = _rows(schema, table, choice, start, every, last_seen)
        valid = out.column("valid").to_numpy(zero_copy_only=False).astype(bool)
        _note(summary, start, every, _causes(cursors, valid, owner[:end], start, every))
        stitcher.add(out)
        previous = start + (end - 1) * every
    stitcher.flush()
    return summary


def _choose(
    pieces: Sequence[tuple[_Cursor, pa.Table | None]], start: int, every: int, count: int
) -> tuple[pa.Table | None, np.ndarray, np.ndarray]:
    """All sources' rows of the block in one table, and per grid time the index of the chosen
    row in it and of the piece it came from (-1: no source has a row there)."""
    best = np.full(count, -1, np.int64)
    best_piece = np.full(count, -1, np.int64)
    first_piece = np.full(count, -1, np.int64)
    best_depth = np.full(count, -1, np.int64)
    best_last = np.full(count, NO_TIME, np.int64)
    first_any = np.full(count, -1, np.int64)
    tables = []
    offset = 0
    for index, (cursor, table) in enumerate(pieces):
        if table is None:
            continue
        tables.append(table)
        at = (_ints(table.column("ts")) - start) // every
        rows = np.arange(offset, offset + table.num_rows, dtype=np.int64)
        valid = table.column("valid").to_numpy(zero_copy_only=False).astype(bool)
        last = _ints(table.column("last_update"))
        depth = cursor.depth
        better = valid & (
            (depth > best_depth[at]) | ((depth == best_depth[at]) & (last > best_last[at]))
        )
        chosen = at[better]
        best[chosen] = rows[better]
        best_piece[chosen] = index
        best_depth[chosen] = depth
        best_last[chosen] = last[better]
        unset = first_any[at] < 0
        first_any[at[unset]] = rows[unset]
        first_piece[at[unset]] = index
        offset += table.num_rows
    if not tables:
        return None, first_any, first_piece
    table = pa.concat_tables(tables)
    chosen = best >= 0
    return table, np.where(chosen, best, first_any), np.where(chosen, best_piece, first_piece)


def _rows(
    schema: pa.Schema,
    table: pa.Table | None,
    choice: np.ndarray,
    start: int,
    every: int,
    last_seen: int,
) -> tuple[pa.Table, int]:
    """The chosen rows; grid times no source covers become invalid rows."""
    n = len(choice)
    missing = choice < 0
    if table is None:  # a stretch of the day no source covers
        out = pa.Table.from_arrays([pa.nulls(n, f.type) for f in schema], schema=schema)
    else:
        out = table.take(pa.array(choice, mask=missing))
    ts = pa.array(start + np.arange(n, dtype=np.int64) * every).cast(out.schema.field("ts").type)
    last = _ints(out.column("last_update"), fill=NO_TIME)
    seen = np.maximum.accumulate(np.maximum(last, last_seen))
    fixed = {
        "ts": ts,
        "valid": pc.fill_null(out.column("valid"), False),
        "updates": pc.fill_null(out.column("updates"), 0),
        "checksum_failures": pc.fill_null(out.column("checksum_failures"), 0),
        "last_update": pa.array(np.where(missing, seen, last)).cast(
            out.schema.field("last_update").type
        ),
    }
    for name, column in fixed.items():
        index = out.schema.get_field_index(name)
        out = out.set_column(index, out.schema.field(index), column)
    return out.combine_chunks(), int(seen[-1]) if n else last_seen


def _causes(
    cursors: Sequence[_Cursor], valid: np.ndarray, owner: np.ndarray, start: int, every: int
) -> np.ndarray:
    """Per grid time of a block, the cause code of an invalid row (-1 for a valid one): the
    cause its source noted, or ``NO_RECORDER`` where no source has a row."""
    codes = np.full(len(valid), -1, np.int8)
    ts = start + np.arange(len(valid), dtype=np.int64) * every
    codes[~valid & (owner < 0)] = CAUSES.index(Cause.NO_RECORDER)
    for index, cursor in enumerate(cursors):
        mine = ~valid & (owner == index)
        if mine.any():
            codes[mine] = cursor.causes(ts[mine])
    return codes


def _note(summary: PairSummary, start: int, every: int, codes: np.ndarray) -> None:
    """Add a block's rows (contiguous on the grid) to the summary, one run of one cause (or of
    valid rows) at a time."""
    edges = np.flatnonzero(np.diff(codes)) + 1
    bounds = [0, *edges.tolist(), len(codes)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        code = int(codes[a])
        summary.note_rows(start + a * every, b - a, every, None if code < 0 else CAUSES[code])


def _ints(column: pa.ChunkedArray | pa.Array, fill: int = NO_TIME) -> np.ndarray:
    """A timestamp column as int64 ns (nulls as ``fill``)."""
    values = column.cast(pa.int64())
    if values.null_count:
        values = pc.fill_null(values, fill)
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
