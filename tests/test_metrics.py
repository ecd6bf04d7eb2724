"""Prometheus metrics of a recording against the simulator: scraped over HTTP while faults happen,
and the textfile read while it is rewritten every second."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from apis import CASES, ApiCase
from metrics_support import Samples, parse, scrape, value
from record_support import Background, fast_config, wait_until

from kbook.sim import Simulator, SimulatorConfig
from kbook.verify import verify_paths
from recorder.metrics import Metrics
from recorder.monitor import Monitor

PAIRS = ("BTC/USD", "ETH/USD")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(pairs=("XBT/USD", "ETH/USD"), rate=200.0, seed=11)) as s:
        yield s


@pytest.fixture
def any_sim(case: ApiCase) -> Iterator[Simulator]:
    """A simulator of each API in turn; the recorder follows its URL to the API."""
    with Simulator(case.sim_config(pairs=("XBT/USD", "ETH/USD"), rate=200.0, seed=11)) as s:
        yield s


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Metrics, int]]:
    """Metrics served on 127.0.0.1, a free port."""
    metrics = Metrics(tmp_path)
    port = metrics.serve("127.0.0.1", 0)
    yield metrics, port
    metrics.close()


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=str)
def test_scraped_metrics_follow_a_recording_with_faults(
    case: ApiCase, any_sim: Simulator, served: tuple[Metrics, int], tmp_path: Path
) -> None:
    sim = any_sim
    metrics, port = served
    config = fast_config(sim, tmp_path, PAIRS, connect_retries=None)
    seen: list[Samples] = []

    def sample() -> Samples:
        seen.append(scrape(port))
        return seen[-1]

    def shows(name: str, expected: float, **labels: str) -> bool:
        return value(sample(), name, **labels) == expected

    with Background(config, Monitor(metrics)) as run:
        wait_until(lambda: shows("kbook_connected", 1), what="connected = 1")
        wait_until(
            lambda: all(value(sample(), "kbook_book_valid", pair=p) == 1 for p in PAIRS),
            what="every book valid",
        )
        assert all(value(seen[-1], "kbook_subscribed", pair=p) == 1 for p in PAIRS)
        sim.faults.bad_checksum_at(3)
        wait_until(
            lambda: (
                (value(sample(), "kbook_checksums_total", pair="BTC/USD", result="failed") or 0)
                + (value(seen[-1], "kbook_checksums_total", pair="ETH/USD", result="failed") or 0)
                >= 1
            ),
            what="a failed checksum",
        )
        # Kraken unreachable for a while: the gauges flip, and flip back once it answers again.
        sim.faults.refuse_connections(seconds=2.5)
        sim.faults.drop_after(0)
        wait_until(lambda: shows("kbook_connected", 0), what="connected = 0")
        assert value(seen[-1], "kbook_book_valid", pair="BTC/USD") == 0
        assert value(seen[-1], "kbook_subscribed", pair="BTC/USD") == 0
        wait_until(lambda: shows("kbook_connected", 1), timeout=15, what="connected again")
        wait_until(lambda: shows("kbook_book_valid", 1, pair="BTC/USD"), what="valid again")
        summary = run.finish()

    final = scrape(port)
    report = verify_paths([tmp_path / "raw"])
    for pair in PAIRS:
        stats = report.pairs[pair]  # verify names pairs as the metrics do (BTC/USD)
        assert value(final, "kbook_frames_total", pair=pair) == stats.frames
        assert value(final, "kbook_checksums_total", pair=pair, result="ok") == stats.checksums_ok
        failed = value(final, "kbook_checksums_total", pair=pair, result="failed")
        assert failed == stats.checksums_failed
        last = value(final, "kbook_last_frame_timestamp_seconds", pair=pair)
        assert last == pytest.approx(stats.last_ns / 1e9, abs=1e-5)  # type: ignore[operator]
    assert report.checksums_failed >= 1
    assert value(final, "kbook_reconnects_total") == summary.reconnects >= 1
    assert value(final, "kbook_bytes_written_total") == summary.bytes_written > 0
    assert value(final, "kbook_connected") == 0
    assert (value(final, "kbook_disk_free_bytes") or 0) > 0
    assert value(final, "kbook_segment_flush_timestamp_seconds") is not None
    assert value(final, "kbook_receive_lag_seconds") is not None
    # Counters never went down between two scrapes.
    frames = [value(s, "kbook_frames_total", pair="BTC/USD") or 0 for s in seen]
    assert frames == sorted(frames)


@pytest.mark.slow
def test_the_textfile_is_never_read_half_written(sim: Simulator, tmp_path: Path) -> None:
    textfile = tmp_path / "kbook.prom"
    metrics = Metrics(tmp_path)
    config = fast_config(sim, tmp_path, PAIRS)
    reads: list[Samples] = []
    stop = threading.Event()

    def read_constantly() -> None:
        while not stop.is_set():
            if textfile.exists():
                # Every read parses and holds the last metric written: never a cut file.
                samples = parse(textfile.read_text())
                assert value(samples, "kbook_disk_free_bytes") is not None
                reads.append(samples)

    reader = threading.Thread(target=read_constantly)
    with Background(config, Monitor(metrics, textfile)) as run:
        reader.start()
        try:
            wait_until(
                lambda: (
                    bool(reads)
                    and (value(reads[-1], "kbook_frames_total", pair="BTC/USD") or 0) > 0
                    and reader.is_alive()
                ),
                what="the textfile showing frames",
            )
            first = value(reads[-1], "kbook_frames_total", pair="BTC/USD") or 0
            wait_until(
                lambda: (value(reads[-1], "kbook_frames_total", pair="BTC/USD") or 0) > first,
                what="the textfile rewritten",
            )
        finally:
            stop.set()
            reader.join(timeout=5)
        summary = run.finish()
    assert not reader.is_alive()
    assert len(reads) > 10
    final = parse(textfile.read_text())
    assert value(final, "kbook_connected") == 0
    frames = sum(value(final, "kbook_frames_total", pair=p) or 0 for p in PAIRS)
    assert frames > 0
    assert value(final, "kbook_bytes_written_total") == summary.bytes_written
    assert list(tmp_path.glob("kbook.prom.*")) == []  # no temporary file left behind


@pytest.mark.slow
def test_kbook_record_serves_metrics_on_the_port_it_names(sim: Simulator, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "kbook", "record", "BTC/USD", "--url", sim.url, "--out",
         str(tmp_path), "--metrics-port", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # the first line names the address
        match = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
        assert match, line
        port = int(match.group(1))
        wait_until(
            lambda: (value(scrape(port), "kbook_frames_total", pair="BTC/USD") or 0) > 0,
            what="frames counted",
        )
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert process.returncode == 0


@pytest.mark.slow
def test_a_metrics_port_in_use_is_one_line(sim: Simulator, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "kbook", "record", "BTC/USD", "--url", sim.url, "--out",
             str(tmp_path), "--metrics-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"kbook: error: --metrics-port {port}: cannot listen on 127.0.0.1")
    assert not (tmp_path / "raw").exists()
