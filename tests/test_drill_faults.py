"""Drill: the recorder against the simulator through 20+ drops and every other fault, in one run.

Nothing sent while the recorder was connected may be missing, out of order or doubled; after every
reconnect each pair starts again from a snapshot; the only failed checksums are the injected ones;
replay marks exactly the gaps (a disconnect or a resync until the next snapshot) as invalid.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from drill_support import DROPS, SEED, report, run_fault_drill
from sim_support import Client

from kbook.api import Api
from kbook.sim import Simulator, SimulatorConfig


@pytest.mark.slow
def test_many_faults_at_random_points_lose_nothing(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    summary = run_fault_drill(tmp_path, SEED, DROPS)
    report(summary, tmp_path_factory.getbasetemp())
    assert summary.faults["drop"] >= 20 or DROPS < 20
    assert len(summary.faults) == 8, "every kind of fault was injected"
    assert summary.frames_lost == 0
    assert summary.checksums_failed_after_resync == 0
    assert summary.connections > summary.faults["drop"]
    assert summary.replay_invalid_rows > 0


def test_a_fault_armed_for_now_fires_while_updates_stream() -> None:
    """Found by the drill: ``drop_after(0)`` was lost when the simulator's pump sent a book frame
    before the task that checks a fault armed for "now" ran (the count had to match exactly)."""
    with Simulator(SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=0.0, seed=3)) as sim:
        for attempt in range(5):
            with Client(sim.url, timeout=5.0) as client:
                client.subscribe(["XBT/USD"], depth=100)
                client.read_updates(50)
                sim.faults.drop_after(0)
                started = time.monotonic()
                assert client.read_to_end() is None, f"attempt {attempt}: not dropped"
                assert time.monotonic() - started < 3.0
