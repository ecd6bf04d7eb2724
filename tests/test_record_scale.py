"""300 pairs into one folder, end to end: record them from the simulator in one run (one
connection, one subscribe request, one lock name), verify every stream, replay every pair."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pytest
from record_support import Background, fast_config, wait_until

from kbook.api import Api
from kbook.pairs import file_name
from kbook.sim import Simulator, SimulatorConfig
from kbook.verify import verify_paths
from replay.api import replay_table

PAIRS = tuple(f"C{index:03d}/USD" for index in range(300))


@pytest.mark.slow
def test_300_pairs_record_verify_and_replay(tmp_path: Path) -> None:
    config = SimulatorConfig(api=Api.V1, pairs=PAIRS, rate=3000.0, seed=9)
    with Simulator(config) as sim, Background(fast_config(sim, tmp_path, PAIRS, depth=10)) as run:
        wait_until(lambda: sim.count("snapshot", 1) >= len(PAIRS), 30, "every snapshot")
        wait_until(lambda: sim.count("update", 1) >= 6000, 30, "updates of every pair")
        # Under load the recorder may lag the feed: stop once it has taken what was sent.
        recorder = run.recorder
        wait_until(lambda: len(recorder.subs.subscribed_once) == len(PAIRS), 30, "the answers")
        wait_until(lambda: recorder.frames >= 6300 + len(PAIRS), 30, "the frames")
        summary = run.finish(timeout=30)
    assert summary.reconnects == 0
    assert set(summary.subscribed) == set(PAIRS)
    assert summary.frames >= 6300
    streams = {path.parent.parent.name for path in summary.segments}
    assert streams == {file_name(pair) for pair in PAIRS}
    report = verify_paths([tmp_path / "raw"])
    assert report.problems == []
    assert report.checksums_failed == 0
    assert report.checksums_ok >= 5000
    table = replay_table([tmp_path / "raw"], every="100ms", levels=5)
    replayed = set(pc.unique(table.column("pair")).to_pylist())
    assert replayed == set(PAIRS)
