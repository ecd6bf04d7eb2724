"""A seeded order book that moves like a Kraken market and speaks v1 book frames. No I/O.

``Market`` keeps the *exchange-side* book of one pair, deeper than the subscribed window, and turns
each step of its random walk into the v1 frame Kraken would send a client subscribed at ``depth``
(``shared/kraken/README.md`` sections 1 to 3):

- a snapshot (``"as"``/``"bs"``) of the window, each level with its own timestamp;
- updates (``"a"``/``"b"``) that change volumes, insert levels near the top, delete levels, and
  sweep the best levels like a market order;
- a deletion inside the window is followed, in the same message, by the next deeper level of the
  exchange book marked ``"r"`` (republished, keeping its old timestamp), so the window stays full;
- an insert into a full window pushes the worst level out with no delete for it: the client
  truncates to its depth after every message, exactly as against Kraken;
- a message touching both sides is sent as two dicts, ``{"a":...}`` then ``{"b":...,"c":...}``;
- every update carries the CRC32 checksum of the top 10 levels per side, built from the strings
  sent (prices at the pair's wire decimals, volumes with 8).

What a message says is derived, not scripted: each step mutates the exchange book, then compares
the window before and after. Touched levels inside the new window are sent, touched levels that
left the book while inside the old window are sent as deletes, and levels that slid into the
window from below without being touched are republished with ``"r"``. Everything else (changes
deeper than the window, levels pushed out) is invisible, as on the real feed. ``window()`` is
therefore always what a correct client holds after the last frame.

The random walk depends only on ``(seed, pair, depth, stream)``: the same arguments give the same
frames byte for byte apart from timestamps, which come from ``clock`` (wall time by default).

``trade`` is a taker's order instead of a step of the walk: it takes the best ask (a buy) or the
best bid (a sell), part of the level or all of it, at that level's price, and returns the trade
with the book update it causes (the level reduced, or deleted and the window refilled), so a
client of both channels sees every trade land in the book's next update.

How a level is printed is left to three small methods (``_level_text``, ``_delete_text``,
``_refill_text``) and the two frame methods, so ``kbook.sim.market_v2.V2Market`` prints the very
same market as v2 frames.
"""

from __future__ import annotations

import random
import time
import zlib
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable
from dataclasses import dataclass

from kbook.api import DEPTHS
from kbook.book import CHECKSUM_LEVELS, checksum_piece
from kbook.pairs import v1_alias

ZERO_VOLUME = "0.00000000"
VOLUME_DECIMALS = 8
VOLUME_UNIT = 10**VOLUME_DECIMALS
_MEAN_GAP = 2.5
"""Mean spacing of neighbouring levels, in ticks."""
_INFINITY = 1 << 200
"""A key beyond every real key: the boundary of a side shorter than the window."""


@dataclass(frozen=True, slots=True)
class PairSpec:
    """How a pair's prices look on the wire and where its simulated market starts."""

    decimals: int
    """Digits after the point in a price string (Kraken's wire decimals, not REST pair_decimals)."""
    tick: int
    """Price step in units of ``10**-decimals``."""
    price: int
    """Starting mid price in units of ``10**-decimals``."""
    notional: float
    """Typical value of one level in the quote currency, for sizing volumes."""


PAIR_SPECS: dict[str, PairSpec] = {
    "XBT/USD": PairSpec(5, 10_000, 27_120_00000, 8_000.0),
    "XBT/EUR": PairSpec(5, 10_000, 25_040_00000, 8_000.0),
    "ETH/USD": PairSpec(5, 1_000, 1_650_00000, 5_000.0),
    "ETH/EUR": PairSpec(5, 1_000, 1_520_00000, 5_000.0),
    "ETH/XBT": PairSpec(5, 1, 6_100, 0.2),
    "XDG/USD": PairSpec(9, 100, 74_602_700, 3_000.0),
    "XDG/EUR": PairSpec(9, 100, 68_811_200, 3_000.0),
    "LTC/USD": PairSpec(5, 1_000, 65_42000, 2_000.0),
    "XRP/USD": PairSpec(8, 1_000, 51_234_000, 2_000.0),
    "SOL/USD": PairSpec(5, 1_000, 20_15000, 2_000.0),
    "ADA/USD": PairSpec(6, 1, 251_234, 2_000.0),
    "LUNA/EUR": PairSpec(12, 10_000, 99_990_000, 1_000.0),
}
"""Known pairs, keyed by v1 name. Others get ``default_spec``."""


def canonical_pair(pair: str) -> str:
    """The v1 name of a pair (``BTC/USD`` -> ``XBT/USD``): one market whatever the spelling."""
    return v1_alias(pair) or pair


def default_spec(pair: str) -> PairSpec:
    """A sane fixed format for a pair not in ``PAIR_SPECS``: 5 decimals, 0.01 tick, price 1-500."""
    start = 1 + zlib.crc32(pair.encode()) % 500
    return PairSpec(5, 1_000, start * 100_000, 2_000.0)


def spec_for(pair: str) -> PairSpec:
    """The wire format of ``pair`` (either spelling)."""
    canonical = canonical_pair(pair)
    return PAIR_SPECS.get(canonical) or default_spec(canonical)


def format_units(units: int, decimals: int) -> str:
    """``units`` of ``10**-decimals`` as a fixed-point string: (2712000000, 5) -> "27120.00000"."""
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


LevelData = tuple[str, str, str, str]
"""(price, volume, timestamp, checksum piece) of one exchange level."""


@dataclass(frozen=True, slots=True)
class SimTrade:
    """One simulated trade, printed per API by ``kbook.sim.dialect``."""

    side: str
    """``buy`` (took the best ask) or ``sell`` (took the best bid)."""
    price: str
    """The level's price as this market prints it."""
    qty: str
    """The size taken, 8 decimals."""
    time: float
    """Epoch seconds."""
    order_type: str
    """``market`` or ``limit`` (a marketable limit order)."""


class _Side:
    """One side of the exchange book: signed integer keys ascending from the best level.

    Asks use the price in units as key, bids its negative, so "better" is always "smaller".
    ``touched`` maps each key mutated during the current message to its level before the message
    (None when it did not exist); ``old_last`` is the worst key of the window before the message.
    """

    __slots__ = ("sign", "keys", "levels", "touched", "old_last")

    def __init__(self, sign: int) -> None:
        self.sign = sign
        self.keys: list[int] = []
        self.levels: dict[int, LevelData] = {}
        self.touched: dict[int, LevelData | None] = {}
        self.old_last = _INFINITY

    def last_in_window(self, depth: int) -> int:
        """The worst key inside a window of ``depth`` levels (``_INFINITY`` if the side is short)."""
        keys = self.keys
        return keys[depth - 1] if len(keys) > depth else _INFINITY

    def top(self, n: int) -> list[tuple[str, str]]:
        levels = self.levels
        return [levels[key][:2] for key in self.keys[:n]]


class Market:
    """One pair's simulated exchange book and the v1 frames of a subscription at ``depth``."""

    def __init__(
        self,
        pair: str = "XBT/USD",
        depth: int = 100,
        seed: int = 7,
        *,
        stream: int = 0,
        clock: Callable[[], float] = time.time,
        spec: PairSpec | None = None,
    ) -> None:
        if depth not in DEPTHS:  # Kraken serves no other book, so no test market either
            offered = ", ".join(map(str, DEPTHS))
            raise ValueError(f"depth {depth} is not one Kraken offers; use one of {offered}")
        self.pair = pair
        """The pair as printed in frames (``BTC/USD`` and ``XBT/USD`` share one random walk)."""
        self.depth = depth
        self.channel_name = f"book-{depth}"
        self.spec = spec or spec_for(pair)
        """The wire format; another API prints the same walk at other decimals (``v2_spec``)."""
        self.updates = 0
        """Updates generated so far."""
        self.reserve = max(20, depth // 4)
        """How many levels the exchange keeps below the window, to republish from."""
        seed_text = f"kbook-sim:{seed}:{canonical_pair(pair)}:{depth}:{stream}"
        self._rng = random.Random(seed_text)
        self._clock = clock
        self._asks = _Side(1)
        self._bids = _Side(-1)
        self._tail = f'"{self.channel_name}","{pair}"]'
        self._mean_volume = self.spec.notional * 10**self.spec.decimals / self.spec.price
        """Mean level size in the base currency."""
        self._fill()

    # -- public ---------------------------------------------------------------------------------

    def snapshot_frame(self, channel_id: int) -> str:
        """The snapshot of the current window: asks ascending, bids descending."""
        asks, bids = self._window_text(self._asks), self._window_text(self._bids)
        return f'[{channel_id},{{"as":[{asks}],"bs":[{bids}]}},{self._tail}'

    def update_frame(self, channel_id: int, *, bad_checksum: bool = False) -> str:
        """The next update, checksum included; ``bad_checksum`` sends a wrong ``"c"`` (a fault)."""
        now = self._clock()
        asks, bids = self._step(f"{now:.6f}")
        return self._update_text(channel_id, asks, bids, now, bad_checksum)

    def trade(self, channel_id: int, *, bad_checksum: bool = False) -> tuple[SimTrade, str]:
        """A taker's trade at the best price, and the book update that shows it (its level
        reduced or gone), ``bad_checksum`` as in ``update_frame``."""
        now = self._clock()
        ts = f"{now:.6f}"
        rng = self._rng
        self._begin()
        buy = rng.random() < 0.5
        side = self._asks if buy else self._bids
        if not side.keys:
            buy, side = not buy, self._bids if buy else self._asks
        key = side.keys[0]
        price, volume = side.levels[key][:2]
        units = int(volume.replace(".", ""))
        if units <= 1 or rng.random() < 0.3:
            taken = units
            self._store(side, key, None)
        else:
            taken = rng.randint(1, units - 1)
            left = format_units(units - taken, VOLUME_DECIMALS)
            self._store(side, key, (price, left, ts, checksum_piece(price) + checksum_piece(left)))
        for each in (self._asks, self._bids):
            self._maintain(each, ts)
        asks, bids = self._emit(self._asks, ts), self._emit(self._bids, ts)
        order_type = "market" if rng.random() < 0.7 else "limit"
        done = SimTrade("buy" if buy else "sell", price, format_units(taken, 8), now, order_type)
        return done, self._update_text(channel_id, asks, bids, now, bad_checksum)

    def _update_text(
        self, channel_id: int, asks: list[str], bids: list[str], now: float, bad_checksum: bool
    ) -> str:
        """An update frame of the level texts of one message, with the window's checksum."""
        checksum = self.checksum()
        if bad_checksum:
            checksum ^= 0x5A5A5A5A
        self.updates += 1
        if asks and bids:
            return (
                f'[{channel_id},{{"a":[{",".join(asks)}]}},'
                f'{{"b":[{",".join(bids)}],"c":"{checksum}"}},{self._tail}'
            )
        key, levels = ("a", asks) if asks else ("b", bids)
        return f'[{channel_id},{{"{key}":[{",".join(levels)}],"c":"{checksum}"}},{self._tail}'

    def window(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The client-visible book (asks, bids) as ``(price, volume)`` strings, best first."""
        return self._asks.top(self.depth), self._bids.top(self.depth)

    def checksum(self) -> int:
        """Kraken's CRC32 of the current window (top 10 asks ascending, then top 10 bids)."""
        pieces = [self._asks.levels[key][3] for key in self._asks.keys[:CHECKSUM_LEVELS]]
        pieces += [self._bids.levels[key][3] for key in self._bids.keys[:CHECKSUM_LEVELS]]
        return zlib.crc32("".join(pieces).encode("ascii"))

    # -- the initial book -----------------------------------------------------------------------

    def _fill(self) -> None:
        """Lay out both sides around the starting price, a few ticks apart, with past timestamps."""
        tick = self.spec.tick
        mid = self.spec.price // tick * tick
        now = self._clock()
        for side in (self._asks, self._bids):
            key = side.sign * mid + tick * (1 + self._rng.randrange(3))
            for _ in range(self.depth + self.reserve):
                if key * side.sign <= 0:
                    break
                ts = f"{now - self._rng.uniform(0.0, 60.0):.6f}"
                self._store(side, key, self._new_level(side, key, ts))
                key += tick * self._gap()
        self._asks.touched.clear()
        self._bids.touched.clear()

    # -- one step of the market -----------------------------------------------------------------

    def _step(self, ts: str) -> tuple[list[str], list[str]]:
        """Mutate the exchange book once and return the level texts to send per side."""
        for _ in range(8):
            self._begin()
            self._act(ts)
            for side in (self._asks, self._bids):
                self._maintain(side, ts)
            asks, bids = self._emit(self._asks, ts), self._emit(self._bids, ts)
            if asks or bids:
                return asks, bids
        # Eight invisible steps in a row are unlikely; a change of the best ask is always visible.
        self._begin()
        self._change(self._asks, 0, ts)
        return self._emit(self._asks, ts), self._emit(self._bids, ts)

    def _begin(self) -> None:
        for side in (self._asks, self._bids):
            side.touched.clear()
            side.old_last = side.last_in_window(self.depth)

    def _act(self, ts: str) -> None:
        """One market event; the mix is tuned to look like Kraken's book-10 and book-1000 feeds."""
        rng = self._rng
        roll = rng.random()
        if roll < 0.06:  # both sides move: sent as a two-dict message
            self._random_action(self._asks, ts)
            self._random_action(self._bids, ts)
            return
        side = self._asks if rng.random() < 0.5 else self._bids
        self._random_action(side, ts)
        if roll > 0.93:  # a second change on the same side
            self._random_action(side, ts)

    def _random_action(self, side: _Side, ts: str) -> None:
        rng = self._rng
        roll = rng.random()
        if roll < 0.36:
            self._change(side, self._pick_index(side), ts)
        elif roll < 0.94:
            # Inserts and deletes balance around the usual spacing, so the book keeps its density.
            stretch = self._stretch(side)
            if rng.random() < stretch / (1.0 + stretch):
                self._insert(side, ts)
            else:
                self._delete(side, self._pick_index(side), ts)
        else:
            self._sweep(side, ts)

    def _change(self, side: _Side, index: int, ts: str) -> None:
        """A new volume for the level at ``index``."""
        if index < len(side.keys):
            key = side.keys[index]
            self._store(side, key, self._new_level(side, key, ts))

    def _insert(self, side: _Side, ts: str) -> None:
        """A new level in a gap near the top, or inside the spread (a new best price)."""
        tick = self.spec.tick
        keys = side.keys
        if not keys:
            return
        room = self._spread_room()
        # A wide spread fills quickly: the chance to improve the best price grows with the room.
        if room > 0 and self._rng.random() < room / (room + 2):
            key = keys[0] - tick * (1 + self._rng.randrange(room))
        else:
            index = self._pick_index(side)
            if index + 1 < len(keys):
                free = (keys[index + 1] - keys[index]) // tick - 1
                if free < 1:
                    self._change(side, index, ts)
                    return
                key = keys[index] + tick * (1 + self._rng.randrange(free))
            else:
                key = keys[index] + tick * self._gap()
        if key * side.sign <= 0:
            return
        self._store(side, key, self._new_level(side, key, ts))

    def _delete(self, side: _Side, index: int, ts: str) -> None:
        """Remove the level at ``index``; the window is refilled from below with an "r" level."""
        if len(side.keys) > 2 and index < len(side.keys):
            self._store(side, side.keys[index], None)

    def _sweep(self, side: _Side, ts: str) -> None:
        """A market order takes the best one to three levels: the price moves."""
        for _ in range(1 + self._rng.randrange(3)):
            self._delete(side, 0, ts)

    def _maintain(self, side: _Side, ts: str) -> None:
        """Keep the exchange book between one and two reserves deeper than the window."""
        keys = side.keys
        target = self.depth + self.reserve
        while keys and len(keys) < target:
            key = keys[-1] + self.spec.tick * self._gap()
            if key * side.sign <= 0:
                break
            self._store(side, key, self._new_level(side, key, ts))
        while len(keys) > target + self.reserve:
            self._store(side, keys[-1], None)

    # -- what the client sees -------------------------------------------------------------------

    def _emit(self, side: _Side, ts: str) -> list[str]:
        """Level texts for this message on ``side``: touched levels, deletes, then "r" levels."""
        depth = self.depth
        levels = side.levels
        old_last = side.old_last
        new_last = side.last_in_window(depth)
        out: list[str] = []
        for key, old in side.touched.items():
            was_visible = old is not None and key <= old_last
            level = levels.get(key)
            if level is not None and key <= new_last:
                if not was_visible or level is not old:
                    out.append(self._level_text(level))
            elif was_visible and level is None and old is not None:
                out.append(self._delete_text(old[0], ts))
        if new_last > old_last:
            keys = side.keys
            for key in keys[bisect_right(keys, old_last) : depth]:
                if key not in side.touched:
                    out.append(self._refill_text(levels[key]))
        return out

    # -- how levels are printed (v1 here; ``kbook.sim.market_v2`` prints v2) --------------------

    def _level_text(self, level: LevelData) -> str:
        """A new or changed level: ``["price","volume","timestamp"]``."""
        return f'["{level[0]}","{level[1]}","{level[2]}"]'

    def _delete_text(self, price: str, ts: str) -> str:
        """A level that left the window by deletion: zero volume, the message's timestamp."""
        return f'["{price}","{ZERO_VOLUME}","{ts}"]'

    def _refill_text(self, level: LevelData) -> str:
        """A level that slid into the window: republished with ``"r"``, its old timestamp kept."""
        return f'["{level[0]}","{level[1]}","{level[2]}","r"]'

    # -- helpers --------------------------------------------------------------------------------

    def _store(self, side: _Side, key: int, level: LevelData | None) -> None:
        """Set or delete one exchange level, remembering its state before this message."""
        levels = side.levels
        if key not in side.touched:
            side.touched[key] = levels.get(key)
        if level is None:
            if key in levels:
                del levels[key]
                side.keys.pop(bisect_left(side.keys, key))
            return
        if key not in levels:
            insort(side.keys, key)
        levels[key] = level

    def _new_level(self, side: _Side, key: int, ts: str) -> LevelData:
        price = format_units(key * side.sign, self.spec.decimals)
        volume = format_units(self._volume(), VOLUME_DECIMALS)
        return price, volume, ts, checksum_piece(price) + checksum_piece(volume)

    def _volume(self) -> int:
        """A level size in units of 1e-8: mostly exponential, sometimes a round lot."""
        rng = self._rng
        amount = rng.expovariate(1 / self._mean_volume)
        if rng.random() < 0.2:
            amount = float(f"{amount:.2g}")
        return max(1, round(amount * VOLUME_UNIT))

    def _gap(self) -> int:
        """Ticks between neighbouring exchange levels."""
        return 1 + int(self._rng.expovariate(1 / (_MEAN_GAP - 1)))

    def _pick_index(self, side: _Side) -> int:
        """A window index, mostly among the best few levels, sometimes anywhere in the window."""
        limit = max(1, min(self.depth, len(side.keys)))
        rng = self._rng
        if rng.random() < 0.15:
            return rng.randrange(limit)
        return min(int(rng.expovariate(1 / 4)), limit - 1)

    def _stretch(self, side: _Side) -> float:
        """How far the window spans compared with its usual spacing (1.0 = as laid out)."""
        keys = side.keys
        last = min(self.depth, len(keys)) - 1
        if last < 1:
            return 4.0
        usual = last * _MEAN_GAP * self.spec.tick
        return (keys[last] - keys[0]) / usual

    def _spread_room(self) -> int:
        """Free ticks between the best bid and the best ask."""
        if not self._asks.keys or not self._bids.keys:
            return 0
        best_ask = self._asks.keys[0]
        best_bid = -self._bids.keys[0]
        return max(0, (best_ask - best_bid) // self.spec.tick - 1)

    def _window_text(self, side: _Side) -> str:
        """The levels of one side's window, printed as in a snapshot, joined by commas."""
        levels = side.levels
        return ",".join(self._level_text(levels[key]) for key in side.keys[: self.depth])
