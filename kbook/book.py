"""The order book of one (pair, channel), kept exactly as Kraken specifies.

Protocol-neutral on purpose: it takes levels as ``(price_text, volume_text, ...)`` sequences, so the
v1 parser (arrays of strings) and a v2 parser (number lexemes) feed the same code. Rules, from
``shared/kraken/README.md`` sections 2 and 3:

- a snapshot replaces the book;
- an update applies asks then bids, levels in array order; the same price twice means last wins;
  a volume equal to zero (as a decimal) deletes the price, a delete of an unknown price is a no-op;
  republished (``"r"``) levels are ordinary inserts;
- after the whole message each side is truncated to the subscribed depth (Kraken sends no deletes
  for levels pushed out of its window);
- the CRC32 checksum covers the best 10 levels per side, built from the *exact* strings received.

Prices are ordered as exact integers at a common decimal scale, never as floats: ``"0.074602700"``
and ``"0.0746027"`` are the same key, and two prices that differ in the 12th decimal stay apart.
Each level keeps its checksum piece (``f(price) + f(volume)``), so a checksum is one join and one
CRC over at most 20 cached strings, and is not recomputed when the top 10 did not change.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation

from kbook.errors import FrameError

CHECKSUM_LEVELS = 10
"""How many levels per side Kraken's checksum covers."""

Level = Sequence[str]
"""A level as received: ``[price, volume, ...]``; anything after the volume is ignored."""


def checksum_piece(text: str) -> str:
    """Kraken's per-number transform: drop the decimal point, then the leading zeros."""
    return text.replace(".", "").lstrip("0")


def is_zero(volume: str) -> bool:
    """True when ``volume`` is zero as a decimal (``"0.00000000"``, ``"0"``, v2's ``"0E-8"``)."""
    if not volume.strip("0."):
        return True
    if "e" in volume or "E" in volume:
        try:
            return Decimal(volume) == 0
        except InvalidOperation:
            return False
    return False


def _decimals(price: str) -> int:
    """Number of digits after the decimal point of a plain decimal string."""
    dot = price.find(".")
    return 0 if dot < 0 else len(price) - dot - 1


def _plain(price: str) -> str:
    """A price in plain positional notation (v2 may print exponents; v1 never does)."""
    if "e" in price or "E" in price:
        try:
            return format(Decimal(price), "f")
        except InvalidOperation as exc:
            raise FrameError(f"price {price!r} is not a number") from exc
    return price


class _Side:
    """One side of the book: exact integer keys in best-first order, each with its level.

    ``sign`` is +1 for asks (lowest price best) and -1 for bids (highest price best), so that
    ``keys`` is always ascending from the best level.
    """

    __slots__ = ("sign", "keys", "levels")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.keys: list[int] = []
        self.levels: dict[int, tuple[str, str, str]] = {}

    def clear(self) -> None:
        self.keys.clear()
        self.levels.clear()

    def rescale(self, factor: int) -> None:
        self.levels = {key * factor: level for key, level in self.levels.items()}
        self.keys = [key * factor for key in self.keys]


class Book:
    """One order book. ``valid`` is False until a snapshot and after a failed checksum."""

    __slots__ = ("depth", "asks", "bids", "scale", "valid", "_checksum", "_top_dirty")

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"depth must be positive, got {depth}")
        self.depth = depth
        self.asks = _Side(1)
        self.bids = _Side(-1)
        self.scale = 0
        self.valid = False
        self._checksum = 0
        self._top_dirty = True

    # -- applying Kraken's messages ------------------------------------------------------------

    def apply_snapshot(self, asks: Iterable[Level], bids: Iterable[Level]) -> None:
        """Replace the whole book; it becomes valid (a v1 snapshot carries no checksum)."""
        self.asks.clear()
        self.bids.clear()
        self.scale = 0
        for level in asks:
            self._set(self.asks, level)
        for level in bids:
            self._set(self.bids, level)
        self._truncate()
        self._top_dirty = True
        self.valid = True

    def apply_update(self, asks: Iterable[Level], bids: Iterable[Level]) -> None:
        """Apply one message's changes in Kraken's order, then truncate to the depth."""
        for level in asks:
            self._set(self.asks, level)
        for level in bids:
            self._set(self.bids, level)
        self._truncate()

    def apply_levels(self, changes: Iterable[tuple[bool, Level]]) -> None:
        """Apply ``(is_bid, level)`` changes in the given order, then truncate.

        v1 two-dict messages interleave sides by dict, which this keeps exact.
        """
        for is_bid, level in changes:
            self._set(self.bids if is_bid else self.asks, level)
        self._truncate()

    def invalidate(self) -> None:
        """Mark the book void (checksum failure, disconnect) until the next snapshot."""
        self.valid = False

    # -- checksum -------------------------------------------------------------------------------

    def checksum(self) -> int:
        """Kraken's CRC32 over the best 10 asks (ascending) then the best 10 bids (descending)."""
        if self._top_dirty:
            asks, bids = self.asks, self.bids
            pieces = [asks.levels[key][2] for key in asks.keys[:CHECKSUM_LEVELS]]
            pieces += [bids.levels[key][2] for key in bids.keys[:CHECKSUM_LEVELS]]
            self._checksum = zlib.crc32("".join(pieces).encode("ascii"))
            self._top_dirty = False
        return self._checksum

    def verify(self, expected: int) -> bool:
        """Compare with the checksum Kraken sent; a mismatch makes the book invalid."""
        ok = self.checksum() == expected
        if not ok:
            self.valid = False
        return ok

    # -- reading --------------------------------------------------------------------------------

    def top_asks(self, n: int) -> list[tuple[str, str]]:
        """The best ``n`` asks as ``(price, volume)`` strings, best first."""
        levels = self.asks.levels
        return [levels[key][:2] for key in self.asks.keys[:n]]

    def top_bids(self, n: int) -> list[tuple[str, str]]:
        """The best ``n`` bids as ``(price, volume)`` strings, best first."""
        levels = self.bids.levels
        return [levels[key][:2] for key in self.bids.keys[:n]]

    def __len__(self) -> int:
        return len(self.asks.keys) + len(self.bids.keys)

    # -- internals ------------------------------------------------------------------------------

    def _key(self, price: str) -> int:
        """Exact integer key of ``price`` at the book's scale, widening the scale if needed."""
        plain = _plain(price)
        decimals = _decimals(plain)
        if decimals > self.scale:
            factor = 10 ** (decimals - self.scale)
            self.asks.rescale(factor)
            self.bids.rescale(factor)
            self.scale = decimals
        whole, _, frac = plain.partition(".")
        try:
            return int(whole + frac + "0" * (self.scale - decimals))
        except ValueError as exc:
            raise FrameError(f"price {price!r} is not a number") from exc

    def _set(self, side: _Side, level: Level) -> None:
        price, volume = level[0], level[1]
        if not isinstance(price, str) or not isinstance(volume, str):
            raise FrameError(f"level {list(level)!r} does not hold price and volume text")
        key = self._key(price) * side.sign
        keys, levels = side.keys, side.levels
        if is_zero(volume):
            if key in levels:
                index = bisect_left(keys, key)
                del keys[index]
                del levels[key]
                if index < CHECKSUM_LEVELS:
                    self._top_dirty = True
            return
        if key not in levels:
            insort(keys, key)
            if len(keys) <= CHECKSUM_LEVELS or key <= keys[CHECKSUM_LEVELS - 1]:
                self._top_dirty = True
        elif len(keys) <= CHECKSUM_LEVELS or key <= keys[CHECKSUM_LEVELS - 1]:
            self._top_dirty = True
        levels[key] = (price, volume, checksum_piece(price) + checksum_piece(volume))

    def _truncate(self) -> None:
        for side in (self.asks, self.bids):
            keys = side.keys
            if len(keys) > self.depth:
                levels = side.levels
                for key in keys[self.depth :]:
                    del levels[key]
                del keys[self.depth :]
                if self.depth < CHECKSUM_LEVELS:
                    self._top_dirty = True
