"""The fast book path (``Book.apply_side``, ``kbook.lines.LineFeed``) against naive references.

Replay applies nearly every frame through ``LineFeed.run`` straight from the segment line, and
``BookFeed.on_message`` handles the rest; both must leave exactly the books and counts the rules
give. The references here are deliberately naive (dicts keyed by ``Decimal``, ``sorted()`` on every
read) and share no code with ``kbook.book``.
"""

from __future__ import annotations

import dataclasses
import zlib
from decimal import Decimal

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from perf_support import general

from kbook.book import CHECKSUM_LEVELS, Book, checksum_piece
from kbook.feed import BookFeed, Outcome
from kbook.lines import LineFeed
from kbook.segment import frame_line, meta_line
from kbook.sim import Market


class NaiveBook:
    """Kraken's rules the obvious way: Decimal keys, sorted on every read."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.sides: dict[str, dict[Decimal, tuple[str, str]]] = {"a": {}, "b": {}}

    def apply(self, changes: list[tuple[str, list[str]]]) -> None:
        for side, (price, volume, *_) in changes:
            if Decimal(volume) == 0:
                self.sides[side].pop(Decimal(price), None)
            else:
                self.sides[side][Decimal(price)] = (price, volume)
        for side, reverse in (("a", False), ("b", True)):
            for price in sorted(self.sides[side], reverse=reverse)[self.depth :]:
                del self.sides[side][price]

    def top(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        asks = [self.sides["a"][p] for p in sorted(self.sides["a"])]
        bids = [self.sides["b"][p] for p in sorted(self.sides["b"], reverse=True)]
        return asks, bids

    def checksum(self) -> int:
        asks, bids = self.top()
        levels = asks[:CHECKSUM_LEVELS] + bids[:CHECKSUM_LEVELS]
        return zlib.crc32(
            "".join(checksum_piece(p) + checksum_piece(v) for p, v in levels).encode()
        )


def assert_pieces_in_step(book: Book) -> None:
    """``top`` holds the pieces of the best 10 levels, whatever happened before."""
    for side in (book.asks, book.bids):
        expected = [
            checksum_piece(side.levels[key][0]) + checksum_piece(side.levels[key][1])
            for key in side.keys[:CHECKSUM_LEVELS]
        ]
        assert side.top == expected


def changes_of(msg: list) -> list[tuple[str, list[str]]]:
    payloads = msg[1:-2]
    if "as" in payloads[0]:
        return [("a", lv) for lv in payloads[0]["as"]] + [("b", lv) for lv in payloads[0]["bs"]]
    return [(side, lv) for p in payloads for side in ("a", "b") for lv in p.get(side, ())]


@pytest.mark.slow
@pytest.mark.parametrize(("depth", "seed"), [(10, 1), (25, 2), (100, 3), (1000, 4)])
def test_line_feed_matches_naive_book_on_a_simulated_market(depth: int, seed: int) -> None:
    market = Market("XDG/USD", depth, seed, clock=lambda: 1_700_000_000.0)
    texts = [market.snapshot_frame(7)] + [market.update_frame(7) for _ in range(1_500)]
    lines = [frame_line(1_000 + i, i, text, True) for i, text in enumerate(texts)]
    feed = BookFeed()
    fast = LineFeed(feed)
    route = fast.follow("XDG/USD", f"book-{depth}")
    naive = NaiveBook(depth)
    handed_back = 0
    for line, text in zip(lines, texts, strict=True):
        msg = orjson.loads(text)
        naive.apply(changes_of(msg))
        if fast.run([line], 0) == 0:  # not applied: the caller's general path
            handed_back += 1
            record = orjson.loads(line)
            fast.clock = max(fast.clock, record["recv_ns"])
            assert feed.on_message(record["msg"], fast.clock) == Outcome.SNAPSHOT
            route.book = feed.books[route.key]
        book = route.book
        assert book is not None
        assert book.checksum() == naive.checksum()
        assert_pieces_in_step(book)
    assert handed_back == 1  # the snapshot
    stats = feed.stats["XDG/USD"]
    assert (stats.checksums_ok, stats.checksums_failed, stats.updates) == (1_500, 0, 1_500)
    assert (book.top_asks(depth), book.top_bids(depth)) == naive.top() == market.window()


prices = st.tuples(st.integers(1, 40), st.sampled_from([1, 2, 5, 9])).map(
    lambda nd: f"{nd[0] / 4:.{nd[1]}f}"
)
volumes = st.sampled_from(
    ["0.00000000", "0", "0E-8", "0.0e3", "1E-8", "0.50000000", "12.34567890", "3", "0.00000500"]
)
levels_st = st.lists(st.tuples(prices, volumes).map(lambda pv: [pv[0], pv[1], "1.0"]), max_size=8)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(
    depth=st.sampled_from([10, 25]),
    start=st.tuples(levels_st, levels_st),
    updates=st.lists(st.lists(st.tuples(st.sampled_from("ab"), levels_st)), max_size=30),
)
def test_book_matches_naive_model_with_odd_numbers(
    depth: int,
    start: tuple[list[list[str]], list[list[str]]],
    updates: list[list[tuple[str, list[list[str]]]]],
) -> None:
    """Mixed decimal widths (the scale widens, the price memo resets), exponent volumes (the
    exact zero test), Kraken's smallest depths (10: the checksum's levels exactly), dicts in any
    order."""
    book, naive = Book(depth), NaiveBook(depth)
    snap_asks = [lv for lv in start[0] if Decimal(lv[1]) != 0]
    snap_bids = [lv for lv in start[1] if Decimal(lv[1]) != 0]
    book.apply_snapshot(snap_asks, snap_bids)
    naive.apply([("a", lv) for lv in snap_asks] + [("b", lv) for lv in snap_bids])
    for message in updates:
        for side, levels in message:
            book.apply_side(book.asks if side == "a" else book.bids, levels)
        book.truncate()
        naive.apply([(side, lv) for side, levels in message for lv in levels])
        assert (book.top_asks(1000), book.top_bids(1000)) == naive.top()
        assert book.checksum() == naive.checksum()
        assert_pieces_in_step(book)


def test_line_feed_hands_back_exactly_what_it_cannot_apply() -> None:
    """Odd lines through ``LineFeed`` plus the general path leave the same feed as
    ``on_message`` alone: same books, same counts, line for line."""
    market = Market("XBT/USD", 10, 5, clock=lambda: 1_700_000_000.0)
    snap = [market.snapshot_frame(1)]  # snap[k]: the book after k updates
    good = [""]  # good[k]: update number k
    for _ in range(9):
        good.append(market.update_frame(1))
        snap.append(market.snapshot_frame(1))
    market_at_7 = Market("XBT/USD", 10, 5, clock=lambda: 1_700_000_000.0)
    for _ in range(7):
        market_at_7.update_frame(1)
    asks, bids = market_at_7.window()
    checkpoint = {"type": "checkpoint", "pair": "XBT/USD", "channel": "book-10"}
    texts: list[str | bytes] = [
        good[1],  # before any snapshot: dropped
        snap[0],
        good[1],
        '[1,{"a":null,"c":"1"},"book-10","XBT/USD"]',  # a null side: malformed
        snap[1],
        good[2],
        '[1,{"a":[["27000.00000","1.0","1"]]},"book-10","XBT/USD"]',  # no checksum
        snap[2],
        good[3],
        '[1,{"a":[]},{"b":[]},{"c":"1"},"book-10","XBT/USD"]',  # three dicts
        '[1,["a"],"book-10","XBT/USD"]',  # payload not an object
        snap[3],
        good[4],
        '[1,{"a":[["1.00000",5,"1"]],"c":"1"},"book-10","XBT/USD"]',  # volume not text
        snap[4],
        good[5],
        '[1,{"b":[],"c":"not a number"},"book-10","XBT/USD"]',
        snap[5],
        good[6],
        '[1,{"b":[],"c":"12345"},"book-10","XBT/USD"]',  # wrong checksum
        good[7],  # dropped: the book is invalid
        meta_line(30, {**checkpoint, "asks": asks, "bids": bids}),
        good[8],
        '[1,{"b":[],"c":"1"},"book-25","XBT/USD"]',  # another channel of the pair
        '[1,{"b":[],"c":"1"},"book-10","ETH/USD"]',  # a pair not followed
        '{"event":"heartbeat"}',
        b'{"recv_ns":7,"msg":[1,2',
        b'{"recv_ns":"7","msg":[]}',
        b'{"recv_ns":7.5,"msg":[]}',
        b"[1,2]",
        b"",
        good[9],
    ]
    lines = [
        t if isinstance(t, bytes) else frame_line(10 + i, i, t, True) for i, t in enumerate(texts)
    ]

    plain = BookFeed()
    clock = -1
    for line in lines:
        clock = general(plain, line, clock)

    feed = BookFeed()
    fast = LineFeed(feed)
    route = fast.follow("XBT/USD", "book-10")
    index = fast.run(lines, 0)
    while index < len(lines):
        fast.clock = general(feed, lines[index], fast.clock)
        route.book = feed.books.get(route.key)
        index = fast.run(lines, index + 1)

    assert fast.clock == clock
    assert {k: dataclasses.asdict(v) for k, v in feed.stats.items()} == {
        k: dataclasses.asdict(v) for k, v in plain.stats.items()
    }
    assert (feed.malformed_frames, feed.other_channel_frames) == (
        plain.malformed_frames,
        plain.other_channel_frames,
    )
    for key, book in plain.books.items():
        other = feed.books[key]
        assert (book.valid, book.top_asks(100), book.top_bids(100)) == (
            other.valid,
            other.top_asks(100),
            other.top_bids(100),
        )
    stats = plain.stats["XBT/USD"]  # the line above each count says why
    assert (stats.checksums_ok, stats.checksums_failed, stats.malformed, stats.dropped) == (
        8,
        2,
        4,
        3,
    )


def test_a_malformed_checkpoint_voids_the_book_it_was_replacing() -> None:
    """A checkpoint that fails half way has already cleared the book: it must not stay valid
    (replay's chunk join relies on restores either working or voiding)."""
    market = Market("XBT/USD", 10, 8, clock=lambda: 1_700_000_000.0)
    feed = BookFeed()
    feed.on_message(orjson.loads(market.snapshot_frame(1)), 1)
    checkpoint = {"type": "checkpoint", "pair": "XBT/USD", "channel": "book-10"}
    feed.on_meta({**checkpoint, "asks": [["1.0", "2.0"], ["x"]], "bids": []}, 2)
    assert not feed.books[("XBT/USD", "book-10")].valid
    assert feed.malformed_frames == 1
    assert feed.stats["XBT/USD"].invalid_since == 2
