"""Holes are marked: checksum failures, disconnects, new connections and torn segments make rows
invalid until the next snapshot; checkpoints, bare continuations and clock steps stay exact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from replay_support import (
    RefBook,
    SynthMarket,
    assert_rows_match,
    read_records,
    reference_rows,
    write_frames,
    write_records,
)

import replay
from kbook.captures import read_capture
from kbook.segment import SegmentWriter, frame_line
from kbook.units import MS

EVERY = 10 * MS
PAIR, CHANNEL = "XBT/USD", "book-10"


@pytest.fixture
def frames(captures_dir: Path) -> list[tuple[int, str]]:
    """orderbook-v1.json: systemStatus, pong, subscriptionStatus, snapshot, 979 updates; 1 ms apart."""
    return read_capture(captures_dir / "orderbook-v1.json")


def true_book(frames: list[tuple[int, str]], upto: int) -> RefBook:
    """The reference book after ``frames[:upto]`` (all checksums of the capture pass)."""
    book = RefBook(10)
    for _ns, text in frames[:upto]:
        msg = json.loads(text)
        if not isinstance(msg, list):
            continue
        for payload in msg[1:-2]:
            for key, side in (
                ("as", book.asks),
                ("a", book.asks),
                ("bs", book.bids),
                ("b", book.bids),
            ):
                for level in payload.get(key, []):
                    book.set(side, level)
        book.truncate()
    return book


def snapshot_text(book: RefBook) -> str:
    asks = [[p, v, "1693415400.000000"] for p, v in book.sorted_asks()]
    bids = [[p, v, "1693415400.000000"] for p, v in book.sorted_bids()]
    return json.dumps([336, {"as": asks, "bs": bids}, CHANNEL, PAIR], separators=(",", ":"))


def checkpoint(book: RefBook) -> dict[str, Any]:
    return {
        "type": "checkpoint",
        "pair": PAIR,
        "channel": CHANNEL,
        "asks": [list(level) for level in book.sorted_asks()],
        "bids": [list(level) for level in book.sorted_bids()],
        "checksum": book.checksum(),
    }


def corrupt(text: str) -> str:
    """An update whose first level's volume differs from what Kraken's checksum covers."""
    msg = json.loads(text)
    payload = msg[1]
    side = "a" if "a" in payload else "b"
    payload[side][0][1] = "1.23456789"
    return json.dumps(msg, separators=(",", ":"))


def is_update(text: str) -> bool:
    return text.startswith('[336,{"a"') or text.startswith('[336,{"b"')


def invalid_times(table: Any) -> list[int]:
    return [
        ts.value for ts, ok in zip(table["ts"], table["valid"].to_pylist(), strict=True) if not ok
    ]


def grid_after(ns: int) -> int:
    return -(-ns // EVERY) * EVERY


def test_checksum_failure_is_invalid_until_the_next_snapshot(
    tmp_path: Path, frames: list[tuple[int, str]]
) -> None:
    bad, resync = 300, 700
    assert is_update(frames[bad][1])
    edited = list(frames)
    edited[bad] = (frames[bad][0], corrupt(frames[bad][1]))
    edited.insert(resync, (frames[resync][0], snapshot_text(true_book(frames, resync))))
    segment = write_frames(tmp_path / "bad.jsonl.zst", edited)
    table = replay.replay_table(segment, every=EVERY, levels=10)

    assert_rows_match(table, reference_rows(read_records(segment), PAIR, CHANNEL, EVERY, 10), 10)
    failed_at, resynced_at = frames[bad][0], frames[resync][0]
    expected = list(range(grid_after(failed_at), grid_after(resynced_at), EVERY))
    assert invalid_times(table) == expected
    assert pc.sum(table["checksum_failures"]).as_py() == 1
    assert table.filter(pc.invert(table["valid"]))["bid_px_0"].null_count == len(expected)


@pytest.mark.parametrize("how", ["meta", "systemStatus"])
def test_disconnect_or_new_connection_voids_until_the_next_snapshot(
    tmp_path: Path, frames: list[tuple[int, str]], how: str
) -> None:
    cut, resync = 400, 800
    records: list[tuple[int, str | dict[str, Any]]] = list(frames)
    if how == "meta":
        events: list[tuple[int, str | dict[str, Any]]] = [
            (frames[cut][0], {"type": "disconnect", "reason": "test"}),
            (frames[cut][0], {"type": "connect", "url": "wss://ws.kraken.com"}),
        ]
    else:
        status = '{"connectionID":42,"event":"systemStatus","status":"online","version":"1.9.1"}'
        events = [(frames[cut][0], status)]
    records[cut:cut] = events
    snapshot = (frames[resync][0], snapshot_text(true_book(frames, resync)))
    records.insert(resync + len(events), snapshot)
    segment = write_records(tmp_path / "cut.jsonl.zst", records)
    table = replay.replay_table(segment, every=EVERY, levels=10)

    assert_rows_match(table, reference_rows(read_records(segment), PAIR, CHANNEL, EVERY, 10), 10)
    assert invalid_times(table) == list(
        range(grid_after(frames[cut][0]), grid_after(frames[resync][0]), EVERY)
    )


def test_torn_segment_voids_until_the_next_snapshot(
    tmp_path: Path, frames: list[tuple[int, str]]
) -> None:
    split, resync = 500, 600
    first = tmp_path / "a.jsonl.zst"
    with SegmentWriter(first) as writer:
        for seq, (ns, text) in enumerate(frames[:split]):
            writer.write(frame_line(ns, seq, text, True))
            if seq % 100 == 99:
                writer.flush(fsync=False)
    data = first.read_bytes()
    first.write_bytes(data[: len(data) - 200])  # kill -9 in the middle of the last zstd frame
    rest = list(frames[split:])
    rest.insert(resync - split, (frames[resync][0], snapshot_text(true_book(frames, resync))))
    write_frames(tmp_path / "b.jsonl.zst", rest)

    summary = replay.replay_to_dataset(tmp_path, tmp_path / "out", every=EVERY, levels=10)
    table = replay.read_snapshots(tmp_path / "out")
    assert any("torn" in str(problem) for problem in summary.problems)
    kept = 400  # lines in complete zstd frames survive the cut
    invalid = invalid_times(table)
    assert invalid[0] == grid_after(frames[kept - 1][0])
    assert invalid[-1] == grid_after(frames[resync][0]) - EVERY
    assert invalid == list(range(invalid[0], invalid[-1] + EVERY, EVERY))


def test_checkpoint_segment_replays_alone(tmp_path: Path, frames: list[tuple[int, str]]) -> None:
    at = 500
    whole = write_frames(tmp_path / "whole" / "all.jsonl.zst", frames)
    records: list[tuple[int, str | dict[str, Any]]] = [
        (frames[at][0], checkpoint(true_book(frames, at)))
    ]
    records += frames[at:]
    alone = write_records(tmp_path / "alone" / "b.jsonl.zst", records)

    expected = replay.replay_table(whole, every=EVERY, levels=10, start=grid_after(frames[at][0]))
    table = replay.replay_table(alone, every=EVERY, levels=10)
    columns = [name for name in table.column_names if name not in ("updates", "last_update")]
    assert table.select(columns).equals(expected.select(columns))
    assert table["valid"].to_pylist() == [True] * table.num_rows


def test_start_skips_segments_before_a_checkpoint_and_matches_a_full_replay(
    tmp_path: Path, frames: list[tuple[int, str]]
) -> None:
    at = 500
    write_frames(tmp_path / "a.jsonl.zst", frames[:at])
    records: list[tuple[int, str | dict[str, Any]]] = [
        (frames[at][0], checkpoint(true_book(frames, at)))
    ]
    rest = list(frames[at:])
    # Kraken repeats systemStatus on a status change: same connection, so the book stays valid,
    # also when the replay starts at this segment's checkpoint.
    rest.insert(100, (rest[100][0], frames[0][1]))
    write_records(tmp_path / "b.jsonl.zst", records + rest)
    start = grid_after(frames[at][0]) + 5 * EVERY

    full = replay.replay_table(tmp_path, every=EVERY, levels=10)
    cut = replay.replay_table(tmp_path, every=EVERY, levels=10, start=start, end=start + 40 * EVERY)
    assert cut.num_rows == 40
    assert cut.equals(full.filter(pc.field("ts") >= cut["ts"][0]).slice(0, 40))
    assert all(full["valid"].to_pylist())
    summary = replay.replay_to_dataset(tmp_path, tmp_path / "out", every=EVERY, start=start)
    assert summary.result.segments_skipped == 1


def test_bare_segments_carry_the_book_across_files(
    tmp_path: Path, frames: list[tuple[int, str]]
) -> None:
    whole = write_frames(tmp_path / "one" / "all.jsonl.zst", frames)
    write_frames(tmp_path / "two" / "a.jsonl.zst", frames[:450])
    write_frames(tmp_path / "two" / "b.jsonl.zst", frames[450:])
    one = replay.replay_table(whole, every=EVERY, levels=10)
    two = replay.replay_table(tmp_path / "two", every=EVERY, levels=10)
    assert two.equals(one)
    assert all(two["valid"].to_pylist())


def test_clock_stepping_back_keeps_rows_monotonic(tmp_path: Path) -> None:
    market = SynthMarket(seed=3)
    base = 1_763_683_200_000_000_000
    offsets = [0, 30, 60, 45, 50, 90, 120, 100, 150, 200]  # ms; 45, 50 and 100 step back
    frames = [(base + MS * offsets[0], market.snapshot())]
    frames += [(base + MS * offset, market.update()) for offset in offsets[1:]]
    segment = write_frames(tmp_path / "s.jsonl.zst", frames)
    table = replay.replay_table(segment, every=EVERY, levels=10)
    stamps = [ts.value for ts in table["ts"]]
    assert stamps == list(range(base, base + 200 * MS + 1, EVERY))
    assert_rows_match(table, reference_rows(read_records(segment), PAIR, CHANNEL, EVERY, 10), 10)


def test_other_channels_are_skipped(tmp_path: Path, frames: list[tuple[int, str]]) -> None:
    ticker = '[340,{"a":["27120.0",1,"1.0"],"c":["1.0","0.1"]},"ticker","XBT/USD"]'
    edited = list(frames)
    edited.insert(100, (frames[100][0], ticker))
    plain = replay.replay_table(write_frames(tmp_path / "a" / "p.jsonl.zst", frames), every=EVERY)
    segment = write_frames(tmp_path / "b" / "t.jsonl.zst", edited)
    assert replay.replay_table(segment, every=EVERY).equals(plain)
    summary = replay.replay_to_dataset(segment, tmp_path / "out", every=EVERY)
    assert summary.result.skipped_frames == 1


def test_both_spellings_of_a_pair_are_one_pair(tmp_path: Path) -> None:
    """Kraken may echo XBT/USD in one session and BTC/USD in the next: one BTC/USD output."""
    base = 1_763_683_200_000_000_000
    old = SynthMarket("XBT/USD", seed=1)
    new = SynthMarket("BTC/USD", seed=2)
    write_frames(tmp_path / "a.jsonl.zst", old.frames(50, base, 10 * MS))
    records: list[tuple[int, str | dict[str, Any]]] = [(base + 600 * MS, {"type": "connect"})]
    records += list(new.frames(50, base + 700 * MS, 10 * MS))
    write_records(tmp_path / "b.jsonl.zst", records)
    table = replay.replay_table(tmp_path, every="100ms", levels=3, pairs=["btc/usd"])
    assert table["pair"].unique().to_pylist() == ["BTC/USD"]
    # rows at 0..500 ms (the connect at 600 ms voids the old book), 600 invalid, 700..1100 valid
    assert table["valid"].to_pylist() == [True] * 6 + [False] + [True] * 5
