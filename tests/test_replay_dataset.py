"""The Parquet dataset: layout, three readers, read_snapshots, --force, atomicity, workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from replay_support import SynthMarket, write_frames

import replay
from kbook.errors import OutputError
from kbook.units import SECOND

MIDNIGHT = 1_763_683_200_000_000_000  # 2025-11-21T00:00:00Z


@pytest.fixture
def two_days(tmp_path: Path) -> Path:
    """Two pairs in their own bare segments, 40 s across a UTC midnight."""
    folder = tmp_path / "raw"
    for pair, seed in (("XBT/USD", 1), ("ETH/USD", 2)):
        market = SynthMarket(pair, depth=10, seed=seed)
        frames = market.frames(400, MIDNIGHT - 20 * SECOND, SECOND // 10)
        write_frames(folder / f"{pair.replace('/', '-')}.jsonl.zst", frames)
    return folder


def test_layout_is_one_zstd_file_per_pair_and_day(two_days: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    summary = replay.replay_to_dataset(two_days, out, every="1s", levels=5)
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*.parquet"))
    assert files == [
        "pair=BTC-USD/date=2025-11-20/part-0.parquet",
        "pair=BTC-USD/date=2025-11-21/part-0.parquet",
        "pair=ETH-USD/date=2025-11-20/part-0.parquet",
        "pair=ETH-USD/date=2025-11-21/part-0.parquet",
    ]
    assert sorted(summary.files) == sorted(out / name for name in files)
    meta = pq.ParquetFile(out / files[1]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert "pair" not in meta.schema.names
    assert pq.read_table(out / files[0])["ts"].to_pylist()[-1].value == MIDNIGHT - SECOND
    manifest = orjson.loads((out / "_kbook_replay.json").read_bytes())
    assert manifest["pairs"]["BTC/USD"]["rows"] == summary.pairs["BTC/USD"].rows == 40
    assert not list(tmp_path.glob(".snaps*")), "no temporary folder is left behind"


def test_pandas_polars_and_duckdb_load_it_with_a_pair_column(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "snaps"
    summary = replay.replay_to_dataset(capture_segment("KRAKEN.ws.50.0"), out, every="1s")
    expected = {pair.replace("/", "-"): s.rows for pair, s in summary.pairs.items()}
    assert len(expected) == 10

    frame = pd.read_parquet(out)
    assert frame.groupby("pair", observed=True).size().to_dict() == expected
    assert str(frame["ts"].dtype) == "datetime64[ns, UTC]"

    lazy = pl.scan_parquet(str(out) + "/**/*.parquet", hive_partitioning=True)
    counts = lazy.group_by("pair").len().collect()
    assert dict(zip(counts["pair"], counts["len"], strict=True)) == expected

    rows = duckdb.sql(
        f"select pair, count(*) from read_parquet('{out}/**/*.parquet', hive_partitioning = true)"
        " group by pair"
    ).fetchall()
    assert dict(rows) == expected


def test_read_snapshots_filters_by_pair_and_time(two_days: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    replay.replay_to_dataset(two_days, out, every="1s", levels=10)
    table = replay.replay_table(two_days, every="1s", levels=10)
    assert replay.read_snapshots(out).equals(table)

    start, end = MIDNIGHT - 3 * SECOND, MIDNIGHT + 2 * SECOND
    got = replay.read_snapshots(out, pair="XBT/USD", start="2025-11-20T23:59:57", end=end)
    want = table.filter(
        (pc.field("pair") == "BTC/USD") & (pc.field("ts") >= pa.scalar(start, got["ts"].type))
    ).slice(0, 5)
    assert got.equals(want)
    assert replay.read_snapshots(out, pair="eth-usd", columns=["bid_px_0"]).column_names == [
        "ts",
        "pair",
        "bid_px_0",
    ]


def test_existing_output_needs_force_and_is_replaced_whole(two_days: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    replay.replay_to_dataset(two_days, out, every="1s", levels=2)
    before = sorted(out.rglob("*"))
    with pytest.raises(OutputError, match=f"{out}: exists already; pass --force"):
        replay.replay_to_dataset(two_days, out, every="5s", levels=2)
    assert sorted(out.rglob("*")) == before
    replay.replay_to_dataset(two_days, out, every="5s", levels=2, pairs=["ETH/USD"], force=True)
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["pair=ETH-USD"]
    assert replay.read_snapshots(out).num_rows == 8


def test_force_never_replaces_a_folder_that_is_not_a_dataset(
    two_days: Path, tmp_path: Path
) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="is not a kbook snapshot dataset"):
        replay.replay_to_dataset(two_days, out, force=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_an_interrupted_replay_leaves_nothing(two_days: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replay.replay_to_dataset(two_days, out, every="1s", progress=progress)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_workers_give_the_same_output_as_one(two_days: Path, tmp_path: Path) -> None:
    one = replay.replay_to_dataset(two_days, tmp_path / "one", every="100ms", workers=1)
    two = replay.replay_to_dataset(two_days, tmp_path / "two", every="100ms", workers=2)
    assert replay.read_snapshots(tmp_path / "one").equals(replay.read_snapshots(tmp_path / "two"))
    assert one.rows == two.rows == 2 * 400
    assert replay.replay_table(two_days, workers=2).equals(replay.replay_table(two_days))


def test_row_groups_are_large_and_bounded(tmp_path: Path) -> None:
    market = SynthMarket(depth=10, seed=5)
    segment = write_frames(tmp_path / "s.jsonl.zst", market.frames(300, MIDNIGHT, SECOND))
    out = tmp_path / "snaps"
    replay.replay_to_dataset(segment, out, every="1ms", levels=1)
    (path,) = out.rglob("*.parquet")
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == 299_001
    assert sizes[:-1] == [65_536] * (len(sizes) - 1)
