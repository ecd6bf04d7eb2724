"""``kbook replay``: a thin CLI; bad input is one line on stderr, a non-zero exit, and no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from record_support import wait_until
from replay_support import SynthMarket, write_frames

import replay
from kbook.cli import main
from kbook.errors import InputError

KBOOK = Path(sys.executable).with_name("kbook")


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[object, str, str]:
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["kbook", "replay", "--workers", "1", *args])
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def segment(tmp_path: Path) -> Path:
    market = SynthMarket("XBT/USD", depth=10, seed=9)
    return write_frames(
        tmp_path / "raw" / "s.jsonl.zst", market.frames(50, 1_763_683_200_000_000_000, 10**8)
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pair", "ETH/USD"], "pair ETH/USD not found in the segments; recorded: BTC/USD"),
        (["--pair", "nonsense"], "pair 'nonsense' is not BASE/QUOTE"),
        (["--start", "2030-01-01", "--end", "2030-01-02"], "no snapshot rows between 2030-01-01"),
        (["--start", "2030-01-02", "--end", "2030-01-01"], "empty time range"),
        (["--start", "yesterday"], "--start 'yesterday' is not an ISO date/time"),
        (["--every", "0"], "--every '0' is not a number with a unit"),
        (["--every", "7"], "--every '7' is not a number with a unit"),
        (["--every", "1s5"], "--every '1s5' is not a number with a unit"),
        (["--every", "0s"], "--every must be positive"),
        (["--every", "-1s"], "--every must be positive"),
        (["--every", "1ns"], "--every 1ns would write more than 10,000,000 rows for one pair on"),
        (
            ["--levels", "11"],
            "--levels 11 is deeper than every recorded book of BTC/USD (the deepest is book-10)",
        ),
        (["--levels", "0"], "--levels must be a positive whole number"),
    ],
)
def test_bad_options_fail_in_one_line_and_write_nothing(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    segment: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "snaps"
    code, _stdout, err = run_main(monkeypatch, capsys, str(segment), "--out", str(out), *args)
    assert code == 2
    assert err.startswith("kbook: error: ")
    assert err.count("\n") == 1
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_unreadable_segment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_text('{"recv_ns": 1, "msg": []}\n')
    code, _, err = run_main(monkeypatch, capsys, str(bad), "--out", str(tmp_path / "snaps"))
    assert (code, err) == (
        2,
        f"kbook: error: {bad}: not a zstd segment (kbook segments are .jsonl.zst files)\n",
    )
    assert not (tmp_path / "snaps").exists()


def test_raw_segments_are_not_snapshots(segment: Path) -> None:
    """Plotting or loading the recorder's folder instead of a replayed dataset: one line saying
    what it is and what to run, from the CLI and from the Python API."""
    raw = segment.parent
    (raw / "notes.txt").write_text("not parquet")
    hint = f"{raw}: is a folder of raw segments, not snapshots; replay it first: kbook replay {raw}"
    with pytest.raises(InputError, match="folder of raw segments"):
        replay.read_snapshots(raw)
    done = subprocess.run(
        [str(KBOOK), "plot", str(raw), "--pair", "BTC/USD", "--out", str(raw / "b.png")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"kbook: error: {hint}"), line


def test_a_damaged_dataset_is_one_error(tmp_path: Path) -> None:
    dataset = tmp_path / "snaps" / "pair=BTC-USD" / "date=2025-11-21"
    dataset.mkdir(parents=True)
    (dataset / "part-0.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(InputError, match="cannot read the snapshots"):
        replay.read_snapshots(tmp_path / "snaps")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_replay_and_leaves_no_debris(sig: signal.Signals, tmp_path: Path) -> None:
    """SIGTERM or SIGINT mid-replay: one line, exit 128 + signal, no hidden folder left; and a
    hidden folder that a ``kill -9`` left is removed by the next run."""
    market = SynthMarket("XBT/USD", depth=10, seed=3)
    start = 1_763_683_200_000_000_000
    raw = tmp_path / "raw"
    for hour in range(2):  # two hours at 1 ms: 7.2 M rows, seconds of work
        frames = market.frames(20, start + hour * 3_600_000_000_000, 180_000_000_000)
        write_frames(raw / f"{hour}.jsonl.zst", frames)
    out = tmp_path / "snaps"
    dead = subprocess.Popen(["true"])  # a process id that no longer runs
    dead.wait()
    debris = tmp_path / f".snaps.tmp-{dead.pid}-0123abcd"
    (debris / ".tasks").mkdir(parents=True)
    command = [str(KBOOK), "replay", str(raw), "--every", "1ms", "--out", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    mine = f".snaps.tmp-{process.pid}-"
    wait_until(lambda: any(p.name.startswith(mine) for p in tmp_path.iterdir()), 60, mine)
    assert process.poll() is None, "the replay ended before the signal: make it longer"
    assert not debris.exists()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig
    assert stderr.splitlines() == [f"kbook: replay stopped by {sig.name}: {out} left as it was"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_missing_default_folder(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(monkeypatch, capsys)
    assert code == 2
    assert err.startswith("kbook: error: no segments given and ./data/raw does not exist")
    assert err.count("\n") == 1


def test_existing_output_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    segment: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "snaps"
    assert run_main(monkeypatch, capsys, str(segment), "--out", str(out))[0] == 0
    code, _, err = run_main(monkeypatch, capsys, str(segment), "--out", str(out))
    assert (code, err) == (2, f"kbook: error: {out}: exists already; pass --force to replace it\n")
    code, stdout, _ = run_main(monkeypatch, capsys, str(segment), "--out", str(out), "--force")
    assert code == 0
    assert "BTC/USD" in stdout


def test_command_end_to_end(segment: Path, tmp_path: Path) -> None:
    out = tmp_path / "snaps"
    done = subprocess.run(
        [
            str(KBOOK),
            "replay",
            str(segment.parent),
            "--pair",
            "BTC/USD",
            "--every",
            "1s",
            "--levels",
            "3",
            "--out",
            str(out),
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 5 rows in 1 file(s)" in done.stdout
    assert (out / "pair=BTC-USD" / "date=2025-11-21" / "part-0.parquet").is_file()


def test_replay_has_help() -> None:
    done = subprocess.run(
        [str(KBOOK), "replay", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    for option in ("--pair", "--start", "--end", "--every", "--levels", "--out", "--force"):
        assert option in done.stdout


BLAS_PROBE = """
import os, sys
sys.argv = ["kbook", "--version"]
from kbook.cli import main
try:
    main()
except SystemExit:
    pass
import numpy  # as pyarrow loads it in a replay
print(os.environ.get("OPENBLAS_NUM_THREADS"), len(os.listdir("/proc/self/task")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("2", "2")])
def test_kbook_keeps_openblas_to_its_own_thread_unless_told(
    given: str | None, expected: str
) -> None:
    """numpy's OpenBLAS starts a thread per core when numpy loads, which spins for a while on
    work kbook never gives it: the command line keeps it to the calling thread before anything
    loads numpy (its workers inherit that), unless the user set the number."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    done = subprocess.run(
        [sys.executable, "-c", BLAS_PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    setting, threads = done.stdout.split()[-2:]
    assert setting == expected
    if expected == "1":
        assert threads == "1"
