"""How long ``kbook replay --update`` takes after a day is appended, against a full replay.

    .venv/bin/python benchmarks/replay_update.py [--days 8] [--frames-per-day 100000]

Generates (in a temporary folder) a recording of one pair at depth 100 over ``--days`` UTC days,
written the way the recorder writes it (hourly segments in per-day folders, each rotated one
opening with a checkpoint), then: replays all days but the last into a dataset; appends the last
day's segments; times ``--update`` on that dataset; and times a full replay of every day. Both
in this one run, side by side. Not a test: compare the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from replay_speed import SECOND, _Stream, core_name

import replay
from kbook.segment import frame_line, meta_line
from kbook.sim import Market

DAY = 86_400 * SECOND
START_NS = 1_767_571_200 * SECOND  # 2026-01-05T00:00:00Z
HOUR = 3_600 * SECOND


def generate(root: Path, days: int, per_day: int, seed: int) -> None:
    """``days`` days of XBT/USD book-100 updates, ``per_day`` a day, hourly segments."""
    rng = random.Random(seed)
    now = START_NS
    clock = [now / SECOND]
    stream = _Stream(root, "XBT/USD", Market("XBT/USD", 100, seed, clock=lambda: clock[0]))
    head = [
        meta_line(now, {"type": "session_start", "run_id": "b" * 32, "pair": "XBT/USD"}),
        frame_line(now, 0, stream.market.snapshot_frame(336), True),
    ]
    stream.open(now, now, head)
    stream.boundary = now + HOUR
    gap = DAY / per_day
    for seq in range(1, days * per_day):
        step = 1 + int(rng.expovariate(1.0) * gap)
        if now + step >= START_NS + days * DAY:
            break
        now += step
        if now >= stream.boundary:
            checkpoint = stream.checkpoint(now)
            stream.close(now, "rotate")
            stream.open(now, now - now % HOUR, [checkpoint])
            stream.boundary = now - now % HOUR + HOUR
        clock[0] = now / SECOND
        assert stream.writer is not None
        stream.writer.write(frame_line(now, seq, stream.market.update_frame(336), True))
    stream.close(now, "stopped")


def hashes(out: Path) -> dict[str, str]:
    return {
        str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*.parquet"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--frames-per-day", type=int, default=100_000)
    parser.add_argument("--every", default="1s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbook-update-") as temp:
        root = Path(temp)
        started = time.perf_counter()
        generate(root / "all", args.days, args.frames_per_day, seed=3)
        print(
            f"generated {args.days} days in {time.perf_counter() - started:.1f} s ({core_name()})"
        )
        all_days = sorted((root / "all" / "raw" / "BTC-USD").iterdir())
        raw = root / "raw" / "BTC-USD"
        raw.mkdir(parents=True)
        for folder in all_days[:-1]:
            shutil.copytree(folder, raw / folder.name)
        out = root / "snapshots"
        replay.replay_to_dataset(root / "raw", out, every=args.every, workers=1)
        before = hashes(out)
        shutil.copytree(all_days[-1], raw / all_days[-1].name)

        started = time.perf_counter()
        summary = replay.replay_to_dataset(
            root / "raw", out, every=args.every, workers=1, update=True
        )
        update_s = time.perf_counter() - started
        started = time.perf_counter()
        replay.replay_to_dataset(root / "raw", root / "full", every=args.every, workers=1)
        full_s = time.perf_counter() - started

        after, full = hashes(out), hashes(root / "full")
        untouched = sum(after.get(name) == digest for name, digest in before.items())
        print(f"full replay of {args.days} days:          {full_s:7.2f} s")
        print(
            f"--update after appending day {args.days}:  {update_s:7.2f} s "
            f"({full_s / update_s:.1f}x faster; {summary.updated} partition(s) rewritten, "
            f"{untouched} of {len(before)} untouched)"
        )
        if after != full:
            print("MISMATCH: the updated dataset differs from a full replay", file=sys.stderr)
            sys.exit(1)
        print("the updated dataset is byte for byte the full replay's")


if __name__ == "__main__":
    main()
