"""`kbook verify` on the real captures, on corrupted copies, and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from kbook.captures import read_capture
from kbook.feed import BookFeed, Outcome
from kbook.segment import frame_line, write_segment
from kbook.verify import verify_paths

from conftest import V1_CAPTURES


def kbook(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbook", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def verify_json(*paths: Path) -> tuple[int, dict]:
    result = kbook("verify", "--json", *paths)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize(("name", "updates"), sorted(V1_CAPTURES.items()))
def test_every_real_checksum_verifies(
    capture_segment: Callable[[str], Path], name: str, updates: int
) -> None:
    code, report = verify_json(capture_segment(name))
    assert code == 0
    assert report["checksums_failed"] == 0
    assert report["checksums_ok"] == updates
    assert sum(pair["updates"] for pair in report["pairs"].values()) == updates


def test_all_captures_together_in_one_folder(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    for name in V1_CAPTURES:
        capture_segment(name)
    code, report = verify_json(tmp_path)
    assert code == 0
    assert report["checksums_ok"] == 4269 + 979 + 16
    assert len(report["files"]) == len(V1_CAPTURES)


def test_table_output_names_pairs(capture_segment: Callable[[str], Path]) -> None:
    result = kbook("verify", capture_segment("orderbook-v1.json"))
    assert result.returncode == 0
    line = next(line for line in result.stdout.splitlines() if "BTC/USD" in line)
    assert "XBT/USD" in line  # the common name, and the wire name beside it
    assert "checksums ok: 979, failed: 0" in result.stdout


def corrupted_copy(captures_dir: Path, tmp_path: Path, corrupt: Callable[[list], list]) -> Path:
    frames = read_capture(captures_dir / "orderbook-v1.json")
    decoded = [orjson.loads(text) for _, text in frames]
    changed = corrupt(decoded)
    lines = (
        frame_line(recv_ns, seq, orjson.dumps(frame).decode(), True)
        for seq, ((recv_ns, _), frame) in enumerate(zip(frames, changed, strict=True))
    )
    return write_segment(tmp_path / "corrupt.jsonl.zst", lines)


def book_update_indexes(frames: list) -> list[int]:
    return [i for i, f in enumerate(frames) if isinstance(f, list) and "c" in f[-3]]


@pytest.mark.slow
def test_changed_volume_fails_and_book_stays_invalid_until_snapshot(
    captures_dir: Path, tmp_path: Path
) -> None:
    def corrupt(frames: list) -> list:
        snapshot = next(f for f in frames if isinstance(f, list) and "as" in f[1])
        snapshot[1]["bs"][3][1] = "9.99999999"
        return frames

    code, report = verify_json(corrupted_copy(captures_dir, tmp_path, corrupt))
    assert code == 1
    pair = report["pairs"]["BTC/USD"]
    # The capture has one snapshot: after the failure every update is dropped, none verified.
    assert pair["checksums_failed"] == 1
    assert pair["checksums_ok"] == 0
    assert pair["dropped"] == 979 - 1
    assert pair["invalid_ns"] > 0


def loss_is_visible(frames: list, drop: int) -> bool:
    """Whether the checksums can see that frame ``drop`` is missing.

    Not every loss is visible: a lost change at the bottom of the window can be pushed out by
    the next insert, and a lost volume change can be overwritten before the next checksum.
    """
    feed = BookFeed()
    outcomes = [feed.on_message(f, i) for i, f in enumerate(frames) if i != drop]
    return Outcome.CHECKSUM_FAILED in outcomes


@pytest.mark.slow
def test_dropped_update_fails(captures_dir: Path, tmp_path: Path) -> None:
    def corrupt(frames: list) -> list:
        updates = book_update_indexes(frames)
        k = next(k for k in updates[50:] if loss_is_visible(frames, k))
        frames[k] = {"event": "heartbeat"}
        return frames

    code, report = verify_json(corrupted_copy(captures_dir, tmp_path, corrupt))
    assert code == 1
    assert report["checksums_failed"] == 1


def test_missing_path_is_one_line_error(tmp_path: Path) -> None:
    result = kbook("verify", tmp_path / "nope.jsonl.zst")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "nope.jsonl.zst: no such file or folder" in result.stderr


def test_non_zstd_file_is_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.jsonl.zst"
    bogus.write_text('{"recv_ns": 1, "msg": {}}\n')
    result = kbook("verify", bogus)
    assert result.returncode == 2
    assert "bogus.jsonl.zst: not a zstd segment" in result.stderr
    assert "Traceback" not in result.stderr


def test_empty_file_and_empty_folder(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl.zst"
    empty.touch()
    assert "empty file" in kbook("verify", empty).stderr
    folder = tmp_path / "nothing"
    folder.mkdir()
    result = kbook("verify", folder)
    assert result.returncode == 2
    assert "no segments" in result.stderr


def test_truncated_tail_and_bad_line_are_reported_not_fatal(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    whole = capture_segment("orderbook-v1.json").read_bytes()
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(whole[: len(whole) // 2])
    result = kbook("verify", "--json", cut)
    assert result.returncode == 0
    assert "cut.jsonl.zst" in result.stderr
    assert "torn zstd frame" in result.stderr

    lines = [frame_line(1, 0, '{"event":"heartbeat"}', True), b"this is not json\n"]
    bad = write_segment(tmp_path / "bad.jsonl.zst", lines)
    result = kbook("verify", "--json", bad)
    assert result.returncode == 0
    assert "bad.jsonl.zst:2: line is not JSON" in result.stderr


def test_help_and_version() -> None:
    assert kbook("--version").stdout.startswith("kbook ")
    assert "verify" in kbook("--help").stdout


def test_one_pairs_reconnect_does_not_void_another_pairs_book(tmp_path: Path) -> None:
    """Recorder layout: each pair's stream carries its own copy of connect/disconnect lines."""
    from kbook.segment import meta_line

    snap = '[1,{"as":[["10.0","1.0","1"]],"bs":[["9.0","1.0","1"]]},"book-10","%s"]'
    for pair, name in (("XBT/USD", "BTC-USD"), ("ETH/USD", "ETH-USD")):
        lines = [
            meta_line(0, {"type": "connect"}),
            frame_line(1, 0, snap % pair, True),
            meta_line(5_000_000_000, {"type": "disconnect", "reason": "x"}),
            meta_line(5_000_000_001, {"type": "connect"}),
            frame_line(5_100_000_000, 1, snap % pair, True),
            frame_line(9_000_000_000, 2, '{"event":"heartbeat"}', True),
        ]
        write_segment(tmp_path / f"{name}.20261121T000000Z.jsonl.zst", lines)
    code, report = verify_json(tmp_path)
    assert code == 0
    for pair in ("BTC/USD", "ETH/USD"):
        assert report["pairs"][pair]["snapshots"] == 2
        assert report["pairs"][pair]["invalid_ns"] == 100_000_000


def test_malformed_frames_are_reported_with_file_and_line(tmp_path: Path) -> None:
    snap = '[1,{"as":[["10.0","1.0","1"]],"bs":[["9.0","1.0","1"]]},"book-10","XBT/USD"]'
    lines = [
        frame_line(1, 0, snap, True),
        frame_line(2, 1, '[1,{"a":[["ten","1.0","1"]],"c":"1"},"book-10","XBT/USD"]', True),
        frame_line(3, 2, '["not", "a", "frame"]', True),
    ]
    lines += [frame_line(4 + i, 3 + i, "[1,2,3,4]", True) for i in range(25)]
    segment = write_segment(tmp_path / "odd.jsonl.zst", lines)
    result = kbook("verify", "--json", segment)
    assert result.returncode == 0
    assert "odd.jsonl.zst:2: JSON, but not a well-formed Kraken frame" in result.stderr
    assert "odd.jsonl.zst:3: JSON, but not a well-formed Kraken frame" in result.stderr
    assert "odd.jsonl.zst: 7 more malformed frames" in result.stderr
    assert json.loads(result.stdout)["malformed_frames"] == 27


def test_update_stamped_after_2100_is_skipped_as_replay_skips_it(
    captures_dir: Path, tmp_path: Path
) -> None:
    """The native loop applied a plain update before any check of its receive time."""
    frames = read_capture(captures_dir / "orderbook-v1.json")
    last = book_update_indexes([orjson.loads(text) for _, text in frames])[-1]
    year_2200_ns = 7_258_118_400 * 10**9
    lines = (
        frame_line(year_2200_ns if seq == last else recv_ns, seq, text, True)
        for seq, (recv_ns, text) in enumerate(frames)
    )
    path = write_segment(tmp_path / "future.jsonl.zst", lines)
    report = verify_paths([path])
    pair = report.pairs["BTC/USD"]
    assert pair.updates == 979 - 1
    assert report.checksums_ok == 979 - 1
    assert report.skipped_times == 1
    assert any("after 2100 skipped" in str(problem) for problem in report.problems)
