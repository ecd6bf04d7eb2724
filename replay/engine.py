"""Segments -> ``BookFeed`` -> samplers: the replay of one stream.

One ``StreamReplay`` reads a stream's segments in order, line by line, applies frames of the
followed books to one ``BookFeed`` and lets each pair's ``PairSampler`` emit grid rows lazily.
Plain updates (nearly every line) are applied straight from the raw line by ``kbook.lines``;
every other line, and the first frame past a pair's next grid time, comes back here and is
decoded and handled one at a time. Streams share nothing, so ``replay_stream`` is the unit of
work a process pool runs (see ``replay.api``).

Rules beyond the sampler's (``replay.sampler`` has the snapshot semantics):

- frames are applied in file order then line order, never re-sorted; the clock is the largest
  ``recv_ns`` seen so far in the stream;
- the stream is one source (``replay.plan``): a line received more than ``--max-silence`` after
  the one before it ends a silence, and every pair's rows in it are invalid
  (``PairSampler.silence``). Every line that ends such a silence reaches ``_apply``: a grid time
  inside it is past each started pair's next grid time, so ``LineFeed.run`` hands the line back
  (lines of books not followed and control frames it always hands back);
- frames of pairs not asked for, of other channels (ticker, trade) and of a pair's shallower book
  are skipped and counted, never applied;
- a segment that ends damaged (torn zstd frame, cut last line) voids every book at its last line:
  what followed it is lost, so the rows up to the next snapshot or checkpoint are invalid;
- segments that start at or after ``--end`` are not read; segments before ``--start`` are not read
  when a later one, still before it, starts with checkpoints of every followed book (the recorder
  writes those at each rotation), since the checkpoint replaces the book entirely.

Both Kraken APIs (``Stream.api``) take one loop: ``kbook.v2.RecordReader`` decodes each line
``LineFeed`` hands back for its API (v2 number lexemes kept for the checksum), and the stream's
dialect (``kbook.dialect``) answers every question whose answer differs per API: is a frame book
data, which book would its feed file it under, can no feed file it, may it void books (a status
frame or an (un)subscribe answer: a global event). Its feed (``BookFeed`` or ``V2BookFeed``)
applies it with the same rules; checkpoints restore, a damaged tail voids; a v2 stream is cut into
tasks as v1 is.

The same fact lets one stream run as several tasks in parallel (``replay.plan``'s, joined by
``replay.tasks``): a task after the first starts at such a segment. A day's task starts before
its midnight and writes from there (``--start``), counting only the segments it owns; a piece
of a day before another stops at the head of the next one's first segment, emitting exactly the
rows the whole replay emits before each followed book is restored there. What a task cannot know
alone (counts pending across the boundary, whether its start state was really the one the whole
replay reaches) goes into its ``TaskResult`` for the join to settle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa

from kbook.dialect import dialect_for
from kbook.feed import BookFeed, Outcome, channel_depth, misnamed
from kbook.lines import NEVER, LineFeed, Route
from kbook.pairs import common_name
from kbook.segment import Problem, SegmentReader, sane_recv_ns
from kbook.v2 import RecordReader
from replay.columns import row_group_rows
from replay.options import ReplayOptions
from replay.plan import Stream, Task, span
from replay.sampler import Carry, Cause, PairSampler, PairSummary
from replay.survey import SegmentInfo

SinkFactory = Callable[[str], Callable[[pa.Table], None]]
"""Given a pair's common name, where its row batches go."""
Progress = Callable[[int], None]
"""Called with the compressed bytes of each segment done (or skipped)."""

_LOST_TAIL = ("last line cut short", "torn zstd frame", "corrupt zstd data")


@dataclass
class TaskResult:
    """A task's result and what the join checks to accept it (see ``replay.tasks``)."""

    result: StreamResult
    carries: dict[str, Carry] = field(default_factory=dict)
    start_connection: int | None = None
    """The connection id the task assumed at its start (from the survey)."""
    end_connection: int | None = None
    """The connection id in force after its last segment."""
    end_clock: int = 0
    """The clock after its last segment."""
    clean_start: bool = True
    """Every followed book was restored by the first segment's head checkpoints."""
    clean_end: bool = True
    """The head of the next task's first segment restored every followed book."""
    probe: tuple[int, int | None] | None = None
    """The clock and the connection id before segment ``Task.probe``, where the next window's
    task starts reading (None: the task has no probe)."""


@dataclass
class StreamResult:
    """What replaying one stream did."""

    pairs: dict[str, PairSummary] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    segments_read: int = 0
    segments_skipped: int = 0
    skipped_frames: int = 0
    """Frames of other pairs, channels or depths, not applied."""
    malformed_frames: int = 0
    raw_frames: int = 0


class StreamReplay:
    """Replays one stream; ``run`` returns its ``StreamResult``."""

    def __init__(self, stream: Stream, options: ReplayOptions, sinks: SinkFactory) -> None:
        self.stream = stream
        self.options = options
        self.dialect = dialect_for(stream.api)
        self.feed: BookFeed = self.dialect.feed()
        self.lines = LineFeed(self.feed)
        self.samplers = {
            pair: self.make_sampler(pair, channel, sinks(pair))
            for pair, channel in stream.channels.items()
        }
        for pair, sampler in self.samplers.items():
            sampler.summary.sources = [stream.label(pair)]
        wires = sorted({wire for info in stream.segments for wire, _ in info.books})
        self.by_wire = {
            wire: self.samplers[common_name(wire)]
            for wire in wires
            if common_name(wire) in self.samplers
        }
        self.routes: list[tuple[Route, PairSampler]] = []
        for wire, sampler in self.by_wire.items():
            route = self.lines.follow(wire, sampler.channel)
            sampler.watch(route.stats)
            self.routes.append((route, sampler))
        self.result = StreamResult()
        self._heading = False
        """True until the first ``msg`` line of a task that must start at checkpoints."""
        self._insane = 0
        """Lines of the current segment whose receive time is outside the sane window."""
        self._clean_start = True

    def make_sampler(
        self, pair: str, channel: str, sink: Callable[[pa.Table], None]
    ) -> PairSampler:
        """What turns ``pair``'s book events into rows: grid snapshots here (``replay.deltas``
        puts its own in)."""
        options = self.options
        return PairSampler(
            pair,
            channel,
            options.levels,
            options.every_ns,
            options.start_ns,
            options.end_ns,
            row_group_rows(options.levels),
            sink,
            channel_depth(channel),
            self.stream.label(pair),
        )

    @property
    def clock(self) -> int:
        """The largest ``recv_ns`` seen so far in the stream: the time every frame is applied at."""
        return self.lines.clock

    def run(self, progress: Progress | None = None) -> StreamResult:
        """Replay the whole stream (the segments ``--start``/``--end`` need)."""
        first, stop = self._span()
        for info in self.stream.segments[:first] + self.stream.segments[stop:]:
            self.result.segments_skipped += 1
            if progress is not None:
                progress(info.size)
        return self.run_task(Task(0, self.stream, first, stop), progress).result

    def run_task(self, task: Task, progress: Progress | None = None) -> TaskResult:
        """Replay one task's segments ``[first, stop)`` of the stream (the whole stream is one
        task)."""
        segments = self.stream.segments
        self._skip_to(task.first)
        start_connection = self.feed.connection_id
        self._heading = task.number > 0 or task.window > 0
        probe = None
        malformed = 0  # malformed frames of the segments before the owned ones
        for index in range(task.first, task.stop):
            if index == task.probe:
                probe = (self.clock, self.feed.connection_id)
            if index == task.owned and index > task.first:
                # The segments so far were the previous window's: read to reach this window's
                # start, counted there.
                self.result = StreamResult()
                malformed = self.feed.malformed_frames
                for sampler in self.samplers.values():
                    sampler.count_from_here()
            info = segments[index]
            self._replay_segment(info)
            self.result.segments_read += 1
            if progress is not None and index >= task.owned:
                progress(info.size)
        done = TaskResult(
            self.result,
            start_connection=start_connection,
            end_connection=self.feed.connection_id,
            end_clock=self.clock,
            clean_start=self._clean_start and not self._heading,
            probe=probe,
        )
        self.result.malformed_frames = self.feed.malformed_frames - malformed
        if task.last:
            later = {common_name(wire) for info in segments[task.stop :] for wire, _ in info.books}
            silence = self.options.max_silence_ns
            for pair, sampler in self.samplers.items():
                sampler.finish(pair in later, self.clock, silence)
        else:
            done.clean_end = self._peek(segments[task.stop])
        for pair, sampler in self.samplers.items():
            done.carries[pair] = sampler.carry()
            self.result.pairs[pair] = sampler.summary
        return done

    # -- choosing segments ----------------------------------------------------------------------

    def _span(self) -> tuple[int, int]:
        return span(self.stream, self.options)

    def _skip_to(self, first: int) -> None:
        """Start the feed as it would stand at segment ``first``: only the connection carries."""
        for info in self.stream.segments[:first]:
            if info.connection_changed:
                self.feed.connection_id = info.connection_at_end

    # -- the hot loop ---------------------------------------------------------------------------

    def _replay_segment(self, info: SegmentInfo) -> None:
        reader = RecordReader(info.path, self.stream.api)
        run = self.lines.run
        handle = self._handle
        for number, lines in reader.batches():
            index = self._head(reader, number, lines) if self._heading else 0
            index = run(lines, index)
            count = len(lines)
            while index < count:
                if lines[index]:
                    handle(reader, number + index, lines[index])
                index = run(lines, index + 1)
        self._segment_end(info, reader.problems)

    def _segment_end(self, info: SegmentInfo, problems: list[Problem]) -> None:
        self.result.problems.extend(problems)
        if self._insane:
            reason = f"{self._insane} line(s) with a receive time before 1970 or after 2100 skipped"
            self.result.problems.append(Problem(info.path, 0, reason))
            self._insane = 0
        if info.path.name.endswith(".partial") or any(
            problem.reason.startswith(_LOST_TAIL) for problem in problems
        ):
            self._global(lambda: self.feed.connection_lost(self.clock))

    def _handle(self, reader: RecordReader, number: int, line: bytes) -> None:
        """One line ``LineFeed`` handed back: decode it and apply it the general way."""
        record = reader.decode(number, line)
        if record is not None:
            self._apply(record)

    def _apply(self, record: dict[str, Any]) -> None:
        recv_ns = record.get("recv_ns")
        if not sane_recv_ns(recv_ns):
            if type(recv_ns) in (int, float):  # a number, but not a sane time (or above int64)
                self._insane += 1
            return
        life = self.lines.clock
        if recv_ns > life:
            if recv_ns - life > self.options.max_silence_ns and life != -NEVER:
                self._silence(life, recv_ns)
            self.lines.clock = recv_ns
        clock = self.lines.clock
        msg = record.get("msg")
        if msg is not None:
            self._apply_frame(msg, clock)
        elif "meta" in record:
            self._on_meta(record["meta"])
        elif "raw" in record:
            self.result.raw_frames += 1
        self._sync()

    def _silence(self, life: int, now: int) -> None:
        """Nothing was received from ``life`` to ``now``: the books were stale meanwhile."""
        for sampler in self.samplers.values():
            sampler.silence(life, now, self.options.max_silence_ns)
        self._sync()

    def _apply_frame(self, msg: Any, clock: int) -> None:
        """One decoded frame, in either API's shape: book data of a followed book goes to the
        feed (the sampler catching up first), an event that may void books goes through
        ``_global``, anything else to the feed (control frames; malformed ones are counted)."""
        feed = self.feed
        dialect = self.dialect
        if dialect.is_book(msg):
            found = dialect.book_frame(msg, feed)
            sampler = self.by_wire.get(found[0]) if found is not None else None
            if sampler is None or found is None or found[1] not in (None, sampler.channel):
                if dialect.unfiled(msg):
                    feed.malformed_frames += 1  # as the feed counts it
                else:
                    self.result.skipped_frames += 1  # not followed, or another channel's
                return
            if sampler.next_t < clock:
                sampler.catch_up(clock)
            key = (found[0], sampler.channel)
            if feed.on_message(msg, clock) == Outcome.SNAPSHOT and feed.last_key == key:
                sampler.begin(feed.books[key], clock, counted=1)
        elif dialect.voids_books(msg):
            self._global(lambda: feed.on_message(msg, clock))
        elif feed.on_message(msg, clock) == Outcome.OTHER_CHANNEL:
            self.result.skipped_frames += 1  # another channel (ticker, trade, ...)

    def _head(self, reader: RecordReader, number: int, lines: list[bytes]) -> int:
        """A task's start: apply lines one by one up to the first ``msg`` line (returned, not
        applied); by then the head checkpoints must have restored every followed book."""
        for index, line in enumerate(lines):
            if not line:
                continue
            record = reader.decode(number + index, line)
            if record is None:
                continue
            if "msg" in record:
                self._heading = False
                books = self.feed.books
                self._clean_start = all(
                    (book := books.get(route.key)) is not None and book.valid
                    for route in self._followed()
                )
                return index
            self._apply(record)
        return len(lines)

    def _peek(self, info: SegmentInfo) -> bool:
        """End a task where the next one starts: read the head of its first segment and emit
        each pair's rows up to its checkpoint there, as the whole replay would before restoring
        it (connect/disconnect lines before it still void books). True when every followed book
        had its checkpoint before the first ``msg`` line."""
        active = {route.key[0]: sampler for route, sampler in self._followed_pairs()}
        reader = SegmentReader(info.path)
        for number, lines in reader.batches():
            for index, line in enumerate(lines):
                if not line or not active:
                    continue
                record = reader.decode(number + index, line)
                if record is None:
                    continue
                if "msg" in record:
                    return False
                recv_ns = record.get("recv_ns")
                meta = record.get("meta")
                if type(recv_ns) is not int or type(meta) is not dict:
                    continue
                if recv_ns > self.lines.clock:
                    self.lines.clock = recv_ns
                clock = self.lines.clock
                kind = meta.get("type")
                wire = meta.get("pair")
                sampler = active.get(wire) if type(wire) is str else None
                if kind == "checkpoint" and sampler is not None:
                    if meta.get("channel") == sampler.channel:
                        sampler.catch_up(clock)
                        active = {w: s for w, s in active.items() if s is not sampler}
                elif kind in ("connect", "disconnect"):
                    watched = set(active.values())
                    self._global(partial(self.feed.on_meta, meta, clock), watched)
            if not active:
                return True
        return not active

    def _followed(self) -> list[Route]:
        """Routes of the followed books the stream's segments hold (an alias may hold none)."""
        return [route for route, _ in self._followed_pairs()]

    def _followed_pairs(self) -> list[tuple[Route, PairSampler]]:
        held = self.stream.books
        return [(route, sampler) for route, sampler in self.routes if route.key in held]

    def _sync(self) -> None:
        """Tell ``LineFeed`` where each pair's next grid time is and which book it follows."""
        books = self.feed.books
        for route, sampler in self.routes:
            route.limit = sampler.next_t
            route.book = books.get(route.key)

    def _on_meta(self, meta: object) -> None:
        if type(meta) is not dict:
            return
        kind = meta.get("type")
        clock = self.clock
        if kind == "checkpoint":
            wire = meta.get("pair")
            if type(wire) is not str:
                return
            sampler = self.by_wire.get(wire)
            if sampler is None or meta.get("channel") != sampler.channel:
                if misnamed(wire, meta.get("channel")):
                    self.feed.malformed_frames += 1  # as BookFeed counts it
                return
            key = (wire, sampler.channel)
            sampler.catch_up(clock)
            before = self.feed.books.get(key)
            was_valid = before is not None and before.valid
            self.feed.on_meta(meta, clock)
            book = self.feed.books.get(key)
            if book is not None and book.valid:
                sampler.begin(book, clock, counted=0)
            elif was_valid and sampler.book is book:
                sampler.voided(clock, Cause.MALFORMED)  # a malformed checkpoint wiped the book
        elif kind in ("connect", "disconnect"):
            self._global(lambda: self.feed.on_meta(meta, clock))

    def _global(
        self, apply: Callable[[], object], samplers: set[PairSampler] | None = None
    ) -> None:
        """Apply an event that may void books of several pairs, keeping earlier rows exact."""
        clock = self.clock
        watched = [
            s
            for s in (self.samplers.values() if samplers is None else samplers)
            if s.book is not None and s.book.valid
        ]
        for sampler in watched:
            sampler.prepare(clock)
        apply()
        for sampler in watched:
            if not sampler.book.valid:  # type: ignore[union-attr]
                sampler.voided(clock)
        self._sync()


def replay_stream(
    stream: Stream, options: ReplayOptions, sinks: SinkFactory, progress: Progress | None = None
) -> StreamResult:
    """Replay one stream into ``sinks``; the unit of work of a worker process."""
    return StreamReplay(stream, options, sinks).run(progress)


def merge_results(results: Sequence[StreamResult]) -> StreamResult:
    """One result for several streams (their pairs are disjoint)."""
    merged = StreamResult()
    for result in results:
        merged.pairs.update(result.pairs)
        merged.problems.extend(result.problems)
        merged.segments_read += result.segments_read
        merged.segments_skipped += result.segments_skipped
        merged.skipped_frames += result.skipped_frames
        merged.malformed_frames += result.malformed_frames
        merged.raw_frames += result.raw_frames
    merged.pairs = dict(sorted(merged.pairs.items()))
    return merged
