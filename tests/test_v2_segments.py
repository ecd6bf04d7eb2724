"""Segments of either API: telling v1 from v2, decoding each right, verifying mixed folders."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sim_support import START_NS, write_v2_segment
from test_v2 import capture_frames

from kbook.feed import Outcome
from kbook.segment import SegmentWriter, frame_line, meta_line, write_segment
from kbook.sim import Market, V2Market
from kbook.v2 import RecordReader, feed_for, iter_records, segment_api

V1_HEARTBEAT = '{"event":"heartbeat"}'
V2_HEARTBEAT = '{"channel":"heartbeat"}'


def kbook_verify(*paths: Path) -> tuple[int, dict, str]:
    result = subprocess.run(
        [sys.executable, "-m", "kbook", "verify", "--json", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def market_texts(market: Market, updates: int) -> list[str]:
    """A snapshot and ``updates`` updates of a simulated market (v1 or v2 by its class)."""
    return [market.snapshot_frame(336)] + [market.update_frame(336) for _ in range(updates)]


def v1_segment(path: Path, texts: list[str], api_meta: str | None = None) -> Path:
    lines = []
    if api_meta is not None:
        lines.append(meta_line(START_NS, {"type": "session_start", "api": api_meta}))
    lines += [frame_line(START_NS + i + 1, i, text, True) for i, text in enumerate(texts)]
    return write_segment(path, lines)


def test_api_from_session_start_meta(tmp_path: Path) -> None:
    v2 = write_v2_segment(tmp_path / "a.jsonl.zst", [V2_HEARTBEAT])
    assert segment_api(v2) == "v2"
    # The meta line decides even against the frames' look (it is what the recorder spoke).
    odd = v1_segment(tmp_path / "b.jsonl.zst", [V1_HEARTBEAT], api_meta="v2")
    assert segment_api(odd) == "v2"
    v1 = v1_segment(tmp_path / "c.jsonl.zst", [V1_HEARTBEAT], api_meta="v1")
    assert segment_api(v1) == "v1"
    # A rotated segment opens with checkpoints: any meta line may name the API.
    checkpoint = {"type": "checkpoint", "api": "v2", "pair": "BTC/USD", "channel": "book-10"}
    rotated = write_segment(tmp_path / "d.jsonl.zst", [meta_line(START_NS, checkpoint)])
    assert segment_api(rotated) == "v2"


def test_api_from_the_first_frames_without_meta(tmp_path: Path) -> None:
    texts = market_texts(V2Market("BTC/USD", 10, seed=1), 5)
    v2 = write_v2_segment(tmp_path / "v2.jsonl.zst", texts, session_start=False)
    assert segment_api(v2) == "v2"
    v1 = v1_segment(tmp_path / "v1.jsonl.zst", market_texts(Market("XBT/USD", 10, seed=1), 5))
    assert segment_api(v1) == "v1"
    only_meta = write_segment(tmp_path / "m.jsonl.zst", [meta_line(1, {"type": "connect"})])
    assert segment_api(only_meta) == "v1"  # nothing tells: what kbook recorded before v2


def test_v1_capture_is_v1(capture_segment: Callable[[str], Path]) -> None:
    assert segment_api(capture_segment("orderbook-v1.json")) == "v1"


def test_record_reader_keeps_v2_lexemes_and_reports_problems(tmp_path: Path) -> None:
    texts = market_texts(V2Market("BTC/USD", 10, seed=2), 200)
    lines = [frame_line(START_NS + i, i, text, True) for i, text in enumerate(texts)]
    lines.insert(3, b"this is not json\n")
    lines.insert(5, b"[1, 2]\n")
    whole = tmp_path / "whole.jsonl.zst"
    with SegmentWriter(whole) as writer:
        for number, line in enumerate(lines):
            writer.write(line)
            if number % 50 == 49:
                writer.flush(fsync=False)  # a zstd frame per 50 lines, as the recorder does
    reader = RecordReader(whole)
    assert reader.api == "v2"
    feed = feed_for("v2")
    outcomes = [feed.on_message(record["msg"], record["recv_ns"]) for record in reader]
    assert outcomes.count(Outcome.UPDATE_OK) == 200
    assert outcomes[0] == Outcome.SNAPSHOT
    assert [str(p) for p in reader.problems] == [
        f"{whole}:4: line is not JSON",
        f"{whole}:6: line is not a JSON object",
    ]
    first = next(iter(RecordReader(whole)))
    assert type(first["msg"]["data"][0]["bids"][0]["qty"]) is str  # a lexeme, not a float

    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(whole.read_bytes()[:-7])
    problems: list = []
    records = list(iter_records(cut, "v2", problems))
    assert len(records) >= 150
    assert any("torn zstd frame" in str(p) for p in problems)


def test_record_reader_v1_matches_segment_reader(capture_segment: Callable[[str], Path]) -> None:
    from kbook.segment import SegmentReader

    path = capture_segment("orderbook-v1.json")
    assert list(RecordReader(path)) == list(SegmentReader(path))
    with pytest.raises(ValueError, match="not a valid Api"):
        RecordReader(path, "v3")


@pytest.mark.slow
def test_mixed_folder_verifies_both(capture_segment: Callable[[str], Path], tmp_path: Path) -> None:
    capture_segment("orderbook-v1.json")  # XBT/USD, v1, 979 updates
    texts = market_texts(V2Market("BTC/USD", 10, seed=3), 1000)
    write_v2_segment(tmp_path / "BTC-USD.20231121T000000Z.jsonl.zst", texts)
    code, report, _ = kbook_verify(tmp_path)
    assert code == 0
    assert len(report["files"]) == 2
    # One pair, by its common name: 979 v1 updates (as XBT/USD) and 1001 v2 checksums (the
    # snapshot has one too).
    pair = report["pairs"]["BTC/USD"]
    assert pair["api"] == "v1+v2"
    assert pair["wire"] == ["BTC/USD", "XBT/USD"]
    assert pair["by_api"]["v1"]["checksums_ok"] == 979
    assert pair["by_api"]["v2"]["checksums_ok"] == 1001
    assert pair["checksums_ok"] == 979 + 1001
    assert report["checksums_failed"] == 0


@pytest.mark.slow
def test_same_name_under_both_apis_is_one_pair(tmp_path: Path) -> None:
    # v1 in echo-btc mode prints BTC/USD; the same stream name recorded later in v2.
    v1_segment(
        tmp_path / "BTC-USD.20231121T000000Z.jsonl.zst",
        market_texts(Market("BTC/USD", 10, seed=4), 100),
        api_meta="v1",
    )
    texts = market_texts(V2Market("BTC/USD", 10, seed=4), 50)
    write_v2_segment(tmp_path / "BTC-USD.20231122T000000Z.jsonl.zst", texts)
    code, report, _ = kbook_verify(tmp_path)
    assert code == 0
    assert list(report["pairs"]) == ["BTC/USD"]
    pair = report["pairs"]["BTC/USD"]
    assert pair["api"] == "v1+v2"
    assert pair["by_api"]["v1"]["checksums_ok"] == 100
    assert pair["by_api"]["v2"]["checksums_ok"] == 51
    assert pair["checksums_ok"] == 151


@pytest.mark.slow
def test_wrong_v2_checksum_fails_verify(tmp_path: Path) -> None:
    market = V2Market("BTC/USD", 10, seed=5)
    texts = [market.snapshot_frame()] + [
        market.update_frame(bad_checksum=i == 10) for i in range(50)
    ]
    code, report, _ = kbook_verify(write_v2_segment(tmp_path / "bad.jsonl.zst", texts))
    assert code == 1
    pair = report["pairs"]["BTC/USD"]
    assert pair["checksums_failed"] == 1
    assert pair["checksums_ok"] == 1 + 10
    assert pair["dropped"] == 50 - 11


def test_real_v2_capture_as_a_segment(captures_dir: Path, tmp_path: Path) -> None:
    """Kraken's own v2 frames (their trailing zeros restored) through ``kbook verify``."""
    frames = capture_frames(captures_dir)
    segment = write_v2_segment(tmp_path / "real.jsonl.zst", frames, session_start=False)
    code, report, _ = kbook_verify(segment)
    assert code == 0
    assert report["pairs"]["BTC/USD"]["checksums_ok"] == 510


def test_table_output_shows_the_api(capture_segment: Callable[[str], Path], tmp_path: Path) -> None:
    capture_segment("orderbook-v1.json")
    texts = market_texts(V2Market("BTC/USD", 10, seed=3), 10)
    write_v2_segment(tmp_path / "BTC-USD.20231121T000000Z.jsonl.zst", texts)
    result = subprocess.run(
        [sys.executable, "-m", "kbook", "verify", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "200", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "BTC/USD" in line)
    assert "v2" in row
    assert "checksums ok: 990, failed: 0" in result.stdout


def test_checkpoint_sets_the_depth_for_later_snapshots() -> None:
    """A rotated v2 segment: checkpoint (depth 500), reconnect, a thin snapshot of 80 levels."""
    market = V2Market("BTC/USD", 500, seed=6)
    feed = feed_for("v2")
    asks, bids = market.window()
    checkpoint = {"type": "checkpoint", "pair": "BTC/USD", "channel": "book-500"}
    feed.on_meta({**checkpoint, "asks": asks, "bids": bids}, 1)
    feed.on_meta({"type": "connect"}, 2)
    thin = {"channel": "book", "type": "snapshot", "data": [{"symbol": "BTC/USD"}]}
    thin["data"][0].update(
        asks=[{"price": p, "qty": q} for p, q in asks[:80]],
        bids=[{"price": p, "qty": q} for p, q in bids[:80]],
    )
    assert feed.on_message(thin, 3) is Outcome.SNAPSHOT
    assert list(feed.books) == [("BTC/USD", "book-500")]
