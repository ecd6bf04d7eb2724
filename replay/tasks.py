"""A task's replay, and a source's tasks joined into exactly what one run over it writes.

``run_task`` is what a worker runs (in this process, a process pool or a Dask cluster: see
``replay.executor``): one task of ``replay.plan.plan_tasks`` through a ``StreamReplay``, its
``--start``/``--end`` narrowed to its window (``window_options``). A window's only task (a
pair-day, usually) writes its rows straight to their place (in-memory batches, or the dataset's
Parquet files of its days: no other task writes there). The segments it reads before the ones
it owns (the previous window's last, read to reach its midnight) count nowhere in its result:
the previous window counted them.

When a window was cut into several pieces, each piece's rows wait (in memory, or in a ``Spool``
file beside the dataset, in its temporary folder or prefix: one Parquet file cannot be written
by several tasks) and ``join_source`` settles them here, in three steps:

1. **Check each boundary.** The piece before must have ended with a clock no later than the
   next piece's first receive time (otherwise the clock max rule would give the next piece
   other times) and no more than ``--max-silence`` before it (a silence there is the whole
   replay's to see), with the connection id the next piece assumed, and its look at the next
   piece's head must have found every checkpoint; the next piece's checkpoints must have
   restored every followed book. If any check fails, the window is replayed again in one
   piece: still the right output, only not in parallel.
2. **Merge the results:** problems in order, counts summed, per-pair summaries with an invalid span
   that crosses a boundary made one.
3. **Stitch each pair's rows** (``Stitcher``): frames a piece counted after its last row belong to
   the next row the whole replay emits, which is the next piece's first row unless rows before
   ``--start`` dropped them (``Carry``); and rows are regrouped into batches exactly as one
   ``RowBuffer`` cuts them (row-group size, UTC day), so Parquet files are byte for byte those of
   one run, whatever ran the tasks.

Windows meet without stitching: a window's rows start at its midnight, exactly those of one run
from there (the ``--start`` rule), and the window before ends its rows there. ``join_windows``
checks that each window's task started from the state the survey promised (the window before
notes the clock and the connection id where the next one starts reading; the checkpoints there
must restore every followed book); if not, the windows' files are removed and the source is
replayed again in one piece here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import pyarrow as pa

from kbook.errors import OutputError
from kbook.storage import Place, remove_tree
from kbook.units import DAY
from replay.columns import file_schema, row_group_rows
from replay.engine import StreamReplay, StreamResult, TaskResult
from replay.executor import Executor
from replay.options import ReplayOptions
from replay.parquet import DatasetWriter, IpcFile, make_folders, read_ipc, source_spools
from replay.plan import Stream, Task
from replay.sampler import Carry, PairSummary, note_span

Tick = Callable[[int], None]
SPOOL = ".tasks"
"""Folder inside the dataset's temporary folder where the rows of a source's tasks wait for the
join."""


class RowSink(Protocol):
    """Where one task's rows go, pair by pair: in-memory ``Batches``, the dataset's Parquet files
    (``DatasetWriter``) or a task's ``Spool`` waiting for the join."""

    def sink(self, pair: str) -> Callable[[pa.Table], None]: ...

    def close(self) -> None: ...


class Batches:
    """A ``RowSink`` in memory: each pair's tables, in order."""

    def __init__(self) -> None:
        self.tables: dict[str, list[pa.Table]] = {}

    def sink(self, pair: str) -> Callable[[pa.Table], None]:
        return self.tables.setdefault(pair, []).append

    def close(self) -> None:
        """Nothing to close."""


@dataclass(frozen=True, slots=True)
class Rows:
    """Where a task's rows went (what a worker sends back): the one field its sink filled."""

    batches: dict[str, list[pa.Table]] = field(default_factory=dict)
    """In memory, per pair (no dataset folder)."""
    files: list[Place] = field(default_factory=list)
    """Parquet files written into the dataset's temporary folder or prefix (a source's only
    task)."""
    spools: dict[str, Place] = field(default_factory=dict)
    """Spool files per pair (a task's rows, waiting for the join)."""


Outcome = tuple[TaskResult, Rows]
"""What a task gives back: its result (with what the join checks), and where its rows are."""


def run_task(
    task: Task, options: ReplayOptions, folder: Place | None, tick: Tick | None = None
) -> Outcome:
    """Replay one task; its rows go to ``folder`` (the dataset's temporary folder, or its
    temporary prefix on object storage; None: into memory), straight to the dataset when it is
    its source's only task. ``tick`` is called with each segment's compressed bytes as it is
    done."""
    stream = task.stream
    alone = task.number == 0 and task.last
    writer: RowSink
    if folder is None:
        writer = Batches()
    elif alone:
        writer = DatasetWriter(
            folder, options.levels, stream.shared, stream.rank, window=task.window, own=True
        )
    else:
        writer = Spool(folder, f"{task.source}-{task.window}-{task.number}", options.levels)
    try:
        replay = StreamReplay(stream, window_options(task, options), writer.sink)
        done = replay.run_task(task, tick)
    finally:
        writer.close()
    return done, _rows(writer)


def window_options(task: Task, options: ReplayOptions) -> ReplayOptions:
    """``options`` with ``--start``/``--end`` narrowed to the task's window."""
    start, end = options.start_ns, options.end_ns
    if task.start_ns is not None:
        start = task.start_ns if start is None else max(start, task.start_ns)
    if task.end_ns is not None:
        end = task.end_ns if end is None else min(end, task.end_ns)
    return dataclasses.replace(options, start_ns=start, end_ns=end)


def run_tasks(
    tasks: Sequence[Task],
    sources: int,
    options: ReplayOptions,
    folder: Place | None,
    executor: Executor,
    tick: Tick,
) -> list[tuple[StreamResult, Rows]]:
    """Run every task on ``executor`` and join each source's; one ``(result, rows)`` per source
    of the plan (``sources`` of them), in the plan's order. ``tick`` gets each task's bytes."""
    outcomes: list[Outcome | None] = [None] * len(tasks)

    def done(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        if not executor.inline:
            tick(tasks[index].size)

    here = tick if executor.inline else None
    try:
        executor.run(
            partial(run_task, options=options, folder=folder, tick=here), tasks, done, Task.describe
        )
        grouped: list[list[list[int]]] = [[] for _ in range(sources)]
        for index, task in enumerate(tasks):
            windows = grouped[task.source]
            if task.window == len(windows):
                windows.append([])
            windows[task.window].append(index)
        return [
            join_windows(
                [[tasks[i] for i in indexes] for indexes in windows],
                [[outcomes[i] for i in indexes] for indexes in windows],  # type: ignore[misc]
                options,
                folder,
            )
            for windows in grouped
        ]
    finally:
        if folder is not None:
            remove_tree(folder / SPOOL)


def _rows(writer: RowSink) -> Rows:
    if isinstance(writer, Batches):
        return Rows(batches=writer.tables)
    if isinstance(writer, Spool):
        return Rows(spools=writer.files)
    assert isinstance(writer, DatasetWriter)
    return Rows(files=writer.files)


def join_windows(
    windows: Sequence[Sequence[Task]],
    outcomes: Sequence[Sequence[Outcome]],
    options: ReplayOptions,
    folder: Place | None,
) -> tuple[StreamResult, Rows]:
    """One source's result and rows from its windows' tasks (in order): each window's tasks
    joined (``join_source``), then the windows checked where they meet and merged. A window's
    task starts from the state the survey promised at its first segment; when the window
    before saw another there (a clock that ran past that segment's first receive time, another
    connection id) or the checkpoints there did not restore every followed book, the windows'
    rows are removed and the source is replayed again here in one piece."""
    joined = [
        join_source(tasks, results, options, folder)
        for tasks, results in zip(windows, outcomes, strict=True)
    ]
    stream = windows[0][0].stream
    first, stop = windows[0][0].first, windows[-1][-1].stop
    if not all(
        _meet(before[0], after[0]) for before, after in zip(joined, joined[1:], strict=False)
    ):
        for _ends, (_result, rows) in joined:
            _remove(rows, stream, folder, len(windows))
        whole = Task(windows[0][0].source, stream, first, stop)
        done, rows = run_task(whole, options, folder)
        done.result.segments_skipped = len(stream.segments) - (stop - first)
        return done.result, rows
    result = StreamResult(segments_skipped=len(stream.segments) - (stop - first))
    rows = Rows()
    for _ends, (part, part_rows) in joined:
        _sum_counts(result, part)
        rows.files.extend(part_rows.files)
        for pair, tables in part_rows.batches.items():
            rows.batches.setdefault(pair, []).extend(tables)
    for pair in stream.channels:
        parts = [part.pairs[pair] for _ends, (part, _rows) in joined]
        result.pairs[pair] = merge_summaries(parts, options.every_ns)
    return result, rows


Ends = tuple[Task, TaskResult, Task, TaskResult]
"""A window's first task and its result, and its last task and its result."""


def _meet(before: Ends, after: Ends) -> bool:
    """True when the window ``after`` started from the state the one ``before`` left at its
    first segment (see ``join_windows``)."""
    last, ended, first, started = before[2], before[3], after[0], after[1]
    if not started.clean_start or first.first == last.first:
        return started.clean_start  # the window's own join checked the state before it
    first_ns = first.stream.segments[first.first].first_ns
    if ended.probe is None or first_ns is None:
        return False
    clock, connection = ended.probe
    return clock <= first_ns and connection == started.start_connection


def _remove(rows: Rows, stream: Stream, folder: Place | None, windows: int) -> None:
    """Remove what a window wrote: its partition files and its shared pairs' spools."""
    for path in rows.files:
        path.unlink(missing_ok=True)
    if folder is None:
        return
    for pair in stream.shared:
        for path in source_spools(folder, pair, stream.rank, windows):
            path.unlink()


def _sum_counts(result: StreamResult, part: StreamResult) -> None:
    result.problems.extend(part.problems)
    result.segments_read += part.segments_read
    result.skipped_frames += part.skipped_frames
    result.malformed_frames += part.malformed_frames
    result.raw_frames += part.raw_frames


def join_source(
    tasks: Sequence[Task], outcomes: Sequence[Outcome], options: ReplayOptions, folder: Place | None
) -> tuple[Ends, tuple[StreamResult, Rows]]:
    """One window's ends, result and rows from its tasks' (in order); when a boundary does not
    hold, the window is replayed again here in one piece (see the module docstring)."""
    if len(tasks) == 1:
        ends = (tasks[0], outcomes[0][0], tasks[0], outcomes[0][0])
        return ends, (outcomes[0][0].result, outcomes[0][1])
    ends = (tasks[0], outcomes[0][0], tasks[-1], outcomes[-1][0])
    try:
        return _join_rows(tasks, outcomes, options, folder, ends)
    finally:  # each task's spool folder, once (on object storage: a listing and a delete)
        spools = {path.parent for _, rows in outcomes for path in rows.spools.values()}
        for spool in spools:
            remove_tree(spool)


def _join_rows(
    tasks: Sequence[Task],
    outcomes: Sequence[Outcome],
    options: ReplayOptions,
    folder: Place | None,
    ends: Ends,
) -> tuple[Ends, tuple[StreamResult, Rows]]:
    joined = join(
        tasks, [outcome[0] for outcome in outcomes], options.every_ns, options.max_silence_ns
    )
    stream = tasks[0].stream
    if joined is None:
        whole = dataclasses.replace(tasks[0], stop=tasks[-1].stop, last=True, probe=tasks[-1].probe)
        done, rows = run_task(whole, options, folder)
        return (whole, done, whole, done), (done.result, rows)
    capacity = row_group_rows(options.levels)
    writer: Batches | DatasetWriter = (
        Batches()
        if folder is None
        else DatasetWriter(
            folder, options.levels, stream.shared, stream.rank, window=tasks[0].window, own=True
        )
    )
    try:
        for pair in sorted(stream.channels):
            stitcher = Stitcher(capacity, writer.sink(pair))
            for number, (_done, rows) in enumerate(outcomes):
                path = rows.spools.get(pair)
                tables = rows.batches.get(pair, []) if path is None else read_spool(path)
                for order, table in enumerate(tables):
                    stitcher.add(table, joined.patches.get((pair, number)) if order == 0 else None)
            stitcher.flush()
    finally:
        writer.close()
    if isinstance(writer, Batches):
        batches = {pair: t for pair, t in writer.tables.items() if t}
        return ends, (joined.result, Rows(batches=batches))
    return ends, (joined.result, Rows(files=writer.files))


@dataclass
class Joined:
    """A source's tasks joined: the result one run gives, and the count fixes for the rows."""

    result: StreamResult
    patches: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """``(pair, task number)`` -> (frames, failed checksums) to add to that task's first row."""


def join(
    tasks: Sequence[Task], outcomes: Sequence[TaskResult], every: int, max_silence: int
) -> Joined | None:
    """Join a source's task results (in order); None when a boundary fails its checks."""
    for before, after, task in zip(outcomes, outcomes[1:], tasks[1:], strict=False):
        first_ns = task.stream.segments[task.first].first_ns
        if (
            not before.clean_end
            or not after.clean_start
            or first_ns is None
            or before.end_clock > first_ns
            or first_ns - before.end_clock > max_silence
            or before.end_connection != after.start_connection
        ):
            return None
    stream = tasks[0].stream
    result = StreamResult()
    for outcome in outcomes:
        _sum_counts(result, outcome.result)
    joined = Joined(result)
    for pair in stream.channels:
        parts = [outcome.result.pairs[pair] for outcome in outcomes]
        result.pairs[pair] = merge_summaries(parts, every)
        carries = [outcome.carries.get(pair, Carry()) for outcome in outcomes]
        joined.patches.update(_patches(pair, carries))
    return joined


def merge_summaries(parts: Sequence[PairSummary], every: int) -> PairSummary:
    """One pair's summary over consecutive tasks (their rows follow each other on the grid)."""
    merged = PairSummary(parts[0].pair, parts[0].channel, sources=list(parts[0].sources))
    spans = merged.invalid_spans
    for part in parts:
        merged.rows += part.rows
        merged.valid_rows += part.valid_rows
        merged.frames += part.frames
        merged.checksum_failures += part.checksum_failures
        if part.first_ts is not None:
            merged.first_ts = part.first_ts if merged.first_ts is None else merged.first_ts
            merged.last_ts = part.last_ts
        for invalid in part.invalid_spans:
            note_span(spans, invalid, every)
    return merged


def _patches(pair: str, carries: Sequence[Carry]) -> dict[tuple[str, int], tuple[int, int]]:
    """Where the counts each task left pending land (see ``Carry``)."""
    patches = {}
    frames = failures = 0
    for number, carry in enumerate(carries):
        if number and carry.zeroed is not None:
            if carry.zeroed == "row" and (frames or failures):
                patches[(pair, number)] = (frames, failures)
            frames = failures = 0
        frames += carry.frames
        failures += carry.failures
    return patches


# -- rows -----------------------------------------------------------------------------------------


class Stitcher:
    """Takes one pair's row batches task after task and hands ``sink`` the batches one
    ``RowBuffer`` would have made: cut at ``capacity`` rows and before the first row of each new
    UTC day, each batch a single contiguous Arrow table."""

    def __init__(self, capacity: int, sink: Callable[[pa.Table], None]) -> None:
        self.capacity = capacity
        self.sink = sink
        self.parts: list[pa.Table] = []
        self.count = 0
        self.day_end = 0

    def add(self, table: pa.Table, add: tuple[int, int] | None = None) -> None:
        """Append ``table``'s rows; ``add`` goes into the counts of its first row."""
        if add is not None:
            table = _add_counts(table, *add)
        while table.num_rows:
            first = table.column("ts")[0].value
            if self.count and first >= self.day_end:
                self.flush()
            if not self.count:
                self.day_end = (first // DAY + 1) * DAY
            take = min(self.capacity - self.count, _rows_before(table, self.day_end))
            self.parts.append(table.slice(0, take))
            self.count += take
            table = table.slice(take)
            if self.count >= self.capacity:
                self.flush()

    def flush(self) -> None:
        if self.count:
            table = pa.concat_tables(self.parts).combine_chunks()
            self.parts, self.count = [], 0
            self.sink(table)


def _rows_before(table: pa.Table, limit: int) -> int:
    """How many leading rows have ``ts`` before ``limit`` (``ts`` ascends)."""
    ts = table.column("ts")
    low, high = 0, table.num_rows
    while low < high:
        middle = (low + high) // 2
        if ts[middle].value < limit:
            low = middle + 1
        else:
            high = middle
    return low


def _add_counts(table: pa.Table, frames: int, failures: int) -> pa.Table:
    for name, more in (("updates", frames), ("checksum_failures", failures)):
        index = table.schema.get_field_index(name)
        column = table.column(index).combine_chunks()
        head = pa.array([column[0].as_py() + more], pa.int32())
        table = table.set_column(
            index, table.schema.field(index), pa.concat_arrays([head, column.slice(1)])
        )
    return table


# -- a task's rows on disk ------------------------------------------------------------------------


class Spool:
    """Where a task's rows wait for the join when they go to a dataset: one Arrow IPC file per
    pair (uncompressed and memory-mapped when read back, so the join stays cheap and flat)."""

    def __init__(self, root: Place, name: str, levels: int) -> None:
        self.root = root
        """The dataset's temporary folder or prefix; the spool is ``root/.tasks/name``."""
        self.folder = root / SPOOL / name
        self.schema = file_schema(levels)
        self.files: dict[str, Place] = {}
        self._writers: dict[str, IpcFile] = {}

    def sink(self, pair: str) -> Callable[[pa.Table], None]:
        return lambda table: self.write(pair, table)

    def write(self, pair: str, table: pa.Table) -> None:
        writer = self._writers.get(pair)
        try:
            if writer is None:
                make_folders(self.root, self.folder)
                path = self.folder / f"{len(self.files)}.arrow"
                self.files[pair] = path
                writer = self._writers[pair] = IpcFile(path, self.schema)
            writer.write_table(table)
        except OSError as exc:
            raise OutputError(f"{self.root}: cannot write snapshots: {exc}") from exc

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def read_spool(path: Place) -> Iterator[pa.Table]:
    """The batches a ``Spool`` wrote for one pair, in order."""
    return read_ipc(path)
