"""``kbook verify``: feed segments through the book builder and count every checksum.

The library call is ``verify_paths``; the CLI only prints its ``VerifyReport``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbook.feed import BookFeed, PairStats
from kbook.segment import Problem, SegmentReader, find_segments


@dataclass
class VerifyReport:
    """What ``verify_paths`` found: counts per pair, totals, and every problem with its place."""

    files: list[Path]
    feed: BookFeed
    problems: list[Problem] = field(default_factory=list)
    raw_frames: int = 0
    """Frames kept as ``raw`` (not JSON) by the recorder."""

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
            "problems": [str(problem) for problem in self.problems],
        }


def verify_paths(paths: Iterable[Path]) -> VerifyReport:
    """Verify every book frame in the segments under ``paths``, read in time order."""
    files = find_segments(paths)
    feed = BookFeed()
    report = VerifyReport(files=files, feed=feed)
    for path in files:
        reader = SegmentReader(path)
        for record in reader:
            recv_ns = record.get("recv_ns")
            if type(recv_ns) is not int:
                continue
            if "msg" in record:
                feed.on_message(record["msg"], recv_ns)
            elif "meta" in record:
                meta = record["meta"]
                if type(meta) is dict:
                    feed.on_meta(meta, recv_ns)
            elif "raw" in record:
                report.raw_frames += 1
        report.problems.extend(reader.problems)
    feed.finish()
    return report
