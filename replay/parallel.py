"""Running the planned streams: in this process, or on a process pool, whole or in chunks.

With one worker every stream runs here, whole, its rows going straight to their place. With
several, the work is cut into units of about the same size so that every core is busy to the end:
a stream small enough is one unit; a larger one is cut into chunks (``replay.chunks``) when its
segments allow it. ``share`` runs the units on a pool of ``workers - 1`` processes and in this
process at once, largest first. A whole stream's rows go straight to their place (in-memory
batches, or the dataset's Parquet files); a chunk's rows wait (in memory, or in a ``Spool`` file
beside the dataset) until every chunk of its stream is done, and are then joined and stitched
here, in stream order, into exactly what one run would have written.
"""

from __future__ import annotations

import shutil
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from queue import Empty, SimpleQueue
from threading import Event, Thread
from typing import Protocol, TypeVar

import pyarrow as pa

from kbook.errors import KbookError, TaskError
from replay.chunks import CHUNKS_PER_WORKER, Spool, Stitcher, join, plan_chunks, read_spool
from replay.columns import row_group_rows
from replay.engine import Chunk, ChunkResult, SinkFactory, StreamReplay, StreamResult
from replay.options import ReplayOptions
from replay.parquet import DatasetWriter
from replay.plan import Stream

Tick = Callable[[int], None]
Item = TypeVar("Item")
Result = TypeVar("Result")
Done = Callable[[int, Result], None]
SPOOL = ".chunks"
"""Folder inside the dataset's temporary folder where chunks' rows wait for the join."""


class RowSink(Protocol):
    """Where one unit's rows go, pair by pair: in-memory ``Batches``, the dataset's Parquet files
    (``DatasetWriter``) or a chunk's ``Spool`` waiting for the join."""

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
    """Where a unit's rows went (what a worker sends back): the one field its sink filled."""

    batches: dict[str, list[pa.Table]] = field(default_factory=dict)
    """In memory, per pair (no dataset folder)."""
    files: list[Path] = field(default_factory=list)
    """Parquet files written into the dataset's folder (a whole stream)."""
    spools: dict[str, Path] = field(default_factory=dict)
    """Spool files per pair (a chunk's rows, waiting for the join)."""


@dataclass(frozen=True, slots=True)
class Workers:
    """A process pool, and a future per worker that is done once the worker has started."""

    pool: Executor
    started: list[Future[None]]
    """A fresh interpreter takes about 0.3 s to start: work is not handed to a worker before it
    is up, so that this process does everything it can meanwhile (with the native core, that is a
    third of a million frames)."""
    here: bool = True
    """This process runs units too (a local pool); not when a cluster does the work."""


@dataclass(frozen=True, slots=True)
class Unit:
    """One piece of work: a whole stream, or one chunk of a stream cut in several."""

    stream: int
    """Index of the stream in the plan."""
    chunk: Chunk
    whole: bool
    folder: Path | None
    """The dataset's temporary folder, or None for in-memory batches."""

    @property
    def size(self) -> int:
        return self.chunk.stream.size if self.whole else self.chunk.size


def run_streams(
    streams: list[Stream],
    options: ReplayOptions,
    folder: Path | None,
    tick: Tick,
    workers: Workers | None,
) -> list[tuple[StreamResult, Rows]]:
    """Replay every stream; one ``(result, rows)`` per stream, in the streams' order."""
    try:
        return _run_streams(streams, options, folder, tick, workers)
    finally:
        if folder is not None:
            shutil.rmtree(folder / SPOOL, ignore_errors=True)


def _run_streams(
    streams: list[Stream],
    options: ReplayOptions,
    folder: Path | None,
    tick: Tick,
    workers: Workers | None,
) -> list[tuple[StreamResult, Rows]]:
    if workers is None:
        units = [_whole(index, stream, folder) for index, stream in enumerate(streams)]
        return [_finish(work(unit, options, tick)) for unit in units]
    total = sum(stream.size for stream in streams)
    target = max(options.min_chunk_bytes, total // (CHUNKS_PER_WORKER * options.workers))
    plans = [plan_chunks(stream, options, target) for stream in streams]
    units = []
    for index, (stream, chunks) in enumerate(zip(streams, plans, strict=True)):
        if len(chunks) == 1:
            units.append(_whole(index, stream, folder))
        else:
            units += [Unit(index, chunk, False, folder) for chunk in chunks]
            skipped = stream.size - sum(chunk.size for chunk in chunks)
            tick(skipped)  # segments outside --start/--end: nothing to read
    if len(units) < 2:
        return [_finish(work(unit, options, tick)) for unit in units]
    units.sort(key=lambda unit: unit.size, reverse=True)
    pieces: dict[int, dict[int, tuple[ChunkResult, Rows]]] = {}
    outcomes: dict[int, tuple[StreamResult, Rows]] = {}

    def done(index: int, outcome: tuple[ChunkResult, Rows]) -> None:
        unit = units[index]
        tick(unit.size)
        if unit.whole:
            outcomes[unit.stream] = _finish(outcome)
            return
        parts = pieces.setdefault(unit.stream, {})
        parts[unit.chunk.number] = outcome
        chunks = plans[unit.stream]
        if len(parts) == len(chunks):
            ordered = [parts[number] for number in range(len(chunks))]
            outcomes[unit.stream] = _join(unit.stream, chunks, ordered, options, folder)

    share(workers, partial(work, options=options), units, done)
    return [outcomes[index] for index in range(len(streams))]


def share(
    workers: Workers,
    fn: Callable[[Item], Result],
    items: Sequence[Item],
    done: Done[Result],
) -> None:
    """Run ``fn`` on every item, on the pool's workers and in this process at once.

    The pool takes items from the front, one per worker at a time (a thread per worker hands
    them over once that worker has started), and this process takes them from the back, so
    nobody idles while others work, and a pool of ``workers - 1`` keeps ``workers`` cores busy.
    ``done(index, result)`` is called in this thread, for every item, as results come.
    """
    todo = deque(enumerate(items))
    finished: SimpleQueue[tuple[int, Result | None, BaseException | None]] = SimpleQueue()
    wakes = [Event() for _ in workers.started]
    """Set when a thread's worker has started, or when this process is done: a thread whose
    worker was still starting then finds nothing left and ends."""
    for started, wake in zip(workers.started, wakes, strict=True):
        started.add_done_callback(partial(_set, wake))

    def hand_over(wake: Event) -> None:
        wake.wait()
        pool = workers.pool
        while True:
            try:
                index, item = todo.popleft()
            except IndexError:
                return
            try:
                finished.put((index, pool.submit(fn, item).result(), None))
            except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
                finished.put((index, None, exc))
                return

    threads = [Thread(target=hand_over, args=(wake,), daemon=True) for wake in wakes]
    for thread in threads:
        thread.start()
    count = 0
    try:
        while count < len(items):
            try:
                index, item = todo.pop() if workers.here else (-1, None)
            except IndexError:
                index = -1
            if index >= 0:
                done(index, fn(item))  # type: ignore[arg-type]
                count += 1
            while count < len(items):
                try:
                    # Wait only when nothing is left to do here.
                    other, result, error = finished.get(block=index < 0)
                except Empty:
                    break
                if error is not None:
                    if isinstance(error, KbookError):
                        raise error
                    raise TaskError(f"{_describe(items[other])} failed: {_why(error)}") from error
                done(other, result)  # type: ignore[arg-type]
                count += 1
                if index < 0:
                    break
    finally:
        todo.clear()  # on an error, hand nothing more over (the pool's exit waits for the rest)
        for wake in wakes:
            wake.set()
    for thread in threads:
        thread.join()


def _describe(item: object) -> str:
    """Names a unit of work for an error: its pairs and segments, or a segment's path."""
    if isinstance(item, Unit):
        segments = item.chunk.stream.segments[item.chunk.first : item.chunk.stop]
        pairs = ", ".join(sorted(item.chunk.stream.channels))
        names = segments[0].path.name + (
            f" to {segments[-1].path.name}" if len(segments) > 1 else ""
        )
        return f"the replay of {pairs or 'a stream'} from {names}"
    if isinstance(item, list) and item and isinstance(item[0], Path):
        more = f" to {item[-1]}" if len(item) > 1 else ""
        return f"the survey of {item[0]}{more}"
    return f"the work on {item}"


def _why(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _set(event: Event, _future: Future[None]) -> None:
    event.set()


def work(unit: Unit, options: ReplayOptions, tick: Tick | None = None) -> tuple[ChunkResult, Rows]:
    """Replay one unit (in a worker process, or here); its rows go where ``unit`` says."""
    writer: RowSink
    if unit.folder is None:
        writer = Batches()
    elif unit.whole:
        stream = unit.chunk.stream
        writer = DatasetWriter(unit.folder, options.levels, stream.shared, stream.rank)
    else:
        name = f"{unit.stream}-{unit.chunk.number}"
        writer = Spool(unit.folder / SPOOL / name, options.levels)
    try:
        done = _run(unit, options, writer.sink, tick)
    finally:
        writer.close()
    return done, _rows(writer)


def _rows(writer: RowSink) -> Rows:
    if isinstance(writer, Batches):
        return Rows(batches=writer.tables)
    if isinstance(writer, Spool):
        return Rows(spools=writer.files)
    assert isinstance(writer, DatasetWriter)
    return Rows(files=writer.files)


def _run(unit: Unit, options: ReplayOptions, sinks: SinkFactory, tick: Tick | None) -> ChunkResult:
    replay = StreamReplay(unit.chunk.stream, options, sinks)
    if unit.whole:
        return ChunkResult(replay.run(tick))
    return replay.run_chunk(unit.chunk, tick)


def _whole(index: int, stream: Stream, folder: Path | None) -> Unit:
    return Unit(index, Chunk(stream, 0, len(stream.segments)), True, folder)


def _finish(outcome: tuple[ChunkResult, Rows]) -> tuple[StreamResult, Rows]:
    return outcome[0].result, outcome[1]


def _join(
    index: int,
    chunks: list[Chunk],
    parts: list[tuple[ChunkResult, Rows]],
    options: ReplayOptions,
    folder: Path | None,
) -> tuple[StreamResult, Rows]:
    """Join a cut stream's chunks; replay it whole here when a boundary does not hold."""
    joined = join(chunks, [part[0] for part in parts], options.every_ns, options.max_silence_ns)
    if folder is not None:
        spools = [folder / SPOOL / f"{index}-{chunk.number}" for chunk in chunks]
    if joined is None:
        if folder is not None:
            for spool in spools:
                shutil.rmtree(spool, ignore_errors=True)
        return _finish(work(_whole(index, chunks[0].stream, folder), options))
    capacity = row_group_rows(options.levels)
    pairs = sorted(chunks[0].stream.channels)
    stream = chunks[0].stream
    writer = (
        Batches()
        if folder is None
        else DatasetWriter(folder, options.levels, stream.shared, stream.rank)
    )
    try:
        for pair in pairs:
            stitcher = Stitcher(capacity, writer.sink(pair))
            for number, (_done, rows) in enumerate(parts):
                path = rows.spools.get(pair)
                tables = rows.batches.get(pair, []) if path is None else read_spool(path)
                for order, table in enumerate(tables):
                    stitcher.add(table, joined.patches.get((pair, number)) if order == 0 else None)
            stitcher.flush()
    finally:
        writer.close()
    if folder is not None:
        for spool in spools:
            shutil.rmtree(spool, ignore_errors=True)
    if isinstance(writer, Batches):
        return joined.result, Rows(batches={pair: t for pair, t in writer.tables.items() if t})
    return joined.result, Rows(files=writer.files)
