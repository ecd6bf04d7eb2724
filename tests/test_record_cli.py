"""``kbook record`` as a process: kill -9, SIGTERM, the lock, bad inputs, a full disk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from record_support import match_connections, read_output, updates_on, wait_until

from kbook.api import Api
from kbook.errors import SegmentError
from kbook.segment import PARTIAL_SUFFIX
from kbook.sim import Simulator, SimulatorConfig
from kbook.verify import verify_paths

PAIRS = ["XBT/USD", "ETH/USD"]
KBOOK = [sys.executable, "-m", "kbook"]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(
        SimulatorConfig(api=Api.V1, pairs=tuple(PAIRS), rate=200.0, seed=11)
    ) as simulator:
        yield simulator


def start(sim: Simulator, out: Path, *extra: str) -> subprocess.Popen[str]:
    command = [*KBOOK, "record", *PAIRS, "--out", str(out), "--url", sim.url, "--quiet", *extra]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KBOOK_DEBUG", None)
    return env


def partials(out: Path) -> list[Path]:
    return sorted(out.rglob("*" + PARTIAL_SUFFIX))


def recorded_count(out: Path) -> int:
    """Frames readable so far; 0 while a segment is still empty (before its first flush)."""
    try:
        return len(read_output(out).frames) if partials(out) else 0
    except SegmentError:
        return 0


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(sig)
    _, stderr = process.communicate(timeout=10)
    return process.returncode, stderr


@pytest.mark.slow
def test_kill_9_loses_at_most_the_last_flush_and_restart_starts_anew(
    sim: Simulator, tmp_path: Path
) -> None:
    first = start(sim, tmp_path)
    try:
        sim.wait_for(lambda s: updates_on(s, 1) >= 100, timeout=10)
        sent_before = len(sim.sent)
        wait_until(lambda: recorded_count(tmp_path) >= sent_before, 5, "a flush after the mark")
        sent_at_kill = len(sim.sent)
        first.kill()
        first.wait(timeout=5)
    finally:
        stop(first)
    old = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in partials(tmp_path)}
    assert len(old) == 2
    output = read_output(tmp_path)
    recorded = len(output.texts)
    assert match_connections(output.texts, sim.sent)[1] == len(sim.sent) - recorded
    assert recorded >= sent_before
    assert sent_at_kill - recorded <= 300  # about a second of a 200 frames/s feed

    second = start(sim, tmp_path)
    try:
        sim.wait_for(lambda s: updates_on(s, 2) >= 100, timeout=10)
        wait_until(lambda: len(partials(tmp_path)) == 4, 5, "the new segments")
    finally:
        code, stderr = stop(second)
    assert code == 0, stderr
    assert {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in partials(tmp_path)
    } == old
    finished = sorted(tmp_path.rglob("*.jsonl.zst"))
    assert len(finished) == 2
    assert not set(finished) & {p.with_suffix("") for p in old}
    report = verify_paths(finished)
    assert report.checksums_failed == 0
    assert report.checksums_ok > 50


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT]
)
def test_signal_closes_every_segment_and_exits_0(
    sig: signal.Signals, sim: Simulator, tmp_path: Path
) -> None:
    process = start(sim, tmp_path, "--rotate", "1s")
    try:
        sim.wait_for(lambda s: updates_on(s, 1) >= 300, timeout=10)
        sent_at_signal = len(sim.sent)
    finally:
        code, stderr = stop(process, sig)
    assert code == 0, stderr
    assert stderr == ""
    assert partials(tmp_path) == []
    output = read_output(tmp_path)
    assert output.problems == []
    assert len(output.texts) >= sent_at_signal
    match_connections(output.texts, sim.sent)
    ends = [meta["reason"] for meta in output.metas("segment_end")]
    assert ends.count(sig.name) == 2
    assert set(ends) == {"rotate", sig.name}
    assert verify_paths([tmp_path]).checksums_failed == 0


@pytest.mark.slow
def test_second_recorder_on_the_same_pairs_is_refused(sim: Simulator, tmp_path: Path) -> None:
    first = start(sim, tmp_path)
    try:
        sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=10)
        second = subprocess.run(
            [*KBOOK, "record", "eth/usd", "BTC/USD", "--out", str(tmp_path), "--url", sim.url],
            capture_output=True,
            text=True,
            timeout=10,
            env=_env(),
        )
    finally:
        code, _ = stop(first)
    assert code == 0
    assert second.returncode == 1
    [line] = second.stderr.splitlines()
    assert line.startswith("kbook: error: ")
    assert "already recording" in line
    assert ".kbook-record.set-" in line
    assert sim.connections == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["BTC/USD", "--depth", "42"], 2, "--depth 42 is not one Kraken offers"),
        (["BTCUSD"], 2, "pair 'BTCUSD' is not BASE/QUOTE"),
        (["BTC/USD", "--duration", "5x"], 2, "--duration '5x' is not a number with a unit"),
        (["BTC/USD", "--out", "{file}/data"], 2, "cannot write the output folder"),
        (["BTC/USD", "--retries", "2"], 1, "connection refused (2 attempts)"),
        (["BTC/USD", "--max-segment-mb", "nan"], 2, "--max-segment-mb nan: must be a positive"),
        (["BTC/USD", "--max-segment-mb", "inf"], 2, "--max-segment-mb inf: must be a positive"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    args: list[str], code: int, message: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    url = f"ws://127.0.0.1:{closed_port()}"
    args = [arg.replace("{file}", str(blocker)) for arg in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = subprocess.run(
        [*KBOOK, "record", *args, "--url", url, "--quiet"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == code
    [line] = result.stderr.splitlines()
    assert line.startswith("kbook: error: ")
    assert message in line
    assert not (tmp_path / "out" / "raw").exists()


def test_unknown_pairs_only_is_one_line_and_exit_1(sim: Simulator, tmp_path: Path) -> None:
    result = subprocess.run(
        [*KBOOK, "record", "FOO/BAR", "--out", str(tmp_path), "--url", sim.url],
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line == (
        "kbook: error: no pair could be subscribed (FOO/BAR: Currency pair not supported FOO/BAR)"
    )


@pytest.mark.slow
def test_full_disk_stops_with_the_path_and_keeps_what_was_written(
    sim: Simulator, tmp_path: Path
) -> None:
    limit = 8000
    script = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "from kbook.cli import main\n"
        "sys.argv = ['kbook'] + sys.argv[1:]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "record", *PAIRS, "--out", str(tmp_path)]
        + ["--url", sim.url, "--quiet"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"kbook: error: {tmp_path}/raw/")
    assert "File too large" in line
    output = read_output(tmp_path)
    assert len(output.texts) > 50
    match_connections(output.texts, sim.sent)
    assert len(partials(tmp_path)) >= 1


def test_duration_ends_the_run_with_exit_0(sim: Simulator, tmp_path: Path) -> None:
    process = start(sim, tmp_path, "--duration", "1s")
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert partials(tmp_path) == []
    ends = {meta["reason"] for meta in read_output(tmp_path).metas("segment_end")}
    assert ends == {"duration"}
