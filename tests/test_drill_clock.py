"""Drill: the wall clock steps backwards (and forwards) while recording.

``recv_ns`` comes from the wall clock, which NTP or an operator may step. Nothing may be lost or
reordered for it: segments keep every frame in receive order (``seq`` strictly increasing through
each pair's segments in the order readers take them), and replay, which reads the clock as the
largest receive time seen, still gives time-ordered rows, valid where the books were.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from drill_support import (
    PAIRS,
    SEED,
    DrillSummary,
    FaultDriver,
    check_recording,
    connection_ready,
    drill_config,
    drill_simulator,
    report,
)
from record_support import Background, read_output

from kbook.pairs import file_name
from kbook.segment import find_segments, frame_line, write_segment
from kbook.units import SECOND


class SteppingClock:
    """``time.time_ns()`` plus an offset the test moves, as a stepped system clock would."""

    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns


@pytest.mark.parametrize(
    ("steps_s", "logged"),
    [((-2.0, 2.5, -0.3), 2), ((-3600.0, -30.0), 1)],
    ids=["back-2s-forward-2.5s-back-0.3s", "back-1h-back-30s"],
)
def test_clock_steps_lose_and_reorder_nothing(
    steps_s: tuple[float, ...],
    logged: int,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Found by this drill: after a step back, a segment opened by size rotation carried an
    earlier time than the one before it, and readers (which take segments in time order) read
    its frames first. The recorder's stamps now never go back; the step is logged."""
    began = time.monotonic()
    clock = SteppingClock()
    with drill_simulator(SEED, rate=1000.0) as sim:
        # Small segments: size rotations happen while the clock is behind.
        config = drill_config(sim, tmp_path, max_segment_bytes=4_000)
        run = Background(config)
        run.recorder.clock = clock
        with run:
            sim.wait_for(lambda s: connection_ready(s, 1), timeout=10)
            driver = FaultDriver(sim, run, random.Random(f"kbook-drill:{SEED}:clock"))
            for index, step in enumerate(steps_s):
                updates = sim.count("update")
                sim.wait_for(lambda s, u=updates: s.count("update") >= u + 400, timeout=10)
                clock.offset_ns += int(step * SECOND)
                driver.faults[f"clock {step:+g}s"] += 1
                if index == 0:
                    driver.inject("drop")  # a reconnection while the clock is behind
            updates = sim.count("update")
            sim.wait_for(lambda s: s.count("update") >= updates + 400, timeout=10)
            driver.finish()
            run.finish(timeout=15)
        sent, connections = sim.sent, sim.connections
    summary = DrillSummary("clock", SEED, driver.faults, connections=connections)
    output = check_recording(tmp_path, sent, summary, bad_checksums=0)
    for pair in PAIRS:
        seqs = [
            record["seq"]
            for path in find_segments([tmp_path / "raw" / file_name(pair)])
            for record in output.lines[path]
            if "seq" in record and "meta" not in record
        ]
        assert seqs == sorted(set(seqs)), f"{pair}: frames out of receive order"
        files = output.files_of(file_name(pair))
        stamps = [record["recv_ns"] for path in files for record in output.lines[path]]
        assert stamps == sorted(stamps), f"{pair}: receive times go back"
        steps = [meta for path in files for meta in output.metas("clock_step", path)]
        assert len(steps) == logged
        # The step is measured from the last stamp before it, which a busy recorder may have
        # taken a few hundred milliseconds earlier: the logged size is the step's, less that.
        assert steps[0]["behind_ns"] >= abs(steps_s[0]) * SECOND * 0.5
    summary.seconds = time.monotonic() - began
    report(summary, tmp_path_factory.getbasetemp())
    assert summary.frames_lost == 0
    assert summary.checksums_failed == 0
    assert read_output(tmp_path).problems == []


def test_segments_of_one_held_time_keep_the_order_they_were_made(tmp_path: Path) -> None:
    """Found by this drill (one run in three): while the clock is held, size-rotated segments
    share their first receive time, and the tie was broken by plain name, which puts
    ``X...Z-1.jsonl.zst`` before ``X...Z.jsonl.zst`` and ``-10`` before ``-2``."""
    names = [f"BTC-USD.20261121T000000Z{suffix}.jsonl.zst" for suffix in ("", "-1", "-2", "-10")]
    for seq, name in enumerate(names):
        write_segment(tmp_path / name, [frame_line(5 * SECOND, seq, '{"event":"heartbeat"}', True)])
    (tmp_path / names[-1]).rename(tmp_path / (names[-1] + ".partial"))
    order = [path.name.removesuffix(".partial") for path in find_segments([tmp_path])]
    assert order == names
