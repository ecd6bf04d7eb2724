"""The time grid: one pair's book sampled at every multiple of the interval.

Exact semantics (also in the README):

- The grid is every multiple of ``every`` since the Unix epoch, UTC (``1s`` -> whole seconds,
  ``1d`` -> midnights UTC).
- The row at grid time ``t`` shows the book after applying every frame with receive time
  ``<= t``, in file order then line order. Receive times that go backwards (the wall clock
  stepped back) are read as the largest receive time seen so far in the stream, so a frame is
  never applied "before" one that preceded it and rows stay in time order.
- Rows start at the first grid time at or after the pair's first snapshot or checkpoint and end
  at the last grid time at or before the pair's last book event (a frame of its followed book, or
  the disconnect/new connection that voided it), one row per grid time, whether or not anything
  changed. ``--start`` (inclusive) and ``--end`` (exclusive) narrow that span.
- ``valid`` is False, and every level null, from a failed checksum, a malformed frame, a
  disconnect, a new connection or a resubscription until the next snapshot or checkpoint.
  Each run of invalid rows is noted with its ``Cause`` (``PairSummary.invalid_spans``): the
  first thing that voided the book, or the silence that made it stale.
- Staleness: a source's book is valid at ``t`` only if the source received a line (any frame,
  heartbeats included) within ``max_silence`` before ``t``. After a longer silence its rows are
  invalid until its next line (the same connection lost nothing over TCP; a new one voids the
  book until its snapshot anyway). Such invalid rows are written up to the end of the UTC day
  of the silence's start; the rows resume at the next line's grid time, so days without any
  line get no rows at all (``silence``).
- ``updates``/``checksum_failures`` count the frames of the pair's book, and the failed checksums
  among them, received in ``(t - every, t]`` (for the first row: since the first snapshot);
  ``last_update`` is the receive time of the latest such frame at or before ``t``.

Rows are built lazily: nothing happens at a grid time until the next event of the pair (or the
end) reveals that the time has passed; then the book is read once and the row repeated for every
grid time it covers. Nothing at all happens per frame: the counts are differences of the feed's
``PairStats`` counters taken when a row is emitted, so the replay's hot loop (``kbook.lines``)
only compares each frame's clock with ``next_t``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import pyarrow as pa

from kbook.book import Book
from kbook.feed import PairStats
from kbook.units import DAY
from replay.columns import NO_EXCH, RowBuffer

NAN = float("nan")
NEVER = 1 << 126
"""A grid time later than any receive time: the sampler has not started."""


class Cause(StrEnum):
    """Why rows are invalid, as replay's summary, its manifest and ``kbook verify --coverage``
    report each invalid span."""

    DISCONNECT = "disconnect"
    """The connection's feed broke: a disconnect, a new connection, a resubscription, or a
    segment cut short (what followed it is lost). Invalid until the next snapshot/checkpoint."""
    CHECKSUM = "checksum"
    """A failed checksum. Invalid until the next snapshot or checkpoint."""
    MALFORMED = "malformed"
    """A malformed book frame or checkpoint. Invalid until the next snapshot or checkpoint."""
    SILENCE = "silence"
    """The source received nothing for longer than ``--max-silence``: its book is stale."""
    NO_RECORDER = "no recorder running"
    """No source has a row: the grid times between two recordings of a day
    (``replay.timeline``)."""


Span = tuple[int, int, Cause]
"""``(first, last, cause)``: the first and last grid times of a run of invalid rows."""


@dataclass(slots=True)
class PairSummary:
    """What was written for one pair."""

    pair: str
    channel: str
    rows: int = 0
    valid_rows: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    frames: int = 0
    checksum_failures: int = 0
    invalid_spans: list[Span] = field(default_factory=list)
    """Each run of invalid rows of one cause (contiguous runs of two causes are two spans)."""
    sources: list[str] = field(default_factory=list)
    """The sources the rows came from (``replay.plan.Stream.label``), in the fixed order."""

    def note_rows(self, t: int, n: int, every: int, cause: Cause | None) -> None:
        """``n`` rows from grid time ``t`` on, valid when ``cause`` is None."""
        last = t + (n - 1) * every
        if self.first_ts is None:
            self.first_ts = t
        self.last_ts = last
        self.rows += n
        if cause is None:
            self.valid_rows += n
            return
        note_span(self.invalid_spans, (t, last, cause), every)


def note_span(spans: list[Span], span: Span, every: int) -> None:
    """Append ``span`` to ``spans``, joined to the last one if it continues it with one cause."""
    if spans and spans[-1][1] == span[0] - every and spans[-1][2] == span[2]:
        spans[-1] = (spans[-1][0], span[1], span[2])
    else:
        spans.append(span)


@dataclass(frozen=True, slots=True)
class Carry:
    """One pair's counts a chunk leaves pending for the row after it (``PairSampler.carry``)."""

    frames: int = 0
    failures: int = 0
    zeroed: str | None = None
    """How the chunk's first zeroing of the counts happened: ``"row"`` (its first row takes what
    earlier chunks left pending), ``"skip"`` (rows before ``--start`` dropped it), or None (no
    zeroing: the pending counts pass through to the next chunk)."""


class PairSampler:
    """Turns one pair's book events into grid rows, appended to a ``RowBuffer``.

    Counts come from the ``PairStats`` of the pair's wire names (``watch``): ``frames`` and
    ``checksums_failed`` at the last emitted row are remembered (``mark_*``), and ``last_ns`` is
    the receive time of the latest frame or checkpoint (``last_update``).
    """

    __slots__ = (
        "pair",
        "channel",
        "levels",
        "every",
        "start",
        "end",
        "book",
        "next_t",
        "last_event",
        "stats",
        "mark_frames",
        "mark_failed",
        "first_frames",
        "first_failed",
        "built_frames",
        "zeroed",
        "dirty",
        "row",
        "row_valid",
        "row_cause",
        "void_cause",
        "failed_at_begin",
        "row_exch",
        "empty_row",
        "buffer",
        "summary",
        "silent",
    )

    def __init__(
        self,
        pair: str,
        channel: str,
        levels: int,
        every: int,
        start: int | None,
        end: int | None,
        capacity: int,
        sink: Callable[[pa.Table], None],
        depth: int = 0,
        source: str = "",
    ) -> None:
        self.pair = pair
        self.channel = channel
        self.levels = levels
        self.every = every
        self.start = -NEVER if start is None else -(-start // every) * every
        """The first grid time at or after ``--start``."""
        self.end = end if end is not None else NEVER
        self.book: Book | None = None
        self.next_t = NEVER
        self.last_event = -NEVER
        """The latest snapshot, checkpoint or voiding event (frames are in the stats' ``last_ns``)."""
        self.stats: tuple[PairStats, ...] = ()
        self.mark_frames = self.mark_failed = 0
        self.first_frames = self.first_failed = 0
        self.built_frames = -1
        self.zeroed: str | None = None
        """How the counts were first zeroed after ``begin``: "row" or "skip" (see ``Carry``)."""
        self.dirty = True
        self.empty_row = [NAN] * (4 * levels)
        self.row = self.empty_row
        self.row_valid = False
        self.row_cause: Cause | None = Cause.DISCONNECT
        """Why the current row is invalid (None: it is valid)."""
        self.void_cause: Cause | None = None
        """What voided the followed book since its last snapshot or checkpoint (``voided``)."""
        self.failed_at_begin = 0
        """Failed checksums counted at the last snapshot or checkpoint: more now means one
        failed since."""
        self.row_exch = NO_EXCH
        self.buffer = RowBuffer(levels, capacity, sink, depth, source)
        self.summary = PairSummary(pair, channel)
        self.silent = False
        """True while rows of a silence are emitted (``silence``): they are invalid."""

    @property
    def started(self) -> bool:
        return self.book is not None

    def watch(self, stats: PairStats) -> None:
        """Count the frames of one more wire name of the pair (``XBT/USD`` and ``BTC/USD``)."""
        self.stats += (stats,)

    def counts(self) -> tuple[int, int, int]:
        """(frames, failed checksums, latest frame time) over the watched wire names."""
        frames = failed = 0
        last = -NEVER
        for stats in self.stats:
            frames += stats.frames
            failed += stats.checksums_failed
            if stats.last_ns is not None and stats.last_ns > last:
                last = stats.last_ns
        return frames, failed, last

    # -- events ---------------------------------------------------------------------------------

    def begin(self, book: Book | None, clock: int, counted: int) -> None:
        """A snapshot or checkpoint: follow ``book``; the first one opens the grid.

        ``counted`` is 1 when the event was a frame already counted in the stats (a snapshot):
        it belongs to the first row.
        """
        if self.book is None:
            self.next_t = -(-clock // self.every) * self.every
            frames, failed, _ = self.counts()
            self.mark_frames = self.first_frames = frames - counted
            self.mark_failed = self.first_failed = failed
        self.book = book
        self.void_cause = None
        self.failed_at_begin = self.counts()[1]
        self.last_event = clock
        self.dirty = True

    def prepare(self, clock: int) -> None:
        """Before an event that may void the book: fix the row that pending grid times show."""
        if self.next_t < clock:
            self._refresh()

    def voided(self, clock: int, cause: Cause = Cause.DISCONNECT) -> None:
        """The book was voided at ``clock`` (disconnect, new connection, resubscription, or
        ``cause``)."""
        self.catch_up(clock)
        if self.void_cause is None:
            self.void_cause = cause
        self.last_event = clock
        self.dirty = True

    def silence(self, life: int, now: int, max_silence: int) -> None:
        """The source received nothing from ``life`` until ``now``, longer than ``max_silence``:
        rows up to ``life + max_silence`` show the book as usual, later ones are invalid up to
        the end of that UTC day, and the grid resumes at ``now`` (see the module docstring)."""
        if self.book is None:
            return
        stale = life + max_silence
        self.catch_up(stale + 1)
        day_end = (stale // DAY + 1) * DAY
        self.silent = self.dirty = True
        self.catch_up(min(now, day_end))
        self.silent = False
        self.dirty = True
        resume = -(-now // self.every) * self.every
        if resume > self.next_t:
            self.next_t = resume

    # -- rows -----------------------------------------------------------------------------------

    def catch_up(self, clock: int) -> None:
        """Emit the rows of every grid time before ``clock`` (and before ``--end``)."""
        limit = clock if clock < self.end else self.end
        t = self.next_t
        if t >= limit:
            return
        if t < self.start:
            # Grid times before --start pass unseen, and the counts of their frames with them:
            # the pending counts belong to row t, later skipped rows saw no frame.
            self.mark_frames, self.mark_failed, _ = self.counts()
            self.zeroed = self.zeroed or "skip"
            t = min((limit - 1) // self.every * self.every, self.start - self.every) + self.every
            if t >= limit:
                self.next_t = t
                return
        n = (limit - 1 - t) // self.every + 1
        frames, failed, last = self.counts()
        self._refresh()
        self.buffer.append(
            t,
            n,
            self.every,
            self.row,
            self.row_valid,
            frames - self.mark_frames,
            failed - self.mark_failed,
            last,
            self.row_exch,
        )
        self.summary.note_rows(t, n, self.every, self.row_cause)
        self.mark_frames, self.mark_failed = frames, failed
        self.zeroed = self.zeroed or "row"
        self.next_t = t + n * self.every

    def finish(self, continues: bool, life: int, max_silence: int) -> None:
        """Emit the last rows: up to the last book event, or to ``--end`` if the pair goes on
        (``life``: the source's last line, for the staleness rule)."""
        if self.book is None:
            return
        last = self.counts()[2]
        if continues and self.end - life > max_silence:
            self.silence(life, self.end, max_silence)
        self.catch_up(self.end if continues else max(last, self.last_event) + 1)
        self._close()

    def count_from_here(self) -> None:
        """The summary's frame and checksum counts start now (a window's task, after reading
        the previous window's last segments to reach its start: those are counted there)."""
        if self.book is not None:
            self.first_frames, self.first_failed, _ = self.counts()

    def carry(self) -> Carry:
        """End a chunk (its rows are all out): what stays pending for the next one."""
        if self.book is None:
            return Carry()
        self._close()
        frames, failed, _ = self.counts()
        return Carry(frames - self.mark_frames, failed - self.mark_failed, self.zeroed)

    def _close(self) -> None:
        self.buffer.flush()
        frames, failed, _ = self.counts()
        self.summary.frames = frames - self.first_frames
        self.summary.checksum_failures = failed - self.first_failed

    def _refresh(self) -> None:
        """Rebuild the row if the book may have changed since it was built."""
        frames = self.counts()[0]
        if self.dirty or frames != self.built_frames:
            self.dirty = False
            self.built_frames = frames
            self._build_row()

    def _build_row(self) -> None:
        book = self.book
        if book is None or not book.valid or self.silent:
            self.row = self.empty_row
            self.row_valid = False
            self.row_cause = self._cause()
            self.row_exch = NO_EXCH
            return
        row = self.empty_row.copy()
        n = self.levels
        index = 0
        for price, volume in book.top_bids(n):
            row[index] = float(price)
            row[index + 1] = float(volume)
            index += 4
        index = 2
        for price, volume in book.top_asks(n):
            row[index] = float(price)
            row[index + 1] = float(volume)
            index += 4
        self.row = row
        self.row_valid = True
        self.row_cause = None
        self.row_exch = NO_EXCH if book.exch_ns is None else book.exch_ns

    def _cause(self) -> Cause:
        """Why the book cannot be shown: what voided it first, else the silence it is in."""
        book = self.book
        if book is not None and book.valid:
            return Cause.SILENCE
        if self.void_cause is not None:
            return self.void_cause
        if self.counts()[1] > self.failed_at_begin:
            return Cause.CHECKSUM
        return Cause.MALFORMED if book is not None else Cause.DISCONNECT
