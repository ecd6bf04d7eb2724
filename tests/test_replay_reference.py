"""Replay of the real captures equals an independent reference book, row by row, level by level."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replay_support import (
    SynthMarket,
    assert_rows_match,
    read_records,
    reference_rows,
    write_records,
)

import replay
from kbook.errors import UsageError
from kbook.pairs import common_name
from kbook.units import SECOND

CASES = [
    ("orderbook-v1.json", 10),
    ("KRAKEN.ws.50.0", 10),
    ("XDG-USD_book-10.jsonl", 10),
    ("LUNA-EUR_book-10.jsonl", 10),
    ("GST-EUR_book-10.jsonl", 10),
]


def _books(records: list[dict]) -> set[tuple[str, str]]:
    return {
        (r["msg"][-1], r["msg"][-2])
        for r in records
        if isinstance(r.get("msg"), list) and str(r["msg"][-2]).startswith("book-")
    }


@pytest.mark.parametrize("every", [SECOND, SECOND // 10], ids=["1s", "100ms"])
@pytest.mark.parametrize(("capture", "levels"), CASES)
def test_every_row_equals_the_reference(
    capture_segment: Callable[[str], Path], capture: str, levels: int, every: int
) -> None:
    segment = capture_segment(capture)
    records = read_records(segment)
    table = replay.replay_table(segment, every=every, levels=levels)
    books = _books(records)
    assert set(table.column("pair").unique().to_pylist()) == {common_name(p) for p, _ in books}
    for wire, channel in sorted(books):
        rows = table.filter(pc.equal(table.column("pair"), common_name(wire)))
        expected = reference_rows(records, wire, channel, every, levels)
        assert rows.num_rows == len(expected) > 0
        assert_rows_match(rows, expected, levels)


def test_deep_levels_of_a_book_1000(capture_segment: Callable[[str], Path]) -> None:
    segment = capture_segment("KRAKEN.ws.50.0")
    records = read_records(segment)
    table = replay.replay_table(segment, every="1s", levels=100, pairs=["XBT/CHF"])
    assert table.column("pair").unique().to_pylist() == ["BTC/CHF"]
    assert_rows_match(table, reference_rows(records, "XBT/CHF", "book-1000", SECOND, 100), 100)


def test_extra_columns_count_frames_per_interval(capture_segment: Callable[[str], Path]) -> None:
    segment = capture_segment("orderbook-v1.json")
    records = read_records(segment)
    every = SECOND // 10
    table = replay.replay_table(segment, every=every, levels=1)
    book = [
        r["recv_ns"]
        for r in records
        if isinstance(r.get("msg"), list) and r["msg"][-2:] == ["book-10", "XBT/USD"]
    ]
    for ts, updates, last in zip(
        table.column("ts").to_pylist(),
        table.column("updates").to_pylist(),
        table.column("last_update").to_pylist(),
        strict=True,
    ):
        t = ts.value
        assert updates == sum(1 for ns in book if t - every < ns <= t)
        assert last.value == max(ns for ns in book if ns <= t)
    assert pc.sum(table.column("checksum_failures")).as_py() == 0
    assert table.schema.field("ts").type == pa.timestamp("ns", tz="UTC")
    assert table.schema.field("last_update").type == pa.timestamp("ns", tz="UTC")


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    gaps=st.lists(st.integers(-40, 120), min_size=1, max_size=60),
    every_ms=st.sampled_from([1, 7, 10, 25, 100]),
    levels=st.integers(1, 10),
    void_at=st.integers(0, 80),
    resync_after=st.integers(1, 20),
)
def test_random_streams_equal_the_reference(
    seed: int, gaps: list[int], every_ms: int, levels: int, void_at: int, resync_after: int
) -> None:
    """Random timing (with clock steps back), a disconnect and a resync, any interval and depth."""
    market = SynthMarket(seed=seed)
    clock = 1_763_683_200_000_000_000
    records: list[tuple[int, str | dict]] = [(clock, market.snapshot())]
    for index, gap in enumerate(gaps):
        clock += gap * 1_000_000
        if index == void_at:
            records.append((clock, {"type": "disconnect", "reason": "test"}))
        if index == void_at + resync_after:
            records.append((clock, market.snapshot()))
        records.append((clock, market.update()))
    with tempfile.TemporaryDirectory() as folder:
        segment = write_records(Path(folder) / "s.jsonl.zst", records)
        every = every_ms * 1_000_000
        expected = reference_rows(read_records(segment), "XBT/USD", "book-10", every, levels)
        if not expected:  # no grid time between the snapshot and the last event
            with pytest.raises(UsageError, match="no snapshot rows"):
                replay.replay_table(segment, every=every, levels=levels)
            return
        table = replay.replay_table(segment, every=every, levels=levels)
        assert_rows_match(table, expected, levels)


def test_choosing_pairs_does_not_change_their_rows(capture_segment: Callable[[str], Path]) -> None:
    segment = capture_segment("KRAKEN.ws.50.0")
    everything = replay.replay_table(segment, every="100ms", levels=5)
    some = replay.replay_table(segment, every="100ms", levels=5, pairs=["XBT/CHF", "ETH/CHF"])
    wanted = pc.is_in(everything["pair"], pa.array(["BTC/CHF", "ETH/CHF"]))
    assert some.equals(everything.filter(wanted))
