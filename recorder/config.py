"""What a recording run is asked to do (``RecordConfig``) and what it did (``RecordSummary``).

All durations are integer nanoseconds. The defaults suit Kraken; tests shrink the timing knobs
(stall timeout, backoff, pacing) so that every fault is survived within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbook.errors import UsageError
from kbook.live.config import MIB, MINUTE, LiveConfig
from kbook.units import SECOND

HOUR = 60 * MINUTE
__all__ = ["HOUR", "MIB", "MINUTE", "RecordConfig", "RecordSummary"]


@dataclass(frozen=True)
class RecordConfig(LiveConfig):
    """A recording run: a live session (``kbook.live.config.LiveConfig``: pairs, server,
    timings) and where and how its segments are written. Invalid values raise ``UsageError``
    here, before anything connects."""

    out: Path = Path("data")
    rotate_ns: int = HOUR
    """Segment length, aligned to UTC boundaries (1 h: a segment per hour on the hour)."""
    max_segment_bytes: int | None = None
    """Also rotate when a segment's compressed size reaches this."""
    flush_interval_ns: int = SECOND
    """At most this much received data is lost by ``kill -9`` or a power cut."""
    status_interval_ns: int = 10 * SECOND
    max_held_frames: int = 10_000
    """Lines held per pair while its subscription is unanswered; past it they are written."""
    quiet: bool = False
    arguments: tuple[str, ...] = field(default=())
    """The command line, kept in ``session_start`` for provenance."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "out", Path(self.out))
        if self.rotate_ns < SECOND:
            raise UsageError("--rotate must be at least 1s")
        if self.max_segment_bytes is not None and self.max_segment_bytes <= 0:
            raise UsageError("--max-segment-mb must be positive")

    def describe(self) -> dict[str, Any]:
        """The settings as plain JSON data, for ``session_start``."""
        return {
            "api": self.api,
            "channels": [str(channel) for channel in self.channels],
            "pairs": list(self.pairs),
            "depth": self.depth,
            "out": str(self.out),
            "url": self.url,
            "duration_ns": self.duration_ns,
            "rotate_ns": self.rotate_ns,
            "max_segment_bytes": self.max_segment_bytes,
            "connect_retries": self.connect_retries,
        }


@dataclass(frozen=True)
class RecordSummary:
    """What a run did; returned by ``Recorder.run``."""

    run_id: str
    started_ns: int
    ended_ns: int
    stop_reason: str
    """``duration``, ``stopped``, ``SIGTERM``, ``SIGINT``, ..."""
    frames: int
    reconnects: int
    checksums_ok: int
    checksums_failed: int
    bytes_written: int
    subscribed: tuple[str, ...]
    failed: dict[str, str]
    """Pairs Kraken refused under every name, with its reason."""
    segments: tuple[Path, ...]
    """Every segment written, by final name."""
