"""The snapshot table: its schema, and the column buffers rows are appended to.

Rows are appended to one ``array`` per column (never to Python lists of rows), and handed to
Arrow without copying (``pa.Array.from_buffers``): building a 40-float row per message costs as
much as the replay itself, so the buffer takes repeated rows in bulk and the sampler builds a row
only when the grid crosses a time boundary. A buffer is flushed when it holds a row group's worth
of rows or when the UTC day changes, so every batch belongs to one ``date`` partition.

Missing levels are held as NaN while buffering and become nulls in Arrow: no price or volume
Kraken sends is NaN.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from kbook.errors import UsageError
from kbook.units import DAY, format_duration, utc_day

TIMESTAMP = pa.timestamp("ns", tz="UTC")
SIDES = ("bid_px", "bid_sz", "ask_px", "ask_sz")
EXTRA_FIELDS = (
    pa.field("updates", pa.int32(), nullable=False),
    pa.field("checksum_failures", pa.int32(), nullable=False),
    pa.field("last_update", TIMESTAMP, nullable=False),
    pa.field("exch_ts", TIMESTAMP),
    pa.field("depth", pa.int16()),
    pa.field("source", pa.string()),
)
"""After the levels: counts, the latest frame's time, Kraken's time of it (``exch_ts``, from
``Book.exch_ns``), and where the row came from: ``depth`` of the followed channel and ``source``
(``replay.plan.Stream.label``); the last three null when the row is invalid (no source had a
valid book)."""
NO_EXCH = -1
"""``exch_ts`` while buffered, for none (no exchange time is before 1970)."""
ROW_GROUP_BYTES = 32 << 20
MAX_ROW_GROUP_ROWS = 65_536
MIN_ROW_GROUP_ROWS = 4_096
MAX_ROWS_PER_PAIR_DAY = 10_000_000
"""A grid that would give one pair more rows in a UTC day is refused (a mistyped ``--every 1ns``
would otherwise run for ever): ``--every 10ms`` over a whole day is 8,640,000 rows."""


def level_names(levels: int) -> list[str]:
    """``bid_px_0, bid_sz_0, ask_px_0, ask_sz_0, bid_px_1, ...`` (level 0 is the best)."""
    return [f"{side}_{i}" for i in range(levels) for side in SIDES]


def file_schema(levels: int) -> pa.Schema:
    """Columns stored in the Parquet files (``pair`` and ``date`` live in the folder names)."""
    fields = [pa.field("ts", TIMESTAMP, nullable=False), pa.field("valid", pa.bool_(), False)]
    fields += [pa.field(name, pa.float64()) for name in level_names(levels)]
    return pa.schema(fields + list(EXTRA_FIELDS))


def table_schema(levels: int) -> pa.Schema:
    """Columns of an in-memory replay: the file columns with ``pair`` after ``ts``."""
    return file_schema(levels).insert(1, pa.field("pair", pa.string(), nullable=False))


def row_group_rows(levels: int) -> int:
    """Rows per row group: 64k for usual depths, fewer for very wide rows (memory stays bounded)."""
    row_bytes = 8 * (4 * levels + 4)
    return max(MIN_ROW_GROUP_ROWS, min(MAX_ROW_GROUP_ROWS, ROW_GROUP_BYTES // row_bytes))


class RowBuffer:
    """Buffered rows of one pair; ``flush`` receives each full batch as a ``pyarrow.Table``."""

    __slots__ = (
        "levels",
        "capacity",
        "sink",
        "schema",
        "count",
        "day_end",
        "day_rows",
        "ts",
        "valid",
        "values",
        "updates",
        "failures",
        "last_update",
        "exch",
        "depth",
        "source",
    )

    def __init__(
        self,
        levels: int,
        capacity: int,
        sink: Callable[[pa.Table], None],
        depth: int = 0,
        source: str = "",
    ) -> None:
        self.depth = depth
        self.source = source
        self.levels = levels
        self.capacity = capacity
        self.sink = sink
        self.schema = file_schema(levels)
        self.day_end = 0
        self.day_rows = 0
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.ts = array("q")
        self.valid = bytearray()
        self.values = [array("d") for _ in range(4 * self.levels)]
        self.updates = array("i")
        self.failures = array("i")
        self.last_update = array("q")
        self.exch = array("q")

    def append(
        self,
        t: int,
        n: int,
        every: int,
        row: list[float],
        valid: bool,
        updates: int,
        failures: int,
        last_update: int,
        exch: int = NO_EXCH,
    ) -> None:
        """Append ``n`` rows at ``t, t + every, ...`` showing the same book (whose exchange
        time is ``exch``, ``NO_EXCH`` for none).

        The counts belong to the first row only: later rows saw no frame.
        """
        while n > 0:
            if t >= self.day_end:
                self.flush()
                self.day_end, self.day_rows = (t // DAY + 1) * DAY, 0
            today = min(n, (self.day_end - 1 - t) // every + 1)
            if self.day_rows + today > MAX_ROWS_PER_PAIR_DAY:
                raise UsageError(
                    f"--every {format_duration(every)} would write more than "
                    f"{MAX_ROWS_PER_PAIR_DAY:,} rows for one pair on {utc_day(t)} (a whole day is "
                    f"{DAY // every:,}): choose a coarser grid, or a shorter --start/--end"
                )
            k = min(today, self.capacity - self.count)
            self.day_rows += k
            if k == 1:
                self._append_one(t, row, valid, updates, failures, last_update)
                self.exch.append(exch)
            else:
                self._append_many(t, k, every, row, valid, updates, failures, last_update)
                self.exch.extend(array("q", (exch,)) * k)
            self.count += k
            if self.count >= self.capacity:
                self.flush()
            t += k * every
            n -= k
            updates = failures = 0

    def _append_one(
        self, t: int, row: list[float], valid: bool, updates: int, failures: int, last: int
    ) -> None:
        self.ts.append(t)
        self.valid.append(valid)
        for column, value in zip(self.values, row, strict=True):
            column.append(value)
        self.updates.append(updates)
        self.failures.append(failures)
        self.last_update.append(last)

    def _append_many(
        self,
        t: int,
        k: int,
        every: int,
        row: list[float],
        valid: bool,
        updates: int,
        failures: int,
        last: int,
    ) -> None:
        self.ts.extend(range(t, t + k * every, every))
        self.valid.extend(bytes((valid,)) * k)
        for column, value in zip(self.values, row, strict=True):
            column.extend(array("d", (value,)) * k)
        self.updates.append(updates)
        self.updates.extend(array("i", (0,)) * (k - 1))
        self.failures.append(failures)
        self.failures.extend(array("i", (0,)) * (k - 1))
        self.last_update.extend(array("q", (last,)) * k)

    def flush(self) -> None:
        """Hand the buffered rows to the sink as one table (one row group) and start afresh."""
        if self.count:
            table = self.to_table()
            self._reset()
            self.sink(table)

    def to_table(self) -> pa.Table:
        n = self.count
        columns = [
            _wrap(TIMESTAMP, n, self.ts),
            _wrap(pa.uint8(), n, self.valid).cast(pa.bool_()),
        ]
        columns += [_floats(n, column) for column in self.values]
        columns += [
            _wrap(pa.int32(), n, self.updates),
            _wrap(pa.int32(), n, self.failures),
            _wrap(TIMESTAMP, n, self.last_update),
            _times(n, self.exch),
        ]
        valid = columns[1]
        columns.append(_where_valid(valid, array("h", (self.depth,)) * n, pa.int16()))
        text = self.source.encode()
        source = pa.Array.from_buffers(
            pa.string(), 1, [None, pa.py_buffer(array("i", (0, len(text)))), pa.py_buffer(text)]
        )
        columns.append(source.take(_where_valid(valid, array("i", (0,)) * n, pa.int32())))
        return pa.Table.from_arrays(columns, schema=self.schema)


def _wrap(kind: pa.DataType, n: int, data: array | bytearray) -> pa.Array:
    """An Arrow array over ``data`` without copying it."""
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(data)])


def _times(n: int, data: array) -> pa.Array:
    """A timestamp array where ``NO_EXCH`` becomes null."""
    values = _wrap(pa.int64(), n, data)
    missing = pc.equal(values, _wrap(pa.int64(), n, array("q", (NO_EXCH,)) * n))  # no pa.scalar
    nulls = missing.true_count
    if not nulls:
        return values.view(TIMESTAMP)
    validity = pc.invert(missing).buffers()[1]
    return pa.Array.from_buffers(TIMESTAMP, n, [validity, pa.py_buffer(data)], null_count=nulls)


def _where_valid(valid: pa.Array, data: array, kind: pa.DataType) -> pa.Array:
    """``data`` where the row is valid, null elsewhere: built from buffers, since ``pa.scalar``
    and ``pa.array`` import pandas (50 MB of a replay's peak RSS, and never needed)."""
    nulls = len(valid) - valid.true_count
    return pa.Array.from_buffers(kind, len(valid), [valid.buffers()[1], pa.py_buffer(data)], nulls)


def _floats(n: int, data: array) -> pa.Array:
    """A float64 array where NaN (a missing level) becomes null."""
    values = _wrap(pa.float64(), n, data)
    missing = pc.is_nan(values)
    nulls = missing.true_count
    if not nulls:
        return values
    validity = pc.invert(missing).buffers()[1]
    return pa.Array.from_buffers(pa.float64(), n, [validity, pa.py_buffer(data)], null_count=nulls)
