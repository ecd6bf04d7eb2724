"""Kraken v1 frames in, books out: the one entry point the recorder, replay and verify share.

``BookFeed.on_message`` takes a decoded v1 frame (a ``list`` for book data, a ``dict`` for control
messages) and its receive time, routes it to the book of its (pair, channel name), checks the
checksum, and says what happened as an ``Outcome``. It knows nothing of files or sockets.
(Replay applies plain updates from raw segment lines with ``kbook.lines.LineFeed``, whose effect
on a frame must stay exactly this one's: ``tests/test_perf_book.py`` holds them together.)

Rules it adds on top of ``Book`` (``shared/kraken/README.md`` sections 1 and 2):

- books are keyed by (pair, channel name), never by channel id, which changes between sessions;
- a ``systemStatus`` with a new ``connectionID`` means a new connection: every book is void until
  its new snapshot, and updates before that snapshot are dropped (counted, not applied);
- a ``subscriptionStatus`` of ``subscribed`` or ``unsubscribed`` voids that pair's book the same way
  (one of the book: the answer for the ``trade`` channel on the same connection leaves it be);
- a book's channel is ``book-N`` with N one of Kraken's depths (``kbook.api.DEPTHS``): a frame or
  checkpoint of any other (``book-3``, ``book-999999999``) is malformed, and no book of that
  depth is made (``channel_depth``);
- frames of other channels (ticker, trade, ...) are counted and skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from kbook.api import DEPTHS
from kbook.book import Book, Level, exchange_time
from kbook.errors import FrameError

_DEPTH_OF = {f"book-{depth}": depth for depth in DEPTHS}


class Outcome(IntEnum):
    """What one frame did."""

    CONTROL = 0
    """A control message (status, heartbeat, subscription ack, pong, error)."""
    SNAPSHOT = 1
    """A snapshot replaced a book; the book is valid."""
    UPDATE_OK = 2
    """An update was applied and its checksum verified."""
    CHECKSUM_FAILED = 3
    """An update was applied and its checksum did not match: the book is invalid."""
    DROPPED = 4
    """An update for a book that has no valid snapshot (before one, or after a failure)."""
    OTHER_CHANNEL = 5
    """Data of another channel (ticker, trade, ...): skipped."""
    MALFORMED = 6
    """JSON that is not a well-formed Kraken v1 frame."""
    UNVERIFIED = 7
    """An update applied without a checksum to check (not seen on Kraken's wire)."""


@dataclass(slots=True)
class PairStats:
    """Counts for one pair, as ``kbook verify`` reports them."""

    frames: int = 0
    snapshots: int = 0
    checkpoints: int = 0
    updates: int = 0
    checksums_ok: int = 0
    checksums_failed: int = 0
    dropped: int = 0
    malformed: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    invalid_ns: int = 0
    invalid_since: int | None = None

    def touch(self, recv_ns: int) -> None:
        if self.first_ns is None:
            self.first_ns = recv_ns
        self.last_ns = recv_ns

    def become_invalid(self, recv_ns: int) -> None:
        if self.invalid_since is None:
            self.invalid_since = recv_ns

    def become_valid(self, recv_ns: int) -> None:
        if self.invalid_since is not None:
            self.invalid_ns += max(0, recv_ns - self.invalid_since)
            self.invalid_since = None


def channel_depth(channel: str) -> int:
    """The depth in a channel name: ``"book-100"`` -> 100, for Kraken's depths only
    (``kbook.api.DEPTHS``). Any other name (``book-3``, ``book-0``, ``book-999999999``) is a
    ``FrameError``: a malformed frame, never a book of a depth Kraken does not serve, so no
    claimed depth sizes anything."""
    depth = _DEPTH_OF.get(channel)
    if depth is None:
        offered = ", ".join(map(str, DEPTHS))
        raise FrameError(
            f"channel {channel[:40]!r} is not a Kraken book (book-N, N one of {offered})"
        )
    return depth


def book_depth(depth: object) -> int:
    """``depth`` when it is one of Kraken's (``kbook.api.DEPTHS``), else a ``FrameError``: what a
    v2 subscribe answer, a checkpoint or a recorder's configuration may say about a book's depth
    is held to the same rule as a v1 channel name."""
    if type(depth) is not int or depth not in DEPTHS:
        shown = depth if type(depth) is int and abs(depth) < 10**12 else "given"
        offered = ", ".join(map(str, DEPTHS))
        raise FrameError(f"depth {shown} is not one of Kraken's book depths ({offered})")
    return depth


def sane_pair(pair: str) -> bool:
    """A pair name a book may have: 1 to 255 bytes of printable text (no NUL, no newline)."""
    return 0 < len(pair) <= 255 and len(pair.encode(errors="replace")) <= 255 and pair.isprintable()


def misnamed(pair: object, channel: object) -> bool:
    """A book frame no feed can file: a ``book-N`` channel of no Kraken depth, or a pair name
    that is not text of 1 to 255 printable bytes (the plan follows no such book)."""
    if type(pair) is not str or type(channel) is not str:
        return True
    if not channel.startswith("book-"):
        return False  # another channel (ticker, trade): skipped, not malformed
    try:
        channel_depth(channel)
    except FrameError:
        return True
    return not sane_pair(pair)


@dataclass
class BookFeed:
    """Books of every (pair, channel) in a stream, with their counts."""

    books: dict[tuple[str, str], Book] = field(default_factory=dict)
    stats: dict[str, PairStats] = field(default_factory=dict)
    other_channel_frames: int = 0
    malformed_frames: int = 0
    connection_id: int | None = None
    last_key: tuple[str, str] | None = None
    """(pair, channel) of the book the last frame touched, for samplers that follow one book."""
    adopt_connection: bool = False
    """Set by a checkpoint: the connection is the recorder's current one, whose id this feed has
    not seen; the next ``systemStatus`` names it rather than starting a new connection (a new
    connection in a recorder's segment is announced by a ``connect`` meta line first)."""
    new_book: Callable[[tuple[str, str], int], Book] = field(
        default=lambda _key, depth: Book(depth)
    )
    """Makes the book of a (pair, channel) key and depth the first time the feed meets it:
    ``replay.deltas`` makes the books it follows ``Book``s that also write down each change."""

    def pair_stats(self, pair: str) -> PairStats:
        stats = self.stats.get(pair)
        if stats is None:
            stats = self.stats[pair] = PairStats()
        return stats

    def on_message(self, msg: Any, recv_ns: int) -> Outcome:
        """Apply one decoded v1 frame received at ``recv_ns`` (integer ns, UTC)."""
        if type(msg) is list:
            return self._on_data(msg, recv_ns)
        if type(msg) is dict:
            self._on_control(msg, recv_ns)
            return Outcome.CONTROL
        self.malformed_frames += 1
        return Outcome.MALFORMED

    def restore(
        self, pair: str, channel: str, asks: list[Level], bids: list[Level], recv_ns: int
    ) -> Book:
        """Start a book from a recorder checkpoint (a validated book written at rotation)."""
        if not isinstance(pair, str) or not sane_pair(pair):
            raise FrameError("checkpoint of a pair without a usable name")
        key = (pair, channel)
        book = self.books.get(key)
        if book is None:
            book = self.books[key] = self.new_book(key, channel_depth(channel))
        try:
            book.apply_snapshot(asks, bids)
        except (FrameError, AttributeError, IndexError, KeyError, TypeError, ValueError):
            # Half restored: whatever the book held before is gone, so it cannot stay valid.
            if book.valid:
                book.invalidate()
                self.pair_stats(pair).become_invalid(recv_ns)
            raise
        book.exch_ns = None  # a checkpoint holds no exchange time
        if self.connection_id is None:
            self.adopt_connection = True
        stats = self.pair_stats(pair)
        stats.touch(recv_ns)
        stats.checkpoints += 1
        stats.become_valid(recv_ns)
        self.last_key = (pair, channel)
        return book

    def connection_lost(self, recv_ns: int) -> None:
        """Void every book: after a reconnect only a new snapshot makes a book valid again."""
        for (pair, _channel), book in self.books.items():
            if book.valid:
                book.invalidate()
                self.pair_stats(pair).become_invalid(recv_ns)
        self.connection_id = None
        self.adopt_connection = False

    def void(self, pair: str, recv_ns: int) -> None:
        """Void every book of ``pair`` (resubscribe, unsubscribe)."""
        for (book_pair, _channel), book in self.books.items():
            if book_pair == pair and book.valid:
                book.invalidate()
                self.pair_stats(pair).become_invalid(recv_ns)

    def on_meta(self, meta: dict[str, Any], recv_ns: int) -> None:
        """Apply a recorder event from a segment (see ``kbook.segment``).

        A ``checkpoint`` restores the book the recorder had validated; ``connect`` and
        ``disconnect`` void every book until new snapshots arrive. Other events change nothing.
        """
        kind = meta.get("type")
        if kind == "checkpoint":
            try:
                self.restore(meta["pair"], meta["channel"], meta["asks"], meta["bids"], recv_ns)
            except (FrameError, AttributeError, KeyError, TypeError, ValueError, IndexError):
                self.malformed_frames += 1
        elif kind in ("connect", "disconnect"):
            self.connection_lost(recv_ns)

    def finish(self) -> None:
        """Close open invalid spans at each pair's last frame, for reporting."""
        for stats in self.stats.values():
            if stats.invalid_since is not None and stats.last_ns is not None:
                stats.become_valid(stats.last_ns)

    # -- internals ------------------------------------------------------------------------------

    def _on_control(self, msg: dict[str, Any], recv_ns: int) -> None:
        event = msg.get("event")
        if event == "systemStatus":
            connection_id = msg.get("connectionID")
            if connection_id != self.connection_id:
                if self.adopt_connection:
                    self.adopt_connection = False
                elif self.connection_id is not None or self.books:
                    self.connection_lost(recv_ns)
                self.connection_id = connection_id
        elif event == "subscriptionStatus":
            status = msg.get("status")
            pair = msg.get("pair")
            # Not the answer for the pair's trades, which leaves its book be.
            book = status in ("subscribed", "unsubscribed") and _names_book(msg)
            if book and isinstance(pair, str):
                self.void(pair, recv_ns)

    def _on_data(self, msg: list[Any], recv_ns: int) -> Outcome:
        if len(msg) < 4:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        channel, pair = msg[-2], msg[-1]
        if type(channel) is not str or type(pair) is not str:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        if channel not in _DEPTH_OF:
            if channel.startswith("book-"):  # a book of no Kraken depth: no book files it
                self.malformed_frames += 1
                return Outcome.MALFORMED
            self.other_channel_frames += 1
            return Outcome.OTHER_CHANNEL
        stats = self.stats.get(pair)
        if stats is None:
            if not sane_pair(pair):
                self.malformed_frames += 1
                return Outcome.MALFORMED
            stats = self.pair_stats(pair)
        stats.frames += 1
        if stats.first_ns is None:
            stats.first_ns = recv_ns
        stats.last_ns = recv_ns
        key = (pair, channel)
        book = self.books.get(key)
        try:
            first = msg[1]
            if type(first) is not dict:
                raise FrameError("book payload is not an object")
            if "as" in first or "bs" in first:
                if book is None:
                    book = self.books[key] = self.new_book(key, channel_depth(channel))
                book.apply_snapshot(first.get("as", ()), first.get("bs", ()))
                # Parsed now, not when read: a snapshot's level lists are large, and a book that
                # is never sampled (the recorder's) would hold them until the next update.
                book.exch_ns = exchange_time((first.get("as", ()), first.get("bs", ())))
                stats.snapshots += 1
                stats.become_valid(recv_ns)
                self.last_key = key
                return Outcome.SNAPSHOT
            stats.updates += 1
            if book is None or not book.valid:
                stats.dropped += 1
                return Outcome.DROPPED
            self.last_key = key
            apply = book.apply_side
            sides = []
            for payload in msg[1:-2]:
                # v1 sends one dict, or two ({"a": ...} then {"b": ..., "c": ...}): dicts in
                # order, asks then bids within each (a missing side is an empty one).
                asks = payload.get("a", NO_SIDE)
                if asks is not NO_SIDE:
                    apply(book.asks, asks)
                    sides.append(asks)
                bids = payload.get("b", NO_SIDE)
                if bids is not NO_SIDE:
                    apply(book.bids, bids)
                    sides.append(bids)
            book.truncate()
            book.exch_source = sides  # parsed if read (Book.exch_ns)
            checksum = msg[-3].get("c")
            if checksum is None:
                return Outcome.UNVERIFIED
            if book.verify(int(checksum)):
                stats.checksums_ok += 1
                return Outcome.UPDATE_OK
            stats.checksums_failed += 1
            stats.become_invalid(recv_ns)
            return Outcome.CHECKSUM_FAILED
        except (FrameError, AttributeError, IndexError, KeyError, TypeError, ValueError):
            self.malformed(stats, book, recv_ns)
            return Outcome.MALFORMED

    def malformed(self, stats: PairStats, book: Book | None, recv_ns: int) -> None:
        """Count a malformed book frame; a book it may have half changed becomes invalid."""
        stats.malformed += 1
        self.malformed_frames += 1
        if book is not None and book.valid:
            book.invalidate()
            stats.become_invalid(recv_ns)


def _names_book(msg: dict[str, Any]) -> bool:
    """A ``subscriptionStatus`` about the book (``subscription.name`` ``book``, or a
    ``channelName`` ``book-N``); one that says no channel at all is taken to be the book's."""
    subscription = msg.get("subscription")
    name = subscription.get("name") if type(subscription) is dict else None
    if name is None:
        channel = msg.get("channelName")
        return not isinstance(channel, str) or channel.startswith("book-")
    return bool(name == "book")


NO_SIDE: tuple[()] = ()
"""``payload.get("a", NO_SIDE)``: a side that is absent, told apart from one sent as ``null``
(which is malformed)."""
