"""The simulated market printed as Kraken WebSocket v2 ``book`` frames. No I/O.

``V2Market`` is ``Market`` with another printer: the same exchange book, the same random walk and
the same derivation of what a message says (touched levels, deletes, refills after a deletion,
silent truncation), printed the v2 way (``shared/kraken/README.md`` section 5):

- every frame is an object: ``{"channel":"book","type":"snapshot"|"update","data":[{"symbol":
  "BTC/USD","bids":[...],"asks":[...],"checksum":N,"timestamp":"..."}]}``; both sides are always
  present (an untouched side is ``[]``) and an update touching both sides is one entry;
- a level is ``{"price":27120.0,"qty":0.10000000}``: JSON *numbers* printed at the pair's full
  precision with trailing zeros. The text is built here, never by a JSON library from floats,
  because the checksum is taken over these exact lexemes;
- a deleted level reads qty ``0.00000000`` or, now and then, ``0E-8`` (Kraken prints both), so
  clients exercise the exponent path; the choice has its own seeded generator, so it does not
  disturb the walk;
- v2 has no ``"r"`` marker: a level that slides into the window after a deletion is a plain level;
- the snapshot carries a checksum too (v1's does not); the real capture's snapshot has no
  ``timestamp``, updates have one (RFC 3339, microseconds, ``Z``).

Prices are printed at v2's precision, which is the price *tick* of the pair (``BTC/USD`` 1 decimal,
``ETH/USD`` 2, ``DOGE/USD`` 7), not v1's wire decimals (``XBT/USD`` 5): ``v2_spec`` rescales the
v1 ``PairSpec`` so that every price is the same number, and the same seed gives the same book in
both APIs. Quantities keep 8 decimals.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kbook.sim.market import LevelData, Market, PairSpec, canonical_pair, spec_for

ZERO_QTY = "0.00000000"
ZERO_QTY_EXPONENT = "0E-8"
"""How Kraken v2 sometimes prints a deletion's quantity (``Decimal`` style)."""
EXPONENT_SHARE = 0.3
"""The share of deletions printed as ``0E-8``."""


def v2_spec(spec: PairSpec) -> PairSpec:
    """``spec`` at v2 precision: as few decimals as the tick allows, same prices in value.

    (5 decimals, tick 10000) -> (1 decimal, tick 1): ``27120.00000`` becomes ``27120.0``.
    """
    decimals, tick, price = spec.decimals, spec.tick, spec.price
    while decimals > 0 and tick % 10 == 0 and price % 10 == 0:
        decimals -= 1
        tick //= 10
        price //= 10
    return PairSpec(decimals, tick, price, spec.notional)


def rfc3339(seconds: float) -> str:
    """Epoch seconds as v2 prints time: ``2023-10-06T17:35:55.440295Z``."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class V2Market(Market):
    """One symbol's simulated exchange book and the v2 frames of a subscription at ``depth``.

    ``symbol`` is the v2 name (``BTC/USD``); it shares its random walk with the v1 market of the
    same pair, seed, depth and stream.
    """

    def __init__(
        self,
        symbol: str = "BTC/USD",
        depth: int = 10,
        seed: int = 7,
        *,
        stream: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            symbol, depth, seed, stream=stream, clock=clock, spec=v2_spec(spec_for(symbol))
        )
        self._zero_rng = random.Random(
            f"kbook-sim-v2-zero:{seed}:{canonical_pair(symbol)}:{depth}:{stream}"
        )
        self._head = f'"data":[{{"symbol":"{symbol}","bids":['

    def snapshot_frame(self, channel_id: int = 0) -> str:
        """The snapshot of the window with its checksum (``channel_id`` is v1's; ignored)."""
        asks, bids = self._window_text(self._asks), self._window_text(self._bids)
        return (
            f'{{"channel":"book","type":"snapshot",{self._head}{bids}],"asks":[{asks}],'
            f'"checksum":{self.checksum()}}}]}}'
        )

    def update_frame(self, channel_id: int = 0, *, bad_checksum: bool = False) -> str:
        """The next update; ``bad_checksum`` sends a wrong checksum (a fault)."""
        now = self._clock()
        asks, bids = self._step(f"{now:.6f}")
        return self._update_text(channel_id, asks, bids, now, bad_checksum)

    def _update_text(
        self, channel_id: int, asks: list[str], bids: list[str], now: float, bad_checksum: bool
    ) -> str:
        checksum = self.checksum()
        if bad_checksum:
            checksum ^= 0x5A5A5A5A
        self.updates += 1
        return (
            f'{{"channel":"book","type":"update",{self._head}{",".join(bids)}],'
            f'"asks":[{",".join(asks)}],"checksum":{checksum},"timestamp":"{rfc3339(now)}"}}]}}'
        )

    # -- v2 level texts -------------------------------------------------------------------------

    def _level_text(self, level: LevelData) -> str:
        return f'{{"price":{level[0]},"qty":{level[1]}}}'

    def _delete_text(self, price: str, ts: str) -> str:
        zero = ZERO_QTY_EXPONENT if self._zero_rng.random() < EXPONENT_SHARE else ZERO_QTY
        return f'{{"price":{price},"qty":{zero}}}'

    def _refill_text(self, level: LevelData) -> str:
        return f'{{"price":{level[0]},"qty":{level[1]}}}'
