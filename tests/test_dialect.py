"""The per-API dialects' offline side (``kbook.dialect``): what a recorded frame is, which books it
touches, its levels as exact text, which API a segment holds; once per API, against the frames
the simulator really sends and the segments the recorder really writes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from apis import ApiCase
from record_support import SECOND, Background, fast_config, updates_on

from kbook.api import Api
from kbook.book import Book
from kbook.dialect import BookEntry, BookNamer, Dialect, FrameKind, V2Dialect, segment_dialect
from kbook.errors import FrameError
from kbook.feed import Outcome
from kbook.sim import Simulator
from kbook.sim.dialect import dialect_for as sim_dialect_for
from kbook.v2 import RecordReader, V2BookFeed
from recorder.lock import lock_path
from replay.survey import survey_segment

SENT_KINDS = {
    "status": FrameKind.STATUS,
    "subscription": FrameKind.ANSWER,
    "error": FrameKind.ANSWER,
    "snapshot": FrameKind.SNAPSHOT,
    "update": FrameKind.UPDATE,
    "heartbeat": FrameKind.CONTROL,
    "pong": FrameKind.CONTROL,
}
"""The simulator's own label of each frame it sent (``SentFrame.kind``), as a dialect names it."""


def test_every_frame_the_simulator_sends_is_classified_and_its_books_verify(case: ApiCase) -> None:
    dialect = case.dialect
    config = case.sim_config(pairs=("XBT/USD", "ETH/USD"), rate=2_000, heartbeat_interval=0.05)
    with Simulator(config) as sim, case.client(sim.url) as client:
        sim.faults.rate_limit_next_subscribe()
        client.send(dialect.subscribe([case.btc_wire, "FOO/BAR"], 10, 1))  # rate limited
        client.send(dialect.subscribe([case.btc_wire, "FOO/BAR"], 10, 2))  # FOO/BAR refused
        client.read_updates(300)
        sim.faults.bad_checksum_at(5)
        client.read_updates(20)
        client.send(dialect.ping(3))
        sim.wait_for(lambda s: s.count("pong") == 1 and s.count("heartbeat") >= 1, timeout=10)
    sent = sim.sent
    assert {frame.kind for frame in sent} == set(SENT_KINDS)
    books: dict[str, Book] = {}
    verified = failed = 0
    for frame in sent:
        msg = dialect.decode_line(frame.text)
        kind = dialect.kind(msg)
        assert kind is SENT_KINDS[frame.kind], frame.text
        if kind is FrameKind.STATUS:
            assert type(dialect.connection_id(msg)) is int
            continue
        assert dialect.connection_id(msg) is None
        if kind not in (FrameKind.SNAPSHOT, FrameKind.UPDATE):
            assert dialect.books(msg, {}, 10) == []
            continue
        # The levels as exact text rebuild the simulator's book, checksum after checksum.
        [entry] = dialect.entries(msg)
        assert dialect.books(msg, {}, 10) == [(entry.pair, "book-10")]
        assert entry.pair in (case.btc_wire, "ETH/USD")
        assert entry.channel == ("book-10" if case.api is Api.V1 else None)
        if entry.snapshot:
            book = books[entry.pair] = Book(10)
            book.apply_snapshot(entry.asks, entry.bids)
        else:
            book = books[entry.pair]
            book.apply_update(entry.asks, entry.bids)
        if entry.checksum is not None:
            if book.verify(entry.checksum):
                verified += 1
            else:
                failed += 1
    assert failed == 1  # the fault
    assert verified >= 300
    for pair, book in books.items():
        asks, bids = sim.book(pair)
        assert book.top_asks(10) == asks
        assert book.top_bids(10) == bids


def test_levels_keep_their_exact_text() -> None:
    v1 = Dialect()
    frame = (
        '[1,{"a":[["5541.30000","2.50700000","1534614248.456738"]]},'
        '{"b":[["5541.20000","0.00000000","1534614248.456738","r"]],"c":"974942666"},'
        '"book-10","XBT/USD"]'
    )
    [entry] = v1.entries(v1.decode_line(frame))
    assert entry == BookEntry(
        "XBT/USD", False, [("5541.30000", "2.50700000")], [("5541.20000", "0.00000000")],
        974942666, "book-10",
    )  # fmt: skip
    v2 = V2Dialect()
    frame = (
        '{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":'
        '[{"price":45283.50000,"qty":0E-8}],"asks":[{"price":45285.1,"qty":1.10000000}],'
        '"checksum":3310070434,"timestamp":"2023-10-06T17:35:55.440295Z"}]}'
    )
    msg = v2.decode_line(frame)
    [entry] = v2.entries(msg)
    assert entry == BookEntry(
        "BTC/USD", False, [("45285.1", "1.10000000")], [("45283.50000", "0E-8")], 3310070434
    )
    # The same frame read as floats has lost the text the checksum needs: refused, not guessed.
    with pytest.raises(FrameError, match="decoded as floats"):
        v2.entries(orjson.loads(frame))
    with pytest.raises(FrameError, match="does not print its numbers as text"):
        v1.entries([1, {"a": [[5541.3, "2.5", "1.0"]]}, "book-10", "XBT/USD"])


@pytest.mark.parametrize("api", list(Api))
def test_the_simulators_malformed_update_is_a_book_frame_whose_levels_are_refused(
    api: Api,
) -> None:
    dialect = {Api.V1: Dialect(), Api.V2: V2Dialect()}[api]
    text = sim_dialect_for(api).malformed_update("XBT/USD", 10, 7)
    msg = dialect.decode_line(text)
    assert dialect.kind(msg) is FrameKind.UPDATE
    with pytest.raises(FrameError):
        dialect.entries(msg)


def test_v2_depth_follows_answers_checkpoints_and_the_configured_depth() -> None:
    namer = BookNamer(V2Dialect())
    update = {"channel": "book", "type": "update", "data": [{"symbol": "BTC/USD", "bids": []}]}
    snapshot = {
        "channel": "book",
        "type": "snapshot",
        "data": [{"symbol": "ETH/USD", "bids": [{"price": "1", "qty": "1"}] * 11, "asks": []}],
    }
    assert namer.on_frame(update) == []  # nothing says its depth yet
    assert namer.on_frame(snapshot) == [("ETH/USD", "book-25")]  # the smallest that holds it
    namer.on_meta({"type": "session_start", "config": {"depth": 100}})
    assert namer.on_frame(update) == [("BTC/USD", "book-100")]
    namer.on_meta({"type": "checkpoint", "pair": "BTC/USD", "channel": "book-500"})
    assert namer.on_frame(update) == [("BTC/USD", "book-500")]
    answer = {
        "method": "subscribe",
        "result": {"channel": "book", "depth": 1000, "symbol": "BTC/USD"},
        "success": True,
    }
    assert namer.on_frame(answer) == []
    assert namer.on_frame(update) == [("BTC/USD", "book-1000")]
    v1 = BookNamer(Dialect())
    assert v1.on_frame([1, {"a": []}, "book-25", "XBT/USD"]) == [("XBT/USD", "book-25")]
    assert v1.on_frame({"event": "heartbeat"}) == []


def test_v2_depths_of_no_kraken_book_name_no_book_as_the_feed_files_none() -> None:
    """A session's ``--depth``, an answer or a checkpoint saying a depth Kraken does not serve
    sets none; after such an answer the namer names no book of the symbol, exactly as the feed
    files none (its snapshot malformed, its updates dropped), until a Kraken depth is said."""
    namer, feed = BookNamer(V2Dialect()), V2BookFeed()
    entry = {"symbol": "BTC/USD", "bids": [{"price": "1", "qty": "1"}], "asks": []}
    snapshot = {"channel": "book", "type": "snapshot", "data": [entry]}
    update = {"channel": "book", "type": "update", "data": [{**entry, "checksum": 0}]}

    def answer(depth: object) -> dict[str, object]:
        result = {"channel": "book", "depth": depth, "symbol": "BTC/USD"}
        return {"method": "subscribe", "result": result, "success": True}

    namer.on_meta({"type": "session_start", "config": {"depth": 3}})
    namer.on_meta({"type": "checkpoint", "pair": "BTC/USD", "channel": "book-3"})
    assert namer.on_frame(update) == []  # neither said a depth
    for depth in (3, 11, 0, 10**30, "10", None):
        assert namer.on_frame(answer(depth)) == []
        assert feed.on_message(answer(depth), 1) is Outcome.MALFORMED
        assert namer.on_frame(snapshot) == namer.on_frame(update) == []
        assert feed.on_message(snapshot, 2) is Outcome.MALFORMED
        assert feed.on_message(update, 3) is Outcome.DROPPED
        assert feed.books == {}
    namer.on_meta({"type": "checkpoint", "pair": "BTC/USD", "channel": "book-25"})
    assert namer.on_frame(snapshot) == [("BTC/USD", "book-25")]
    assert namer.on_frame(answer(10)) == []
    assert namer.on_frame(snapshot) == [("BTC/USD", "book-10")]
    assert feed.on_message(answer(10), 4) is Outcome.CONTROL
    assert feed.on_message(snapshot, 5) is Outcome.SNAPSHOT
    assert list(feed.books) == [("BTC/USD", "book-10")]


def test_recorded_segments_name_their_dialect_and_books_as_the_survey_does(
    case: ApiCase, tmp_path: Path
) -> None:
    config = case.sim_config(pairs=("XBT/USD", "ETH/USD"), rate=300.0, seed=5)
    with Simulator(config) as sim:
        pairs = ("BTC/USD", "ETH/USD")
        with Background(fast_config(sim, tmp_path, pairs, depth=25, rotate_ns=SECOND)) as run:
            sim.wait_for(lambda s: updates_on(s, 1) >= 50, timeout=10)
            sim.faults.drop_after(5)
            sim.wait_for(lambda s: updates_on(s, 2) >= 50, timeout=10)
            sim.wait_for(lambda s: len(list(tmp_path.rglob("*.jsonl.zst"))) >= 4, timeout=10)
            run.finish()
    segments = sorted(tmp_path.rglob("*.jsonl.zst"))
    assert len(segments) >= 4
    named: set[tuple[str, str]] = set()
    for path in segments:
        dialect = segment_dialect(path)
        assert dialect.api is case.api
        books = BookNamer(dialect).on_records(RecordReader(path, dialect.api))
        assert books == survey_segment(path).books
        named |= books  # a segment rotated just before the stop may hold heartbeats only
    assert named == {(case.btc_wire, "book-25"), ("ETH/USD", "book-25")}


def test_names_that_tell_the_apis_apart() -> None:
    # watch --from still spells the v2 tag itself: the dialect's must match (verify names a pair
    # by its common name under both APIs, with each API's counts apart).
    assert (Dialect().tag, V2Dialect().tag) == ("", " (v2)")
    out = Path("data")
    assert lock_path(out, ("BTC/USD",), Api.V1) == out / ".kbook-record.BTC-USD.lock"
    assert lock_path(out, ("BTC/USD",), Api.V2) == out / ".kbook-record.v2.BTC-USD.lock"
    assert lock_path(out, ("BTC/USD",), None) == lock_path(out, ("BTC/USD",), Api.V2)


FRAMES = {
    Api.V1: {
        "status": {"event": "systemStatus", "connectionID": 1, "status": "online"},
        "answer": {"event": "subscriptionStatus", "pair": "XBT/USD", "status": "subscribed"},
        "heartbeat": {"event": "heartbeat"},
        "book": [1, {"a": [["1.0", "2.0", "3.0"]], "c": "1"}, "book-10", "XBT/USD"],
        "trade": [2, [["1.0", "2.0", "3.0", "b", "m", ""]], "trade", "XBT/USD"],
        "nameless": [1, {"a": []}, "book-10", 7],
        "no Kraken depth": [1, {"a": []}, "book-999999999", "XBT/USD"],
        "NUL pair": [1, {"a": []}, "book-10", "XBT/\x00"],
    },
    Api.V2: {
        "status": {"channel": "status", "type": "update", "data": [{"connection_id": 1}]},
        "answer": {"method": "subscribe", "success": True, "result": {"channel": "book"}},
        "heartbeat": {"channel": "heartbeat"},
        "book": {"channel": "book", "type": "update", "data": [{"symbol": "BTC/USD"}]},
        "trade": {"channel": "trade", "type": "update", "data": [{"symbol": "BTC/USD"}]},
        "nameless": {"channel": "book", "type": "update", "data": [{"bids": []}]},
        "NUL pair": {"channel": "book", "type": "update", "data": [{"symbol": "BTC/\x00"}]},
    },
}
"""Per API, a frame of each shape replay tells apart (``replay.engine``)."""


def test_replay_asks_the_dialect_which_frames_void_books_and_which_no_feed_files(
    case: ApiCase,
) -> None:
    """The questions replay's one loop asks of a frame, answered alike for both APIs: only a
    status frame or an (un)subscribe answer may void books (the feed acts on no other), and a
    book frame naming no usable pair (or, in v1, no Kraken depth) is malformed, while another
    channel's data is merely not followed."""
    dialect = case.dialect
    frames = FRAMES[case.api]
    assert {name for name, msg in frames.items() if dialect.voids_books(msg)} == {
        "status",
        "answer",
    }
    books = {name for name, msg in frames.items() if dialect.is_book(msg)}
    assert {"book", "nameless", "NUL pair"} <= books
    assert "status" not in books
    unfiled = {name for name in books if dialect.unfiled(frames[name])}
    assert unfiled == {"nameless", "NUL pair", "no Kraken depth"} & frames.keys()
