"""Drill: input that is no recording at all gets one line, naming it, from verify and replay."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kbook.segment import ZSTD_MAGIC, frame_line, write_segment


def not_a_segment(tmp_path: Path) -> Path:
    path = tmp_path / "notes.jsonl.zst"
    path.write_text('{"recv_ns":1,"msg":{"event":"heartbeat"}}\n')  # JSON lines, not compressed
    return path


def binary_file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    return path


def empty_file(tmp_path: Path) -> Path:
    path = tmp_path / "empty.jsonl.zst"
    path.write_bytes(b"")
    return path


def magic_only(tmp_path: Path) -> Path:
    """Starts like zstd, then nothing: a finished segment cannot look like this."""
    path = tmp_path / "cut.jsonl.zst"
    path.write_bytes(ZSTD_MAGIC)
    return path


def empty_folder(tmp_path: Path) -> Path:
    path = tmp_path / "nothing"
    path.mkdir()
    (path / "readme.txt").write_text("no segments here")
    return path


def missing(tmp_path: Path) -> Path:
    return tmp_path / "no-such-folder"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (not_a_segment, "not a zstd segment (kbook segments are .jsonl.zst files)"),
        (binary_file, "not a zstd segment (kbook segments are .jsonl.zst files)"),
        (empty_file, "empty file, not a segment"),
        (empty_folder, "no segments (*.jsonl.zst) in this folder"),
        (missing, "no such file or folder"),
    ],
    ids=["not-a-segment", "binary", "empty-file", "folder-without-segments", "missing"],
)
@pytest.mark.parametrize("command", ["verify", "replay"])
def test_unusable_input_is_one_line_naming_it(
    command: str, make: Callable[[Path], Path], message: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    out = tmp_path / "snapshots"
    args = [str(path)] + (["--out", str(out), "--workers", "1"] if command == "replay" else [])
    result = subprocess.run(
        [sys.executable, "-m", "kbook", command, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"kbook: error: {path}: {message}"]
    assert result.stdout == ""
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["verify", "replay"])
def test_a_segment_with_nothing_readable_is_reported_not_fatal(
    command: str, tmp_path: Path
) -> None:
    """A segment cut right after its magic is reported (verify) and the good one beside it read."""
    good = write_segment(
        tmp_path / "data" / "XBT-USD.20261121T000000Z.jsonl.zst",
        [
            frame_line(
                10**18,
                0,
                '[1,{"as":[["10.0","1.0","1"]],"bs":[["9.0","1.0","1"]]},"book-10","XBT/USD"]',
                True,
            ),
            frame_line(10**18 + 2 * 10**9, 1, '{"event":"heartbeat"}', True),
        ],
    )
    cut = magic_only(good.parent)
    out = tmp_path / "snapshots"
    args = [str(tmp_path / "data")] + (["--out", str(out)] if command == "replay" else [])
    result = subprocess.run(
        [sys.executable, "-m", "kbook", command, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    if command == "verify":  # replay reads only segments with book data, so it never opens it
        warning = f"kbook: warning: {cut}: torn zstd frame at the end (file cut at byte 4)"
        assert warning in result.stderr.splitlines()
