"""The v2 printer of the simulated market, alone (no sockets): checksums, lexemes, same walk as v1."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from kbook.feed import Outcome
from kbook.sim import Market, PairSpec, V2Market, spec_for, v2_spec
from kbook.sim.protocol_v2 import plan_subscribe, plan_unsubscribe
from kbook.v2 import V2BookFeed, decode

FIXED_CLOCK = 1693415327.935623


def verified(market: V2Market, count: int) -> tuple[V2BookFeed, list[str]]:
    """Feed the snapshot and ``count`` updates to a V2BookFeed; every checksum must verify."""
    feed = V2BookFeed()
    assert feed.on_message(decode(market.snapshot_frame()), 0) is Outcome.SNAPSHOT
    texts = [market.update_frame() for _ in range(count)]
    for text in texts:
        assert feed.on_message(decode(text), 0) is Outcome.UPDATE_OK, text
    return feed, texts


@pytest.mark.parametrize(
    ("symbol", "depth"),
    [("BTC/USD", 10), ("BTC/USD", 1000), ("DOGE/USD", 25), ("ETH/USD", 100), ("LUNA/EUR", 500)],
)
def test_every_checksum_verifies_and_the_window_matches(symbol: str, depth: int) -> None:
    market = V2Market(symbol, depth, seed=3)
    feed, _ = verified(market, 10_000 if depth in (10, 1000) else 3_000)
    assert feed.stats[symbol].checksums_ok == 1 + market.updates
    book = feed.books[(symbol, f"book-{depth}")]
    asks, bids = market.window()
    assert book.top_asks(depth) == asks
    assert book.top_bids(depth) == bids
    assert len(asks) == len(bids) == depth


def test_v2_precision_is_the_tick() -> None:
    assert v2_spec(spec_for("BTC/USD")) == PairSpec(1, 1, 271_200, 8_000.0)
    assert v2_spec(spec_for("ETH/USD")).decimals == 2
    assert v2_spec(spec_for("DOGE/USD")).decimals == 7
    assert v2_spec(spec_for("XRP/USD")).decimals == 5
    assert v2_spec(PairSpec(3, 7, 1000, 1.0)) == PairSpec(3, 7, 1000, 1.0)  # nothing to drop


def test_same_walk_as_v1() -> None:
    v1 = Market("XBT/USD", 25, seed=7, clock=lambda: FIXED_CLOCK)
    v2 = V2Market("BTC/USD", 25, seed=7, clock=lambda: FIXED_CLOCK)
    for _ in range(3_000):
        v1.update_frame(1)
        v2.update_frame()

    def values(side: list[tuple[str, str]]) -> list[tuple[Decimal, Decimal]]:
        return [(Decimal(price), Decimal(qty)) for price, qty in side]

    for one, two in zip(v1.window(), v2.window(), strict=True):
        assert values(one) == values(two)
    assert v2.window()[0][0][0].count(".") == 1
    assert len(v2.window()[0][0][0].split(".")[1]) == 1


def test_shapes() -> None:
    market = V2Market("BTC/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    _, texts = verified(market, 3_000)
    entries = [json.loads(text)["data"][0] for text in texts]
    assert all(set(e) == {"symbol", "bids", "asks", "checksum", "timestamp"} for e in entries)
    assert {e["timestamp"] for e in entries} == {"2023-08-30T17:08:47.935623Z"}
    assert any(e["bids"] and e["asks"] for e in entries)  # both sides: one entry
    # A deletion inside the window comes with the level that refills it, as a plain level.
    refilled = [
        e
        for e in decoded_entries(texts)
        for side in ("bids", "asks")
        if any(lv["qty"] in ("0E-8", "0.00000000") for lv in e[side])
        and any(lv["qty"] not in ("0E-8", "0.00000000") for lv in e[side])
    ]
    assert len(refilled) > 100


def decoded_entries(texts: list[str]) -> list[dict]:
    return [decode(text)["data"][0] for text in texts]


def test_same_seed_same_frames_and_bad_checksum() -> None:
    one = V2Market("BTC/USD", 100, seed=9, clock=lambda: FIXED_CLOCK)
    two = V2Market("BTC/USD", 100, seed=9, clock=lambda: FIXED_CLOCK)
    assert one.snapshot_frame() == two.snapshot_frame()
    assert [one.update_frame() for _ in range(500)] == [two.update_frame() for _ in range(500)]
    right = json.loads(one.update_frame())
    wrong = json.loads(two.update_frame(bad_checksum=True))
    assert right["data"][0]["checksum"] != wrong["data"][0]["checksum"]
    right["data"][0].pop("checksum")
    wrong["data"][0].pop("checksum")
    assert right == wrong


def test_plan_wording() -> None:
    def depths_for(pair: str) -> tuple[int, ...]:
        return (10, 25, 100, 500, 1000) if pair in ("XBT/USD", "XDG/USD") else ()

    params = {"channel": "book", "symbol": ["BTC/USD", "XBT/USD", "DOGE/USD", "ETH/USD", "BTC-USD"]}
    request = plan_subscribe({"method": "subscribe", "params": params}, depths_for, lambda k: False)
    assert [d.error for d in request.decisions] == [
        None,
        "Currency pair not supported XBT/USD",
        None,
        "Currency pair not supported ETH/USD",
        "Currency pair not supported BTC-USD",
    ]
    assert request.decisions[0].key == ("XBT/USD", 10)  # one market per pair for both APIs
    assert request.decisions[0].wire == "BTC/USD"
    assert request.snapshot is True

    def active(key: tuple[str, int]) -> bool:
        return key == ("XBT/USD", 500)

    gone = plan_unsubscribe(
        {"params": {"channel": "book", "symbol": ["BTC/USD"]}}, depths_for, active
    )
    assert gone.decisions[0].key == ("XBT/USD", 500)
    assert gone.decisions[0].error is None
    bad = plan_subscribe({"params": {"channel": "book", "symbol": []}}, depths_for, active)
    assert bad.error == "Malformed request"
