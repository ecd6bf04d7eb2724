"""Replay in this process against Dask LocalClusters of 1 and 2 workers, in one run.

    .venv/bin/python benchmarks/replay_cluster.py [--frames 8000000] [--repeat 3] [--cache DIR]

Uses the ``multi`` recording of ``replay_speed.py`` (four pairs at depth 100 on one connection,
segments rotated every ``--rotate`` s, generated once and cached: 8 M frames take half an hour to
generate on a loaded 2-core machine): four pair-day tasks at least, so two workers have work to
share. Prints for each engine the wall time and the CPU time (this process and its workers,
which are its children: ``getrusage``), the cluster's start and stop apart (measured on their
own after each replay: a replay starts its cluster in the background while it surveys, plans
and runs its first tasks itself, so only what these do not hide adds to its wall time), frames
per second of wall time in all and per worker, frames per CPU second (what a worker costs,
whatever else loads the machine), and whether the Parquet files are byte-identical to the
in-process run: each the median of ``--repeat`` rounds, a round running every engine once (so a
change in the machine's load falls on all of them); then the cost of one pair-day's frames on
one worker, from which README, On a cluster, estimates a year of 50 pairs on 32. The load
average before and after says how quiet the machine was.

One more row runs one worker with Dask's own worker settings instead of kbook's
(``replay.executor.WORKER_CONFIG``), to show what those settings save. Needs
``pip install 'kbook[dask]'``. Not a test: compare the figures within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).parent))

from replay_speed import recording, same_dataset  # noqa: E402

import replay  # noqa: E402
from replay import executor  # noqa: E402

DASK_DEFAULTS = {"distributed.worker.profile.enabled": False}
"""The worker settings of the row "Dask's settings": Dask's own, but for the profiler, which
kbook turned off first (README, On a cluster, has the figures with it on)."""


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the cluster's workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def cluster_cost(workers: int) -> tuple[float, float, float]:
    """Wall seconds to start a LocalCluster of ``workers`` as a replay does (until its workers
    are up, with what they load as they start) and to stop it; CPU seconds for both."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    with executor.open_executor("dask", workers) as started:
        assert started.client is not None  # waits for the cluster
        up = time.perf_counter()
    return up - wall, time.perf_counter() - up, cpu_seconds() - cpu


@contextmanager
def worker_settings(settings: dict[str, object]) -> Iterator[None]:
    """Start the replay's clusters with ``settings`` instead of kbook's."""
    kept = executor.WORKER_CONFIG
    executor.WORKER_CONFIG = settings
    try:
        yield
    finally:
        executor.WORKER_CONFIG = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=8_000_000)
    parser.add_argument("--rotate", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kbook-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    raw = recording(args.cache, "multi", args.frames, args.rotate, args.seed)
    work = Path(tempfile.mkdtemp(prefix="kbook-cluster-"))
    try:
        size = sum(path.stat().st_size for path in raw.rglob("*.zst"))
        print(f"recording: 4 pairs, {size / 1e6:,.0f} MB of segments, in {raw}")
        print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        print(
            "engine                           wall   frames/s wall  per worker    CPU s  "
            "frames/CPU s  (vs in-process)  cluster start, stop wall; CPU  identical"
        )
        runs = [
            ("in-process", "local", 1, None),
            ("dask, 1 worker", "dask", 1, None),
            ("dask, 2 workers", "dask", 2, None),
            ("dask, 1 worker, Dask's settings", "dask", 1, DASK_DEFAULTS),
        ]
        figures: list[list[tuple[float, float, float, float, float]]] = [[] for _ in runs]
        identical = [True] * len(runs)
        frames = rows = 0
        for _ in range(args.repeat):
            for number, (_name, engine, workers, settings) in enumerate(runs):
                out = work / f"run-{number}"
                with worker_settings(settings or executor.WORKER_CONFIG):
                    wall, cpu = time.perf_counter(), cpu_seconds()
                    summary = replay.replay_to_dataset(
                        raw, out, every="1s", levels=10, workers=workers, engine=engine, force=True
                    )
                    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
                    start = cluster_cost(workers) if engine == "dask" else (0.0, 0.0, 0.0)
                frames = frames or sum(pair.frames for pair in summary.pairs.values())
                rows = rows or summary.rows
                figures[number].append((wall, cpu, *start))
                identical[number] &= same_dataset(work / "run-0", out)
        base_wall, base_cpu = (median(f[i] for f in figures[0]) for i in (0, 1))
        for (name, _engine, workers, _settings), runs_figures, same in zip(
            runs, figures, identical, strict=True
        ):
            wall, cpu, start_wall, stop_wall, cluster_cpu = (
                median(f[i] for f in runs_figures) for i in range(5)
            )
            print(
                f"{name:31} {wall:6.1f} s {frames / wall:10,.0f} {frames / wall / workers:11,.0f}"
                f"  {cpu:7.1f} {frames / cpu:13,.0f}  ({base_cpu / cpu:.2f}x CPU, "
                f"{base_wall / wall:.2f}x wall)  {start_wall:4.1f} s, {stop_wall:4.1f} s; "
                f"{cluster_cpu:4.1f} s  {same}"
            )
        per_frame = base_cpu / frames
        print(
            f"{frames:,} frames, {rows:,} rows. One worker: {per_frame * 1e6:.2f} us of CPU "
            f"per frame; a pair-day of 5 M frames (a busy pair at depth 100): "
            f"{per_frame * 5e6:.0f} s"
        )
        print("load average (1, 5, 15 min) after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
