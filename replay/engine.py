"""Segments -> ``BookFeed`` -> samplers: the replay of one stream.

One ``StreamReplay`` reads a stream's segments in order, line by line (each line decoded once, by
``SegmentReader``), applies frames of the followed books to one ``BookFeed`` and lets each pair's
``PairSampler`` emit grid rows lazily. Streams share nothing, so ``replay_stream`` is the unit of
work a process pool runs (see ``replay.api``).

Rules beyond the sampler's (``replay.sampler`` has the snapshot semantics):

- frames are applied in file order then line order, never re-sorted; the clock is the largest
  ``recv_ns`` seen so far in the stream;
- frames of pairs not asked for, of other channels (ticker, trade) and of a pair's shallower book
  are skipped and counted, never applied;
- a segment that ends damaged (torn zstd frame, cut last line) voids every book at its last line:
  what followed it is lost, so the rows up to the next snapshot or checkpoint are invalid;
- segments that start at or after ``--end`` are not read; segments before ``--start`` are not read
  when a later one, still before it, starts with checkpoints of every followed book (the recorder
  writes those at each rotation), since the checkpoint replaces the book entirely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from kbook.feed import BookFeed, Outcome
from kbook.pairs import common_name
from kbook.segment import Problem, SegmentReader
from replay.columns import row_group_rows
from replay.options import ReplayOptions
from replay.plan import Stream
from replay.sampler import PairSampler, PairSummary
from replay.survey import SegmentInfo

SinkFactory = Callable[[str], Callable[[pa.Table], None]]
"""Given a pair's common name, where its row batches go."""
Progress = Callable[[int], None]
"""Called with the compressed bytes of each segment done (or skipped)."""

_LOST_TAIL = ("last line cut short", "torn zstd frame", "corrupt zstd data")


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
        self.feed = BookFeed()
        self.clock = -(1 << 126)
        capacity = row_group_rows(options.levels)
        self.samplers = {
            pair: PairSampler(
                pair,
                channel,
                options.levels,
                options.every_ns,
                options.start_ns,
                options.end_ns,
                capacity,
                sinks(pair),
            )
            for pair, channel in stream.channels.items()
        }
        wires = {wire for info in stream.segments for wire, _ in info.books}
        self.by_wire = {
            wire: self.samplers[common_name(wire)]
            for wire in wires
            if common_name(wire) in self.samplers
        }
        self.result = StreamResult()

    def run(self, progress: Progress | None = None) -> StreamResult:
        first, stop = self._span()
        segments = self.stream.segments
        self._skip_to(first)
        for index, info in enumerate(segments):
            if first <= index < stop:
                self._replay_segment(info)
                self.result.segments_read += 1
            else:
                self.result.segments_skipped += 1
            if progress is not None:
                progress(info.size)
        later = {common_name(wire) for info in segments[stop:] for wire, _ in info.books}
        self.result.malformed_frames = self.feed.malformed_frames
        for pair, sampler in self.samplers.items():
            sampler.finish(continues=pair in later)
            self.result.pairs[pair] = sampler.summary
        return self.result

    # -- choosing segments ----------------------------------------------------------------------

    def _span(self) -> tuple[int, int]:
        """Indexes ``[first, stop)`` of the segments that must be read for --start/--end."""
        segments = self.stream.segments
        end = self.options.end_ns
        stop = len(segments)
        if end is not None:
            stop = next(
                (i for i, s in enumerate(segments) if s.first_ns is not None and s.first_ns >= end),
                stop,
            )
        first = 0
        start = self.options.start_ns
        if start is not None:
            wanted = set(self.stream.channels.items())
            latest = start - self.options.every_ns
            for index in range(1, stop):
                info = segments[index]
                if info.first_ns is None or info.first_ns > latest:
                    break
                head = {(common_name(wire), channel) for wire, channel in info.head_checkpoints}
                if wanted <= head:
                    first = index
        return first, stop

    def _skip_to(self, first: int) -> None:
        """Start the feed as it would stand at segment ``first``: only the connection carries."""
        for info in self.stream.segments[:first]:
            if info.connection_changed:
                self.feed.connection_id = info.connection_at_end

    # -- the hot loop ---------------------------------------------------------------------------

    def _replay_segment(self, info: SegmentInfo) -> None:
        reader = SegmentReader(info.path)
        feed = self.feed
        on_message = feed.on_message
        by_wire = self.by_wire
        books = feed.books
        clock = self.clock
        skipped = 0
        for record in reader:
            recv_ns = record.get("recv_ns")
            if type(recv_ns) is not int:
                continue
            if recv_ns > clock:
                clock = recv_ns
            msg = record.get("msg")
            if msg is not None:
                if type(msg) is list and len(msg) >= 4:
                    wire = msg[-1]
                    sampler = by_wire.get(wire) if type(wire) is str else None
                    if sampler is None or msg[-2] != sampler.channel:
                        skipped += 1
                        continue
                    if sampler.next_t < clock:
                        sampler.catch_up(clock)
                    outcome = on_message(msg, clock)
                    if outcome == Outcome.SNAPSHOT:
                        sampler.on_frame(outcome, clock, books[(wire, msg[-2])])
                    else:
                        sampler.on_frame(outcome, clock, None)
                elif type(msg) is dict:
                    if msg.get("event") in ("systemStatus", "subscriptionStatus"):
                        self.clock = clock
                        self._global(lambda msg=msg: on_message(msg, self.clock))
                else:
                    on_message(msg, clock)  # counted as malformed
            elif "meta" in record:
                self.clock = clock
                self._on_meta(record["meta"])
            elif "raw" in record:
                self.result.raw_frames += 1
        self.clock = clock
        self.result.skipped_frames += skipped
        self.result.problems.extend(reader.problems)
        if info.path.name.endswith(".partial") or any(
            problem.reason.startswith(_LOST_TAIL) for problem in reader.problems
        ):
            self._global(lambda: feed.connection_lost(self.clock))

    def _on_meta(self, meta: object) -> None:
        if type(meta) is not dict:
            return
        kind = meta.get("type")
        if kind == "checkpoint":
            sampler = self.by_wire.get(meta.get("pair"))  # type: ignore[arg-type]
            if sampler is None or meta.get("channel") != sampler.channel:
                return
            sampler.catch_up(self.clock)
            self.feed.on_meta(meta, self.clock)
            book = self.feed.books.get((meta["pair"], meta["channel"]))
            if book is not None and book.valid:
                sampler.begin(book, self.clock)
                sampler.last_frame = sampler.last_event = self.clock
                sampler.dirty = True
        elif kind in ("connect", "disconnect"):
            self._global(lambda: self.feed.on_meta(meta, self.clock))

    def _global(self, apply: Callable[[], object]) -> None:
        """Apply an event that may void books of several pairs, keeping earlier rows exact."""
        clock = self.clock
        watched = [s for s in self.samplers.values() if s.book is not None and s.book.valid]
        for sampler in watched:
            sampler.prepare(clock)
        apply()
        for sampler in watched:
            if not sampler.book.valid:  # type: ignore[union-attr]
                sampler.voided(clock)


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
