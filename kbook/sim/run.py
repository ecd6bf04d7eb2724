"""``kbook simulate`` as a library call: serve until a duration passes, Ctrl+C or SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from kbook.sim.config import SimulatorConfig
from kbook.sim.faults import FaultPlan
from kbook.sim.simulator import Simulator


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one ``run`` served, for the closing line on stderr."""

    seconds: float
    connections: int
    refused: int
    frames: int
    interrupted: bool


def run(
    config: SimulatorConfig,
    faults: FaultPlan,
    duration_s: float | None,
    announce: Callable[[str], None],
) -> RunSummary:
    """Serve ``config`` for ``duration_s`` seconds (None: until interrupted).

    ``announce`` gets the URL as soon as the port is open (the CLI prints it as its first line, so
    a script can read it even with ``--port 0``). Ctrl+C and SIGTERM end the run normally: the
    simulator is meant to be stopped that way.
    """
    started = time.monotonic()
    interrupted = False
    with Simulator(config) as sim, _sigterm_sets(stop := threading.Event()):
        faults.apply(sim.faults)
        announce(sim.url)
        try:
            interrupted = stop.wait(duration_s)
        except KeyboardInterrupt:
            interrupted = True
    return RunSummary(
        seconds=time.monotonic() - started,
        connections=sim.connections,
        refused=sim.refused,
        frames=sim.frames_sent,
        interrupted=interrupted,
    )


@contextmanager
def _sigterm_sets(event: threading.Event) -> Iterator[None]:
    """Turn SIGTERM into ``event.set()`` for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
