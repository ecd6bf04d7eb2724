"""On-change snapshots (``--every change``): a snapshot row whenever the top ``--levels`` changed.

The rows have the grid snapshots' columns and meaning (``replay.sampler``), with these
differences (also in the README, "For backtests"):

- a row is written at the receive time of each message after which the top ``--levels`` of the
  book (prices and sizes, both sides) or its validity differ from the previous row's, and only
  then; the first message of each UTC day (and the first at or after ``--start``) gets a row
  whatever it changed, so any one day's file can be read alone;
- the book becomes invalid as on the grid (failed checksum, malformed frame, disconnect, new
  connection, resubscription, damaged segment tail): a row with ``valid`` false at that
  message's time; after more than ``--max-silence`` without a line, at the last line +
  ``--max-silence``; a source's rows end with such a row too;
- ``updates``/``checksum_failures`` count the frames since the previous row (up to this one);
  ``last_update`` is the latest frame's receive time;
- one timeline per pair with several sources, as the deltas follow them (``replay.deltas``):
  one source while its book is valid, another when it becomes invalid (the deepest valid one,
  then the first in the fixed order) or when a deeper one becomes valid; a change of source
  writes the new source's latest row at that time (its counts zero), changed top or not.

Nothing is stamped late or with a book from the future: the row at ``ts`` is the book after
the message received at ``ts``. ``valid`` rows as-of joined onto a time grid give exactly the
grid snapshots (``tests/test_replay_changes.py``). Like the deltas, this runs on the Python path
(every line decoded and applied by ``BookFeed``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from kbook.book import Book
from kbook.feed import channel_depth
from kbook.storage import Inputs
from kbook.units import DAY
from replay.columns import file_schema, level_names, row_group_rows
from replay.deltas import (
    EventFormat,
    EventSampler,
    PythonPathReplay,
    Source,
    cause_at,
    write_events,
)
from replay.options import MAX_SILENCE_NS, DurationLike, ReplayOptions, TimeLike, make_options
from replay.sampler import NEVER, PairSampler, PairSummary
from replay.tasks import Stitcher


class ChangeSampler(EventSampler):
    """``PairSampler``'s rows, one per message that changed the top instead of one per grid time
    (an ``EventSampler``: it looks at the book the previous frame, at ``at``, left)."""

    __slots__ = ("first", "shown", "shown_valid", "row_day_end")

    def __init__(
        self,
        pair: str,
        channel: str,
        options: ReplayOptions,
        sink: Callable[[pa.Table], None],
        source: str,
    ) -> None:
        levels = options.levels
        super().__init__(
            pair,
            channel,
            levels,
            1,
            None,
            options.end_ns,
            row_group_rows(levels),
            sink,
            channel_depth(channel),
            source,
        )
        self.next_t = -NEVER
        self.first = -NEVER if options.start_ns is None else options.start_ns
        self.at: int | None = None
        """Receive time of the frame whose book is not looked at yet."""
        self.shown: list[float] | None = None
        self.shown_valid = False
        self.row_day_end = 0

    def begin(self, book: Book | None, clock: int, counted: int) -> None:
        if self.book is None:
            frames, failed, _ = self.counts()
            self.mark_frames = self.first_frames = frames - counted
            self.mark_failed = self.first_failed = failed
        self.book = book
        self.void_cause = None
        self.failed_at_begin = self.counts()[1]
        self.at = clock

    # -- internals --------------------------------------------------------------------------------

    def _stale(self, at: int) -> None:
        self.silent = True
        self.at = at
        self._emit()
        self.silent = False

    def _end(self) -> None:
        self._close()

    def _emit(self) -> None:
        """Write a row at ``at`` if the book's top (or validity) differs from the last row's."""
        at = self.at
        if self.book is None or at is None:
            return
        self.at = None
        if at < self.first:
            self.mark_frames, self.mark_failed, _ = self.counts()
            return
        if at >= self.end:
            return
        self._build_row()
        row, valid = self.row, self.row_valid
        if at < self.row_day_end and valid == self.shown_valid and (not valid or row == self.shown):
            # The book's top is as shown: a later exchange time alone is no change.
            return
        frames, failed, last = self.counts()
        updates, failures = frames - self.mark_frames, failed - self.mark_failed
        self.buffer.append(at, 1, 1, row, valid, updates, failures, last, self.row_exch)
        self.summary.note_rows(at, 1, 1, self.row_cause)
        self.mark_frames, self.mark_failed = frames, failed
        self.shown, self.shown_valid = row, valid
        self.row_day_end = (at // DAY + 1) * DAY


class ChangeReplay(PythonPathReplay):
    """``StreamReplay`` with ``ChangeSampler``s, every line through the feed (Python path)."""

    def make_sampler(
        self, pair: str, channel: str, sink: Callable[[pa.Table], None]
    ) -> PairSampler:
        return ChangeSampler(pair, channel, self.options, sink, self.stream.label(pair))


def replay_changes_to_dataset(
    paths: Inputs,
    out: str | Path,
    levels: int = 10,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    force: bool = False,
    api: str | None = None,
    max_silence: DurationLike = MAX_SILENCE_NS,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Replay segments into on-change snapshots at ``out`` (``replay_to_dataset`` with
    ``every="change"`` comes here); returns a ``replay.api.ReplaySummary``."""
    options = make_options("1s", levels, pairs, start, end, 1, api, max_silence)
    kind = EventFormat(
        "--every change",
        file_schema(levels),
        ChangeReplay,
        partial(follow_changes, levels=levels),
        {"every_ns": None, "every": "change"},
    )
    return write_events(paths, out, options, force, kind, progress)


# -- one timeline per pair --------------------------------------------------------------------------


def _rows(index: int, tables: Iterator[pa.Table]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    for table in tables:
        ts = table.column("ts").cast(pa.int64()).to_pylist()
        for at, row in zip(ts, table.to_pylist(), strict=True):
            yield at, index, row


def follow_changes(
    sources: Sequence[Source],
    sink: Callable[[pa.Table], None],
    summary: PairSummary,
    levels: int = 10,
) -> None:
    """One pair's on-change rows from its sources' rows (``(depth, batches)`` in the fixed
    order): the rule of the module docstring."""
    schema = file_schema(levels)
    names = level_names(levels)
    stitcher = Stitcher(row_group_rows(levels), sink)
    latest: list[dict[str, Any] | None] = [None] * len(sources)
    depths = [source[0] for source in sources]
    followed: int | None = None
    shown: tuple[Any, ...] | None = None
    day_end = 0
    pending: list[dict[str, Any]] = []

    def emit(at: int, row: dict[str, Any], own: bool, source: int) -> None:
        nonlocal shown, day_end
        valid = bool(row["valid"])
        top = (valid, row["source"] if valid else None, *(row[name] for name in names))
        if at < day_end and top == shown:
            return
        out = dict(row, ts=at)
        if not own:
            out["updates"] = out["checksum_failures"] = 0
        if not valid:
            out["depth"] = out["source"] = None
        pending.append(out)
        summary.note_rows(at, 1, 1, None if valid else cause_at(sources[source], at))
        shown, day_end = top, (at // DAY + 1) * DAY
        if len(pending) >= 4096:
            flush()

    def flush() -> None:
        if pending:
            stitcher.add(pa.Table.from_pylist(pending, schema=schema))
            pending.clear()

    merged = heapq.merge(
        *(_rows(index, source[1]) for index, source in enumerate(sources)),
        key=lambda item: (item[0], item[1]),
    )
    for at, index, row in merged:
        latest[index] = row
        valid = [i for i, held in enumerate(latest) if held is not None and held["valid"]]
        best = min(valid, key=lambda i: (-depths[i], i)) if valid else None
        held = latest[followed] if followed is not None else None
        deeper = best is not None and followed is not None and depths[best] > depths[followed]
        if held is not None and held["valid"] and not deeper:
            if index == followed:
                emit(at, row, True, index)
            continue
        if best is None:  # no source is valid: the followed one's rows say so
            if index == followed:
                emit(at, row, True, index)
            continue
        followed = best
        chosen = latest[best]
        assert chosen is not None
        emit(at, chosen, best == index, best)
    flush()
    stitcher.flush()
