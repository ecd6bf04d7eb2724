"""``exch_ts`` in grid snapshots: Kraken's time of the latest update applied at or before ``ts``.

The reference reads the frames with the standard library: v1, the largest third field of the
message's levels (``Decimal`` seconds); v2, the update's ``timestamp``; a checkpoint holds none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import replay
from kbook.api import Api
from kbook.feed import BookFeed, Outcome
from kbook.segment import frame_line, meta_line, write_segment
from kbook.sim.market import Market
from kbook.sim.market_v2 import V2Market

BASE_NS = 1_700_000_000_000_000_000
STEP_NS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def exchange_ns(api: str, text: str) -> int | None:
    msg = orjson.loads(text)
    if api == Api.V2:
        stamp = msg["data"][0].get("timestamp")
        if stamp is None:
            return None
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        return (moment - EPOCH).days * 86_400 * 10**9 + int(
            (moment - EPOCH).seconds * 10**9 + (moment - EPOCH).microseconds * 1000
        )
    levels = [
        level
        for payload in msg[1:-2]
        for side in payload.values()
        if type(side) is list
        for level in side
    ]
    stamps = [int(Decimal(level[2]) * 10**9) for level in levels if len(level) > 2]
    return max(stamps, default=None)


@pytest.mark.parametrize("api", [Api.V1, Api.V2])
def test_grid_rows_carry_the_exchange_time_of_the_latest_update(api: str, tmp_path: Path) -> None:
    ticks = iter(range(10**6))

    def clock() -> float:
        return 1_699_999_999.5 + next(ticks) * 0.000_7

    pair = "BTC/USD" if api == Api.V2 else "XBT/USD"
    market = (V2Market if api == Api.V2 else Market)(pair, 10, 5, clock=clock)
    items: list[str | dict[str, Any]] = []
    if api == Api.V2:
        items.append({"type": "session_start", "kbook": "test", "api": "v2"})
    items += [market.snapshot_frame(7)] + [market.update_frame(7) for _ in range(300)]
    asks, bids = market.window()
    channel = "book-10"
    items.append({"type": "checkpoint", "pair": pair, "channel": channel})
    items[-1].update(asks=[list(a) for a in asks], bids=[list(b) for b in bids])  # type: ignore[union-attr]
    items += [market.update_frame(7) for _ in range(100)]
    lines, expected = [], []
    exch: int | None = None
    gap = 0
    for index, item in enumerate(items):
        recv = BASE_NS + index * STEP_NS + gap
        if isinstance(item, dict):
            lines.append(meta_line(recv, item))
            if item["type"] == "checkpoint":
                exch = None
                gap = 20 * STEP_NS  # grid times between the checkpoint and the next update
        else:
            lines.append(frame_line(recv, index, item, True))
            exch = exchange_ns(api, item)
        expected.append((recv, exch))
    segment = write_segment(tmp_path / "s.jsonl.zst", lines)
    table = replay.replay_table(segment, every="5ms", levels=1)
    rows = table.to_pylist()
    assert len(rows) > 70
    at = 0
    seen = set()
    for row in rows:
        t = row["ts"].value
        while at + 1 < len(expected) and expected[at + 1][0] <= t:
            at += 1
        got = None if row["exch_ts"] is None else row["exch_ts"].value
        assert got == (expected[at][1] if row["valid"] else None), t
        seen.add(got)
    assert len(seen) > 60
    assert None in seen  # after the checkpoint, until the next update


def test_a_snapshot_s_levels_are_not_held_for_its_exchange_time() -> None:
    """A book that no row reads (the recorder's) would otherwise keep each snapshot's level
    lists alive until the next update: 0.3 MB a depth-1000 book, 90 MB over 300 pairs."""
    feed = BookFeed()
    asks = [["5000.1", "1.0", "1700000000.123456"], ["5000.2", "2.0", "1700000001.5"]]
    bids = [["4999.9", "1.5", "1700000000.5"]]
    snapshot = [0, {"as": asks, "bs": bids}, "book-10", "XBT/USD"]
    assert feed.on_message(snapshot, BASE_NS) is Outcome.SNAPSHOT
    (book,) = feed.books.values()
    assert type(book.exch_source) is int
    assert book.exch_ns == 1_700_000_001_500_000_000
