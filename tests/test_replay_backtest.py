"""``kbook replay --format tardis`` and ``--format hftbacktest``, end to end: a recorded simulator
run (a dropped connection, a failed checksum) and a real Kraken capture are replayed into the
backtesters' files, which are read back by their consumers and compared with kbook's own grid
snapshots (``replay.read_snapshots``) at every grid time.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from record_support import Background, fast_config, updates_on
from test_backtest_formats import backtest_books

import replay
from kbook.cli import main
from kbook.errors import UsageError
from kbook.sim import Simulator, SimulatorConfig
from kbook.units import SECOND
from replay import backtest_formats as bf

PAIR = "BTC/USD"
EVERY = 1_000_000  # 1 ms: the faults' invalid spans (a few ms) cover grid times
LEVELS = 10


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorder against the simulator: a dropped connection and a failed checksum (the
    recorder resubscribes), so the book is unknown twice and resumes with snapshots."""
    out = tmp_path_factory.mktemp("backtest-rec")
    config = SimulatorConfig(api="v2", pairs=(PAIR,), rate=200.0, seed=11)
    with Simulator(config) as sim:
        record = fast_config(sim, out, (PAIR,), api="v2", rotate_ns=SECOND)
        with Background(record) as run:
            sim.wait_for(lambda s: updates_on(s, 1) >= 30, timeout=10)
            sim.faults.drop_after(20)
            sim.wait_for(lambda s: updates_on(s, 2) >= 40, timeout=10)
            sim.faults.bad_checksum_at(10)
            sim.wait_for(lambda s: s.count("snapshot", 2) == 2, timeout=10)
            sim.wait_for(lambda s: updates_on(s, 2) >= 120, timeout=10)
            run.finish()
    return out / "raw"


@pytest.fixture(params=["recording", "capture"])
def source(
    request: pytest.FixtureRequest, capture_segment: Callable[[str], Path]
) -> tuple[Path, bool]:
    """What is replayed, and whether its book goes unknown: the recorded simulator run, or a
    real Kraken capture (v1, BTC/USD)."""
    if request.param == "recording":
        return request.getfixturevalue("recording"), True
    return capture_segment("orderbook-v1.json"), False


def run_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[object, str]:
    monkeypatch.setattr(sys, "argv", ["kbook", "replay", *args])
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    return code, capsys.readouterr().err


Grid = list[tuple[int, bool, list[tuple[float, float]], list[tuple[float, float]]]]


def kbook_grids(raw: Path, out: Path, every: int = EVERY) -> dict[str, Grid]:
    """kbook's snapshots per pair: ``(t, valid, bids, asks)`` per grid time, best first."""
    replay.replay_to_dataset([raw], out, every=every, levels=LEVELS)
    table = replay.read_snapshots(out)
    grids: dict[str, Grid] = {}
    for row in table.to_pylist():
        bids = [(row[f"bid_px_{i}"], row[f"bid_sz_{i}"]) for i in range(LEVELS)]
        asks = [(row[f"ask_px_{i}"], row[f"ask_sz_{i}"]) for i in range(LEVELS)]
        t = row["ts"].value if hasattr(row["ts"], "value") else _ns(row["ts"])
        grids.setdefault(row["pair"], []).append(
            (
                t,
                row["valid"],
                [b for b in bids if b[0] is not None],
                [a for a in asks if a[0] is not None],
            )
        )
    return grids


def kbook_grid(raw: Path, out: Path, faults: bool = True) -> Grid:
    """The one pair's grid (``kbook_grids``); ``faults``: whether the book goes invalid."""
    (grid,) = kbook_grids(raw, out).values()
    assert any(not valid for _, valid, _, _ in grid) == faults  # the faults show
    assert sum(valid for _, valid, _, _ in grid) > 10
    return grid


def _ns(moment: object) -> int:
    return int(pa.scalar(moment, pa.timestamp("ns", "UTC")).value)


def received_times(raw: Path, out: Path) -> np.ndarray:
    """The receive times (ns) of every delta row, sorted."""
    return np.sort(np.concatenate([times for times, _ in delta_facts(raw, out).values()]))


def delta_facts(raw: Path, out: Path) -> dict[str, tuple[np.ndarray, int]]:
    """Per pair: the sorted receive times (ns) of its delta rows, and its book's depth."""
    replay.replay_deltas_to_dataset([raw], out)
    table = replay.read_deltas(out, columns=["ts", "seq", "depth"])
    facts = {}
    for pair in set(table.column("pair").to_pylist()):
        rows = table.filter(pa.compute.equal(table.column("pair"), pair))
        times = np.sort(rows.column("ts").cast(pa.int64()).to_numpy())
        facts[pair] = (times, max(rows.column("depth").to_pylist()))
    return facts


def read_csv(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="ascii", newline="") as file:
        header, *lines = file.read().splitlines()
    names = header.split(",")
    return [dict(zip(names, line.split(","), strict=True)) for line in lines]


def assert_tardis_matches(
    paths: list[Path], grid: Grid, received: np.ndarray, depth: int = LEVELS
) -> int:
    """A naive Tardis consumer (a dict per side, Tardis's reset rule) reading ``paths`` in
    order holds kbook's book at every grid time, never deeper than ``depth``; returns the
    valid grid times compared. Tardis keeps µs, so a grid time with a message received in
    the µs after it cannot be told apart and is skipped."""
    rows = iter([row for path in paths for row in read_csv(path)])
    book: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
    previous_snapshot = False
    pending = next(rows, None)
    compared = 0
    for t, valid, bids, asks in grid:
        while pending is not None and int(pending["local_timestamp"]) <= t // 1000:
            snap = pending["is_snapshot"] == "true"
            if snap and not previous_snapshot:
                book = {"bid": {}, "ask": {}}
            previous_snapshot = snap
            price, amount = float(pending["price"]), float(pending["amount"])
            if amount == 0:
                book[pending["side"]].pop(price, None)
            else:
                book[pending["side"]][price] = amount
            pending = next(rows, None)
        # whole messages applied (a message's rows share its µs): never deeper than the book
        assert len(book["bid"]) <= depth
        assert len(book["ask"]) <= depth
        after = int(np.searchsorted(received, t, side="right"))
        if after < len(received) and received[after] < t + 1000:
            continue
        if not valid:
            assert book == {"bid": {}, "ask": {}}, t
            continue
        assert sorted(book["bid"].items(), reverse=True)[:LEVELS] == bids, t
        assert sorted(book["ask"].items())[:LEVELS] == asks, t
        compared += 1
    return compared


def test_tardis_files_hold_kbook_s_book_at_every_grid_time(
    source: tuple[Path, bool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    recording, faults = source
    out = tmp_path / "tardis"
    code, err = run_replay(
        monkeypatch, capsys, str(recording), "--format", "tardis", "--out", str(out)
    )
    assert code == 0, err
    day_files = sorted(p.name for p in out.glob("*.csv.gz"))
    assert day_files
    assert all(name.startswith("kraken_") and "_XBT-USD" in name for name in day_files)
    grid = kbook_grid(recording, tmp_path / "snapshots", faults)
    paths = sorted(out.glob("kraken_incremental_book_L2_*.csv.gz"))
    received = received_times(recording, tmp_path / "deltas")
    assert assert_tardis_matches(paths, grid, received) > 10


@pytest.mark.slow  # ten books of 1000 levels
def test_every_pair_of_a_deep_real_capture(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    """Kraken's ten-pair capture at depth 1000 (truncation at every level that falls out):
    each pair's Tardis CSV and hftbacktest array against kbook's snapshots."""
    segment = capture_segment("KRAKEN.ws.50.0")
    grids = kbook_grids(segment, tmp_path / "snapshots", every=100_000_000)
    facts = delta_facts(segment, tmp_path / "deltas")
    assert len(grids) == 10
    tardis_files = replay.replay_to_backtest_files(segment, tmp_path / "tardis", "tardis").files
    arrays = replay.replay_to_backtest_files(segment, tmp_path / "npz", "hftbacktest").files
    for pair, grid in grids.items():
        received, depth = facts[pair]
        symbol = bf.tardis_symbol(pair).replace("/", "-")
        paths = sorted(
            p
            for p in tardis_files
            if "incremental_book_L2_" in p.name and p.name.endswith(f"_{symbol}.csv.gz")
        )
        assert assert_tardis_matches(paths, grid, received, depth) > 10, pair
        mine = sorted(p for p in arrays if p.name.startswith(pair.replace("/", "-") + "_"))
        assert_backtest_matches(mine, grid)


def decimals(grid: Grid) -> int:
    """The most decimals of any price in ``grid`` (the pair's tick is 10 to the minus that)."""
    texts = [
        np.format_float_positional(price, trim="-")
        for _, _, bids, asks in grid
        for price, _ in bids + asks
    ]
    return max(len(text.partition(".")[2].rstrip("0")) for text in texts)


def assert_backtest_matches(files: list[Path], grid: Grid, skip: np.ndarray | None = None) -> None:
    """A real ``HashMapMarketDepthBacktest`` over ``files`` shows kbook's best bid and ask at
    every grid time (none where kbook's book is invalid). Prices are ticks times the tick size
    there, hence the relative tolerance of a float's last digits."""
    rows = grid
    if skip is not None:  # grid times a µs-resolution file cannot tell apart (Tardis)
        after = np.searchsorted(skip, [t for t, *_ in grid], side="right")
        rows = [
            row
            for row, index in zip(grid, after, strict=True)
            if index == len(skip) or skip[index] >= row[0] + 1000
        ]
    tops = backtest_books(files, [t for t, *_ in rows], 10.0 ** -decimals(grid))
    expected = [
        (bids[0][0], asks[0][0]) if valid else (np.nan, np.nan) for _, valid, bids, asks in rows
    ]
    np.testing.assert_allclose(tops, expected, rtol=1e-14)
    assert sum(valid for _, valid, _, _ in rows) > 10


@pytest.mark.slow  # hftbacktest's backtest compiles with numba for several seconds
def test_hftbacktest_arrays_show_kbook_s_book_in_a_real_backtest(
    source: tuple[Path, bool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hftbacktest.data import validate_event_order

    recording, faults = source
    out = tmp_path / "hftbacktest"
    code, err = run_replay(
        monkeypatch, capsys, str(recording), "--format", "hftbacktest", "--out", str(out)
    )
    assert code == 0, err
    files = sorted(out.glob("BTC-USD_*.npz"))
    assert files
    for path in files:
        validate_event_order(np.load(path)["data"])
    assert_backtest_matches(files, kbook_grid(recording, tmp_path / "snapshots", faults))


@pytest.mark.slow  # hftbacktest's Tardis converter compiles with numba for several seconds
def test_tardis_files_load_with_hftbacktest_s_converter(
    source: tuple[Path, bool], tmp_path: Path
) -> None:
    from hftbacktest.data.utils import tardis

    recording, faults = source
    out = tmp_path / "tardis"
    summary = replay.replay_to_backtest_files(recording, out, "tardis")
    assert sorted(summary.files) == sorted(out.glob("*.csv.gz"))
    converted = []
    for path in sorted(out.glob("kraken_incremental_book_L2_*.csv.gz")):
        converted.append(tmp_path / f"{path.name}.npz")
        with io.StringIO() as chatter, contextlib.redirect_stdout(chatter):  # it prints progress
            tardis.convert([str(path)], output_filename=str(converted[-1]))
    grid = kbook_grid(recording, tmp_path / "snapshots", faults)
    assert_backtest_matches(converted, grid, received_times(recording, tmp_path / "deltas"))


def test_format_mistakes_are_one_line_errors(
    capture_segment: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    segment = str(capture_segment("orderbook-v1.json"))
    out = tmp_path / "out"
    code, err = run_replay(monkeypatch, capsys, segment, "--format", "csv", "--out", str(out))
    assert code == 2
    assert err == (
        "kbook: error: --format must be snapshots, deltas, tardis or hftbacktest, got 'csv'\n"
    )
    code, err = run_replay(
        monkeypatch, capsys, segment, "--format", "tardis", "--exact-text", "--out", str(out)
    )
    assert (code, err) == (2, "kbook: error: --exact-text goes with --format deltas\n")
    code, err = run_replay(
        monkeypatch, capsys, segment, "--format", "hftbacktest", "--out", "s3://"
    )
    assert (code, err) == (
        2,
        "kbook: error: --out 's3://': name a bucket, e.g. s3://my-bucket/kbook\n",
    )
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [Path(segment)]  # nothing half-written beside it


def test_a_second_run_needs_force_and_replaces_the_files(
    capture_segment: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    segment = str(capture_segment("orderbook-v1.json"))
    out = tmp_path / "npz"
    assert (
        run_replay(monkeypatch, capsys, segment, "--format", "hftbacktest", "--out", str(out))[0]
        == 0
    )
    names = sorted(path.name for path in out.iterdir())
    assert names == ["BTC-USD_2023-11-14.npz", "_kbook_replay.json"]
    code, err = run_replay(
        monkeypatch, capsys, segment, "--format", "hftbacktest", "--out", str(out)
    )
    assert (code, err) == (2, f"kbook: error: {out}: exists already; pass --force to replace it\n")
    args = (segment, "--format", "hftbacktest", "--out", str(out), "--force")
    assert run_replay(monkeypatch, capsys, *args)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == names
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([Path(segment).name, "npz"])
    with pytest.raises(UsageError, match="is a hftbacktest dataset, not deltas; its files are"):
        replay.read_deltas(out)


def test_the_same_rows_give_the_same_file_bytes(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    """No time of writing in the files: the gzip header's time is 0 and names the file, the
    .npz member's time is fixed; so two runs (or a run to s3://) give the same bytes."""
    segment = capture_segment("orderbook-v1.json")
    tardis = replay.replay_to_backtest_files(segment, tmp_path / "tardis", "tardis").files
    for path in tardis:
        header = Path(path).read_bytes()[:64]
        assert header[4:8] == b"\0\0\0\0"  # MTIME
        assert header[10:].split(b"\0", 1)[0] == Path(path).name.removesuffix(".gz").encode()
    (npz,) = replay.replay_to_backtest_files(segment, tmp_path / "npz", "hftbacktest").files
    with zipfile.ZipFile(npz) as archive:
        assert [(m.filename, m.date_time) for m in archive.infolist()] == [
            ("data.npy", (1980, 1, 1, 0, 0, 0))
        ]
    assert np.load(npz)["data"].dtype == bf.EVENT_DTYPE
