"""Replaying into a dataset keeps memory flat in the input size: rows go to Parquet in row groups.

Measured as the peak RSS of a child process (Arrow's own allocations included), replaying N and
10 N frames; the first N already exceeds every fixed-size read buffer, so what is left to grow
would be a leak of rows or frames.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from replay_support import cheap_frames

from kbook.segment import write_segment
from kbook.units import MS

CHILD = """
import sys
from pathlib import Path
import replay
summary = replay.replay_to_dataset(sys.argv[1], sys.argv[2], every="1ms", levels=10, workers=1)
status = Path("/proc/self/status").read_text().splitlines()
print(summary.rows, next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""
"""The child's own peak RSS is ``VmHWM``: ``getrusage``'s ``ru_maxrss`` survives ``execve`` on
Linux, so it would report the pytest process this child was forked from when that is larger."""


def replay_in_child(segment: Path, out: Path) -> tuple[int, int]:
    """(rows written, peak RSS in KiB) of a replay in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(segment), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows, rss = done.stdout.split()
    return int(rows), int(rss)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_input(tmp_path: Path) -> None:
    peaks = []
    for frames in (15_000, 150_000):
        segment = write_segment(
            tmp_path / f"{frames}.jsonl.zst", cheap_frames(frames, 1_763_683_200_000 * MS, MS)
        )
        rows, rss = replay_in_child(segment, tmp_path / f"out-{frames}")
        assert rows == frames
        peaks.append(rss)
    small, large = peaks
    assert large < small + 40_000, f"peak RSS {small} KiB for 15k frames, {large} KiB for 150k"


PANDAS_CHILD = """
import sys
import replay
summary = replay.replay_to_dataset(sys.argv[1], sys.argv[2], every="1ms", levels=10, workers=1)
print(summary.rows, "pandas" in sys.modules)
"""


def test_replay_never_imports_pandas(tmp_path: Path) -> None:
    """pandas is 50 MB of peak RSS a replay never needs (``pa.scalar`` and ``pa.array`` import
    it on first use, so the row buffers build their arrays from buffers instead)."""
    segment = write_segment(
        tmp_path / "s.jsonl.zst", cheap_frames(2_000, 1_763_683_200_000 * MS, MS)
    )
    done = subprocess.run(
        [sys.executable, "-c", PANDAS_CHILD, str(segment), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["2000", "False"]
