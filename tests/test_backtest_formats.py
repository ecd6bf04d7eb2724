"""Tardis CSV and hftbacktest arrays converted from book deltas (``replay.backtest_formats``).

The deltas here are hand-built tables in the deltas' schema; the checks read the files back
with independent consumers: a naive Tardis reader (a dict per side and Tardis's reset rule),
pandas, and hftbacktest's own validator and ``HashMapMarketDepthBacktest``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbook.errors import InputError
from replay import backtest_formats as bf

S = 1_000_000_000
T0 = 1_800_000_000 * S  # 2027-01-15T08:00:00Z
DAY = "2027-01-15"

Row = tuple[int, int | None, str | None, float | None, float | None, bool, int]
"""``(ts, exch_ts, side, price, size, is_snapshot, seq)``"""


def deltas(rows: list[Row], depth: int = 10) -> pa.Table:
    """A delta table in ``replay.deltas``'s schema."""
    ts, exch, side, price, size, snap, seq = (list(column) for column in zip(*rows, strict=True))
    stamp = pa.timestamp("ns", "UTC")
    return pa.table(
        {
            "ts": pa.array(ts, stamp),
            "exch_ts": pa.array(exch, stamp),
            "side": pa.array(side, pa.string()).dictionary_encode(),
            "price": pa.array(price, pa.float64()),
            "size": pa.array(size, pa.float64()),
            "is_snapshot": pa.array(snap, pa.bool_()),
            "seq": pa.array(seq, pa.int64()),
            "depth": pa.array([depth] * len(rows), pa.int16()),
        }
    )


def reference_books(rows: list[Row]) -> list[tuple[int, dict[str, dict[float, float]]]]:
    """The book after each message, straight from the deltas' documented rules: a snapshot run
    after other rows replaces the book; a row with no side means the book is unknown (empty)."""
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    books = []
    previous_snapshot = False
    for index, (ts, _, side, price, size, snap, seq) in enumerate(rows):
        if side is None:
            book = {"bid": {}, "ask": {}}
        else:
            if snap and not previous_snapshot:
                book = {"bid": {}, "ask": {}}
            assert price is not None
            assert size is not None
            if size == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = size
        previous_snapshot = snap and side is not None
        if index + 1 == len(rows) or rows[index + 1][6] != seq:
            books.append((ts, {name: dict(levels) for name, levels in book.items()}))
    return books


SIMPLE: list[Row] = [
    (T0, T0 - 5, "bid", 100.0, 1.0, True, 1),
    (T0, T0 - 7, "bid", 99.5, 2.0, True, 1),
    (T0, T0 - 3, "ask", 100.5, 1.5, True, 1),
    (T0, None, "ask", 101.0, 3.0, True, 1),
    (T0 + S, T0 + S - 100, "bid", 100.25, 0.5, False, 2),
    (T0 + S, T0 + S - 100, "bid", 99.5, 0.0, False, 2),  # a truncation's explicit delete
    (T0 + 2 * S, None, "ask", 100.5, 0.0, False, 3),
    (T0 + 3 * S, None, None, None, None, False, 4),  # book unknown from here
    (T0 + 4 * S, T0 + 4 * S - 10, "bid", 98.0, 1.0, True, 5),
    (T0 + 4 * S, T0 + 4 * S - 10, "ask", 98.5, 1.0, True, 5),
    (T0 + 5 * S, T0 + 5 * S - 10, "ask", 98.25, 1.0, False, 6),
    (T0 + 5 * S + 7, T0 + 5 * S - 20, "bid", 98.0, 0.0, False, 7),  # exchange time goes back
]


def random_rows(seed: int, messages: int = 400, depth: int = 30) -> list[Row]:
    """A random walk of one book with snapshots, unknown spans and exchange times that are
    sometimes missing or out of order."""
    rng = random.Random(seed)
    rows: list[Row] = []
    seq = 0
    t = T0
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}

    def snapshot() -> None:
        mid = rng.randint(900, 1100)
        book["bid"] = {float(mid - i): float(rng.randint(1, 9)) for i in range(1, depth + 1)}
        book["ask"] = {float(mid + i): float(rng.randint(1, 9)) for i in range(1, depth + 1)}
        for side in ("bid", "ask"):
            for price, size in book[side].items():
                rows.append((t, t - rng.randint(0, 10**9), side, price, size, True, seq))

    snapshot()
    for _ in range(messages):
        seq += 1
        t += rng.randint(0, 3) * 10**8 + rng.randint(0, 999)
        roll = rng.random()
        if roll < 0.02:
            rows.append((t, None, None, None, None, False, seq))
            book = {"bid": {}, "ask": {}}
            seq += 1
            t += S
            snapshot()
            continue
        exch = None if roll < 0.1 else t - rng.randint(0, 5 * 10**8)
        for _ in range(rng.randint(1, 3)):
            side = rng.choice(("bid", "ask"))
            levels = book[side]
            if levels and rng.random() < 0.4:
                price = rng.choice(sorted(levels))
                size = 0.0
                del levels[price]
            else:
                if side == "bid":
                    low = int(min(book["ask"], default=1001.0))
                    price = float(rng.randint(low - 40, low - 1))
                else:
                    high = int(max(book["bid"], default=999.0))
                    price = float(rng.randint(high + 1, high + 40))
                size = float(rng.randint(1, 9))
                levels[price] = size
            rows.append((t, exch, side, price, size, False, seq))
    return rows


# -- Tardis CSV -----------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="ascii", newline="") as file:
        header, *lines = file.read().splitlines()
    names = header.split(",")
    return [dict(zip(names, line.split(","), strict=True)) for line in lines]


def tardis_books(path: Path) -> list[tuple[int, dict[str, dict[float, float]]]]:
    """A naive Tardis consumer: the book after each group of rows of one ``local_timestamp``,
    Tardis's reset rule (a snapshot row after a non-snapshot row discards the book)."""
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    books: list[tuple[int, dict[str, dict[float, float]]]] = []
    previous_snapshot = False
    rows = read_csv(path)
    for index, row in enumerate(rows):
        snap = row["is_snapshot"] == "true"
        if snap and not previous_snapshot:
            book = {"bid": {}, "ask": {}}
        previous_snapshot = snap
        price, amount = float(row["price"]), float(row["amount"])
        if amount == 0:
            book[row["side"]].pop(price, None)
        else:
            book[row["side"]][price] = amount
        if index + 1 == len(rows) or rows[index + 1]["local_timestamp"] != row["local_timestamp"]:
            local = int(row["local_timestamp"])
            books.append((local, {name: dict(levels) for name, levels in book.items()}))
    return books


def by_time(books: list[tuple[int, Any]], unit: int = 1) -> dict[int, Any]:
    """The last book of each time (several messages can share a µs)."""
    return {ts // unit: book for ts, book in books}


def test_tardis_files_have_tardis_columns_and_rebuild_the_book(tmp_path: Path) -> None:
    paths = bf.write_tardis_day(
        bf.BookWalker(), deltas(SIMPLE).to_batches(), "BTC/USD", DAY, tmp_path
    )
    incremental, snapshots = paths
    assert incremental.name == f"kraken_incremental_book_L2_{DAY}_XBT-USD.csv.gz"
    assert snapshots.name == f"kraken_book_snapshot_25_{DAY}_XBT-USD.csv.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    rows = read_csv(incremental)
    assert list(rows[0]) == bf.INCREMENTAL_COLUMNS
    assert {row["exchange"] for row in rows} == {"kraken"}
    assert {row["symbol"] for row in rows} == {"XBT/USD"}
    # µs; a message's exchange time is its latest row's, the receive time where it has none
    assert [(r["timestamp"], r["local_timestamp"]) for r in rows[:1]] == [
        (str((T0 - 3) // 1000), str(T0 // 1000))
    ]
    assert rows[6]["timestamp"] == rows[6]["local_timestamp"] == str((T0 + 2 * S) // 1000)
    # the unknown row became deletes of the three levels held then
    unknown = [r for r in rows if r["local_timestamp"] == str((T0 + 3 * S) // 1000)]
    assert sorted((r["side"], r["price"], r["amount"]) for r in unknown) == [
        ("ask", "101.0", "0.0"),
        ("bid", "100.0", "0.0"),
        ("bid", "100.25", "0.0"),
    ]
    assert by_time(tardis_books(incremental)) == by_time(reference_books(SIMPLE), 1000)


@pytest.mark.parametrize("seed", [1, 2])
def test_tardis_random_books_and_top_25_rows(tmp_path: Path, seed: int) -> None:
    rows = random_rows(seed)
    table = deltas(rows, depth=30)
    incremental, snapshots = bf.write_tardis_day(
        bf.BookWalker(), table.to_batches(max_chunksize=97), "ETH/EUR", DAY, tmp_path
    )
    reference = reference_books(rows)
    assert by_time(tardis_books(incremental)) == by_time(reference, 1000)
    # book_snapshot_25: a row exactly after each message that changed the top 25, which it shows
    expected = []
    last = None
    for ts, book in reference:
        asks = sorted(book["ask"].items())[:25]
        bids = sorted(book["bid"].items(), reverse=True)[:25]
        if (asks, bids) != last:
            last = (asks, bids)
            expected.append((str(ts // 1000), asks, bids))
    got = []
    for row in read_csv(snapshots):
        asks = [
            (float(row[f"asks[{i}].price"]), float(row[f"asks[{i}].amount"]))
            for i in range(25)
            if row[f"asks[{i}].price"]
        ]
        bids = [
            (float(row[f"bids[{i}].price"]), float(row[f"bids[{i}].amount"]))
            for i in range(25)
            if row[f"bids[{i}].price"]
        ]
        got.append((row["local_timestamp"], asks, bids))
    assert got == expected
    assert len(expected) < len(reference)  # changes beyond the top 25 write no row


def test_a_day_that_begins_without_a_snapshot_begins_with_the_carried_book(tmp_path: Path) -> None:
    walker = bf.BookWalker()
    first = [row for row in SIMPLE if row[6] <= 2]
    second = [(T0 + 10 * S, None, "ask", 100.5, 2.0, False, 8)]
    bf.write_tardis_day(walker, deltas(first).to_batches(), "BTC/USD", DAY, tmp_path)
    incremental, _ = bf.write_tardis_day(
        walker, deltas(second).to_batches(), "BTC/USD", "2027-01-16", tmp_path
    )
    rows = read_csv(incremental)
    assert [(r["is_snapshot"], r["side"], r["price"], r["amount"]) for r in rows] == [
        ("true", "bid", "100.25", "0.5"),
        ("true", "bid", "100.0", "1.0"),
        ("true", "ask", "100.5", "1.5"),
        ("true", "ask", "101.0", "3.0"),
        ("false", "ask", "100.5", "2.0"),
    ]
    assert {r["local_timestamp"] for r in rows} == {str((T0 + 10 * S) // 1000)}


def test_numbers_are_written_without_exponents() -> None:
    assert bf._number(1e-05) == "0.00001"
    assert bf._number(1.5e-08) == "0.000000015"
    assert bf._number(12345678901234567.0) == "12345678901234568"
    assert bf._number(0.1) == "0.1"


# -- hftbacktest ----------------------------------------------------------------------------------


@pytest.mark.slow  # importing hftbacktest takes a second or more
def test_event_codes_are_hftbacktest_s() -> None:
    from hftbacktest import types

    assert types.event_dtype == bf.EVENT_DTYPE
    for name in (
        "DEPTH_EVENT",
        "DEPTH_CLEAR_EVENT",
        "DEPTH_SNAPSHOT_EVENT",
        "EXCH_EVENT",
        "LOCAL_EVENT",
        "BUY_EVENT",
        "SELL_EVENT",
    ):
        assert getattr(bf, name) == getattr(types, name), name


def backtest_books(
    path: Path | list[Path], times: list[int], tick: float
) -> list[tuple[float, float]]:
    """Best bid and ask of a real ``HashMapMarketDepthBacktest`` after elapsing to each time
    (the files of ``path`` in order, one day after another)."""
    from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest

    paths = path if isinstance(path, list) else [path]
    asset = (
        BacktestAsset()
        .data([str(one) for one in paths])
        .linear_asset(1.0)
        .constant_order_latency(0, 0)
        .risk_adverse_queue_model()
        .no_partial_fill_exchange()
        .trading_value_fee_model(0.0, 0.0)
        .tick_size(tick)
        .lot_size(1e-8)
    )
    hbt = HashMapMarketDepthBacktest([asset])
    try:
        hbt.elapse(0)
        tops = []
        for t in times:
            if t > hbt.current_timestamp:
                hbt.elapse(t - hbt.current_timestamp)
            depth = hbt.depth(0)
            tops.append((depth.best_bid, depth.best_ask))
        return tops
    finally:
        hbt.close()


def best(book: dict[str, dict[float, float]]) -> tuple[float, float]:
    return (max(book["bid"], default=np.nan), min(book["ask"], default=np.nan))


@pytest.mark.slow  # hftbacktest's backtest compiles with numba for several seconds
@pytest.mark.parametrize(("rows", "tick"), [(SIMPLE, 0.25), (random_rows(3), 1.0)])
def test_hftbacktest_arrays_run_in_a_real_backtest(
    tmp_path: Path, rows: list[Row], tick: float
) -> None:
    from hftbacktest.data import validate_event_order

    path = bf.write_hftbacktest_day(
        bf.BookWalker(), deltas(rows).to_batches(), "BTC/USD", DAY, tmp_path
    )
    assert path.name == f"BTC-USD_{DAY}.npz"
    data = np.load(path)["data"]
    assert data.dtype == bf.EVENT_DTYPE
    validate_event_order(data)
    reference = list(by_time(reference_books(rows)).items())
    got = backtest_books(path, [t for t, _ in reference], tick)
    np.testing.assert_array_equal(got, [best(book) for _, book in reference])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(-5, 25)), min_size=1, max_size=40))
def test_events_are_flagged_in_each_processor_s_time_order(times: list[tuple[int, int]]) -> None:
    """What hftbacktest's ``validate_event_order`` checks, and that no event is lost or
    reordered within a processor's stream."""
    times.sort(key=lambda pair: pair[0])  # receive order
    events = np.zeros(len(times), bf.EVENT_DTYPE)
    events["local_ts"] = [local for local, _ in times]
    events["exch_ts"] = [exch for _, exch in times]
    events["px"] = np.arange(len(times))  # which event it is
    flagged = bf._flag_for_processors(events.copy())
    local = flagged[(flagged["ev"] & bf.LOCAL_EVENT) != 0]
    exch = flagged[(flagged["ev"] & bf.EXCH_EVENT) != 0]
    assert list(local["px"]) == list(range(len(times)))
    assert list(exch["px"]) == list(np.argsort(events["exch_ts"], kind="stable"))
    assert (np.diff(local["local_ts"]) >= 0).all()
    assert (np.diff(exch["exch_ts"]) >= 0).all()
    assert len(flagged) <= 2 * len(times)


@pytest.mark.slow  # hftbacktest's converter compiles with numba for several seconds
def test_tardis_files_load_with_hftbacktest_s_converter(tmp_path: Path) -> None:
    from hftbacktest.data.utils import tardis

    rows = random_rows(4)
    incremental, _ = bf.write_tardis_day(
        bf.BookWalker(), deltas(rows).to_batches(), "BTC/USD", DAY, tmp_path
    )
    converted = tmp_path / "converted.npz"
    with io.StringIO() as chatter, contextlib.redirect_stdout(chatter):  # it prints progress
        tardis.convert([str(incremental)], output_filename=str(converted))
    reference = list(by_time(reference_books(rows), 1000).items())
    got = backtest_books(converted, [t * 1000 for t, _ in reference], 1.0)
    np.testing.assert_array_equal(got, [best(book) for _, book in reference])


def test_convert_deltas_reads_a_dataset_of_several_parts(tmp_path: Path) -> None:
    """Parts of one pair-day are read in ``seq`` order, whatever their names; a damaged part is
    one error naming it."""
    import pyarrow.parquet as pq

    day = tmp_path / "deltas" / "pair=BTC-USD" / f"date={DAY}"
    day.mkdir(parents=True)
    pq.write_table(deltas([row for row in SIMPLE if row[6] >= 5]), day / "part-0.parquet")
    pq.write_table(deltas([row for row in SIMPLE if row[6] < 5]), day / "part-1.parquet")
    (tmp_path / "split").mkdir()
    (tmp_path / "whole").mkdir()
    split = bf.convert_deltas(tmp_path / "deltas", tmp_path / "split", "tardis")
    bf.write_tardis_day(
        bf.BookWalker(), deltas(SIMPLE).to_batches(), "BTC/USD", DAY, tmp_path / "whole"
    )
    for path in split:
        assert read_csv(path) == read_csv(tmp_path / "whole" / path.name)
    (day / "part-1.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"date=2027-01-15: cannot read the deltas"):
        bf.convert_deltas(tmp_path / "deltas", tmp_path / "split", "hftbacktest")
    with pytest.raises(InputError, match="holds no pair=... folders; not a delta dataset"):
        bf.convert_deltas(tmp_path / "split", tmp_path / "whole", "tardis")


def test_a_receive_time_that_goes_back_is_read_as_the_latest(tmp_path: Path) -> None:
    """Where a timeline changes source the next rows may be stamped earlier: they keep their
    place after the rows before them (the unknown row's deletes), stamped with the latest time."""
    rows: list[Row] = [
        (T0, T0, "bid", 100.0, 1.0, True, 1),
        (T0, T0, "ask", 101.0, 1.0, True, 1),
        (T0 + 5 * S, None, None, None, None, False, 2),  # unknown, stamped after a silence
        (T0 + 2 * S, T0 + 2 * S, "bid", 99.0, 1.0, True, 3),  # the other source's book
        (T0 + 2 * S, T0 + 2 * S, "ask", 102.0, 1.0, True, 3),
    ]
    incremental, _ = bf.write_tardis_day(
        bf.BookWalker(), deltas(rows).to_batches(), "BTC/USD", DAY, tmp_path
    )
    written = read_csv(incremental)
    assert [r["local_timestamp"] for r in written] == [str(T0 // 1000)] * 2 + [
        str((T0 + 5 * S) // 1000)
    ] * 4
    assert by_time(tardis_books(incremental))[(T0 + 5 * S) // 1000] == {
        "bid": {99.0: 1.0},
        "ask": {102.0: 1.0},
    }
    events = bf.hftbacktest_events(bf.BookWalker().day(deltas(rows).to_batches()))
    assert (events["ev"] & (bf.EXCH_EVENT | bf.LOCAL_EVENT) != 0).all()
    local = events[(events["ev"] & bf.LOCAL_EVENT) != 0]
    assert list(local["px"][-6:-4]) == [100.0, 101.0]  # the deletes, before the new book
    assert list(local["qty"][-6:-4]) == [0.0, 0.0]
    assert (np.diff(local["local_ts"]) >= 0).all()
