"""Drill: the disk fills up under ``kbook record``.

Two ways, both without touching kbook's code: ``RLIMIT_FSIZE`` in the recorder's process (writes
past the limit fail with ``EFBIG``), at limits drawn from the seed; and, when this machine lets
the test mount one, a small tmpfs that runs out of space for real (``ENOSPC``). Either way the
recorder must stop with one line naming the file, exit 2, and leave every segment readable.

The guarantee is per pair: each pair's segments hold exactly the first frames of that pair's
stream (its own frames and the control frames copied to every pair), in order. Pairs are
flushed separately, so when the disk fills one pair may hold frames sent after another pair's
last one: merged across pairs, the frames need not be a prefix of what was sent.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from drill_support import (
    DEPTH,
    PAIRS,
    SEED,
    DrillSummary,
    drill_simulator,
    read_runs,
    report,
    sent_by_connection,
    sent_to_pair,
)

from kbook.sim import Simulator
from kbook.verify import verify_paths

LIMITS = sorted(random.Random(f"kbook-drill:{SEED}:disk").sample(range(300, 30_000), 3))
"""File size limits (bytes) drawn from the seed: one usually hit by the first flush."""


def record_until_full(
    sim: Simulator, out: Path, limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    def limit_file_size() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "kbook", "record", *PAIRS, "--depth", str(DEPTH)]
    command += ["--out", str(out), "--url", sim.url, "--quiet"]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_file_size,  # only setrlimit, before exec
    )


def check_full_disk_run(
    result: subprocess.CompletedProcess[str], out: Path, sim: Simulator, reason: str
) -> DrillSummary:
    """Exit 2 with one line naming a segment; everything written readable; each pair's frames
    exactly the first ones sent on its stream."""
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"kbook: error: {out}/raw/"), line
    named = Path(line.removeprefix("kbook: error: ").split(": ", 1)[0])
    assert named.name.endswith(".jsonl.zst.partial")
    assert named.exists()
    assert line.endswith(f": write failed: {reason}"), line
    runs = read_runs(out)
    tail = ("torn zstd frame at the end", "last line cut short", "no data: ")
    assert all(problem.split(": ", 1)[1].startswith(tail) for problem in runs.problems)
    [connection] = sent_by_connection(sim.sent).values()
    assert len(runs.runs) <= 1  # nothing at all when the first flush already failed
    frames = {seq: text for run in runs.runs.values() for seq, text in run.frames.items()}
    assert all(connection[seq] == text for seq, text in frames.items()), "seq is the send order"
    for pair in PAIRS:
        written, sent = runs.by_pair[pair], sent_to_pair(sim.sent, pair)
        assert written == sent[: len(written)], f"{pair}: not the first frames sent, in order"
    texts = list(frames.values())
    report_ = verify_paths([out])
    assert report_.checksums_failed == 0
    summary = DrillSummary("disk full", SEED, connections=1, bound="disk-full stop")
    summary.frames_sent = len(connection)
    summary.frames_recorded = len(texts)
    summary.lost_within_bound = len(connection) - len(texts)  # unflushed, or sent after the stop
    summary.checksums_ok = report_.checksums_ok
    return summary


@pytest.mark.slow
def test_file_size_limit_stops_the_recorder_cleanly(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    began = time.monotonic()
    total = DrillSummary("disk full (RLIMIT_FSIZE)", SEED, bound="disk-full stop")
    for limit in LIMITS:
        out = tmp_path / f"limit-{limit}"
        with drill_simulator(SEED, rate=2000.0) as sim:
            result = record_until_full(sim, out, limit)
            summary = check_full_disk_run(result, out, sim, "File too large")
        assert all(path.stat().st_size <= limit for path in (out / "raw").rglob("*"))
        summary.faults[f"RLIMIT_FSIZE {limit} B"] += 1
        total.add(summary)
    total.seconds = time.monotonic() - began
    report(total, tmp_path_factory.getbasetemp())
    assert total.frames_recorded > 0


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where``; skips the test when mounting is not allowed."""
    where.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "kbook-drill", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() or 'not permitted'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_full_filesystem_stops_the_recorder_cleanly(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    began = time.monotonic()
    with small_tmpfs(tmp_path / "disk", "160k") as disk, drill_simulator(SEED, rate=4000.0) as sim:
        result = record_until_full(sim, disk)
        summary = check_full_disk_run(result, disk, sim, "No space left on device")
    summary.drill = "disk full (tmpfs ENOSPC)"
    summary.faults["tmpfs 160 KiB full"] += 1
    summary.seconds = time.monotonic() - began
    report(summary, tmp_path_factory.getbasetemp())
    assert summary.frames_recorded > 0
