"""Book deltas: every change of each pair's book, in the order kbook applied it.

``kbook replay --format deltas`` writes, per pair and UTC day (the hive layout of the snapshots,
``replay.parquet``), one row per level change. Exact semantics (also in the README, "For
backtests"):

- Columns: ``ts`` (receive time of the message), ``exch_ts`` (Kraken's time: v1 the level's third
  field, v2 the update's ``timestamp``; on ``is_snapshot`` rows the level's time when kbook holds
  it; null where Kraken sent none, on the deletes kbook writes for truncation and on the unknown
  row), ``side`` (``bid``/``ask``), ``price``, ``size`` (the new absolute size; 0 deletes the
  level), ``is_snapshot``, ``seq`` (numbers the groups of rows of a pair from 0: the rows of one
  message share it, and so do the rows of a snapshot or an unknown row kbook writes), ``depth``
  (of the followed book), and with ``--exact-text`` ``price_text``/``size_text`` (the wire's
  digits; ``"0"`` on the deletes kbook writes).
- A consumer that keeps a dict per side, sets ``price -> size`` for each row, deletes the price
  when ``size`` is 0, and resets the pair's book when a run of ``is_snapshot`` rows begins after
  rows that were not (Tardis's rule) holds kbook's book exactly after every message, never more
  levels than ``depth``: when Kraken's window pushes a level out (it never sends a delete for
  it), a delete row follows the message's own rows.
- The **unknown row** (``side``, ``price`` and ``size`` null, ``is_snapshot`` false) means "the
  book is unknown from here": a failed checksum, a malformed frame, a disconnect, a new
  connection, a resubscription, a damaged segment tail, or more than ``--max-silence`` without a
  line (stamped at the last line + ``--max-silence``); a source's rows also end with it. Rows
  resume with ``is_snapshot`` rows when the book is known again. Two snapshots in a row are
  always separated by an unknown row, so every snapshot resets the consumer.
- Each pair-day file starts from a whole book: the first message of a UTC day (or the first at
  or after ``--start``) is written as ``is_snapshot`` rows of the book after it, so any one
  file can be read alone.
- One timeline per pair (``replay.plan``): with several sources of a pair, the rows follow one
  source while its book is known, and change source only when it becomes unknown (to the
  deepest known one, then the first in the fixed order) or when a deeper one becomes known.
  A change writes the unknown row then the whole book of the new source as ``is_snapshot``
  rows, so the consumer stays exact without knowing about sources.

Deltas run on the Python path only (the native core of ``kbook.lines`` applies lines without
telling which levels changed): every line is decoded and applied by ``BookFeed``, whose books are
``DeltaBook``s writing down each change. About a fifth of the native replay's speed (see the
README), and the snapshot path is untouched.
"""

from __future__ import annotations

import heapq
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from kbook.book import Book, Level, _Side, is_zero
from kbook.errors import UsageError
from kbook.feed import channel_depth
from kbook.segment import find_segments
from kbook.storage import (
    Inputs,
    check_remote_output,
    is_remote,
    open_location,
    publish_dataset,
    segment_inputs,
)
from kbook.units import DAY, rfc3339_ns, seconds_text_ns, utc_text
from kbook.v2 import RecordReader
from replay.columns import TIMESTAMP
from replay.engine import StreamReplay, StreamResult, merge_results
from replay.options import MAX_SILENCE_NS, DurationLike, ReplayOptions, TimeLike, make_options
from replay.parquet import (
    MANIFEST,
    SOURCES,
    DatasetWriter,
    check_output,
    discard,
    publish,
    source_spool,
    temporary_folder,
    write_manifest,
)
from replay.plan import Stream, plan_streams
from replay.sampler import NEVER, Carry, Cause, PairSampler, PairSummary, Span
from replay.survey import SegmentInfo, survey_segments
from replay.survey_cache import cached_surveys
from replay.tasks import read_spool

FORMAT = "deltas"
"""The manifest's ``format`` of a delta dataset."""
SIDES = ("bid", "ask")
"""The ``side`` dictionary (an Arrow array only when written: ``pa.array`` imports pandas)."""
BATCH_ROWS = 65_536
"""Rows per row group (a batch is cut at a group of rows, never inside one)."""

Change = tuple[bool, float, float, str | None, str | None, int | None]
"""One row's level: ``(is_bid, price, size, price_text, size_text, exch_ns)``."""


def delta_schema(exact_text: bool = False) -> pa.Schema:
    """Columns of the delta files (``pair`` and ``date`` live in the folder names)."""
    fields = [
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("exch_ts", TIMESTAMP),
        pa.field("side", pa.dictionary(pa.int8(), pa.string())),
        pa.field("price", pa.float64()),
        pa.field("size", pa.float64()),
        pa.field("is_snapshot", pa.bool_(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("depth", pa.int16(), nullable=False),
    ]
    if exact_text:
        fields += [pa.field("price_text", pa.string()), pa.field("size_text", pa.string())]
    return pa.schema(fields)


# -- the book that says what it changed -----------------------------------------------------------


class DeltaBook(Book):
    """A ``Book`` that writes down every level it applies, and every level its truncation to the
    depth removes, in order: ``(is_bid, level, cut)`` (``cut``: removed by the truncation)."""

    __slots__ = ("changes",)

    def __init__(self, depth: int) -> None:
        super().__init__(depth)
        self.changes: list[tuple[bool, Level, bool]] = []

    def apply_side(self, side: _Side, changes: Iterable[Level]) -> bool:
        levels = list(changes)
        is_bid = side is self.bids
        self.changes.extend((is_bid, level, False) for level in levels)
        return super().apply_side(side, levels)

    def truncate(self) -> None:
        depth = self.depth
        for is_bid, side in ((False, self.asks), (True, self.bids)):
            if len(side.keys) > depth:
                levels = side.levels
                self.changes.extend((is_bid, levels[key], True) for key in side.keys[depth:])
        super().truncate()


# -- rows as a consumer reads them ----------------------------------------------------------------


class DeltaRows:
    """One pair's delta rows, and the book a consumer of them holds (``sides``).

    The one place rows are written: it numbers the groups (``seq``), starts each UTC day (and
    the rows after ``--start``) with the whole book, separates two snapshots by an unknown row,
    and hands ``sink`` batches that never span a day."""

    def __init__(
        self,
        sink: Callable[[pa.Table], None],
        exact_text: bool,
        start: int | None,
        end: int | None,
        summary: PairSummary,
    ) -> None:
        self.sink = sink
        self.schema = delta_schema(exact_text)
        self.exact_text = exact_text
        self.start = -NEVER if start is None else start
        self.end = NEVER if end is None else end
        self.summary = summary
        self.sides: tuple[dict[float, Change], dict[float, Change]] = ({}, {})
        """The consumer's book: asks, bids (``Change`` per price)."""
        self.known = False
        self.seq = -1
        self.day_end = 0
        """The end of the UTC day of the last row written (0: none yet)."""
        self.last_snapshot = False
        self.columns: list[list[Any]] = [[] for _ in self.schema]

    # -- events -----------------------------------------------------------------------------------

    def update(self, ts: int, changes: Sequence[Change], depth: int) -> None:
        """A message's changes to a known book."""
        sides = self.sides
        for change in changes:
            side = sides[change[0]]
            if change[2] == 0:
                side.pop(change[1], None)
            else:
                side[change[1]] = change
        if not self.start <= ts < self.end:
            return
        if ts >= self.day_end:
            self._write_book(ts, depth)
            return
        self._group(ts)
        self._rows(ts, changes, False, depth)
        self.last_snapshot = False

    def snapshot(self, ts: int, levels: Sequence[Change], depth: int) -> None:
        """The whole book (a snapshot, a checkpoint, a rebuilt book): it is known from here."""
        asks: dict[float, Change] = {}
        bids: dict[float, Change] = {}
        for change in levels:
            (bids if change[0] else asks)[change[1]] = change
        self.sides = (asks, bids)
        self.known = True
        if self.start <= ts < self.end:
            self._write_book(ts, depth)

    def unknown(self, ts: int, depth: int, cause: Cause) -> None:
        """The book is unknown from ``ts`` on, for ``cause`` (the summary's invalid span)."""
        if not self.known:
            return
        self.known = False
        self.sides = ({}, {})
        if self.start <= ts < self.end:
            self._unknown_row(ts, depth, cause)

    def reset(self, ts: int, depth: int) -> None:
        """The unknown row before another source's book: the consumer starts afresh, though
        the pair's book was known all along (no invalid span)."""
        if not self.known:
            return
        self.known = False
        self.sides = ({}, {})
        if self.start <= ts < self.end:
            self._unknown_row(ts, depth, None)

    def close(self) -> None:
        self.flush()

    # -- rows -------------------------------------------------------------------------------------

    def _write_book(self, ts: int, depth: int) -> None:
        if self.last_snapshot or not (self.sides[0] or self.sides[1]):
            # A run of is_snapshot rows would go on (the consumer would merge two books), or an
            # empty book has no rows to reset with: the unknown row clears the consumer's book.
            self._unknown_row(ts, depth, None)
            if not (self.sides[0] or self.sides[1]):
                return
        self._group(ts)
        asks, bids = self.sides
        book = [bids[price] for price in sorted(bids, reverse=True)]
        book += [asks[price] for price in sorted(asks)]
        self._rows(ts, book, True, depth)
        self.last_snapshot = True
        spans = self.summary.invalid_spans
        if spans and spans[-1][0] == spans[-1][1] and spans[-1][0] <= ts:
            spans[-1] = (spans[-1][0], ts, spans[-1][2])

    def _unknown_row(self, ts: int, depth: int, cause: Cause | None) -> None:
        """The unknown row; ``cause`` None: only a reset of the consumer (no invalid span)."""
        self._group(ts)
        columns = self.columns
        for index, value in enumerate((ts, None, None, None, None, False, self.seq, depth)):
            columns[index].append(value)
        if self.exact_text:
            columns[8].append(None)
            columns[9].append(None)
        self.last_snapshot = False
        if cause is not None:
            self.summary.invalid_spans.append((ts, ts, cause))
        self._note(ts, 1, valid=cause is None)

    def _group(self, ts: int) -> None:
        """A new group of rows at ``ts``: a batch ends at a new day or when full."""
        if ts >= self.day_end:
            self.flush()
            self.day_end = (ts // DAY + 1) * DAY
        elif len(self.columns[0]) >= BATCH_ROWS:
            self.flush()
        self.seq += 1

    def _rows(self, ts: int, changes: Sequence[Change], is_snapshot: bool, depth: int) -> None:
        """One group's rows, column by column."""
        n = len(changes)
        if not n:
            return
        columns = self.columns
        columns[0].extend([ts] * n)
        columns[1].extend([change[5] for change in changes])
        columns[2].extend([0 if change[0] else 1 for change in changes])
        columns[3].extend([change[1] for change in changes])
        columns[4].extend([change[2] for change in changes])
        columns[5].extend([is_snapshot] * n)
        columns[6].extend([self.seq] * n)
        columns[7].extend([depth] * n)
        if self.exact_text:
            columns[8].extend([change[3] for change in changes])
            columns[9].extend([change[4] for change in changes])
        self._note(ts, n, valid=True)

    def _note(self, ts: int, rows: int, valid: bool) -> None:
        summary = self.summary
        if summary.first_ts is None:
            summary.first_ts = ts
        summary.last_ts = ts
        summary.rows += rows
        if valid:
            summary.valid_rows += rows

    def flush(self) -> None:
        """Hand the buffered rows to the sink as one table."""
        columns = self.columns
        if not columns[0]:
            return
        schema = self.schema
        arrays = [
            pa.array(columns[0], pa.int64()).cast(TIMESTAMP),
            pa.array(columns[1], pa.int64()).cast(TIMESTAMP),
            pa.DictionaryArray.from_arrays(pa.array(columns[2], pa.int8()), pa.array(SIDES)),
            pa.array(columns[3], pa.float64()),
            pa.array(columns[4], pa.float64()),
            pa.array(columns[5], pa.bool_()),
            pa.array(columns[6], pa.int64()),
            pa.array(columns[7], pa.int16()),
        ]
        if self.exact_text:
            arrays += [pa.array(columns[8], pa.string()), pa.array(columns[9], pa.string())]
        self.columns = [[] for _ in schema]
        self.sink(pa.Table.from_arrays(arrays, schema=schema))


# -- book events -> rows ----------------------------------------------------------------------------


def _nowhere(_table: pa.Table) -> None:
    """The grid rows a ``DeltaSampler`` never makes."""


class EventSampler(PairSampler):
    """A sampler driven by the pair's messages rather than by grid times (deltas, on-change
    snapshots): the engine calls ``catch_up`` before each frame of the pair (``next_t`` is
    always in the past), so what the book shows is looked at one frame late, stamped with that
    frame's receive time (``at``). Subclasses say what to write (``_emit``), how a silence ends
    the book (``_stale``) and how the rows end (``_end``)."""

    __slots__ = ("at",)

    at: int | None

    def catch_up(self, clock: int) -> None:
        self._emit()
        self.at = clock

    def prepare(self, clock: int) -> None:
        self._emit()

    def voided(self, clock: int, cause: Cause = Cause.DISCONNECT) -> None:
        if self.void_cause is None:
            self.void_cause = cause
        self.at = clock
        self._emit()

    def silence(self, life: int, now: int, max_silence: int) -> None:
        if self.book is None:
            return
        self._emit()
        self._stale(life + max_silence)
        self.at = now  # the book, unchanged, is shown again before the frame at ``now``

    def finish(self, continues: bool, life: int, max_silence: int) -> None:
        if self.book is None:
            return
        self._emit()
        if not continues or self.end - life > max_silence:
            self._stale(life + max_silence)
        self._end()

    def carry(self) -> Carry:
        return Carry()

    def _emit(self) -> None:
        """Write what the book at ``at`` shows, if anything."""
        raise NotImplementedError

    def _stale(self, at: int) -> None:
        """The book went silent: unknown from ``at``."""
        raise NotImplementedError

    def _end(self) -> None:
        """The source's last rows are written."""
        raise NotImplementedError


class DeltaSampler(EventSampler):
    """Turns one pair's book events into delta rows (``DeltaRows``).

    The engine calls ``catch_up`` before each frame of the pair (``next_t`` is always in the
    past), so the changes the book wrote down since are exactly the previous frame's: they are
    written then, stamped with that frame's receive time (``at``)."""

    __slots__ = ("rows", "depth", "exch", "exch_in", "blind")

    at: int

    def __init__(
        self,
        pair: str,
        channel: str,
        options: ReplayOptions,
        sink: Callable[[pa.Table], None],
        exact_text: bool,
        source: str,
    ) -> None:
        depth = channel_depth(channel)
        super().__init__(pair, channel, 1, options.every_ns, None, options.end_ns, 1, _nowhere)
        self.next_t = -NEVER
        self.depth = depth
        self.rows = DeltaRows(sink, exact_text, options.start_ns, options.end_ns, self.summary)
        self.at = 0
        """Receive time of the frame whose changes are pending."""
        self.exch: int | None = None
        """The pending v2 frame's ``timestamp`` (v1 levels carry their own)."""
        self.exch_in: int | None = None
        """The ``timestamp`` of the v2 frame about to be applied (``DeltaReplay._apply_v2``)."""
        self.blind = False
        """The book holds a number a float cannot stand for: unknown until its next snapshot."""

    def begin(self, book: Book | None, clock: int, counted: int) -> None:
        if self.book is None:
            frames, failed, _ = self.counts()
            self.first_frames, self.first_failed = frames - counted, failed
        self.book = book
        self.void_cause = None
        self.failed_at_begin = self.counts()[1]
        self.at = clock
        self.blind = False
        self._write_whole()

    def catch_up(self, clock: int) -> None:
        super().catch_up(clock)
        self.exch, self.exch_in = self.exch_in, None

    # -- internals --------------------------------------------------------------------------------

    def _stale(self, at: int) -> None:
        self.rows.unknown(at, self.depth, Cause.SILENCE)

    def _end(self) -> None:
        self.rows.close()
        frames, failed, _ = self.counts()
        self.summary.frames = frames - self.first_frames
        self.summary.checksum_failures = failed - self.first_failed

    def _emit(self) -> None:
        book = self.book
        if not isinstance(book, DeltaBook):
            return
        if not book.valid or self.blind:
            book.changes.clear()
            self.rows.unknown(self.at, self.depth, Cause.MALFORMED if self.blind else self._cause())
            return
        if not self.rows.known:
            self._write_whole()
            return
        if book.changes:
            changes = self._convert(book.changes)
            book.changes.clear()
            if changes is None:
                self.blind = True
                self.rows.unknown(self.at, self.depth, Cause.MALFORMED)
            else:
                self.rows.update(self.at, changes, self.depth)

    def _write_whole(self) -> None:
        """The whole book as it stands, as snapshot rows at ``at``."""
        book = self.book
        if not isinstance(book, DeltaBook):
            return
        stamps = {level[0]: level for _, level, cut in book.changes if not cut}
        book.changes.clear()
        if not book.valid:
            self.rows.unknown(self.at, self.depth, self._cause())
            return
        levels = [
            (is_bid, level, False)
            for is_bid, side in (
                (True, book.top_bids(self.depth)),
                (False, book.top_asks(self.depth)),
            )
            for level in side
        ]
        changes = self._convert(levels, stamps)
        if changes is None:
            self.blind = True
            self.rows.unknown(self.at, self.depth, Cause.MALFORMED)
            return
        self.rows.snapshot(self.at, changes, self.depth)

    def _convert(
        self, levels: Sequence[tuple[bool, Level, bool]], stamps: dict[str, Level] | None = None
    ) -> list[Change] | None:
        """Rows' levels from the book's texts; None when one is not a number a float holds."""
        changes: list[Change] = []
        exch = self.exch
        for is_bid, level, cut in levels:
            price, size = level[0], level[1]
            try:
                price_f = float(price)
                size_f = 0.0 if cut else float(size)
            except (TypeError, ValueError):
                return None
            if cut:
                changes.append((is_bid, price_f, 0.0, price, "0", None))
                continue
            if (size_f == 0.0) != is_zero(size):
                return None
            source = stamps.get(price, level) if stamps is not None else level
            stamp = seconds_text_ns(source[2]) if len(source) > 2 else exch
            changes.append((is_bid, price_f, size_f, price, size, stamp))
        return changes


class PythonPathReplay(StreamReplay):
    """``StreamReplay`` with every line decoded and applied by the feed (no native core): the
    event outputs need each message's changes, which only the Python books write down."""

    def _replay_segment(self, info: SegmentInfo) -> None:
        reader = RecordReader(info.path, self.stream.api)
        handle = self._handle
        for number, lines in reader.batches():
            for index, line in enumerate(lines):
                if line:
                    handle(reader, number + index, line)
        self._segment_end(info, reader.problems)


class DeltaReplay(PythonPathReplay):
    """``StreamReplay`` with ``DeltaSampler``s: every line is decoded and applied by the feed,
    whose books write down their changes."""

    def __init__(
        self,
        stream: Stream,
        options: ReplayOptions,
        sinks: Callable[[str], Callable[[pa.Table], None]],
        exact_text: bool = False,
    ) -> None:
        self.exact_text = exact_text
        super().__init__(stream, options, sinks)
        followed = {route.key for route, _ in self.routes}

        def new_book(key: tuple[str, str], depth: int) -> Book:
            # A book no sampler follows (a v2 frame may carry entries of other symbols) writes
            # down no changes: nothing would ever take them.
            return DeltaBook(depth) if key in followed else Book(depth)

        self.feed.new_book = new_book

    def make_sampler(
        self, pair: str, channel: str, sink: Callable[[pa.Table], None]
    ) -> PairSampler:
        return DeltaSampler(
            pair, channel, self.options, sink, self.exact_text, self.stream.label(pair)
        )

    def _apply_frame(self, msg: Any, clock: int) -> None:
        data = msg.get("data") if type(msg) is dict else None
        if type(data) is list and msg.get("channel") == "book":
            for entry in data:
                symbol = entry.get("symbol") if type(entry) is dict else None
                sampler = self.by_wire.get(symbol) if type(symbol) is str else None
                if isinstance(sampler, DeltaSampler):
                    sampler.exch_in = rfc3339_ns(entry.get("timestamp"))
        super()._apply_frame(msg, clock)


# -- one timeline per pair --------------------------------------------------------------------------


Source = tuple[int, Iterator[pa.Table], list[Span]]
"""A source of a pair: its depth, its rows' batches in order, and its invalid spans (for the
cause of each unknown row)."""
Group = tuple[int, int, str, list[Change]]
"""``(ts, source index, kind, levels)``; kind ``delta``, ``snapshot`` or ``unknown``."""


def _groups(index: int, tables: Iterator[pa.Table]) -> Iterator[Group]:
    """A source's rows (written by its ``DeltaRows``) back as groups, in order."""
    for table in tables:
        ts = table.column("ts").cast(pa.int64()).to_pylist()
        exch = table.column("exch_ts").cast(pa.int64()).to_pylist()
        side = table.column("side").to_pylist()
        price = table.column("price").to_pylist()
        size = table.column("size").to_pylist()
        snap = table.column("is_snapshot").to_pylist()
        seq = table.column("seq").to_pylist()
        names = table.schema.names
        texts = (
            (table.column("price_text").to_pylist(), table.column("size_text").to_pylist())
            if "price_text" in names
            else ([None] * table.num_rows, [None] * table.num_rows)
        )
        row = 0
        while row < table.num_rows:
            stop = row
            while stop < table.num_rows and seq[stop] == seq[row]:
                stop += 1
            if side[row] is None:
                yield ts[row], index, "unknown", []
            else:
                levels = [
                    (side[i] == "bid", price[i], size[i], texts[0][i], texts[1][i], exch[i])
                    for i in range(row, stop)
                ]
                yield ts[row], index, "snapshot" if snap[row] else "delta", levels
            row = stop


def cause_at(source: Source, ts: int) -> Cause:
    """Why ``source``'s rows became invalid at ``ts`` (its invalid span from there)."""
    return next((cause for first, _, cause in source[2] if first == ts), Cause.DISCONNECT)


def follow(
    sources: Sequence[Source],
    sink: Callable[[pa.Table], None],
    summary: PairSummary,
    exact_text: bool = False,
) -> None:
    """One pair's timeline from its sources' rows (in the fixed order): the rule of the module
    docstring."""
    rows = DeltaRows(sink, exact_text, None, None, summary)
    books: list[tuple[dict[float, Change], dict[float, Change]] | None] = [None] * len(sources)
    depths = [source[0] for source in sources]
    followed: int | None = None
    merged = heapq.merge(
        *(_groups(index, source[1]) for index, source in enumerate(sources)),
        key=lambda group: (group[0], group[1]),
    )
    for ts, index, kind, levels in merged:
        book = books[index]
        if kind == "unknown":
            books[index] = None
        elif kind == "snapshot" or book is None:
            book = books[index] = ({}, {})
            for change in levels:
                book[change[0]][change[1]] = change
        else:
            for change in levels:
                if change[2] == 0:
                    book[change[0]].pop(change[1], None)
                else:
                    book[change[0]][change[1]] = change
        if index == followed:
            if kind == "unknown":
                rows.unknown(ts, depths[index], cause_at(sources[index], ts))
                followed = None
            elif kind == "snapshot":
                rows.snapshot(ts, levels, depths[index])
            else:
                rows.update(ts, levels, depths[index])
        known = [i for i, held in enumerate(books) if held is not None]
        if not known:
            continue
        best = min(known, key=lambda i: (-depths[i], i))
        if followed is None or depths[best] > depths[followed]:
            if followed is not None:
                rows.reset(ts, depths[followed])
            followed = best
            held = books[best]
            assert held is not None
            rows.snapshot(ts, [*held[1].values(), *held[0].values()], depths[best])
    rows.close()


# -- the dataset ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventFormat:
    """What differs between the outputs replayed message by message (deltas, on-change
    snapshots): the rest of the run, the dataset and its manifest are ``write_events``'."""

    name: str
    """What ``--format``/``--every`` called it, for errors."""
    schema: pa.Schema
    replay: Callable[[Stream, ReplayOptions, Callable[[str], Callable[[pa.Table], None]]], Any]
    """A ``StreamReplay`` of one stream into the given sinks."""
    follow: Callable[[Sequence[Source], Callable[[pa.Table], None], PairSummary], None]
    """One timeline from the rows of a pair's sources (in the fixed order)."""
    manifest: dict[str, Any]
    """Entries the manifest adds (``format``, ...)."""


def replay_deltas_to_dataset(
    paths: Inputs,
    out: str | Path,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    force: bool = False,
    api: str | None = None,
    max_silence: DurationLike = MAX_SILENCE_NS,
    exact_text: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Replay segments into a delta dataset at ``out`` (a folder or ``s3://`` URI), atomically, as
    ``replay_to_dataset`` writes snapshots; returns a ``replay.api.ReplaySummary``."""
    options = make_options("1s", 1, pairs, start, end, 1, api, max_silence)
    kind = EventFormat(
        "--format deltas",
        delta_schema(exact_text),
        partial(DeltaReplay, exact_text=exact_text),
        partial(follow, exact_text=exact_text),
        {"format": FORMAT, "exact_text": exact_text, "every_ns": None, "levels": None},
    )
    return write_events(paths, out, options, force, kind, progress)


def write_events(
    paths: Inputs,
    out: str | Path,
    options: ReplayOptions,
    force: bool,
    kind: EventFormat,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Replay segments (local, or ``s3://`` read in place) into a dataset of ``kind`` at ``out``
    (a local folder, or ``s3://`` where it is published as the snapshots are:
    ``kbook.storage.publish_dataset``), atomically (as ``replay.parquet`` says); returns a
    ``replay.api.ReplaySummary``. One process: the Python path, stream after stream."""
    began = time.monotonic()
    if is_remote(out):
        location = open_location(out, "--out")
        check_remote_output(location, MANIFEST, force)
        folder = Path(tempfile.mkdtemp(prefix="kbook-replay-"))
        try:
            summary = _write_into(folder, paths, options, kind, progress, location.text, began)
            keys = publish_dataset(folder, location, MANIFEST, force)
            summary.files = [location.uri(key) for key in keys]
            return summary
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    out = Path(out)
    check_output(out, force)
    folder = temporary_folder(out)
    done = False
    try:
        summary = _write_into(folder, paths, options, kind, progress, out, began)
        publish(folder, out, force)
        done = True
        summary.files = [out / Path(path).relative_to(folder) for path in summary.files]
        return summary
    finally:
        if not done:
            discard(folder)


def _write_into(
    folder: Path,
    paths: Inputs,
    options: ReplayOptions,
    kind: EventFormat,
    progress: Callable[[int, int], None] | None,
    out: Path | str,
    began: float,
) -> Any:
    """The dataset of ``kind``, manifest included, into the unpublished ``folder``; the
    summary (files under ``folder``)."""
    from replay.api import ReplaySummary

    segments = find_segments(segment_inputs(paths))
    infos = cached_surveys(segments, survey_segments)
    streams = plan_streams(infos, options)
    result, files = _replay_into(folder, streams, options, kind, infos, progress)
    summary = ReplaySummary(options, segments, result, out, files)
    if not summary.rows:
        raise UsageError(_no_rows(options, infos))
    summary.seconds = time.monotonic() - began
    write_manifest(folder, summary.to_json() | kind.manifest)
    return summary


def _replay_into(
    folder: Path,
    streams: list[Stream],
    options: ReplayOptions,
    kind: EventFormat,
    infos: list[SegmentInfo],
    progress: Callable[[int, int], None] | None,
) -> tuple[StreamResult, list[Path]]:
    """Every stream in this process, then each pair with several sources through ``follow``."""
    total = sum(info.size for info in infos)
    done = total - sum(stream.size for stream in streams)
    results: list[StreamResult] = []
    files: list[Path] = []

    def tick(size: int) -> None:
        nonlocal done
        done += size
        if progress is not None:
            progress(done, total)

    for stream in streams:
        writer = DatasetWriter(folder, 0, frozenset(stream.shared), stream.rank, kind.schema)
        try:
            results.append(kind.replay(stream, options, writer.sink).run(tick))
        finally:
            writer.close()
        files += writer.files
    merged = StreamResult()
    holders: dict[str, list[Stream]] = {}
    for stream in streams:
        for pair in sorted(stream.shared):
            holders.setdefault(pair, []).append(stream)
    writer = DatasetWriter(folder, 0, schema=kind.schema)
    try:
        for pair in sorted(holders):
            parts: list[PairSummary] = []
            sources: list[Source] = []
            for stream, result in zip(streams, results, strict=True):
                if pair not in result.pairs:
                    continue
                part = result.pairs.pop(pair)
                parts.append(part)
                path = source_spool(folder, pair, stream.rank)
                batches = read_spool(path) if path.exists() else iter(())
                sources.append((channel_depth(stream.channels[pair]), batches, part.invalid_spans))
            summary = PairSummary(pair, ", ".join(sorted({p.channel for p in parts})))
            summary.frames = sum(p.frames for p in parts)
            summary.checksum_failures = sum(p.checksum_failures for p in parts)
            summary.sources = [label for p in parts for label in p.sources]
            kind.follow(sources, writer.sink(pair), summary)
            merged.pairs[pair] = summary
    finally:
        writer.close()
        shutil.rmtree(folder / SOURCES, ignore_errors=True)
    files += writer.files
    return merge_results([*results, merged]), sorted(files)


def _no_rows(options: ReplayOptions, infos: list[SegmentInfo]) -> str:
    starts = [info.first_ns for info in infos if info.first_ns is not None]
    recorded = (
        f"segments start from {utc_text(min(starts))} to {utc_text(max(starts))}"
        if starts
        else "no segment holds a frame"
    )
    if options.start_ns is None and options.end_ns is None:
        return f"no rows: no book was known in the segments ({recorded})"
    return (
        f"no rows between {utc_text(options.start_ns)} and {utc_text(options.end_ns)}; "
        f"{len(infos)} {recorded}"
    )


def read_deltas(
    out: str | Path,
    pair: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Load part of a delta dataset, as ``read_snapshots`` loads snapshots: ``pair`` in either
    spelling (one the dataset does not hold is a ``UsageError``), ``start`` inclusive, ``end``
    exclusive; rows by pair, then in the order written (``seq``)."""
    from replay.api import read_dataset

    wanted = None if columns is None else [*columns, "seq"]
    table = read_dataset(out, pair, start, end, wanted, FORMAT)
    table = table.sort_by([("pair", "ascending"), ("seq", "ascending")])
    if columns is not None and "seq" not in columns:
        table = table.drop_columns(["seq"])
    return table
