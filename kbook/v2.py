"""Kraken WebSocket v2 ``book`` frames, fed into the same ``Book`` as v1.

v2 prints prices and quantities as JSON *numbers* at full precision (``"qty":0.10000000``), and the
checksum is computed over those lexemes, so a float parser breaks it (``0.10000000`` becomes
``0.1``). ``decode`` keeps every float's text as a ``str`` (integers are exact either way), and
``V2BookFeed`` turns levels into ``(price_text, qty_text)`` for the protocol-neutral book. A zero
quantity may read ``0E-8``; ``kbook.book.is_zero`` knows.

What differs from v1 (``shared/kraken/README.md`` section 5): every frame is an object; a snapshot
carries a checksum too; depth comes from the subscribe acknowledgement (``result.depth``), else
from the snapshot's size; the ``status`` channel's ``connection_id`` marks a new connection;
symbols are ``BTC/USD`` and ``DOGE/USD`` (no XBT/XDG).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kbook.book import Book
from kbook.errors import FrameError
from kbook.feed import BookFeed, Outcome

API_V1 = "v1"
API_V2 = "v2"
DEPTHS = (10, 25, 100, 500, 1000)

decode = partial(json.loads, parse_float=str)
"""JSON decoding that keeps each float's exact text (``0.10000000`` stays ``"0.10000000"``)."""


def frame_api(msg: Any) -> str | None:
    """Which API a decoded frame belongs to: v1 data are arrays and v1 control objects have an
    ``event``; v2 frames are objects with ``channel`` or ``method``. None when it cannot tell."""
    if type(msg) is list:
        return API_V1
    if type(msg) is dict:
        if "event" in msg:
            return API_V1
        if "channel" in msg or "method" in msg:
            return API_V2
    return None


def _levels(entries: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """v2 levels ``{"price": p, "qty": q}`` as exact ``(price, qty)`` texts."""
    levels = []
    for entry in entries:
        price, qty = entry["price"], entry["qty"]
        if type(price) is float or type(qty) is float:
            raise FrameError("v2 numbers were decoded as floats; decode with kbook.v2.decode")
        levels.append(
            (price if type(price) is str else str(price), qty if type(qty) is str else str(qty))
        )
    return levels


def _inferred_depth(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """The smallest subscribable depth that holds the snapshot, when no ack said the depth."""
    size = max(len(asks), len(bids))
    return next((depth for depth in DEPTHS if depth >= size), size)


@dataclass
class V2BookFeed(BookFeed):
    """``BookFeed`` for v2 frames: same books, counts and outcomes, v2 wire shapes."""

    depths: dict[str, int] = field(default_factory=dict)
    """Depth per symbol from subscribe acknowledgements."""

    def on_message(self, msg: Any, recv_ns: int) -> Outcome:
        if type(msg) is not dict:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        channel = msg.get("channel")
        if channel == "book":
            return self._on_book(msg, recv_ns)
        if channel == "status":
            self._on_status(msg, recv_ns)
        elif channel is None and msg.get("method") in ("subscribe", "unsubscribe"):
            self._on_ack(msg, recv_ns)
        elif channel not in (None, "heartbeat", "pong"):
            self.other_channel_frames += 1
            return Outcome.OTHER_CHANNEL
        return Outcome.CONTROL

    def _on_status(self, msg: dict[str, Any], recv_ns: int) -> None:
        for entry in msg.get("data") or ():
            connection_id = entry.get("connection_id") if type(entry) is dict else None
            if connection_id is not None and connection_id != self.connection_id:
                if self.connection_id is not None or self.books:
                    self.connection_lost(recv_ns)
                self.connection_id = connection_id

    def _on_ack(self, msg: dict[str, Any], recv_ns: int) -> None:
        result = msg.get("result")
        if type(result) is not dict or result.get("channel") != "book" or not msg.get("success"):
            return
        symbol = result.get("symbol")
        if not isinstance(symbol, str):
            return
        if msg.get("method") == "subscribe" and isinstance(result.get("depth"), int):
            self.depths[symbol] = result["depth"]
        self.void(symbol, recv_ns)

    def _on_book(self, msg: dict[str, Any], recv_ns: int) -> Outcome:
        kind = msg.get("type")
        data = msg.get("data")
        if kind not in ("snapshot", "update") or type(data) is not list or not data:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        outcome = Outcome.CONTROL
        for entry in data:
            result = self._on_entry(kind == "snapshot", entry, recv_ns)
            outcome = max(outcome, result, key=_severity)
        return outcome

    def _on_entry(self, is_snapshot: bool, entry: Any, recv_ns: int) -> Outcome:
        symbol = entry.get("symbol") if type(entry) is dict else None
        if not isinstance(symbol, str):
            self.malformed_frames += 1
            return Outcome.MALFORMED
        stats = self.pair_stats(symbol)
        stats.frames += 1
        stats.touch(recv_ns)
        book: Book | None = None
        key: tuple[str, str] | None = None
        try:
            asks = _levels(entry.get("asks") or ())
            bids = _levels(entry.get("bids") or ())
            if is_snapshot:
                depth = self.depths.get(symbol) or _inferred_depth(asks, bids)
                key = (symbol, f"book-{depth}")
                book = self.books.get(key)
                if book is None:
                    book = self.books[key] = Book(depth)
                book.apply_snapshot(asks, bids)
                stats.snapshots += 1
            else:
                stats.updates += 1
                key = self._valid_key(symbol)
                if key is None:
                    stats.dropped += 1
                    return Outcome.DROPPED
                book = self.books[key]
                book.apply_update(asks, bids)
            self.last_key = key
            checksum = entry.get("checksum")
            if checksum is None:
                if is_snapshot:
                    stats.become_valid(recv_ns)
                    return Outcome.SNAPSHOT
                return Outcome.UNVERIFIED
            if book.verify(int(checksum)):
                # Unlike v1, a v2 snapshot carries a checksum: it counts as a verified one.
                stats.checksums_ok += 1
                if is_snapshot:
                    stats.become_valid(recv_ns)
                    return Outcome.SNAPSHOT
                return Outcome.UPDATE_OK
            stats.checksums_failed += 1
            stats.become_invalid(recv_ns)
            return Outcome.CHECKSUM_FAILED
        except (FrameError, AttributeError, KeyError, TypeError, ValueError):
            stats.malformed += 1
            self.malformed_frames += 1
            if book is not None and book.valid:
                book.invalidate()
                stats.become_invalid(recv_ns)
            return Outcome.MALFORMED

    def _valid_key(self, symbol: str) -> tuple[str, str] | None:
        for key, book in self.books.items():
            if key[0] == symbol and book.valid:
                return key
        return None


_SEVERITY = {
    Outcome.CONTROL: 0,
    Outcome.OTHER_CHANNEL: 1,
    Outcome.UPDATE_OK: 2,
    Outcome.SNAPSHOT: 3,
    Outcome.UNVERIFIED: 4,
    Outcome.DROPPED: 5,
    Outcome.MALFORMED: 6,
    Outcome.CHECKSUM_FAILED: 7,
}


def _severity(outcome: Outcome) -> int:
    return _SEVERITY[outcome]
