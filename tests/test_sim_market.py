"""The seeded market alone (no sockets): checksums, wire formats, Kraken's update shapes."""

from __future__ import annotations

import re
from collections.abc import Iterator

import orjson
import pytest
from sim_support import strip_timestamps

from kbook.feed import BookFeed, Outcome
from kbook.sim import Market
from kbook.sim.market_v2 import V2Market
from kbook.sim.protocol import plan_subscribe

FIXED_CLOCK = 1693415327.935623


def frames(market: Market, count: int) -> Iterator[str]:
    for _ in range(count):
        yield market.update_frame(336)


def verify(market: Market, count: int) -> tuple[BookFeed, list[str]]:
    """Feed a snapshot and ``count`` updates to a BookFeed; every checksum must verify."""
    feed = BookFeed()
    assert feed.on_message(orjson.loads(market.snapshot_frame(336)), 0) is Outcome.SNAPSHOT
    texts = list(frames(market, count))
    for text in texts:
        outcome = feed.on_message(orjson.loads(text), 0)
        assert outcome is Outcome.UPDATE_OK, text
    return feed, texts


@pytest.mark.parametrize(
    ("pair", "depth"),
    [("XBT/USD", 10), ("XBT/USD", 1000), ("XDG/USD", 25), ("ETH/USD", 100), ("LUNA/EUR", 500)],
)
def test_every_checksum_verifies_and_the_window_matches(pair: str, depth: int) -> None:
    market = Market(pair, depth, seed=3)
    feed, _ = verify(market, 20_000 if depth in (10, 1000) else 5_000)
    book = feed.books[(pair, f"book-{depth}")]
    asks, bids = market.window()
    assert book.top_asks(depth) == asks
    assert book.top_bids(depth) == bids
    assert len(asks) == len(bids) == depth  # the exchange book is deeper: the window stays full


def test_kraken_shapes_all_appear() -> None:
    market = Market("XBT/USD", 10, seed=7)
    _, texts = verify(market, 5_000)
    decoded = [orjson.loads(text) for text in texts]
    republished = [
        m
        for m in decoded
        if any(
            len(lv) == 4
            for d in m[1:-2]
            for side in d.values()
            if isinstance(side, list)
            for lv in side
        )
    ]
    assert republished, "no republished levels"
    for msg in republished:
        levels = [lv for d in msg[1:-2] for key in ("a", "b") for lv in d.get(key, ())]
        first_r = next(i for i, lv in enumerate(levels) if len(lv) == 4)
        assert levels[first_r][3] == "r"
        assert any(lv[1] == "0.00000000" for lv in levels[:first_r])  # a delete comes first
    two_dict = [m for m in decoded if len(m) == 5]
    assert two_dict, "no two-dict messages"
    for msg in two_dict:
        assert list(msg[1]) == ["a"]
        assert list(msg[2]) == ["b", "c"]
        assert msg[-2:] == ["book-10", "XBT/USD"]
    assert all(isinstance(m[-3]["c"], str) and m[-3]["c"].isdigit() for m in decoded)


def test_inserts_push_levels_out_without_a_delete() -> None:
    market = Market("ETH/USD", 10, seed=5)
    pushed = 0
    for _ in range(3_000):
        before_asks, before_bids = market.window()
        msg = orjson.loads(market.update_frame(1))
        after_asks, after_bids = market.window()
        sent = {
            lv[0] for d in msg[1:-2] for side in d.values() if isinstance(side, list) for lv in side
        }
        for before, after in ((before_asks, after_asks), (before_bids, after_bids)):
            gone = {p for p, _ in before} - {p for p, _ in after}
            pushed += len(gone - sent)  # left the window, no delete sent: the client truncates
    assert pushed > 50


def test_wire_formats() -> None:
    for pair, decimals in (("XBT/USD", 5), ("XDG/USD", 9), ("ETH/USD", 5), ("LUNA/EUR", 12)):
        market = Market(pair, 25, seed=1)
        snapshot = orjson.loads(market.snapshot_frame(9))
        asks, bids = snapshot[1]["as"], snapshot[1]["bs"]
        prices = [float(lv[0]) for lv in asks]
        assert prices == sorted(prices)
        prices = [float(lv[0]) for lv in bids]
        assert prices == sorted(prices, reverse=True)
        assert float(bids[0][0]) < float(asks[0][0])
        for level in asks + bids:
            price, volume, stamp = level
            assert re.fullmatch(rf"\d+\.\d{{{decimals}}}", price)
            assert re.fullmatch(r"\d+\.\d{8}", volume)
            assert float(volume) > 0
            assert re.fullmatch(r"\d{10}\.\d{6}", stamp)
        assert snapshot[0] == 9
        assert snapshot[-2:] == ["book-25", pair]


def test_same_seed_same_frames_apart_from_timestamps() -> None:
    def run(seed: int) -> list[str]:
        market = Market("XBT/USD", 100, seed=seed)
        return [
            strip_timestamps(market.snapshot_frame(1)),
            *map(strip_timestamps, frames(market, 2_000)),
        ]

    assert run(7) == run(7)
    assert run(7) != run(8)
    clocked = Market("XBT/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    again = Market("XBT/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    assert list(frames(clocked, 500)) == list(frames(again, 500))  # byte-identical


def test_btc_spellings_share_one_random_walk() -> None:
    xbt = Market("XBT/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    btc = Market("BTC/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    for _ in range(100):
        assert xbt.update_frame(1).replace("XBT/USD", "BTC/USD") == btc.update_frame(1)


def test_bad_checksum_flag() -> None:
    good = Market("XBT/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    bad = Market("XBT/USD", 10, seed=7, clock=lambda: FIXED_CLOCK)
    right, wrong = (
        orjson.loads(good.update_frame(1)),
        orjson.loads(bad.update_frame(1, bad_checksum=True)),
    )
    assert right[-3]["c"] != wrong[-3]["c"]
    assert right[1:-3] == wrong[1:-3]


def test_subscribe_plan_wording() -> None:
    def depths_for(pair: str) -> tuple[int, ...]:
        return (10, 25, 100, 500, 1000) if pair == "XBT/USD" else ()

    request = plan_subscribe(
        {"pair": ["BTC/USD", "XBT/EUR", "XBT-USD"], "subscription": {"name": "book", "depth": 25}},
        depths_for,
        "reject",
        lambda key: False,
    )
    assert [d.error for d in request.decisions] == [
        "Currency pair not supported BTC/USD",
        "Currency pair not supported XBT/EUR",
        "Currency pair not in ISO 4217-A3 format XBT-USD",
    ]


@pytest.mark.parametrize("depth", [0, 3, 11, 999_999_999])
def test_a_market_is_only_of_a_kraken_depth(depth: int) -> None:
    """Kraken serves books of 10, 25, 100, 500 and 1000 levels, so a simulated market is one of
    those: a test of another depth would exercise a book no recording holds."""
    with pytest.raises(ValueError, match=f"depth {depth} is not one Kraken offers"):
        Market("XBT/USD", depth, seed=1)
    with pytest.raises(ValueError, match=f"depth {depth} is not one Kraken offers"):
        V2Market("BTC/USD", depth, seed=1)
