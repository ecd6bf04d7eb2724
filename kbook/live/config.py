"""What a live session is asked to do (``LiveConfig``): the pairs, the server, the timings.

``kbook watch`` runs a session with one of these; ``kbook record`` with its
``recorder.config.RecordConfig``, which adds where and how segments are written. All durations
are integer nanoseconds. The defaults suit Kraken; tests shrink the timing knobs (stall timeout,
backoff, pacing) so that every fault is survived within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from kbook.api import DEFAULT_CHANNELS, Channel, choose_api, parse_channels, parse_depth
from kbook.errors import UsageError
from kbook.pairs import file_name, parse_pair
from kbook.units import SECOND

MINUTE = 60 * SECOND
MIB = 1024 * 1024


@dataclass(frozen=True)
class LiveConfig:
    """A live session. Invalid values raise ``UsageError`` here, before anything connects."""

    pairs: tuple[str, ...]
    """Pairs as the user wrote them (``BTC/USD``, ``eth-usd``); normalised and de-duplicated."""
    depth: int = 10
    url: str | None = None
    """Kraken's WebSocket address; None: the one of ``api`` (``wss://ws.kraken.com/v2`` for v2)."""
    api: str | None = None
    """Kraken's WebSocket API, ``v1`` or ``v2`` (``kbook.dialect``); None: the one ``url`` says,
    v2 without a ``url`` (``kbook.api.choose_api``)."""
    channels: tuple[Channel, ...] = DEFAULT_CHANNELS
    """Kraken channels subscribed for every pair on the one connection (``--channels``): the
    book, the trades, or both."""
    duration_ns: int | None = None
    """Stop cleanly after this long; None runs until stopped."""
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
    subscribe_timeout_ns: int = 10 * SECOND
    resubscribe_interval_ns: int = 5 * SECOND
    """Least time between two checksum resyncs of one pair."""
    rate_limit_delay_ns: int = 5 * SECOND
    subscribe_deadline_ns: int = MINUTE
    """A run in which no pair got subscribed this long after the start ends with exit 1."""
    max_frame_bytes: int = 16 * MIB
    """The largest message taken (the largest real book-1000 snapshot is about 80 kB); a larger
    one ends the connection, which reconnects."""
    inbox_bytes: int = 64 * MIB
    """Received frames waiting to be taken, at most; the reader waits (TCP holds the rest)."""
    drain_ns: int = 200_000_000
    """On stop, frames already waiting on the socket are still taken for up to this long."""
    tick_ns: int = 100_000_000
    """Longest wait for a frame before the consumer's tick (flush, rotation, stop checks)."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "pairs", _normalise_pairs(self.pairs))
        set_(self, "channels", parse_channels(self.channels))
        api, url = choose_api(self.api, self.url)
        set_(self, "api", api)
        set_(self, "url", url)
        parse_depth(self.depth)
        if not str(self.url).startswith(("ws://", "wss://")):
            raise UsageError(f"--url {self.url!r} is not a ws:// or wss:// address")
        if self.duration_ns is not None and self.duration_ns <= 0:
            raise UsageError("--duration must be positive")
        if self.max_frame_bytes < 1024:
            raise UsageError("--max-frame-mb must be at least 1 kB")
        if self.connect_retries is not None and self.connect_retries < 1:
            raise UsageError("--retries must be at least 1 (0 on the command line: never give up)")


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
