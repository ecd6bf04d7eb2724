"""Which recorded trades are new, and which trade ids are missing: the rule replay and verify share.

A recording may hold a trade twice, never by the recorder's doing: v2 sends a snapshot of the last
trades (up to 50) on every subscribe, so after a reconnect trades already recorded come again.
Under v2 every trade has Kraken's ``trade_id``, sequential per pair, so ``TradeLedger`` keeps a
trade whose id it has not seen and drops one it has; a new id more than one past the highest seen
is a gap (trades missed, as during an outage longer than the snapshot covers). The ids seen are
remembered within a window (``WINDOW``) far wider than any snapshot, so memory stays bounded over
a recording of months.

Under v1 there is no id and no snapshot: Kraken sends each trade once, on the connection that was
open when it happened, so a recording holds no trade twice and every trade frame is kept. Equal
trades (same price, size and time) are kept too: Kraken prints each fill of an order as its own
trade, and they may well be equal. Trades missed during an outage cannot be told under v1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from kbook.dialect import Trade

WINDOW = 1 << 16
"""Trade ids remembered per pair to recognise a repeat (a v2 snapshot repeats at most 50)."""


@dataclass
class PairTrades:
    """One pair's trades so far: counts, the highest id, the ids recently seen, the gaps."""

    kept: int = 0
    repeated: int = 0
    """Trades dropped as already kept (v2 snapshots after a reconnect)."""
    last_id: int | None = None
    missing: int = 0
    """Trade ids skipped (v2): the sum of the gaps."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """``(last id before, first id after)`` of each gap, oldest first (the first ``GAPS_KEPT``)."""
    _seen: set[int] = field(default_factory=set, repr=False)
    _order: deque[int] = field(default_factory=deque, repr=False)


GAPS_KEPT = 100
"""Gaps listed per pair (all are counted in ``missing``)."""


def in_order(trades: list[Trade]) -> list[Trade]:
    """A frame's trades oldest first: a v2 snapshot's by id (whatever order Kraken lists them
    in, so that the trades it adds after an outage follow on without a false gap), others as
    sent."""
    if trades and trades[0].snapshot and all(t.trade_id is not None for t in trades):
        return sorted(trades, key=lambda t: t.trade_id or 0)
    return trades


@dataclass
class TradeLedger:
    """Decides, trade after trade in recorded order, which to keep; counts per pair."""

    pairs: dict[str, PairTrades] = field(default_factory=dict)

    def keep(self, pair: str, trade: Trade) -> bool:
        """True for a trade not recorded before (always, for one without an id: v1)."""
        state = self.pairs.get(pair)
        if state is None:
            state = self.pairs[pair] = PairTrades()
        trade_id = trade.trade_id
        if trade_id is None:
            state.kept += 1
            return True
        if trade_id in state._seen:
            state.repeated += 1
            return False
        last = state.last_id
        if last is not None and trade_id > last + 1:
            state.missing += trade_id - last - 1
            if len(state.gaps) < GAPS_KEPT:
                state.gaps.append((last, trade_id))
        if last is None or trade_id > last:
            state.last_id = trade_id
        state._seen.add(trade_id)
        state._order.append(trade_id)
        if len(state._order) > WINDOW:
            state._seen.discard(state._order.popleft())
        state.kept += 1
        return True
