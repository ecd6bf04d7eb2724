"""Drill: ``kill -9`` of ``kbook record`` at random points, restarted each time as cron would.

After every kill, every file left behind is hashed, and no later run may change or remove it.
Each run's frames must be, exactly, the first frames its connection sent; what a kill may take is
bounded by the flush interval (``KILL_FLUSH_S`` plus one tick). Verify and replay then read every
run's segments together (``drill_support.run_kill_drill``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from drill_support import KILLS, SEED, report, run_kill_drill


@pytest.mark.slow
def test_kill_9_at_random_points_loses_at_most_one_flush(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Found by this drill: a run killed before its first flush left an empty ``.partial``, and
    verify and replay then refused the whole folder ("empty file, not a segment")."""
    summary = run_kill_drill(tmp_path, SEED, KILLS)
    report(summary, tmp_path_factory.getbasetemp())
    assert summary.faults["kill -9"] >= 10 or KILLS < 10
    assert summary.frames_lost == 0
    assert summary.checksums_failed == 0
    assert summary.checksums_ok > 100
    assert summary.replay_invalid_rows > 0, "no gap between two runs was replayed"
