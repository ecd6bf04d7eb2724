"""On-change snapshots (``--every change``) against the grid and against kbook's book.

Two references: the grid snapshots of the same recording (each grid row equals the latest
on-change row at or before its time), and ``BookFeed`` fed line by line (a row exactly at the
messages after which the top ``--levels`` or the validity changed, and nowhere else).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from replay_support import SynthMarket, books_after_each_line, write_records
from test_replay_deltas import BASE_NS, STEP_NS, simulated_segment

import replay
from kbook.api import Api
from kbook.errors import UsageError
from kbook.pairs import common_name
from kbook.units import SECOND
from replay.columns import level_names

Top = tuple[bool, tuple[float, ...]]


def kbook_tops(
    segment: Path, api: str, levels: int
) -> dict[tuple[str, str], list[tuple[int, Top]]]:
    """Per book: ``(clock, (valid, top levels))`` after every line that touched it."""
    tops: dict[tuple[str, str], list[tuple[int, Top]]] = {}
    for clock, key, book in books_after_each_line(segment, api):
        row: list[float] = []
        if book.valid:
            bids, asks = book.top_bids(levels), book.top_asks(levels)
            for i in range(levels):
                for side in (bids, asks):
                    row += [float(x) for x in side[i]] if i < len(side) else [-1.0, -1.0]
        tops.setdefault(key, []).append((clock, (book.valid, tuple(row))))
    return tops


def row_top(row: dict[str, Any], names: list[str]) -> Top:
    if not row["valid"]:
        return False, ()
    values = [row[name] for name in names]
    return True, tuple(-1.0 if value is None else value for value in values)


def check_changes(segment: Path, api: str, tmp_path: Path, levels: int, every: int) -> int:
    """Both references for every pair of ``segment``; returns the on-change rows checked."""
    names = [
        f"{side}_{part}_{i}"
        for i in range(levels)
        for side in ("bid", "ask")
        for part in ("px", "sz")
    ]
    assert sorted(names) == sorted(level_names(levels))
    changes_out, grid_out = tmp_path / "changes", tmp_path / "grid"
    summary = replay.replay_to_dataset(segment, changes_out, every="change", levels=levels)
    replay.replay_to_dataset(segment, grid_out, every=every, levels=levels, workers=1)
    manifest = (changes_out / "_kbook_replay.json").read_text()
    assert '"every": "change"' in manifest
    tops = kbook_tops(segment, api, levels)
    checked = 0
    for name, pair in summary.pairs.items():
        rows = replay.read_snapshots(changes_out, pair=name).to_pylist()
        grid = replay.read_snapshots(grid_out, pair=name).to_pylist()
        assert rows
        assert rows[-1]["valid"] is False  # the source's rows end when its book goes stale
        rows_ns = [row["ts"].value for row in rows]
        # 1. The grid is the on-change rows as of each grid time.
        at = 0
        for cell in grid:
            t = cell["ts"].value
            while at + 1 < len(rows) and rows_ns[at + 1] <= t:
                at += 1
            assert rows_ns[at] <= t
            assert row_top(rows[at], names) == row_top(cell, names), t
            assert rows[at]["depth"] == cell["depth"]
            assert rows[at]["source"] == cell["source"]
        # 2. A row exactly after the messages that changed the top or the validity.
        (key,) = [k for k in tops if common_name(k[0]) == name and k[1] == pair.channel]
        expected, shown = [], None
        for clock, top in tops[key]:
            if top != shown and (shown is not None or top[0]):
                expected.append((clock, top))
                shown = top
        got = [(at, row_top(row, names)) for at, row in zip(rows_ns, rows, strict=True)]
        assert got[:-1] == expected
        checked += len(rows)
    return checked


@pytest.mark.parametrize("capture", ["orderbook-v1.json", "XDG-USD_book-10.jsonl"])
def test_real_capture_changes_equal_grid_and_book(
    capture_segment: Callable[[str], Path], capture: str, tmp_path: Path
) -> None:
    assert check_changes(capture_segment(capture), Api.V1, tmp_path, 3, SECOND // 10)


@pytest.mark.parametrize("api", [Api.V1, Api.V2])
def test_simulated_changes_equal_grid_and_book(api: str, tmp_path: Path) -> None:
    segment = simulated_segment(tmp_path / "sim.jsonl.zst", api, 25, 4, 1500)
    assert check_changes(segment, api, tmp_path, 5, 7 * STEP_NS) > 500


def test_a_silence_marks_the_rows_invalid_then_valid_again(tmp_path: Path) -> None:
    frames = list(SynthMarket(seed=6).frames(200, BASE_NS, STEP_NS))
    frames = frames[:100] + [(ns + 30 * SECOND, text) for ns, text in frames[100:]]
    segment = write_records(tmp_path / "gap.jsonl.zst", list(frames))
    out = tmp_path / "changes"
    replay.replay_to_dataset(segment, out, every="change", levels=1)
    table = replay.read_snapshots(out)
    invalid = [row["ts"].value for row in table.to_pylist() if not row["valid"]]
    assert invalid == [frames[99][0] + 10 * SECOND, frames[-1][0] + 10 * SECOND]
    after = [row for row in table.to_pylist() if row["ts"].value > invalid[0]]
    assert after[0]["ts"].value == frames[100][0]
    assert after[0]["valid"]
    assert pa.types.is_timestamp(table.schema.field("ts").type)


def test_change_refuses_what_does_not_go_with_it(tmp_path: Path) -> None:
    segment = write_records(tmp_path / "s.jsonl.zst", list(SynthMarket().frames(10, BASE_NS, 1)))
    with pytest.raises(UsageError, match="--every change goes without --update"):
        replay.replay_to_dataset(segment, tmp_path / "out", every="change", update=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # about 3 s: two recorder runs, replayed twice (grid and on-change)
def test_two_sources_one_timeline_with_an_outage(tmp_path: Path) -> None:
    """Two recorders of one pair, the followed one loses 30 s: the rows carry on from the other
    (one row naming it at the switch), valid throughout, and equal the grid as of every grid
    time (the grid may name either source where both are valid: same book)."""
    from test_replay_timeline import STEP, T0, recorder_segments

    raw = tmp_path / "raw"
    frames = list(SynthMarket(seed=5).frames(400, T0, STEP))
    recorder_segments(raw / "a", frames, "a" * 32, outage=(T0 + 30 * SECOND, T0 + 60 * SECOND))
    recorder_segments(raw / "b", frames, "b" * 32, rotate=None)
    replay.replay_to_dataset(raw, tmp_path / "changes", every="change", levels=2)
    replay.replay_to_dataset(raw, tmp_path / "grid", every="500ms", levels=2)
    rows = replay.read_snapshots(tmp_path / "changes").to_pylist()
    grid = replay.read_snapshots(tmp_path / "grid").to_pylist()
    names = level_names(2)
    assert [row["valid"] for row in rows[:-1]] == [True] * (len(rows) - 1)
    sources = [row["source"] for row in rows[:-1]]
    switch = sources.index("v1 book-10 run bbbbbbbb")
    assert set(sources[:switch]) == {"v1 book-10 run aaaaaaaa"}
    assert rows[switch]["ts"].value == frames[120][0]
    assert set(sources[switch:]) == {"v1 book-10 run bbbbbbbb"}
    at = 0
    for cell in grid:
        while at + 1 < len(rows) and rows[at + 1]["ts"] <= cell["ts"]:
            at += 1
        assert row_top(rows[at], names) == row_top(cell, names)
