"""The survey cache (``replay.survey_cache``): a segment surveyed once is not surveyed again while
it is unchanged, whatever else is in the cache file; a changed, damaged or untrusted cache costs a
survey, never a wrong fact."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import orjson
import pytest
from perf_support import write_recording

from kbook.api import Api
from kbook.segment import find_segments
from kbook.storage import source_name
from replay.api import replay_to_dataset
from replay.survey import SegmentInfo, facts_info, facts_json, survey_segment, survey_segments
from replay.survey_cache import SurveyCache, cached_surveys, default_location


class CountingSurvey:
    """The survey, noting which segments it was asked for."""

    def __init__(self) -> None:
        self.asked: list[Path] = []

    def __call__(self, paths: list[Path]) -> list[SegmentInfo]:
        self.asked += paths
        return survey_segments(paths)


@pytest.fixture(scope="module", params=list(Api), ids=str)
def recording(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few rotated segments of one pair, in either API (never written to by the tests)."""
    root = tmp_path_factory.mktemp("raw")
    pairs = ("BTC/USD",) if request.param == Api.V2 else ("XBT/USD",)
    return write_recording(root, pairs, 600, api=request.param, rotate_ns=2 * 10**9)


@pytest.fixture
def segments(recording: Path, tmp_path: Path) -> list[Path]:
    """A private copy of the recording's segments, times kept, for a test to change."""
    copies = []
    for path in find_segments([recording]):
        copy = tmp_path / "raw" / path.relative_to(recording)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
        info = path.stat()
        os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
        copies.append(copy)
    return copies


def test_facts_round_trip(segments: list[Path]) -> None:
    for path in segments:
        info = survey_segment(path)
        assert facts_info(path, info.size, orjson.loads(orjson.dumps(facts_json(info)))) == info


def test_an_unchanged_segment_is_surveyed_once(segments: list[Path]) -> None:
    assert len(segments) >= 3
    survey = CountingSurvey()
    first = cached_surveys(segments, survey)
    assert survey.asked == segments
    assert first == [survey_segment(path) for path in segments]
    location = default_location()
    assert location is not None
    assert location.is_file()

    survey = CountingSurvey()
    assert cached_surveys(segments, survey) == first
    assert survey.asked == []


def test_a_changed_segment_is_surveyed_again(segments: list[Path]) -> None:
    cached_surveys(segments, CountingSurvey())
    grown, same_size = segments[0], segments[-1]
    with open(grown, "ab") as fh:  # a skippable zstd frame: the same lines, one more frame
        fh.write(b"\x50\x2a\x4d\x18\x04\x00\x00\x00kbok")
    # Rewritten at the same size, its modification time set back: its last bytes differ.
    info = same_size.stat()
    data = bytearray(same_size.read_bytes())
    data[-8:] = bytes(8)
    same_size.write_bytes(bytes(data))
    os.utime(same_size, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert same_size.stat().st_mtime_ns == info.st_mtime_ns

    survey = CountingSurvey()
    infos = cached_surveys(segments, survey)
    assert survey.asked == [grown, same_size]
    assert infos == [survey_segment(path) for path in segments]


def test_a_damaged_cache_file_is_replaced(segments: list[Path]) -> None:
    location = default_location()
    assert location is not None
    location.parent.mkdir(mode=0o700, parents=True)
    location.write_bytes(b"not a database " * 100)
    location.chmod(0o600)
    survey = CountingSurvey()
    assert cached_surveys(segments, survey) == survey_segments(segments)
    assert survey.asked == segments
    survey = CountingSurvey()
    cached_surveys(segments, survey)
    assert survey.asked == []


def test_forged_facts_are_not_trusted(segments: list[Path]) -> None:
    cached_surveys(segments, CountingSurvey())
    location = default_location()
    assert location is not None
    named = sorted(segments, key=source_name)
    forged = [
        b"[1, 2]",
        b"{not json",
        orjson.dumps(facts_json(survey_segment(named[2])) | {"books": [["XBT/USD"]]}),
        orjson.dumps(facts_json(survey_segment(named[3])) | {"first_ns": -5}),
        orjson.dumps(facts_json(survey_segment(named[4])) | {"api": "v3"}),
    ]
    with sqlite3.connect(location) as db:
        names = [row[0] for row in db.execute("SELECT name FROM survey ORDER BY name")]
        assert names == [source_name(path) for path in named]
        for name, facts in zip(names, forged, strict=False):
            db.execute("UPDATE survey SET facts = ? WHERE name = ?", (facts, name))
    db.close()
    survey = CountingSurvey()
    assert cached_surveys(segments, survey) == survey_segments(segments)
    assert sorted(survey.asked, key=source_name) == named[: len(forged)]


def test_a_cache_others_may_write_is_not_used(segments: list[Path]) -> None:
    cached_surveys(segments, CountingSurvey())
    location = default_location()
    assert location is not None
    location.chmod(0o620)
    survey = CountingSurvey()
    cached_surveys(segments, survey)
    assert survey.asked == segments
    location.chmod(0o600)
    location.parent.chmod(0o770)
    survey = CountingSurvey()
    cached_surveys(segments, survey)
    assert survey.asked == segments


def test_off(segments: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KBOOK_SURVEY_CACHE", "off")
    assert default_location() is None
    for _ in range(2):
        survey = CountingSurvey()
        cached_surveys(segments, survey)
        assert survey.asked == segments


def test_the_least_recently_used_go_first(segments: list[Path], tmp_path: Path) -> None:
    location = tmp_path / "surveys.sqlite"
    for path in segments:
        cache = SurveyCache(location, limit=2)
        assert cache.lookup([path]) == {}
        cache.keep([survey_segment(path)])
        cache.close()
    cache = SurveyCache(location, limit=2)
    assert set(cache.lookup(segments)) == set(segments[-2:])
    cache.close()


def test_a_replay_reads_its_facts_from_the_cache(segments: list[Path], tmp_path: Path) -> None:
    """The second replay meets the cached facts (each row marked used again) and writes the
    same bytes as the first."""
    first = replay_to_dataset(segments, tmp_path / "first")
    used = _used()
    assert len(used) == len(segments)
    second = replay_to_dataset(segments, tmp_path / "second")
    assert all(when > used[name] for name, when in _used().items())
    assert first.files
    assert [f.read_bytes() for f in first.files] == [f.read_bytes() for f in second.files]


def test_update_resurveys_forged_manifest_facts(
    segments: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--update`` checks the facts its manifest keeps as the cache's are checked."""
    out = tmp_path / "out"
    replay_to_dataset(segments, out, update=True)
    manifest = out / "_kbook_replay.json"
    data = orjson.loads(manifest.read_bytes())
    for facts in data["surveyed"].values():
        facts["books"] = "XBT/USD"
    manifest.write_bytes(orjson.dumps(data))
    monkeypatch.setenv("KBOOK_SURVEY_CACHE", "off")
    summary = replay_to_dataset(segments, out, update=True)
    assert summary.updated == 0
    expected = {
        source_name(path): {"size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns}
        | facts_json(survey_segment(path))
        for path in segments
    }
    assert orjson.loads(manifest.read_bytes())["surveyed"] == orjson.loads(orjson.dumps(expected))


def _used() -> dict[str, int]:
    location = default_location()
    assert location is not None
    with sqlite3.connect(location) as db:
        used = dict(db.execute("SELECT name, used FROM survey").fetchall())
    db.close()
    return used
