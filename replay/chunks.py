"""One stream in several chunks: where to cut it, and how to join the pieces exactly.

A recorder stream of one pair is one long chain of segments, and a replay of one pair should still
use every core. A chunk may start at any segment whose head (the lines before its first ``msg``
line) holds checkpoints of every followed book: the recorder writes them at each rotation, and a
checkpoint replaces the book entirely, so from there on the replay needs nothing earlier but the
connection id (the survey knows it). ``replay.engine`` runs a chunk on its own; ``join`` turns the
chunks' results back into what one run over the whole stream gives, in three steps:

1. **Check each boundary.** The chunk before must have ended with a clock no later than the next
   chunk's first receive time (otherwise the clock max rule would give the next chunk other
   times) and no more than ``--max-silence`` before it (a silence there is the whole replay's to
   see), with the connection id the next chunk assumed, and its look at the next chunk's head
   must have found every checkpoint; the next chunk's checkpoints must have restored every
   followed book. If any check fails, the stream is replayed again in one piece: still the right
   output, only not in parallel.
2. **Merge the results:** problems in order, counts summed, per-pair summaries with an invalid span
   that crosses a boundary made one.
3. **Stitch each pair's rows** (``Stitcher``): frames a chunk counted after its last row belong to
   the next row the whole replay emits, which is the next chunk's first row unless rows before
   ``--start`` dropped them (``Carry``); and rows are regrouped into batches exactly as one
   ``RowBuffer`` cuts them (row-group size, UTC day), so Parquet files are byte for byte those of
   one worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from kbook.pairs import common_name
from kbook.units import DAY
from replay.columns import file_schema
from replay.engine import Chunk, ChunkResult, StreamResult, span
from replay.options import ReplayOptions
from replay.plan import Stream
from replay.sampler import Carry, PairSummary, note_span

CHUNKS_PER_WORKER = 4
"""Chunks aimed at per worker: several, so that the last ones end close together (measured: 4
did better than 2 on one pair over two cores; a chunk costs a few milliseconds to join)."""


def plan_chunks(stream: Stream, options: ReplayOptions, target: int) -> list[Chunk]:
    """Cut the stream's segments (those ``--start``/``--end`` need) into chunks of about
    ``target`` compressed bytes, at segments that can start a chunk; one chunk when none can.

    The cuts are the allowed segments nearest to even shares of the stream, and no chunk is
    smaller than ``options.min_chunk_bytes``. Kraken v1 and v2 streams are cut alike: the
    recorder's checkpoints are the same in both, and a v2 checkpoint also gives the depth that
    v2 frames never say (``V2BookFeed.restore``)."""
    first, stop = span(stream, options)
    points = cut_points(stream, first, stop)
    before = {first: 0}  # compressed bytes of the span before each segment
    for index in range(first, stop):
        before[index + 1] = before[index] + stream.segments[index].size
    total = before[stop]
    count = max(1, round(total / target)) if target > 0 else len(points) + 1
    cuts = set()
    for share in range(1, count):
        ideal = total * share / count
        if points:
            cuts.add(min(points, key=lambda index: abs(before[index] - ideal)))
    bounds = [first]
    for cut in sorted(cuts):
        if before[cut] - before[bounds[-1]] >= options.min_chunk_bytes:
            bounds.append(cut)
    if len(bounds) > 1 and total - before[bounds[-1]] < options.min_chunk_bytes:
        bounds.pop()
    bounds.append(stop)
    last = len(bounds) - 2
    return [
        Chunk(stream, bounds[n], bounds[n + 1], number=n, last=n == last)
        for n in range(len(bounds) - 1)
    ]


def cut_points(stream: Stream, first: int, stop: int) -> list[int]:
    """Indexes in ``(first, stop)`` of segments whose head checkpoints every followed book."""
    followed = {
        (wire, channel)
        for wire, channel in stream.books
        if stream.channels.get(common_name(wire)) == channel
    }
    return [
        index
        for index in range(first + 1, stop)
        if stream.segments[index].first_ns is not None
        and followed <= stream.segments[index].head_checkpoints
    ]


# -- the join -------------------------------------------------------------------------------------


@dataclass
class Joined:
    """A stream's chunks joined: the result one run gives, and the count fixes for the rows."""

    result: StreamResult
    patches: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    """``(pair, chunk number)`` -> (frames, failed checksums) to add to that chunk's first row."""


def join(
    chunks: Sequence[Chunk], outcomes: Sequence[ChunkResult], every: int, max_silence: int
) -> Joined | None:
    """Join a stream's chunk results (in order); None when a boundary fails its checks."""
    for before, after, chunk in zip(outcomes, outcomes[1:], chunks[1:], strict=False):
        first_ns = chunk.stream.segments[chunk.first].first_ns
        if (
            not before.clean_end
            or not after.clean_start
            or first_ns is None
            or before.end_clock > first_ns
            or first_ns - before.end_clock > max_silence
            or before.end_connection != after.start_connection
        ):
            return None
    stream = chunks[0].stream
    first, stop = chunks[0].first, chunks[-1].stop
    result = StreamResult(segments_skipped=len(stream.segments) - (stop - first))
    for outcome in outcomes:
        part = outcome.result
        result.problems.extend(part.problems)
        result.segments_read += part.segments_read
        result.skipped_frames += part.skipped_frames
        result.malformed_frames += part.malformed_frames
        result.raw_frames += part.raw_frames
    joined = Joined(result)
    for pair in stream.channels:
        parts = [outcome.result.pairs[pair] for outcome in outcomes]
        result.pairs[pair] = merge_summaries(parts, every)
        carries = [outcome.carries.get(pair, Carry()) for outcome in outcomes]
        joined.patches.update(_patches(pair, carries))
    return joined


def merge_summaries(parts: Sequence[PairSummary], every: int) -> PairSummary:
    """One pair's summary over consecutive chunks (their rows follow each other on the grid)."""
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
    """Where the counts each chunk left pending land (see ``Carry``)."""
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
    """Takes one pair's row batches chunk after chunk and hands ``sink`` the batches one
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


# -- a chunk's rows on disk -----------------------------------------------------------------------


class Spool:
    """Where a chunk's rows wait for the join when they go to a dataset: one Arrow IPC file per
    pair (uncompressed and memory-mapped when read back, so the join stays cheap and flat)."""

    def __init__(self, folder: Path, levels: int) -> None:
        self.folder = folder
        self.schema = file_schema(levels)
        self.files: dict[str, Path] = {}
        self._writers: dict[str, pa.ipc.RecordBatchFileWriter] = {}

    def sink(self, pair: str) -> Callable[[pa.Table], None]:
        return lambda table: self.write(pair, table)

    def write(self, pair: str, table: pa.Table) -> None:
        writer = self._writers.get(pair)
        if writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{len(self.files)}.arrow"
            self.files[pair] = path
            writer = self._writers[pair] = pa.ipc.new_file(path, self.schema)
        writer.write_table(table)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def read_spool(path: Path) -> Iterator[pa.Table]:
    """The batches a ``Spool`` wrote for one pair, in order."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(index)])
