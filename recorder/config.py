"""What a recording run is asked to do (``RecordConfig``) and what it did (``RecordSummary``).

All durations are integer nanoseconds. The defaults suit Kraken; tests shrink the timing knobs
(stall timeout, backoff, pacing) so that every fault is survived within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbook.api import DEFAULT_CHANNELS, Channel, choose_api, parse_channels, parse_depth
from kbook.errors import UsageError
from kbook.pairs import file_name, parse_pair
from kbook.units import SECOND

MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
MIB = 1024 * 1024


@dataclass(frozen=True)
class RecordConfig:
    """A recording run. Invalid values raise ``UsageError`` here, before anything connects."""

    pairs: tuple[str, ...]
    """Pairs as the user wrote them (``BTC/USD``, ``eth-usd``); normalised and de-duplicated."""
    depth: int = 10
    out: Path = Path("data")
    url: str | None = None
    """Kraken's WebSocket address; None: the one of ``api`` (``wss://ws.kraken.com/v2`` for v2)."""
    duration_ns: int | None = None
    """Stop cleanly after this long; None records until stopped."""
    rotate_ns: int = HOUR
    """Segment length, aligned to UTC boundaries (1 h: a segment per hour on the hour)."""
    max_segment_bytes: int | None = None
    """Also rotate when a segment's compressed size reaches this."""
    connect_retries: int | None = None
    """Consecutive failed connection attempts before giving up (None, the default: never give
    up, waiting up to ``backoff_cap_ns`` between attempts, as a service supervisor expects)."""
    immediate_retries: int = 3
    backoff_base_ns: int = 5 * SECOND
    backoff_cap_ns: int = 60 * SECOND
    maintenance_delay_ns: int = 5 * SECOND
    """Least delay between attempts while Kraken reports maintenance."""
    connect_timeout_ns: int = 10 * SECOND
    stall_timeout_ns: int = 10 * SECOND
    """A connection that sends nothing (not even a heartbeat) this long is treated as dropped."""
    ping_interval_ns: int = 30 * SECOND
    """Send a ping when nothing was sent this long (Kraken drops idle connections after ~1 min)."""
    flush_interval_ns: int = SECOND
    """At most this much received data is lost by ``kill -9`` or a power cut."""
    subscribe_timeout_ns: int = 10 * SECOND
    resubscribe_interval_ns: int = 5 * SECOND
    """Least time between two checksum resyncs of one pair."""
    rate_limit_delay_ns: int = 5 * SECOND
    status_interval_ns: int = 10 * SECOND
    subscribe_deadline_ns: int = MINUTE
    """A run in which no pair got subscribed this long after the start ends with exit 1."""
    max_frame_bytes: int = 16 * MIB
    """The largest message taken (the largest real book-1000 snapshot is about 80 kB); a larger
    one ends the connection, which reconnects."""
    inbox_bytes: int = 64 * MIB
    """Received frames waiting to be written, at most; the reader waits (TCP holds the rest)."""
    max_held_frames: int = 10_000
    """Lines held per pair while its subscription is unanswered; past it they are written."""
    drain_ns: int = 200_000_000
    """On stop, frames already waiting on the socket are still recorded for up to this long."""
    tick_ns: int = 100_000_000
    """Longest wait for a frame before flushing, rotating and checking for a stop."""
    quiet: bool = False
    arguments: tuple[str, ...] = field(default=())
    """The command line, kept in ``session_start`` for provenance."""
    api: str | None = None
    """Kraken's WebSocket API, ``v1`` or ``v2`` (``kbook.dialect``); None: the one ``url`` says,
    v2 without a ``url`` (``kbook.api.choose_api``)."""
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    """Kraken channels subscribed for every pair on the one connection (``--channels``): the
    book, the trades, or both; their frames share the pair's segments."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "pairs", _normalise_pairs(self.pairs))
        set_(self, "channels", parse_channels(self.channels))
        set_(self, "out", Path(self.out))
        api, url = choose_api(self.api, self.url)
        set_(self, "api", api)
        set_(self, "url", url)
        parse_depth(self.depth)
        if not str(self.url).startswith(("ws://", "wss://")):
            raise UsageError(f"--url {self.url!r} is not a ws:// or wss:// address")
        if self.rotate_ns < SECOND:
            raise UsageError("--rotate must be at least 1s")
        if self.duration_ns is not None and self.duration_ns <= 0:
            raise UsageError("--duration must be positive")
        if self.max_segment_bytes is not None and self.max_segment_bytes <= 0:
            raise UsageError("--max-segment-mb must be positive")
        if self.max_frame_bytes < 1024:
            raise UsageError("--max-frame-mb must be at least 1 kB")
        if self.connect_retries is not None and self.connect_retries < 1:
            raise UsageError("--retries must be at least 1 (0 on the command line: never give up)")

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


def _normalise_pairs(pairs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Parsed pairs; two spellings of one pair (``BTC/USD``, ``XBT/USD``) keep the first."""
    if isinstance(pairs, str):
        pairs = (pairs,)
    if not pairs:
        raise UsageError("name at least one pair to record, for example BTC/USD")
    by_file: dict[str, str] = {}
    for text in pairs:
        pair = parse_pair(text)
        by_file.setdefault(file_name(pair), pair)
    return tuple(by_file.values())


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
