"""Kraken v2 book frames: Kraken's official vector, the real v2 capture, and why floats fail."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from kbook.book import Book
from kbook.errors import FrameError
from kbook.feed import Outcome
from kbook.v2 import V2BookFeed, _levels, decode, frame_api

OFFICIAL_BIDS = [
    ("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"),
    ("45281.0", "0.10000000"), ("45280.3", "1.54592586"), ("45279.0", "0.07990000"),
    ("45277.6", "0.03310103"), ("45277.5", "0.30000000"), ("45277.3", "1.54602737"),
    ("45276.6", "0.15445238"),
]  # fmt: skip
OFFICIAL_ASKS = [
    ("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"),
    ("45289.6", "1.54560911"), ("45290.2", "0.15890660"), ("45291.8", "1.54553491"),
    ("45294.7", "0.04454749"), ("45296.1", "0.35380000"), ("45297.5", "0.09945542"),
    ("45299.5", "0.18772827"),
]  # fmt: skip


def book_frame(kind: str, symbol: str, asks: list, bids: list, checksum: int) -> str:
    """A v2 book frame whose numbers are printed exactly as the given texts."""

    def side(levels: list) -> str:
        return ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels)

    return (
        f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}",'
        f'"bids":[{side(bids)}],"asks":[{side(asks)}],"checksum":{checksum}}}]}}'
    )


def test_official_vector() -> None:
    feed = V2BookFeed()
    frame = book_frame("snapshot", "BTC/USD", OFFICIAL_ASKS, OFFICIAL_BIDS, 3310070434)
    assert feed.on_message(decode(frame), 1) == Outcome.SNAPSHOT
    assert feed.stats["BTC/USD"].checksums_ok == 1
    assert feed.books[("BTC/USD", "book-10")].checksum() == 3310070434


def test_wrong_snapshot_checksum_fails() -> None:
    feed = V2BookFeed()
    frame = book_frame("snapshot", "BTC/USD", OFFICIAL_ASKS, OFFICIAL_BIDS, 3310070435)
    assert feed.on_message(decode(frame), 1) == Outcome.CHECKSUM_FAILED
    update = book_frame("update", "BTC/USD", [], [("45283.5", "0E-8")], 1)
    assert feed.on_message(decode(update), 2) == Outcome.DROPPED


def test_exponent_zero_deletes() -> None:
    feed = V2BookFeed()
    feed.on_message(
        decode(book_frame("snapshot", "BTC/USD", OFFICIAL_ASKS, OFFICIAL_BIDS, 3310070434)), 1
    )
    book = feed.books[("BTC/USD", "book-10")]
    after = list(OFFICIAL_BIDS[1:])
    reference = Book(10)
    reference.apply_snapshot(OFFICIAL_ASKS, after)
    update = book_frame("update", "BTC/USD", [], [("45283.5", "0E-8")], reference.checksum())
    assert feed.on_message(decode(update), 2) == Outcome.UPDATE_OK
    assert book.top_bids(1) == [("45283.4", "1.54582015")]


def capture_frames(captures_dir: Path) -> list[str]:
    """The v2 capture with its numbers re-printed at BTC/USD precision (its file lost the zeros)."""
    meta = json.loads((captures_dir / "orderbook-v2.json.meta.json").read_text())
    precision = meta["v2_precision"]["BTC/USD"]
    document = json.loads((captures_dir / "orderbook-v2.json").read_text())
    frames = []
    for message in [document["init"], *document["updates"]]:
        entry = message["data"][0]

        def side(levels: list, p: int = precision["price"], q: int = precision["qty"]) -> list:
            return [(f"{lv['price']:.{p}f}", f"{lv['qty']:.{q}f}") for lv in levels]

        frames.append(
            book_frame(
                message["type"],
                entry["symbol"],
                side(entry["asks"]),
                side(entry["bids"]),
                entry["checksum"],
            )
        )
    return frames


def test_real_v2_capture_verifies_510_of_510(captures_dir: Path) -> None:
    feed = V2BookFeed()
    outcomes = [
        feed.on_message(decode(frame), i) for i, frame in enumerate(capture_frames(captures_dir))
    ]
    assert len(outcomes) == 510
    assert outcomes.count(Outcome.CHECKSUM_FAILED) == 0
    assert feed.stats["BTC/USD"].checksums_ok == 510


def test_float_parsing_fails_where_lexemes_pass(captures_dir: Path) -> None:
    """The path a float parser takes: numbers re-printed by ``str(float)`` lose trailing zeros."""
    frames = capture_frames(captures_dir)
    feed = V2BookFeed()
    failures = 0
    for i, frame in enumerate(frames):
        as_floats = orjson.loads(frame)
        for entry in as_floats["data"]:
            for side in ("asks", "bids"):
                entry[side] = [
                    {"price": repr(lv["price"]), "qty": repr(lv["qty"])} for lv in entry[side]
                ]
        if feed.on_message(as_floats, i) == Outcome.CHECKSUM_FAILED:
            failures += 1
    assert failures >= 1
    assert feed.stats["BTC/USD"].checksums_ok < 510


def test_raw_floats_are_refused() -> None:
    feed = V2BookFeed()
    frame = book_frame("snapshot", "BTC/USD", OFFICIAL_ASKS, OFFICIAL_BIDS, 3310070434)
    assert feed.on_message(orjson.loads(frame), 1) == Outcome.MALFORMED
    with pytest.raises(FrameError, match="floats"):
        _levels([{"price": 1.5, "qty": 2.0}])


def test_depth_from_ack_and_connection_change() -> None:
    feed = V2BookFeed()
    ack = (
        '{"method":"subscribe","result":{"channel":"book","depth":25,"snapshot":true,'
        '"symbol":"BTC/USD"},"success":true}'
    )
    status = (
        '{"channel":"status","type":"update","data":[{"api_version":"v2",'
        '"connection_id":%d,"system":"online","version":"2.0.0"}]}'
    )
    feed.on_message(decode(status % 1), 0)
    feed.on_message(decode(ack), 1)
    feed.on_message(
        decode(book_frame("snapshot", "BTC/USD", OFFICIAL_ASKS, OFFICIAL_BIDS, 3310070434)), 2
    )
    assert ("BTC/USD", "book-25") in feed.books
    feed.on_message(decode(status % 2), 3)
    assert not feed.books[("BTC/USD", "book-25")].valid
    assert feed.on_message(decode('{"channel":"heartbeat"}'), 4) == Outcome.CONTROL
    assert (
        feed.on_message(decode('{"channel":"ticker","type":"update","data":[]}'), 5)
        == Outcome.OTHER_CHANNEL
    )


def test_frame_api() -> None:
    assert frame_api([1, {}, "book-10", "XBT/USD"]) == "v1"
    assert frame_api({"event": "heartbeat"}) == "v1"
    assert frame_api({"channel": "heartbeat"}) == "v2"
    assert frame_api({"method": "pong"}) == "v2"
    assert frame_api("x") is None
