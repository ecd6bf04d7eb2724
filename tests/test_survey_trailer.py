"""A segment the recorder closes ends with its survey facts (``kbook.segment.read_trailer``, a
zstd skippable frame): the survey reads them instead of decompressing the segment, and they are
exactly the facts the scan of its text finds; a trailer that is not the segment's own (joined
files, torn, forged) is never believed."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from apis import CASES, ApiCase
from record_support import Background, fast_config, wait_until

from kbook.segment import SUFFIX, SegmentReader, SegmentWriter, meta_line, read_trailer
from kbook.sim import Simulator
from kbook.verify import verify_paths
from replay.survey import facts_info, scan_segment, survey_segment

PAIRS = ("XBT/USD", "ETH/USD")


@pytest.fixture(scope="module", params=CASES, ids=str)
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A recording of two pairs by the recorder, rotated at every flush (each segment closed
    with its trailer), in each API."""
    case: ApiCase = request.param
    out = tmp_path_factory.mktemp("out")
    with Simulator(case.sim_config(pairs=PAIRS, rate=200.0, seed=7)) as sim:
        config = fast_config(sim, out, PAIRS, max_segment_bytes=1)
        with Background(config) as run:
            wait_until(lambda: len(_closed(out)) >= 8, timeout=30, what="eight closed segments")
            run.finish()
    return out


def _closed(out: Path) -> list[Path]:
    return sorted((out / "raw").rglob(f"*{SUFFIX}"))


def test_the_recorder_ends_each_segment_with_its_survey(recorded: Path) -> None:
    segments = _closed(recorded)
    assert len(segments) >= 8
    for path in segments:
        facts = read_trailer(path)
        assert facts is not None, path
        scanned = scan_segment(path)
        assert facts_info(path, path.stat().st_size, orjson.loads(facts)) == scanned, path
        assert survey_segment(path) == scanned, path
        reader = SegmentReader(path)
        assert sum(1 for _ in reader) > 0
        assert reader.problems == []
    assert any(scan_segment(path).head_checkpoints for path in segments)
    assert any(scan_segment(path).run_id for path in segments)


def test_every_reader_skips_the_trailer(recorded: Path) -> None:
    report = verify_paths([recorded / "raw"])
    assert report.problems == []
    assert report.checksums_failed == 0
    assert report.checksums_ok > 0
    if shutil.which("zstd") is None:
        return  # the zstd tool is not installed: kbook's own readers were enough
    for path in _closed(recorded)[:2]:
        tested = subprocess.run(["zstd", "-tq", str(path)], capture_output=True, check=False)
        assert tested.returncode == 0, tested.stderr


def test_the_survey_reads_the_trailer_not_the_text(recorded: Path, tmp_path: Path) -> None:
    """A copy whose zstd frames are all blanked but its trailer: the survey still says what the
    recorder found (the replay, which reads the lines, reports the damage)."""
    path = _closed(recorded)[-1]
    data = path.read_bytes()
    facts = read_trailer(path)
    assert facts is not None
    start = len(data) - (8 + len(facts) + 26)  # magic, size; facts; offset, length, tag
    blanked = tmp_path / f"blanked{SUFFIX}"
    blanked.write_bytes(data[:4] + bytes(start - 4) + data[start:])
    assert read_trailer(blanked) == facts
    assert survey_segment(blanked) == dataclasses.replace(scan_segment(path), path=blanked)
    assert scan_segment(blanked).books == frozenset()


def test_joined_segments_are_scanned(recorded: Path, tmp_path: Path) -> None:
    """``cat a b``: b's trailer ends the file but does not start where it says."""
    first, second = _closed(recorded)[:2]
    joined = tmp_path / f"joined{SUFFIX}"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    assert read_trailer(joined) is None
    info = survey_segment(joined)
    assert info == scan_segment(joined)
    assert info.first_ns == scan_segment(first).first_ns


def test_a_torn_trailer_is_scanned(recorded: Path, tmp_path: Path) -> None:
    path = _closed(recorded)[0]
    torn = tmp_path / f"torn{SUFFIX}"
    torn.write_bytes(path.read_bytes()[:-3])
    assert read_trailer(torn) is None
    assert survey_segment(torn) == scan_segment(torn)


@pytest.mark.parametrize(
    "facts",
    [b"not json", b"[]", b'{"books": 5}', b"x" * 2_000_000],
    ids=["not-json", "a-list", "bad-books", "too-long"],
)
def test_forged_trailers_are_not_believed(tmp_path: Path, facts: bytes) -> None:
    path = tmp_path / f"forged{SUFFIX}"
    writer = SegmentWriter(path)
    writer.write(meta_line(1_767_225_600_000_000_000, {"type": "connect"}))
    writer.write(
        b'{"recv_ns":1767225600000000001,"seq":0,"msg":[1,{"a":[["1.0","2.0","1.5"]]},'
        b'"book-10","XBT/USD"]}\n'
    )
    writer.close(lambda: facts)
    assert survey_segment(path) == scan_segment(path)
    assert scan_segment(path).books == {("XBT/USD", "book-10")}


def test_a_writer_without_a_scan_writes_no_trailer(tmp_path: Path) -> None:
    path = tmp_path / f"plain{SUFFIX}"
    with SegmentWriter(path) as writer:
        writer.write(meta_line(1_767_225_600_000_000_000, {"type": "connect"}))
    assert read_trailer(path) is None
