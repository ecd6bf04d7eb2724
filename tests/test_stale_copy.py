"""A stale ``.partial`` copy beside its finished segment: each frame is read once, with a warning."""

from __future__ import annotations

from pathlib import Path

from kbook.captures import read_capture
from kbook.segment import frame_line, is_json_text, write_segment
from kbook.verify import verify_paths
from replay.api import replay_to_dataset

from conftest import CAPTURES

NAME = "XBT-USD.20261121T100000Z.jsonl.zst"


def finished_and_stale_head(folder: Path) -> tuple[Path, Path]:
    """The capture as a finished segment, and a copy of its first 400 lines as ``.partial``."""
    folder.mkdir()
    frames = read_capture(CAPTURES / "orderbook-v1.json")
    lines = [
        frame_line(recv_ns, seq, text, is_json_text(text))
        for seq, (recv_ns, text) in enumerate(frames)
    ]
    finished = write_segment(folder / NAME, lines)
    (folder / "copy").mkdir()
    head = write_segment(folder / "copy" / NAME, lines[:400])
    stale = head.rename(folder / (NAME + ".partial"))
    (folder / "copy").rmdir()
    return finished, stale


def test_verify_counts_a_stale_copy_once_and_names_it(tmp_path: Path) -> None:
    finished, stale = finished_and_stale_head(tmp_path / "raw")
    alone = verify_paths([finished]).pairs["BTC/USD"]
    report = verify_paths([tmp_path / "raw"])
    both = report.pairs["BTC/USD"]
    assert (both.frames, both.updates, both.checksums_ok) == (
        alone.frames,
        alone.updates,
        alone.checksums_ok,
    )
    assert both.updates == 979
    assert report.files == [finished]
    assert [problem.path for problem in report.problems] == [stale]
    assert "stale copy" in str(report.problems[0])


def test_replay_reads_a_stale_copy_once_and_names_it(tmp_path: Path) -> None:
    finished, stale = finished_and_stale_head(tmp_path / "raw")
    alone = replay_to_dataset([finished], tmp_path / "alone", every="100ms")
    both = replay_to_dataset([tmp_path / "raw"], tmp_path / "both", every="100ms")
    assert both.pairs["BTC/USD"].frames == alone.pairs["BTC/USD"].frames
    assert both.pairs["BTC/USD"].sources == alone.pairs["BTC/USD"].sources == ["v1 book-10"]
    assert both.rows == alone.rows
    assert both.segments == [finished]
    assert [problem.path for problem in both.problems] == [stale]


def test_a_segment_copied_twice_under_other_names_is_read_once(tmp_path: Path) -> None:
    """The same segment again in a sub-folder and under another name of its stream: verify
    and replay read its frames once, and warn about each copy, naming the file read."""
    folder = tmp_path / "raw"
    finished, stale = finished_and_stale_head(folder)
    (folder / "backup").mkdir()
    copies = [
        folder / "backup" / NAME,
        folder / NAME.replace(".jsonl.zst", ".copy.jsonl.zst"),
    ]
    for copy in copies:
        copy.write_bytes(finished.read_bytes())
    alone = verify_paths([finished]).pairs["BTC/USD"]
    report = verify_paths([folder])
    both = report.pairs["BTC/USD"]
    assert (both.frames, both.updates, both.checksums_ok) == (
        alone.frames,
        alone.updates,
        alone.checksums_ok,
    )
    assert report.files == [finished]
    assert sorted(problem.path for problem in report.problems) == sorted([stale, *copies])
    assert all(str(finished) in problem.reason for problem in report.problems)
    once = replay_to_dataset([finished], tmp_path / "once", every="100ms")
    replayed = replay_to_dataset([folder], tmp_path / "all", every="100ms")
    assert replayed.pairs["BTC/USD"].frames == once.pairs["BTC/USD"].frames
    assert replayed.pairs["BTC/USD"].sources == ["v1 book-10"]
    assert replayed.segments == [finished]


def test_segments_of_two_streams_with_one_first_frame_are_both_read(tmp_path: Path) -> None:
    """The recorder copies control frames into every pair's segment, so two pairs' segments may
    start with the same frame: only segments of one stream can be copies of each other."""
    folder = tmp_path / "raw"
    finished, stale = finished_and_stale_head(folder)
    stale.unlink()
    other = folder / NAME.replace("XBT-USD", "ETH-USD")
    other.write_bytes(finished.read_bytes())
    report = verify_paths([folder])
    assert sorted(report.files) == sorted([finished, other])
    assert report.problems == []
