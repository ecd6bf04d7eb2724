"""By default the recorder never gives up reconnecting (a service supervisor expects that);
``--retries N`` still ends the run after N failed attempts in a row."""

from __future__ import annotations

from pathlib import Path

import pytest
from record_support import FAST, Background, updates_on

from kbook.errors import RecordError
from kbook.sim import Simulator
from recorder import RecordConfig

REFUSED = 40
"""More refused attempts than the old default budget (30)."""


def config_for(sim: Simulator, out: Path, **overrides: object) -> RecordConfig:
    timings = {k: v for k, v in FAST.items() if k != "connect_retries"}
    return RecordConfig(pairs=("XBT/USD",), out=out, url=sim.url, **{**timings, **overrides})


@pytest.mark.slow
def test_by_default_a_long_outage_is_waited_out(simulator: Simulator, tmp_path: Path) -> None:
    simulator.faults.refuse_connections(count=REFUSED)
    config = config_for(simulator, tmp_path)
    assert config.connect_retries is None
    with Background(config) as run:
        simulator.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=60)
        summary = run.finish()
    assert simulator.refused == REFUSED
    assert summary.frames > 20


def test_retries_n_still_gives_up(simulator: Simulator, tmp_path: Path) -> None:
    simulator.faults.refuse_connections(count=REFUSED)
    with Background(config_for(simulator, tmp_path, connect_retries=5)) as run:
        run.thread.join(timeout=30)
        with pytest.raises(RecordError, match=r"\(5 attempts\)"):
            run.join()
    assert simulator.refused == 5
