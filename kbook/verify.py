"""``kbook verify``: feed segments through the book builder and count every checksum.

The library call is ``verify_paths``; the CLI only prints its ``VerifyReport``.

Segments are read as *streams*: the recorder names every segment of a pair ``PAIR.START...``, so
files are grouped by the part of their name before the first dot, and each stream goes through
a feed of its own, in time order. Control frames and connect/disconnect lines are copied into
every pair's stream, so reading pair A's files after pair B's through one feed would let A's
reconnect void B's book at the wrong moment. Counts of a pair found in several streams add up.

Each segment holds frames of one WebSocket API, v1 or v2 (``kbook.v2.segment_api``), and a stream
is split by API too: v1 files go through a ``BookFeed`` decoded by orjson, v2 files through a
``V2BookFeed`` decoded with ``kbook.v2.decode`` (a float parser would break every v2 checksum).
The two never share a feed or a book. Pairs are reported by their common name (``BTC/USD``, as
replay, watch and the Python API name them, ``kbook.pairs.common_name``), with the name(s) seen on
the wire (``XBT/USD``) beside it; a pair recorded under both APIs is one row whose counts add up,
and ``by_api`` keeps each API's counts apart.

Trades (``--channels trade``) are counted per pair (``report.trades``), each once as replay keeps
them (``kbook.trades``): under v2 a gap in the trade ids (trades missed, as in an outage longer
than the snapshot of recent trades covers) is counted and flagged; v1 has no ids to check.

Plain updates go through ``kbook.lines.LineFeed`` (the native core where it was built), as in
replay, and every other line through the feed one at a time; each book is followed once a frame
made it, up to the last sane receive time (``kbook.segment.sane_recv_ns``): a line stamped
later is handed back and skipped, as replay skips it. So frames count as received at the largest
receive time seen so far in the stream, as replay applies them: after the wall clock stepped
back, invalid time is measured on that clock, never on one running backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kbook.api import Api
from kbook.dialect import Dialect, dialect_for
from kbook.errors import FrameError
from kbook.feed import BookFeed, Outcome, PairStats
from kbook.lines import LineFeed
from kbook.pairs import common_name
from kbook.segment import (
    RECV_NS_MAX,
    Problem,
    SegmentPath,
    find_segments,
    sane_recv_ns,
    stream_name,
)
from kbook.storage import Inputs, segment_inputs
from kbook.trades import TradeLedger, in_order
from kbook.v2 import RecordReader, feed_for, segment_api

if TYPE_CHECKING:  # numpy and pyarrow load only when coverage is asked for
    from kbook.coverage import PairCoverage


@dataclass
class VerifyReport:
    """What ``verify_paths`` found: counts per pair, totals, and every problem with its place."""

    files: list[SegmentPath]
    feed: BookFeed
    problems: list[Problem] = field(default_factory=list)
    raw_frames: int = 0
    """Frames kept as ``raw`` (not JSON) by the recorder."""
    skipped_times: int = 0
    """Lines skipped for a receive time outside ``kbook.segment.sane_recv_ns``."""
    apis: dict[str, str] = field(default_factory=dict)
    """Common pair name -> the API(s) its frames came in (``v1``, ``v2`` or ``v1+v2``)."""
    wires: dict[str, set[str]] = field(default_factory=dict)
    """Common pair name -> the names its frames used on the wire (``XBT/USD``)."""
    by_api: dict[str, dict[str, PairStats]] = field(default_factory=dict)
    """Common pair name -> API -> that API's counts (their sum is ``pairs``)."""
    trades: TradeLedger = field(default_factory=TradeLedger)
    """Trades per pair (common name), each once; v2 trade-id gaps."""
    coverage: dict[str, PairCoverage] | None = None
    """Common pair name -> its coverage on replay's timeline (``kbook.coverage``), when asked."""

    @property
    def pairs(self) -> dict[str, PairStats]:
        return self.feed.stats

    @property
    def checksums_ok(self) -> int:
        return sum(stats.checksums_ok for stats in self.pairs.values())

    @property
    def checksums_failed(self) -> int:
        return sum(stats.checksums_failed for stats in self.pairs.values())

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON data (``kbook verify --json``)."""
        return {
            "files": [str(path) for path in self.files],
            "pairs": {
                pair: {
                    "api": self.apis.get(pair, Api.V1),
                    "wire": sorted(self.wires.get(pair, ())),
                    "by_api": {
                        str(api): {
                            "frames": c.frames,
                            "checksums_ok": c.checksums_ok,
                            "checksums_failed": c.checksums_failed,
                        }
                        for api, c in sorted(self.by_api.get(pair, {}).items())
                    },
                    "frames": s.frames,
                    "snapshots": s.snapshots,
                    "checkpoints": s.checkpoints,
                    "updates": s.updates,
                    "checksums_ok": s.checksums_ok,
                    "checksums_failed": s.checksums_failed,
                    "dropped": s.dropped,
                    "malformed": s.malformed,
                    "first_recv_ns": s.first_ns,
                    "last_recv_ns": s.last_ns,
                    "invalid_ns": s.invalid_ns,
                }
                for pair, s in sorted(self.pairs.items())
            },
            "checksums_ok": self.checksums_ok,
            "checksums_failed": self.checksums_failed,
            "other_channel_frames": self.feed.other_channel_frames,
            "malformed_frames": self.feed.malformed_frames,
            "raw_frames": self.raw_frames,
            "trades": {
                pair: {
                    "trades": t.kept,
                    "repeated": t.repeated,
                    "missing_ids": t.missing,
                    "gaps": [list(gap) for gap in t.gaps],
                }
                for pair, t in sorted(self.trades.pairs.items())
            },
            "problems": [str(problem) for problem in self.problems],
            **(
                {}
                if self.coverage is None
                else {"coverage": {p: c.to_json() for p, c in sorted(self.coverage.items())}}
            ),
        }

    def trade_gaps(self) -> list[str]:
        """One line per pair whose v2 trade ids skip some: trades were missed."""
        return [
            f"{pair}: {t.missing} trade id(s) missing in {len(t.gaps)} gap(s), the first "
            f"after trade {t.gaps[0][0]}"
            for pair, t in sorted(self.trades.pairs.items())
            if t.missing
        ]


def verify_paths(paths: Inputs) -> VerifyReport:
    """Verify every book frame in the segments under ``paths`` (local, or ``s3://`` URIs read
    in place through ``kbook.storage``), each stream in time order."""
    dropped: list[Problem] = []
    return _verify_files(find_segments(segment_inputs(paths), dropped), dropped)


def _verify_files(files: list[SegmentPath], dropped: list[Problem]) -> VerifyReport:
    streams: dict[tuple[str, str], list[SegmentPath]] = {}
    for path in files:
        streams.setdefault((stream_name(path), segment_api(path)), []).append(path)
    total = BookFeed()
    report = VerifyReport(files=files, feed=total, problems=dropped)
    done: list[tuple[str, BookFeed]] = []
    for (_name, api), stream_files in streams.items():
        feed = feed_for(api)
        lines = LineFeed(feed)
        for path in stream_files:
            _verify_file(path, api, lines, report)
        feed.finish()
        done.append((api, feed))
    apis: dict[str, set[str]] = {}
    for api, feed in done:
        rename = {pair: common_name(pair) for pair in feed.stats}
        _add_counts(total, feed, rename)
        for pair, stats in feed.stats.items():
            name = rename[pair]
            apis.setdefault(name, set()).add(api)
            report.wires.setdefault(name, set()).add(pair)
            _add_stats(report.by_api.setdefault(name, {}).setdefault(api, PairStats()), stats)
    report.apis = {name: "+".join(sorted(map(str, used))) for name, used in apis.items()}
    return report


MAX_FRAME_PROBLEMS = 20
"""Malformed frames reported one by one per file; the rest are summed up in one more line."""


def _verify_file(path: SegmentPath, api: str, lines: LineFeed, report: VerifyReport) -> None:
    reader = RecordReader(path, api)
    dialect = dialect_for(api)
    run = lines.run
    malformed: list[int] = []
    skipped = report.skipped_times
    for first, batch in reader.batches():
        lines.malformed_lines.clear()
        index = run(batch, 0)
        while index < len(batch):
            if batch[index]:
                record = reader.decode(first + index, batch[index])
                if record is not None and _verify_record(record, lines, report, dialect):
                    malformed.append(first + index)
            index = run(batch, index + 1)
        malformed.extend(sorted(first + index for index in lines.malformed_lines))
    report.problems.extend(reader.problems)
    malformed.sort()
    if report.skipped_times > skipped:
        count = report.skipped_times - skipped
        reason = f"{count} line(s) with a receive time before 1970 or after 2100 skipped"
        report.problems.append(Problem(path, 0, reason))
    for number in malformed[:MAX_FRAME_PROBLEMS]:
        report.problems.append(Problem(path, number, "JSON, but not a well-formed Kraken frame"))
    if len(malformed) > MAX_FRAME_PROBLEMS:
        more = len(malformed) - MAX_FRAME_PROBLEMS
        report.problems.append(Problem(path, 0, f"{more} more malformed frames"))


def _verify_record(
    record: dict[str, Any], lines: LineFeed, report: VerifyReport, dialect: Dialect
) -> bool:
    """A line ``LineFeed`` handed back, applied at the stream's clock; True when it is a
    malformed frame. A book it made is followed from then on; trades are counted."""
    recv_ns = record.get("recv_ns")
    if not sane_recv_ns(recv_ns):
        report.skipped_times += type(recv_ns) in (int, float)
        return False
    if recv_ns > lines.clock:
        lines.clock = recv_ns
    clock = lines.clock
    feed = lines.feed
    outcome = None
    if "msg" in record:
        outcome = feed.on_message(record["msg"], clock)
        if dialect.is_trade(record["msg"]):
            try:
                for trade in in_order(dialect.trades(record["msg"])):
                    report.trades.keep(common_name(trade.pair), trade)
            except FrameError:
                return True
    elif "meta" in record:
        meta = record["meta"]
        if type(meta) is dict:
            before = feed.malformed_frames
            feed.on_meta(meta, clock)
            if feed.malformed_frames > before:  # a checkpoint no book can take
                outcome = Outcome.MALFORMED
    elif "raw" in record:
        report.raw_frames += 1
    key = feed.last_key
    if key is not None and key[0] not in lines.routes:
        # A line stamped past the sane window is handed back to this function (which skips it,
        # as replay does) instead of being applied by ``LineFeed.run``.
        lines.follow(*key).limit = RECV_NS_MAX - 1
    books = feed.books
    for route in lines.routes.values():
        route.book = books.get(route.key)
    return outcome is Outcome.MALFORMED


def _add_counts(total: BookFeed, feed: BookFeed, rename: dict[str, str]) -> None:
    """Add one stream's counts into the report's totals, pairs named as ``rename`` says."""
    total.other_channel_frames += feed.other_channel_frames
    total.malformed_frames += feed.malformed_frames
    for pair, stats in feed.stats.items():
        _add_stats(total.pair_stats(rename.get(pair, pair)), stats)


def _add_stats(into: PairStats, stats: PairStats) -> None:
    """Add one feed's counts of a pair into ``into``."""
    for name in _SUMMED:
        setattr(into, name, getattr(into, name) + getattr(stats, name))
    if stats.first_ns is not None:
        into.first_ns = (
            stats.first_ns if into.first_ns is None else min(into.first_ns, stats.first_ns)
        )
    if stats.last_ns is not None:
        into.last_ns = stats.last_ns if into.last_ns is None else max(into.last_ns, stats.last_ns)


_SUMMED = (
    "frames",
    "snapshots",
    "checkpoints",
    "updates",
    "checksums_ok",
    "checksums_failed",
    "dropped",
    "malformed",
    "invalid_ns",
)
