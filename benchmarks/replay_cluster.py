"""Replay in this process against Dask LocalClusters of 1 and 2 workers, in one run.

    .venv/bin/python benchmarks/replay_cluster.py [--frames 8000000] [--cache DIR]

Uses the ``multi`` recording of ``replay_speed.py`` (four pairs at depth 100 on one connection,
segments rotated every ``--rotate`` s, generated once and cached: 8 M frames take half an hour to
generate on a loaded 2-core machine): four pair-day tasks at least, so two workers have work to
share. Prints for each engine the wall time (cluster start included, and without
it: a cluster is started once per replay), frames per second in all and per worker, and whether
the Parquet files are byte-identical to the in-process run; then the cost of one pair-day's
frames on one worker, from which README, On a cluster, estimates a year of 50 pairs on 32.
Needs ``pip install 'kbook[dask]'``. Not a test: compare the figures within one run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from replay_speed import recording, same_dataset  # noqa: E402

import replay  # noqa: E402
from replay.executor import open_executor  # noqa: E402


def cluster_start(workers: int) -> float:
    """Seconds to start and stop a LocalCluster of ``workers``, as a replay does."""
    started = time.perf_counter()
    with open_executor("dask", workers):
        pass
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8_000_000)
    parser.add_argument("--rotate", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kbook-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    raw = recording(args.cache, "multi", args.frames, args.rotate, args.seed)
    work = Path(tempfile.mkdtemp(prefix="kbook-cluster-"))
    try:
        size = sum(path.stat().st_size for path in raw.rglob("*.zst"))
        print(f"recording: 4 pairs, {size / 1e6:,.0f} MB of segments, in {raw}")
        frames = 0
        runs = [
            ("in-process", "local", 1),
            ("dask, 1 worker", "dask", 1),
            ("dask, 2 workers", "dask", 2),
        ]
        base = 0.0
        for name, engine, workers in runs:
            out = work / name.replace(" ", "").replace(",", "-")
            started = time.perf_counter()
            summary = replay.replay_to_dataset(
                raw, out, every="1s", levels=10, workers=workers, engine=engine
            )
            wall = time.perf_counter() - started
            base = base or wall
            frames = frames or sum(pair.frames for pair in summary.pairs.values())
            start = cluster_start(workers) if engine == "dask" else 0.0
            identical = same_dataset(work / "in-process", out)
            print(
                f"{name:16} {wall:6.2f} s  {frames / wall:10,.0f} frames/s  "
                f"{frames / wall / workers:10,.0f} per worker  ({base / wall:.2f}x in-process; "
                f"cluster start {start:.1f} s of it; identical Parquet: {identical}; "
                f"{summary.rows:,} rows)"
            )
        per_frame = base / frames
        print(
            f"one worker: {per_frame * 1e6:.2f} us per frame; a pair-day of 5 M frames "
            f"(a busy pair at depth 100): {per_frame * 5e6:.0f} s"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
