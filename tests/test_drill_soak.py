"""Soak: the drills again and again for ``KBOOK_SOAK_SECONDS`` (default 300), each round with a
new seed. Excluded by default; run with ``pytest -m soak -s`` (the totals print at the end).

Rounds alternate: two rounds of the mixed-fault drill (``KBOOK_DRILL_DROPS`` drops and the other
faults, on a fresh simulator and recorder), then one round of the ``kill -9`` drill. Each round's
folder is deleted once it has been checked, so a long soak does not fill the disk.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from drill_support import (
    DROPS,
    KILLS,
    SEED,
    SOAK_SECONDS,
    DrillSummary,
    report,
    run_fault_drill,
    run_kill_drill,
)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    deadline = time.monotonic() + SOAK_SECONDS
    faults = DrillSummary("soak: faults", SEED)
    kills = DrillSummary("soak: kill -9", SEED)
    round_ = 0
    while time.monotonic() < deadline:
        out = tmp_path / f"round-{round_}"
        seed = SEED + round_
        try:
            if round_ % 3 == 2:
                summary = run_kill_drill(out, seed, KILLS)
                kills.add(summary)
            else:
                summary = run_fault_drill(out, seed, DROPS)
                faults.add(summary)
        except AssertionError as exc:  # name the seed, so that the round can be run again
            raise AssertionError(f"round {round_} (KBOOK_DRILL_SEED={seed}): {exc}") from exc
        print(f"round {round_}: {summary.line()}", flush=True)
        assert summary.frames_lost == 0, f"seed {seed}: {summary.line()}"
        assert summary.checksums_failed_after_resync == 0, f"seed {seed}: {summary.line()}"
        shutil.rmtree(out)
        round_ += 1
    faults.drill = f"soak: {round_ - round_ // 3} fault rounds"
    kills.drill = f"soak: {round_ // 3} kill -9 rounds"
    basetemp = tmp_path_factory.getbasetemp()
    report(faults, basetemp)
    report(kills, basetemp)
