"""How fast the backtest formats are written, beside the delta replay they are converted from.

    .venv/bin/python benchmarks/backtest_formats.py [--frames 200000] [--depth 25] [--repeat 3]

Generates one v1 recording with the simulator's seeded ``Market`` (``--frames`` updates at
``--depth``, one frame a millisecond), then prints, as the median of ``--repeat`` runs, the
seconds and delta rows per second of: the delta replay (segments -> ``replay.deltas`` Parquet),
and the conversion of that delta dataset (``replay.convert_deltas``) into Tardis CSV and into
hftbacktest arrays, with the size of each output. Not a test: compare the figures of one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import replay
from kbook.segment import frame_line, write_segment
from kbook.sim.market import Market

BASE_NS = 1_800_000_000 * 1_000_000_000


def recording(folder: Path, frames: int, depth: int) -> Path:
    market = Market("XBT/USD", depth, 1, clock=lambda: BASE_NS / 1e9)
    texts = [market.snapshot_frame(7)] + [market.update_frame(7) for _ in range(frames)]
    lines = [
        frame_line(BASE_NS + index * 1_000_000, index, text, True)
        for index, text in enumerate(texts)
    ]
    return write_segment(folder / "XBT-USD.jsonl.zst", lines)


def timed(repeat: int, run: Callable[[], object]) -> float:
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--depth", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kbook-bench-"))
    try:
        segment = recording(work, args.frames, args.depth)
        deltas = work / "deltas"

        def replay_deltas() -> None:
            replay.replay_deltas_to_dataset(segment, deltas, force=True)

        def convert(output_format: str) -> Callable[[], object]:
            def run() -> None:
                target = work / output_format
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()
                replay.convert_deltas(deltas, target, output_format)

            return run

        figures = [("deltas (replay)", timed(args.repeat, replay_deltas), deltas)]
        rows = replay.read_deltas(deltas, columns=["seq"]).num_rows
        for output_format in ("tardis", "hftbacktest"):
            seconds = timed(args.repeat, convert(output_format))
            figures.append((f"{output_format} (from deltas)", seconds, work / output_format))
        print(f"{args.frames} frames at depth {args.depth}: {rows} delta rows")
        print(f"{'stage':<28}{'seconds':>10}{'rows/s':>14}{'MB':>10}")
        for name, seconds, folder in figures:
            print(f"{name:<28}{seconds:>10.2f}{rows / seconds:>14,.0f}{size(folder) / 1e6:>10.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
