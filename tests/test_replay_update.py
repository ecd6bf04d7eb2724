"""``kbook replay --update``: after a day is appended, only that day's partitions change.

Recorder-style segments of two pairs, one per UTC day (the run's first opens with
``session_start``, later ones with checkpoints, as rotations do), a frame a minute. The dataset
is built for two days, a third day is appended, and ``--update`` must leave every earlier file
untouched (same bytes, same inode, same modification time) and write the new day's partitions
as a full replay of all three days writes them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from replay_support import SynthMarket, write_records
from test_replay_timeline import book_at, checkpoint, session

import replay
from kbook.errors import UsageError

MINUTE = 60_000_000_000
DAY = 1440 * MINUTE
T0 = 1_763_683_200_000_000_000  # 2025-11-21T00:00Z


def write_day(raw: Path, pair: str, frames: list[tuple[int, str]], day: int) -> None:
    """Day ``day`` (0, 1, 2) of ``pair``'s recording: one segment of 1440 frames."""
    first = day * 1440
    records: list[tuple[int, str | dict[str, Any]]] = []
    if day == 0:
        records.append((frames[0][0], {**session("e" * 32, 10, pair)}))
    else:
        records.append((frames[first][0], {**checkpoint(book_at(frames, first)), "pair": pair}))
    records += frames[first : first + 1440]
    name = pair.replace("/", "-")
    write_records(raw / name / f"{name}.{day}.jsonl.zst", records)


def snapshot_files(out: Path) -> dict[str, tuple[str, int, int]]:
    """Each Parquet file: its hash, inode and modification time."""
    files = {}
    for path in sorted(out.rglob("*.parquet")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files[str(path.relative_to(out))] = (digest, stat.st_ino, stat.st_mtime_ns)
    return files


@pytest.fixture(scope="module")
def recordings() -> dict[str, list[tuple[int, str]]]:
    return {
        pair: list(SynthMarket(pair, seed=seed).frames(3 * 1440, T0, MINUTE))
        for seed, pair in enumerate(("XBT/USD", "ETH/USD"))
    }


def test_update_rewrites_only_the_appended_day(
    recordings: dict[str, list[tuple[int, str]]], tmp_path: Path
) -> None:
    raw, out, full = tmp_path / "raw", tmp_path / "snapshots", tmp_path / "full"
    for pair, frames in recordings.items():
        for day in (0, 1):
            write_day(raw, pair, frames, day)
    replay.replay_to_dataset(raw, out, every="1m")
    before = snapshot_files(out)
    assert len(before) == 4
    for pair, frames in recordings.items():
        write_day(raw, pair, frames, 2)

    summary = replay.replay_to_dataset(raw, out, every="1m", update=True)
    after = snapshot_files(out)
    new = sorted(set(after) - set(before))
    assert new == [
        "pair=BTC-USD/date=2025-11-23/part-0.parquet",
        "pair=ETH-USD/date=2025-11-23/part-0.parquet",
    ]
    assert {name: after[name] for name in before} == before  # untouched, byte for byte
    assert summary.updated == 2
    assert summary.unchanged == 4
    replay.replay_to_dataset(raw, full, every="1m")
    assert {k: v[0] for k, v in snapshot_files(full).items()} == {k: v[0] for k, v in after.items()}

    again = replay.replay_to_dataset(raw, out, every="1m", update=True)
    assert again.updated == 0
    assert snapshot_files(out) == after
    assert not list(tmp_path.glob(".snapshots.tmp-*"))


def test_update_needs_the_same_options(
    recordings: dict[str, list[tuple[int, str]]], tmp_path: Path
) -> None:
    raw, out = tmp_path / "raw", tmp_path / "snapshots"
    write_day(raw, "XBT/USD", recordings["XBT/USD"], 0)
    replay.replay_to_dataset(raw, out, every="1m")
    with pytest.raises(UsageError, match="built with every_ns 60000000000, not 1000000000"):
        replay.replay_to_dataset(raw, out, every="1s", update=True)
    with pytest.raises(UsageError, match="pick one"):
        replay.replay_to_dataset(raw, out, every="1m", update=True, force=True)
    # A dataset of an older kbook, whose files lack exch_ts, is rebuilt rather than mixed.
    manifest = orjson.loads((out / "_kbook_replay.json").read_bytes())
    del manifest["columns"]
    (out / "_kbook_replay.json").write_bytes(orjson.dumps(manifest))
    with pytest.raises(UsageError, match="other columns than this kbook writes"):
        replay.replay_to_dataset(raw, out, every="1m", update=True)


@pytest.mark.slow
def test_update_runs_its_pair_days_on_the_engine_given(
    recordings: dict[str, list[tuple[int, str]]], tmp_path: Path
) -> None:
    """``--update --engine dask``: the changed pair-days are tasks on the cluster (here an
    in-process one, quick to start), and the partitions are those of a replay in this process."""
    distributed = pytest.importorskip("distributed")
    raw, out, here = tmp_path / "raw", tmp_path / "snapshots", tmp_path / "here"
    for pair, frames in recordings.items():
        write_day(raw, pair, frames, 0)
    replay.replay_to_dataset(raw, out, every="1m")
    for pair, frames in recordings.items():
        write_day(raw, pair, frames, 1)
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787
        ) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as stream,
    ):
        summary = replay.replay_to_dataset(
            raw, out, every="1m", update=True, engine="dask", scheduler=cluster.scheduler_address
        )
    ran = {task["key"].split("-", 1)[0] for task in stream.data}
    assert "run_task" in ran
    assert summary.updated == 2
    replay.replay_to_dataset(raw, here, every="1m")
    assert {k: v[0] for k, v in snapshot_files(out).items()} == {
        k: v[0] for k, v in snapshot_files(here).items()
    }
