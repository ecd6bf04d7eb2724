"""``kbook demo``: the whole product in one command, on this machine alone.

It starts the bundled simulator on a free loopback port (speaking Kraken's WebSocket v2, the API
``kbook record`` uses by default), records a few pairs with the real recorder for about 15 seconds
(dropping the connection once, a third of the way in, so that the reconnect, the fresh snapshot
and the marked gap can be seen), checks every checksum with ``verify``, replays the
recording at 1 s into Parquet with the real replay engine, and draws the book when matplotlib is
installed. Everything goes under one folder (``data/demo`` by default), replaced on each run.

The drop is followed by two refused reconnects, so the gap outlasts a grid step and shows up as
invalid rows and a grey band in the picture: a hole is marked, never papered over.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kbook.api import Api
from kbook.errors import OutputError, UsageError

MARKER = ".kbook-demo"
"""A file marking a folder as the demo's own, so a rerun may replace it and nothing else."""
DEMO_PAIRS = ("BTC/USD", "ETH/USD", "DOGE/USD")
MIN_SECONDS = 6.0
"""Shorter runs leave too few 1 s rows on either side of the injected gap to show anything."""


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things and what it saw."""

    folder: Path
    raw: Path
    snapshots: Path
    plot: Path | None
    frames: int
    reconnects: int
    checksums_ok: int
    checksums_failed: int
    rows: int
    invalid_rows: int


def prepare_folder(folder: Path) -> None:
    """Empty ``folder`` if it is a previous demo's; refuse anything else that is in the way."""
    if folder.exists():
        if not (folder / MARKER).exists():
            raise OutputError(
                f"{folder}: exists and was not made by kbook demo; pass another --out or remove it"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by kbook demo; rerunning the demo replaces this folder\n")


def run_demo(
    folder: Path = Path("data/demo"),
    seconds: float = 15.0,
    rate: float = 300.0,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Simulate, record, verify, replay and plot; ``say`` gets one line per step."""
    if not math.isfinite(seconds):
        raise UsageError(
            f"--seconds {seconds:g}: must be a number of seconds, {MIN_SECONDS:g} or more"
        )
    if seconds < MIN_SECONDS:
        raise UsageError(
            f"--seconds {seconds:g} is too short for the demo; use {MIN_SECONDS:g} or more"
        )
    from kbook.sim import Simulator, SimulatorConfig
    from kbook.verify import verify_paths
    from recorder import RecordConfig, Recorder
    from replay import replay_to_dataset

    prepare_folder(folder)
    raw, snapshots = folder / "raw", folder / "snapshots"
    with Simulator(SimulatorConfig(pairs=(), rate=rate, seed=7, api=Api.V2)) as sim:
        # The recorder follows the address: its path (/v2) says the API.
        say(f"1/4 simulator: Kraken v2 book feed on {sim.url} (seeded, {rate:.0f} updates/s)")
        # A third of the way in, the connection drops without a close frame, as a network fault
        # would, and the next two attempts are refused (HTTP 503), as an overloaded edge would.
        sim.faults.drop_after(round(rate * seconds / 3))
        say(f"2/4 recording {', '.join(DEMO_PAIRS)} at depth 100 for {seconds:.0f} s ...")
        config = RecordConfig(
            pairs=DEMO_PAIRS,
            depth=100,
            out=folder,
            url=sim.url,
            duration_ns=round(seconds * 1e9),
            quiet=True,
            immediate_retries=1,
            backoff_base_ns=1_000_000_000,
            backoff_cap_ns=2_000_000_000,
        )
        recorder = Recorder(config, stderr=None)
        outcome: list = []
        started = time.monotonic()
        thread = threading.Thread(target=lambda: outcome.append(_run(recorder)), daemon=True)
        thread.start()
        if sim.wait_for(lambda s: s.connections >= 1, timeout=seconds):
            sim.faults.refuse_connections(count=2)
        thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    summary = outcome[0]
    say(
        f"    {summary.frames} frames in {time.monotonic() - started:.1f} s; the injected drop "
        f"cost {summary.reconnects} reconnect(s); {len(summary.segments)} segment(s) under {raw}"
    )
    report = verify_paths([raw])
    say(
        f"3/4 verify: {report.checksums_ok} checksums ok, {report.checksums_failed} failed "
        f"(kbook verify {raw})"
    )
    replayed = replay_to_dataset([raw], snapshots, every="1s", levels=10, force=True, workers=1)
    rows = sum(p.rows for p in replayed.pairs.values())
    invalid = sum(p.rows - p.valid_rows for p in replayed.pairs.values())
    say(
        f"4/4 replay at 1 s: {rows} rows, {invalid} of them marked invalid (the gap) in {snapshots}"
    )
    plot = _plot(snapshots, folder, say)
    return DemoResult(
        folder=folder,
        raw=raw,
        snapshots=snapshots,
        plot=plot,
        frames=summary.frames,
        reconnects=summary.reconnects,
        checksums_ok=report.checksums_ok,
        checksums_failed=report.checksums_failed,
        rows=rows,
        invalid_rows=invalid,
    )


def _run(recorder: object) -> object:
    """The recorder's run, or the exception it raised, for the thread that runs it."""
    try:
        return recorder.run()  # type: ignore[attr-defined]
    except BaseException as exc:  # re-raised in the caller's thread
        return exc


def _plot(snapshots: Path, folder: Path, say: Callable[[str], None]) -> Path | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        say("    (pip install 'kbook[plot]' to get a picture of the book too)")
        return None
    from kbook.plot import plot_book
    from replay import read_snapshots

    out = plot_book(read_snapshots(snapshots, pair="BTC/USD"), "BTC/USD", folder / "BTC-USD.png")
    say(f"    picture of the BTC/USD book: {out}")
    return out
