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

Every level of a recording passes through ``apply_side`` (``shared/PERFORMANCE-NOTES.md`` has
where replay time goes), so it does per level only what the level needs:

- each side remembers the key of every price text it has seen (a dict lookup instead of parsing
  digits; bounded, and cleared whenever the scale widens);
- each side keeps the checksum pieces (``f(price) + f(volume)``) of its best 10 levels only, in
  order, so a checksum is one join and one CRC, and levels deeper than 10 never pay for a piece;
- the CRC of the asks and the text of the bids are cached apart (``crc32(bids, crc32(asks))``),
  so a message that changes one side's top 10 recomputes that side only, and one that changes
  neither recomputes nothing.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation

from kbook.api import DEPTHS
from kbook.errors import FrameError
from kbook.units import rfc3339_ns, seconds_text_ns

MAX_SNAPSHOT_LEVELS = 1000
"""Levels a snapshot side may hold at most: Kraken's deepest book (``kbook.api.DEPTHS``)."""

CHECKSUM_LEVELS = 10
"""How many levels per side Kraken's checksum covers."""
_PRICE_CACHE_LIMIT = 50_000
"""Price texts remembered per side before the memo starts afresh (memory stays bounded)."""

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


def exchange_time(sides: Iterable[Iterable[Level]]) -> int | None:
    """A v1 message's exchange time: the latest of its levels' third fields (seconds since the
    epoch as text, ``kbook.units.seconds_text_ns``), None when no level has a usable one."""
    latest = None
    for side in sides:
        for level in side:
            if len(level) > 2:
                ns = seconds_text_ns(level[2])
                if ns is not None and (latest is None or ns > latest):
                    latest = ns
    return latest


def _decimals(price: str) -> int:
    """Number of digits after the decimal point of a plain decimal string."""
    dot = price.find(".")
    return 0 if dot < 0 else len(price) - dot - 1


_MAX_EXPONENT = 40
"""Prices in exponent notation beyond 10**±40 are refused: ``1e-99999999`` would otherwise be
written out as a hundred million digits and rescale every key of the book by as many."""
MAX_DECIMALS = 40
"""Prices with more decimals are refused (``FrameError``) before the book rescales to them: one
price with a million decimals would otherwise make every key of the book a million digits long
(1.5 GB for a depth-1000 book). Kraken's prices have at most 10."""


def _plain(price: str) -> str:
    """A price in plain positional notation (v2 may print exponents; v1 never does)."""
    if "e" in price or "E" in price:
        try:
            number = Decimal(price)
        except InvalidOperation as exc:
            raise FrameError(f"price {price!r} is not a number") from exc
        if (
            not number.is_finite()
            or max(number.adjusted(), -int(number.as_tuple().exponent)) > _MAX_EXPONENT
        ):
            raise FrameError(f"price {price!r} is out of range")
        return format(number, "f")
    return price


class _Side:
    """One side of the book: exact integer keys in best-first order, each with its level.

    ``sign`` is +1 for asks (lowest price best) and -1 for bids (highest price best), so that
    ``keys`` is always ascending from the best level. ``levels`` maps a key to ``(price, volume)``
    as received; ``top`` holds the checksum pieces of ``keys[:10]`` in order (kept in step by every
    change, so it never needs rebuilding); ``keyed`` memoises price text -> signed key at the
    book's scale; ``dirty`` says ``top`` changed since the last checksum.
    """

    __slots__ = ("sign", "keys", "levels", "top", "keyed", "dirty")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.keys: list[int] = []
        self.levels: dict[int, tuple[str, str]] = {}
        self.top: list[str] = []
        self.keyed: dict[str, int] = {}
        self.dirty = True

    def clear(self) -> None:
        self.keys.clear()
        self.levels.clear()
        self.top.clear()
        self.keyed.clear()
        self.dirty = True

    def rescale(self, factor: int) -> None:
        """Multiply every key by ``factor``, in place (callers hold references to the containers)."""
        items = [(key * factor, level) for key, level in self.levels.items()]
        self.levels.clear()
        self.levels.update(items)
        self.keys[:] = [key * factor for key in self.keys]
        self.keyed.clear()


class Book:
    """One order book. ``valid`` is False until a snapshot and after a failed checksum."""

    __slots__ = (
        "depth",
        "asks",
        "bids",
        "scale",
        "valid",
        "exch_source",
        "_checksum",
        "_ask_crc",
        "_bid_text",
    )

    def __init__(self, depth: int) -> None:
        # Only Kraken's depths (the feeds file nothing else): never fewer levels than the
        # checksum's 10, so truncating a side never cuts into its checksum text.
        if depth not in DEPTHS:
            offered = ", ".join(map(str, DEPTHS))
            raise ValueError(f"depth {depth} is not one Kraken offers; use one of {offered}")
        self.depth = depth
        self.exch_source: object = None
        """What ``exch_ns`` is read from: ns (or None), or, as the Python feeds leave it, the
        latest message's v1 level lists (a ``list``) or v2 ``timestamp`` (in a ``tuple``),
        parsed only if read (rows are built far less often than messages arrive)."""
        self.asks = _Side(1)
        self.bids = _Side(-1)
        self.scale = 0
        self.valid = False
        self._checksum = 0
        self._ask_crc = 0
        self._bid_text = b""

    # -- applying Kraken's messages ------------------------------------------------------------

    def apply_snapshot(self, asks: Iterable[Level], bids: Iterable[Level]) -> None:
        """Replace the whole book; it becomes valid (a v1 snapshot carries no checksum).

        A side of more levels than ``MAX_SNAPSHOT_LEVELS`` is malformed (``FrameError``, the book
        untouched): Kraken's deepest book has 1000, and five million would cost gigabytes. (A few
        more than the depth are truncated as usual.)"""
        for side in (asks, bids):
            if isinstance(side, Sequence) and len(side) > max(self.depth, MAX_SNAPSHOT_LEVELS):
                raise FrameError(f"snapshot of {len(side)} levels for a book of {self.depth}")
        self.asks.clear()
        self.bids.clear()
        self.scale = 0
        self.apply_side(self.asks, asks)
        self.apply_side(self.bids, bids)
        self.truncate()
        self.valid = True

    def apply_update(self, asks: Iterable[Level], bids: Iterable[Level]) -> None:
        """Apply one message's changes in Kraken's order, then truncate to the depth."""
        self.apply_side(self.asks, asks)
        self.apply_side(self.bids, bids)
        self.truncate()

    def apply_levels(self, changes: Iterable[tuple[bool, Level]]) -> None:
        """Apply ``(is_bid, level)`` changes in the given order, then truncate.

        v1 two-dict messages interleave sides by dict, which this keeps exact.
        """
        for is_bid, level in changes:
            self.apply_side(self.bids if is_bid else self.asks, (level,))
        self.truncate()

    @property
    def exch_ns(self) -> int | None:
        """Kraken's time of the latest snapshot or update applied: v1 the largest of its levels'
        third fields (``exchange_time``), v2 its ``timestamp``; None where it sent none, and
        after a checkpoint (which holds none). The native core sets it as ns."""
        source = self.exch_source
        if type(source) is list:
            ns = exchange_time(source)
        elif type(source) is tuple:
            ns = rfc3339_ns(source[0])
        else:
            return source  # type: ignore[return-value]
        self.exch_source = ns
        return ns

    @exch_ns.setter
    def exch_ns(self, ns: int | None) -> None:
        self.exch_source = ns

    def invalidate(self) -> None:
        """Mark the book void (checksum failure, disconnect) until the next snapshot."""
        self.valid = False

    # -- checksum -------------------------------------------------------------------------------

    def checksum(self) -> int:
        """Kraken's CRC32 over the best 10 asks (ascending) then the best 10 bids (descending)."""
        asks, bids = self.asks, self.bids
        if asks.dirty or bids.dirty:
            # UTF-8 is ASCII for Kraken's digits; other digits (``int`` takes "١٢٣") must not
            # raise here, where the recorder writes checkpoints: they just fail to match.
            if asks.dirty:
                self._ask_crc = zlib.crc32("".join(asks.top).encode())
                asks.dirty = False
            if bids.dirty:
                self._bid_text = "".join(bids.top).encode()
                bids.dirty = False
            self._checksum = zlib.crc32(self._bid_text, self._ask_crc)
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
        return [levels[key] for key in self.asks.keys[:n]]

    def top_bids(self, n: int) -> list[tuple[str, str]]:
        """The best ``n`` bids as ``(price, volume)`` strings, best first."""
        levels = self.bids.levels
        return [levels[key] for key in self.bids.keys[:n]]

    def __len__(self) -> int:
        return len(self.asks.keys) + len(self.bids.keys)

    # -- the hot path ---------------------------------------------------------------------------

    def apply_side(self, side: _Side, changes: Iterable[Level]) -> bool:
        """Apply levels of one side in order; True when the side is now deeper than the depth.

        Truncation waits for the whole message (``truncate``). This is the level rule of the
        module docstring written out in one loop, because it runs for every level replay sees:
        a plain decimal volume's piece doubles as its zero test (``f(volume)`` is all digits
        exactly when the volume is a non-zero plain decimal), and ``top`` is kept equal to the
        pieces of ``keys[:10]``.
        """
        keys, levels, top, keyed = side.keys, side.levels, side.top, side.keyed
        for level in changes:
            price, volume = level[0], level[1]
            key = keyed.get(price)
            if key is None:
                key = self._new_key(side, price, volume)
            try:
                piece = volume.replace(".", "").lstrip("0")
            except AttributeError:
                raise FrameError(f"level {list(level)!r} does not hold volume text") from None
            if not piece.isdigit() and (not piece or is_zero(volume)):
                if key in levels:
                    index = bisect_left(keys, key)
                    del keys[index]
                    del levels[key]
                    if index < CHECKSUM_LEVELS:
                        del top[index]
                        if len(keys) >= CHECKSUM_LEVELS:
                            entering = levels[keys[CHECKSUM_LEVELS - 1]]
                            top.append(
                                entering[0].replace(".", "").lstrip("0")
                                + entering[1].replace(".", "").lstrip("0")
                            )
                        side.dirty = True
                continue
            index = bisect_left(keys, key)
            if key in levels:
                if index < CHECKSUM_LEVELS:
                    top[index] = price.replace(".", "").lstrip("0") + piece
                    side.dirty = True
            else:
                keys.insert(index, key)
                if index < CHECKSUM_LEVELS:
                    top.insert(index, price.replace(".", "").lstrip("0") + piece)
                    if len(top) > CHECKSUM_LEVELS:
                        del top[CHECKSUM_LEVELS]
                    side.dirty = True
            levels[key] = (price, volume)
        return len(keys) > self.depth

    def truncate(self) -> None:
        """Cut each side to the subscribed depth (after a whole message, never inside one)."""
        depth = self.depth
        for side in (self.asks, self.bids):
            keys = side.keys
            if len(keys) > depth:
                levels = side.levels
                for key in keys[depth:]:
                    del levels[key]
                del keys[depth:]  # below the checksum's levels (depth >= 10): top unchanged

    # -- internals ------------------------------------------------------------------------------

    def _new_key(self, side: _Side, price: object, volume: object) -> int:
        """The signed key of a price text not seen yet on ``side`` (checked, then memoised)."""
        if not isinstance(price, str) or not isinstance(volume, str):
            raise FrameError(f"level {[price, volume]!r} does not hold price and volume text")
        scale = self.scale
        dot = len(price) - 1 - scale
        if scale and dot >= 0 and price.find(".") == dot:
            # The usual case, the book's own number of decimals: the digits are the key.
            try:
                key = int(price[:dot] + price[dot + 1 :])
            except ValueError:
                key = self._key(price)
        else:
            key = self._key(price)
        key *= side.sign
        keyed = side.keyed
        if len(keyed) >= _PRICE_CACHE_LIMIT:
            keyed.clear()
        keyed[price] = key
        return key

    def _key(self, price: str) -> int:
        """Exact integer key of ``price`` at the book's scale, widening the scale if needed."""
        plain = _plain(price)
        decimals = _decimals(plain)
        if decimals > self.scale:
            if decimals > MAX_DECIMALS:
                shown = price if len(price) <= 40 else f"{price[:20]}...({len(price)} characters)"
                raise FrameError(f"price {shown!r} has more than {MAX_DECIMALS} decimals")
            factor = 10 ** (decimals - self.scale)
            self.asks.rescale(factor)
            self.bids.rescale(factor)
            self.scale = decimals
        whole, _, frac = plain.partition(".")
        try:
            return int(whole + frac + "0" * (self.scale - decimals))
        except ValueError as exc:
            raise FrameError(f"price {price!r} is not a number") from exc
