"""The book builder against Kraken's worked example, its edge cases, and a naive reference model."""

from __future__ import annotations

import zlib
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbook.book import Book, checksum_piece, is_zero
from kbook.feed import BookFeed, Outcome

VOL = "0.00000500"
GUIDE_ASKS = ["0.05005", "0.05010", "0.05015", "0.05020", "0.05025"]
GUIDE_ASKS += ["0.05030", "0.05035", "0.05040", "0.05045", "0.05050"]
GUIDE_BIDS = ["0.05000", "0.04995", "0.04990", "0.04980", "0.04975"]
GUIDE_BIDS += ["0.04970", "0.04965", "0.04960", "0.04955", "0.04950"]


def level(price: str, volume: str = VOL, *extra: str) -> list[str]:
    return [price, volume, "1693415327.935623", *extra]


def feed_frames(feed: BookFeed, frames: list[str]) -> list[Outcome]:
    return [feed.on_message(orjson.loads(text), 1_000 + i) for i, text in enumerate(frames)]


def snapshot(asks: list[list[str]], bids: list[list[str]], pair: str = "XBT/USD") -> str:
    body = orjson.dumps({"as": asks, "bs": bids}).decode()
    return f'[336,{body},"book-10","{pair}"]'


def update(book: Book, asks: list[list[str]], bids: list[list[str]]) -> str:
    """An update frame carrying the checksum ``book`` has after applying it (a trusted copy)."""
    book.apply_update(asks, bids)
    payload: dict[str, object] = {}
    if asks:
        payload["a"] = asks
    if bids:
        payload["b"] = bids
    payload["c"] = str(book.checksum())
    return f'[336,{orjson.dumps(payload).decode()},"book-10","XBT/USD"]'


def test_kraken_guide_vector() -> None:
    book = Book(100)
    book.apply_snapshot([level(p) for p in GUIDE_ASKS], [level(p) for p in GUIDE_BIDS])
    assert book.checksum() == 974947235


def test_checksum_piece_keeps_wire_digits() -> None:
    assert checksum_piece("0.05005") == "5005"
    assert checksum_piece("27120.00000") == "2712000000"
    assert checksum_piece("0.00000500") == "500"


@pytest.mark.parametrize(
    ("text", "zero"),
    [("0.00000000", True), ("0", True), ("0E-8", True), ("0.00000001", False), ("10.0", False)],
)
def test_is_zero(text: str, zero: bool) -> None:
    assert is_zero(text) is zero


def test_two_dict_update_applies_asks_then_bids() -> None:
    book = Book(10)
    book.apply_snapshot([level("10.0"), level("11.0")], [level("9.0"), level("8.0")])
    book.apply_levels([(False, level("10.5")), (True, level("9.5")), (True, level("9.0", "0.0"))])
    assert book.top_asks(3) == [("10.0", VOL), ("10.5", VOL), ("11.0", VOL)]
    assert book.top_bids(3) == [("9.5", VOL), ("8.0", VOL)]


def test_two_dict_frame_through_feed() -> None:
    feed = BookFeed()
    trusted = Book(10)
    trusted.apply_snapshot([level("10.0")], [level("9.0")])
    feed_frames(feed, [snapshot([level("10.0")], [level("9.0")])])
    trusted.apply_update([level("10.5")], [level("9.5")])
    text = (
        '[336,{"a":[["10.5","0.00000500","1.0"]]},'
        f'{{"b":[["9.5","0.00000500","1.0"]],"c":"{trusted.checksum()}"}},"book-10","XBT/USD"]'
    )
    assert feed_frames(feed, [text]) == [Outcome.UPDATE_OK]


def test_repeated_price_last_wins() -> None:
    book = Book(10)
    book.apply_snapshot([level("0.01300")], [level("0.01000", "1.0")])
    book.apply_update([], [level("0.01000", "60583.48958963"), level("0.01000", "63083.48958963")])
    assert book.top_bids(1) == [("0.01000", "63083.48958963")]


def test_shallow_side_checksum_uses_fewer_levels() -> None:
    book = Book(10)
    asks = [level(f"1.{i}0") for i in range(1, 9)]
    bids = [level("0.90")]
    book.apply_snapshot(asks, bids)
    expected = "".join(checksum_piece(a[0]) + checksum_piece(a[1]) for a in asks)
    expected += checksum_piece("0.90") + checksum_piece(VOL)
    assert book.checksum() == zlib.crc32(expected.encode())


def test_delete_of_unknown_price_is_noop() -> None:
    book = Book(10)
    book.apply_snapshot([level("10.0")], [level("9.0")])
    before = book.checksum()
    book.apply_update([level("12.0", "0.00000000")], [])
    assert book.checksum() == before
    assert book.top_asks(5) == [("10.0", VOL)]


def test_republished_level_refills_window_and_truncation_pushes_out() -> None:
    book = Book(10)
    asks = [level(f"{100 + i}.0") for i in range(10)]
    book.apply_snapshot(asks, [level("99.0")])
    # Insert at the top: the 10th level leaves the window with no delete sent.
    book.apply_update([level("99.5")], [])
    assert [p for p, _ in book.top_asks(20)][-1] == "108.0"
    assert len(book.top_asks(20)) == 10
    # Delete inside the window, then Kraken republishes the level that re-enters it.
    book.apply_update([level("100.0", "0.00000000"), level("109.0", "2.0", "r")], [])
    assert [p for p, _ in book.top_asks(20)] == ["99.5"] + [f"{100 + i}.0" for i in range(1, 10)]


@pytest.mark.parametrize(
    ("low", "high"),
    [("0.074602700", "0.074602701"), ("0.000000000001", "0.000000000002")],
)
def test_many_decimals_order_exactly(low: str, high: str) -> None:
    book = Book(10)
    book.apply_snapshot([level(high), level(low)], [])
    assert [p for p, _ in book.top_asks(2)] == [low, high]


def test_mixed_decimal_widths_are_one_key() -> None:
    book = Book(10)
    book.apply_snapshot([level("1.5"), level("1.25")], [])
    book.apply_update([level("1.50", "0.0")], [])
    assert book.top_asks(5) == [("1.25", VOL)]


@pytest.mark.parametrize(
    ("high", "whole", "low"), [("27121.00000", "27120", "27119.00000"), ("8.5", "7", "6.5")]
)
def test_a_whole_price_as_long_as_the_scale_is_keyed_by_value(
    high: str, whole: str, low: str
) -> None:
    """A price without a dot whose length equals the book's number of decimals was once read as
    digits with a dot at position -1 ("27120" at 5 decimals became 2712.27120)."""
    book = Book(10)
    book.apply_snapshot([], [level(high), level(low)])
    book.apply_update([], [level(whole)])
    assert [p for p, _ in book.top_bids(3)] == [high, whole, low]


def test_seventeen_digit_volume_kept_as_text() -> None:
    book = Book(10)
    book.apply_snapshot([level("0.000100000000", "301727260.79999999")], [])
    assert book.top_asks(1) == [("0.000100000000", "301727260.79999999")]
    assert book.checksum() == zlib.crc32(b"100000000" + b"30172726079999999")


def test_failed_checksum_invalidates_until_snapshot() -> None:
    feed = BookFeed()
    feed_frames(feed, [snapshot([level("10.0")], [level("9.0")])])
    bad = '[336,{"a":[["10.0","1.0","1"]],"c":"1"},"book-10","XBT/USD"]'
    after = '[336,{"a":[["10.0","2.0","1"]],"c":"1"},"book-10","XBT/USD"]'
    assert feed_frames(feed, [bad, after]) == [Outcome.CHECKSUM_FAILED, Outcome.DROPPED]
    assert not feed.books[("XBT/USD", "book-10")].valid
    assert feed_frames(feed, [snapshot([level("10.0")], [level("9.0")])]) == [Outcome.SNAPSHOT]
    assert feed.books[("XBT/USD", "book-10")].valid


def test_update_before_snapshot_is_dropped() -> None:
    feed = BookFeed()
    text = '[336,{"a":[["10.0","1.0","1"]],"c":"1"},"book-10","XBT/USD"]'
    assert feed_frames(feed, [text]) == [Outcome.DROPPED]


def test_new_connection_voids_books() -> None:
    feed = BookFeed()
    status = '{"connectionID":%d,"event":"systemStatus","status":"online","version":"1.9.1"}'
    feed_frames(feed, [status % 1, snapshot([level("10.0")], [level("9.0")])])
    assert feed.books[("XBT/USD", "book-10")].valid
    feed_frames(feed, [status % 18446744073709551615])
    assert not feed.books[("XBT/USD", "book-10")].valid


def test_other_channels_and_garbage_are_counted() -> None:
    feed = BookFeed()
    assert feed.on_message([1, {"c": "1"}, "ticker", "XBT/USD"], 1) == Outcome.OTHER_CHANNEL
    assert feed.on_message([1, "x", "book-10", "XBT/USD"], 1) == Outcome.MALFORMED
    assert feed.on_message("nonsense", 1) == Outcome.MALFORMED
    assert feed.on_message([1, {"as": [["abc", "1"]]}, "book-10", "X/Y"], 1) == Outcome.MALFORMED
    assert feed.other_channel_frames == 1
    assert feed.malformed_frames == 3


# -- property test: the builder against a deliberately naive model --------------------------------


class NaiveBook:
    """Straight from the spec: dicts keyed by Decimal, sorted on every read."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.bids: dict[Decimal, tuple[str, str]] = {}

    def apply(self, asks: list[list[str]], bids: list[list[str]]) -> None:
        for side, levels in ((self.asks, asks), (self.bids, bids)):
            for price, volume, *_ in levels:
                if Decimal(volume) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = (price, volume)
        for side, reverse in ((self.asks, False), (self.bids, True)):
            for price in sorted(side, reverse=reverse)[self.depth :]:
                del side[price]

    def top(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        asks = [self.asks[p] for p in sorted(self.asks)]
        bids = [self.bids[p] for p in sorted(self.bids, reverse=True)]
        return asks, bids

    def checksum(self) -> int:
        asks, bids = self.top()
        text = "".join(checksum_piece(p) + checksum_piece(v) for p, v in asks[:10] + bids[:10])
        return zlib.crc32(text.encode())


prices = st.integers(min_value=1, max_value=60).map(lambda n: f"{n / 4:.5f}")
volumes = st.sampled_from(["0.00000000", "0.00000000", "1.00000000", "0.50000000", "12.34567890"])
levels_st = st.lists(st.tuples(prices, volumes).map(lambda pv: [pv[0], pv[1], "1.0"]), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    depth=st.sampled_from([10, 25]),
    start=st.tuples(levels_st, levels_st),
    updates=st.lists(st.tuples(levels_st, levels_st), max_size=40),
)
def test_builder_matches_naive_model(
    depth: int,
    start: tuple[list[list[str]], list[list[str]]],
    updates: list[tuple[list[list[str]], list[list[str]]]],
) -> None:
    book, naive = Book(depth), NaiveBook(depth)
    snap_asks = [lv for lv in start[0] if Decimal(lv[1]) != 0]
    snap_bids = [lv for lv in start[1] if Decimal(lv[1]) != 0]
    book.apply_snapshot(snap_asks, snap_bids)
    naive.apply(snap_asks, snap_bids)
    for asks, bids in updates:
        book.apply_update(asks, bids)
        naive.apply(asks, bids)
        assert (book.top_asks(1000), book.top_bids(1000)) == naive.top()
        assert book.checksum() == naive.checksum()


def test_checkpoint_then_status_change_keeps_the_book() -> None:
    """A segment starting from a checkpoint has not seen its connection's id: a later
    ``systemStatus`` of the same connection (a status change) must not void the book."""
    feed = BookFeed()
    feed.on_meta(
        {
            "type": "checkpoint",
            "pair": "XBT/USD",
            "channel": "book-10",
            "asks": [level("10.0")],
            "bids": [level("9.0")],
        },
        1,
    )
    status = '{"connectionID":%d,"event":"systemStatus","status":"%s","version":"1.9.1"}'
    feed_frames(feed, [status % (7, "maintenance")])
    assert feed.books[("XBT/USD", "book-10")].valid
    feed_frames(feed, [status % (8, "online")])
    assert not feed.books[("XBT/USD", "book-10")].valid


@pytest.mark.parametrize("depth", [0, 3, 11, 999_999_999])
def test_a_book_is_only_of_a_kraken_depth(depth: int) -> None:
    """The feeds file books of Kraken's depths only, and the book holds them to it: a side is
    never cut shorter than the checksum's 10 levels (the native core relies on that too)."""
    with pytest.raises(ValueError, match=f"depth {depth} is not one Kraken offers"):
        Book(depth)
