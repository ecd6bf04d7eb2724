"""`kbook verify --coverage/--by-day`: valid and invalid time, measured with replay's rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pytest

from kbook.captures import read_capture
from kbook.coverage import measure_coverage
from kbook.feed import BookFeed
from kbook.segment import checkpoint_meta, frame_line, is_json_text, meta_line, write_segment
from kbook.units import SECOND
from kbook.verify import verify_paths
from replay.api import replay_table

from conftest import CAPTURES

EVERY = "100ms"
EVERY_NS = SECOND // 10
CUT = 500
"""The capture's frame after which each outage happens."""
OUTAGE_NS = 4 * SECOND
NAME = "XBT-USD.20231114T221320Z.jsonl.zst"


def capture_frames() -> list[tuple[int, str]]:
    return read_capture(CAPTURES / "orderbook-v1.json")


def lines_of(frames: list[tuple[int, str]], shift_from: int = CUT) -> list[bytes]:
    """The frames as segment lines, those from ``shift_from`` on received ``OUTAGE_NS`` later."""
    return [
        frame_line(recv_ns + (OUTAGE_NS if seq >= shift_from else 0), seq, text, is_json_text(text))
        for seq, (recv_ns, text) in enumerate(frames)
    ]


def replay_invalid_ns(path: Path, max_silence: str = "10s") -> int:
    table = replay_table([path], every=EVERY, levels=1, max_silence=max_silence)
    return int(pc.sum(pc.invert(table.column("valid"))).as_py() or 0) * EVERY_NS


def test_disconnect_outage_is_replays_invalid_time(tmp_path: Path) -> None:
    """A disconnect, 4 s without a connection, then the book restored by a checkpoint."""
    frames = capture_frames()
    feed = BookFeed()
    for recv_ns, text in frames[:CUT]:
        feed.on_message(orjson.loads(text), recv_ns)
    ((key, book),) = feed.books.items()
    down = frames[CUT - 1][0] + 1
    checkpoint = checkpoint_meta(
        key[0], key[1], book.top_asks(book.depth), book.top_bids(book.depth), book.checksum()
    )
    lines = lines_of(frames)
    lines[CUT:CUT] = [
        meta_line(down, {"type": "disconnect"}),
        meta_line(down + OUTAGE_NS, {"type": "connect"}),
        meta_line(down + OUTAGE_NS, checkpoint),
    ]
    path = write_segment(tmp_path / NAME, lines)
    coverage = measure_coverage([path], EVERY)["BTC/USD"]
    assert coverage.invalid_ns == replay_invalid_ns(path)
    assert OUTAGE_NS - EVERY_NS <= coverage.invalid_ns <= OUTAGE_NS + EVERY_NS
    assert len(coverage.invalid_spans) == 1
    report = verify_paths([path])
    assert report.checksums_failed == 0  # the book came back whole


def test_silence_is_replays_invalid_time(tmp_path: Path) -> None:
    """4 s without a line and a 1 s --max-silence: verify's own invalid time says nothing."""
    path = write_segment(tmp_path / NAME, lines_of(capture_frames()))
    coverage = measure_coverage([path], EVERY, "1s")["BTC/USD"]
    assert coverage.invalid_ns == replay_invalid_ns(path, "1s")
    assert OUTAGE_NS - SECOND - EVERY_NS <= coverage.invalid_ns <= OUTAGE_NS - SECOND + EVERY_NS
    assert verify_paths([path]).pairs["BTC/USD"].invalid_ns == 0


def test_checksum_failure_is_replays_invalid_time(tmp_path: Path) -> None:
    """A changed volume fails a checksum: invalid up to the end (no later snapshot)."""
    frames = capture_frames()
    decoded = [orjson.loads(text) for _, text in frames]
    k = next(i for i in range(CUT, len(decoded)) if "c" in decoded[i][-3])
    side = decoded[k][1]
    levels = side.get("a") or side.get("b")
    levels[0][1] = "123.45678901"
    frames[k] = (frames[k][0], orjson.dumps(decoded[k]).decode())
    path = write_segment(tmp_path / NAME, lines_of(frames))
    coverage = measure_coverage([path], EVERY)["BTC/USD"]
    assert verify_paths([path]).checksums_failed == 1
    assert coverage.invalid_ns == replay_invalid_ns(path) > 0
    assert len(coverage.invalid_spans) == 1


def test_no_recorder_running_between_two_recordings(tmp_path: Path) -> None:
    """Two recordings of a pair, 4 s apart: the gap between them is invalid, as replay says."""
    frames = capture_frames()
    lines = lines_of(frames)
    first = write_segment(tmp_path / NAME, lines[:CUT])
    second = write_segment(tmp_path / NAME.replace("20231114T221320Z", "20231114T221324Z"), lines)
    coverage = measure_coverage([first, second], EVERY, "1s")["BTC/USD"]
    table = replay_table([tmp_path], every=EVERY, levels=1, max_silence="1s")
    invalid = int(pc.sum(pc.invert(table.column("valid"))).as_py() or 0) * EVERY_NS
    assert coverage.invalid_ns == invalid > 0


@pytest.mark.slow
def test_cli_by_day_and_json(tmp_path: Path) -> None:
    path = write_segment(tmp_path / NAME, lines_of(capture_frames()))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbook",
            "verify",
            "--by-day",
            "--json",
            "--every",
            EVERY,
            "--max-silence",
            "1s",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    coverage = json.loads(result.stdout)["coverage"]["BTC/USD"]
    invalid_s = replay_invalid_ns(path, "1s") / 1e9
    assert coverage["invalid_s"] == invalid_s
    assert list(coverage["days"]) == ["2023-11-14"]
    assert coverage["days"]["2023-11-14"]["invalid_s"] == invalid_s
    assert coverage["sources"] == {"v1 book-10": coverage["valid_s"]}
    assert len(coverage["invalid_spans"]) == 1
    table = subprocess.run(
        [sys.executable, "-m", "kbook", "verify", "--by-day", "--max-silence", "1s", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "coverage per UTC day" in table.stdout
    assert "2023-11-14" in table.stdout
