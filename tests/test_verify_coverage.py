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
from replay.api import replay_table, replay_to_dataset, table_and_result
from replay.options import make_options

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
    ((first, stop, cause),) = coverage.invalid_spans
    assert (stop - first, cause) == (coverage.invalid_ns, "disconnect")
    assert coverage.days["2023-11-14"].causes == {"disconnect": coverage.invalid_ns}
    summary = replay_to_dataset([path], tmp_path / "out", every=EVERY, levels=1)
    manifest = json.loads((tmp_path / "out" / "_kbook_replay.json").read_text())
    ((span,),) = [data["invalid_spans"] for data in manifest["pairs"].values()]
    assert span["cause"] == "disconnect"
    assert summary.pairs["BTC/USD"].invalid_spans[0][2] == "disconnect"
    report = verify_paths([path])
    assert report.checksums_failed == 0  # the book came back whole


def test_silence_is_replays_invalid_time(tmp_path: Path) -> None:
    """4 s without a line and a 1 s --max-silence: verify's own invalid time says nothing."""
    path = write_segment(tmp_path / NAME, lines_of(capture_frames()))
    coverage = measure_coverage([path], EVERY, "1s")["BTC/USD"]
    assert coverage.invalid_ns == replay_invalid_ns(path, "1s")
    assert OUTAGE_NS - SECOND - EVERY_NS <= coverage.invalid_ns <= OUTAGE_NS - SECOND + EVERY_NS
    assert [cause for _, _, cause in coverage.invalid_spans] == ["silence"]
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
    assert [cause for _, _, cause in coverage.invalid_spans] == ["checksum"]


def test_no_recorder_running_between_two_recordings(tmp_path: Path) -> None:
    """Two recordings of a pair, 4 s apart: the gap between them is invalid, as replay says.
    Bare segments are one source, so the gap is a silence of it."""
    frames = capture_frames()
    lines = lines_of(frames)
    first = write_segment(tmp_path / NAME, lines[:CUT])
    second = write_segment(tmp_path / NAME.replace("20231114T221320Z", "20231114T221324Z"), lines)
    coverage = measure_coverage([first, second], EVERY, "1s")["BTC/USD"]
    table = replay_table([tmp_path], every=EVERY, levels=1, max_silence="1s")
    invalid = int(pc.sum(pc.invert(table.column("valid"))).as_py() or 0) * EVERY_NS
    assert coverage.invalid_ns == invalid > 0
    assert [cause for _, _, cause in coverage.invalid_spans] == ["silence"]


def two_runs(tmp_path: Path) -> list[Path]:
    """Two recorder runs of the capture's pair (``session_start`` with a run id): the first
    stops after frame ``CUT``, the second records the whole capture again from ``OUTAGE_NS``
    after that (its snapshot first)."""
    frames = capture_frames()
    later = frames[CUT - 1][0] + OUTAGE_NS - frames[0][0]
    runs = []
    for run_id, name, body in (
        ("a" * 32, NAME, frames[:CUT]),
        ("b" * 32, NAME.replace("221320Z", "221333Z"), [(t + later, f) for t, f in frames]),
    ):
        lines = [meta_line(body[0][0], {"type": "session_start", "run_id": run_id})]
        lines += [frame_line(t, seq, f, is_json_text(f)) for seq, (t, f) in enumerate(body)]
        runs.append(write_segment(tmp_path / name, lines))
    return runs


def test_gap_between_two_runs_is_no_recorder_running(tmp_path: Path) -> None:
    """Between two recorder runs no source has a row: the gap's cause says so, in verify's
    coverage and in replay's own summary alike (one noting of the causes, reused)."""
    runs = two_runs(tmp_path)
    coverage = measure_coverage(runs, EVERY)["BTC/USD"]
    assert [cause for _, _, cause in coverage.invalid_spans] == ["no recorder running"]
    assert OUTAGE_NS - EVERY_NS <= coverage.invalid_ns <= OUTAGE_NS + EVERY_NS
    assert coverage.days["2023-11-14"].causes == {"no recorder running": coverage.invalid_ns}
    _, result = table_and_result(runs, make_options(EVERY, levels=1))
    spans = result.pairs["BTC/USD"].invalid_spans
    assert [(a, b + EVERY_NS, cause) for a, b, cause in spans] == coverage.invalid_spans


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
    assert coverage["days"]["2023-11-14"]["causes"] == {"silence": invalid_s}
    assert coverage["sources"] == {"v1 book-10": coverage["valid_s"]}
    ((span),) = coverage["invalid_spans"]
    assert span["cause"] == "silence"
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
    assert "silence 3.0" in table.stdout
