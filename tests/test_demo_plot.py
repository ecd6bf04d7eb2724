"""`kbook demo` end to end, and `kbook plot` on a replayed real capture."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import replay
from kbook.demo import MARKER, run_demo
from kbook.errors import OutputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def kbook(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbook", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        env=env,
    )


def without_pandas(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import pandas`` fails, as after the README's first command, which
    installs neither pandas, polars nor DuckDB."""
    blocker = tmp_path / "no-pandas" / "pandas"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("pandas is hidden by this test")\n')
    path = os.pathsep.join(filter(None, [str(blocker.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.slow
def test_demo_records_verifies_replays_and_marks_the_gap(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", seconds=8, say=lines.append)
    assert result.frames > 500
    assert result.reconnects == 1
    assert result.checksums_failed == 0
    assert result.checksums_ok > 500
    assert result.rows > 0
    assert result.invalid_rows > 0, "the refused reconnects must leave invalid rows"
    assert result.plot is not None
    assert result.plot.read_bytes().startswith(PNG_MAGIC)
    table = replay.read_snapshots(result.snapshots, pair="BTC/USD")
    assert set(table.column("pair").to_pylist()) == {"BTC/USD"}
    assert any("verify" in line for line in lines)


def test_demo_replaces_only_its_own_folder(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not made by kbook demo"):
        run_demo(foreign, seconds=8, say=lambda _: None)
    assert (foreign / "precious.txt").exists()
    assert not (foreign / MARKER).exists()


@pytest.mark.slow
def test_demo_cli_prints_rows_and_the_python_line(tmp_path: Path) -> None:
    done = kbook("demo", "--seconds", "8", "--out", tmp_path / "d", env=without_pandas(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "pq.read_table" in done.stdout
    assert "pd.read_parquet" in done.stdout
    assert "bid_px_0" in done.stdout
    assert "0 failed" in done.stdout


@pytest.mark.slow
def test_plot_of_a_real_capture(capture_segment: Callable[[str], Path], tmp_path: Path) -> None:
    segment = capture_segment("KRAKEN.ws.50.0")
    snapshots = tmp_path / "snap"
    replay.replay_to_dataset([segment], snapshots, every="100ms", levels=25)
    png = tmp_path / "sc.png"
    done = kbook("plot", snapshots, "--pair", "SC/EUR", "--out", png)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "SC/EUR" in done.stdout

    several = kbook("plot", snapshots, "--out", tmp_path / "x.png")
    assert several.returncode == 2
    assert "--pair" in several.stderr
    missing = kbook("plot", tmp_path / "nope", "--out", tmp_path / "x.png")
    assert missing.returncode == 2
    assert "no such snapshot dataset" in missing.stderr
    empty = kbook("plot", snapshots, "--pair", "SC/EUR", "--start", "2030-01-01", "--out", png)
    assert empty.returncode == 2
    assert "no rows" in empty.stderr


@pytest.mark.parametrize(("seconds", "message"), [("2", "too short"), ("nan", "must be a number")])
def test_demo_too_short_is_a_usage_error(seconds: str, message: str, tmp_path: Path) -> None:
    done = kbook("demo", "--seconds", seconds, "--out", tmp_path / "d")
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert message in line
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_watch_from_a_multi_pair_folder_counts_one_streams_reconnects(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", seconds=8, say=lambda _: None)
    done = kbook("watch", "BTC/USD", "--from", result.raw, "--speed", "0")
    assert done.returncode == 0, done.stderr
    assert f"reconnects {result.reconnects}" in done.stderr
