"""Input kbook did not write: replay and verify read it without crashing, misreading or
exhausting the machine. Each hostile line below sits in an otherwise good recording; it is
reported and skipped (or refused in one line), and the book's rows are those of the recording
without it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from replay_support import SynthMarket

import replay
from kbook.segment import MAX_LINE_BYTES, frame_line, meta_line, write_segment
from kbook.verify import verify_paths
from replay.survey import survey_segment

T0 = 1_763_683_200_000_000_000
SNAP = '{"as":[["1.0","1.0","1"]],"bs":[["0.5","1.0","1"]]}'
HOSTILE = {
    "a channel of no Kraken depth": frame_line(
        T0 + 5, 99, f'[1,{SNAP},"book-999999999","XBT/USD"]', True
    ),
    "a snapshot of 5,000 levels": frame_line(
        T0 + 5,
        99,
        orjson.dumps(
            [1, {"as": [[f"{9000 + i}.0", "1.0", "1"] for i in range(5000)], "bs": []}]
            + ["book-10", "XBT/USD"]
        ).decode(),
        True,
    ),
    "a line over the cap": b'{"recv_ns":%d,"msg":"' % (T0 + 5)
    + b"x" * (MAX_LINE_BYTES + 1)
    + b'"}\n',
    "a pair name with NUL": frame_line(T0 + 5, 99, f'[1,{SNAP},"book-10","X\\u0000Y/USD"]', True),
    "a pair name over 255 bytes": frame_line(
        T0 + 5, 99, f'[1,{SNAP},"book-10","{"A" * 300}/USD"]', True
    ),
    "a deep nest": b'{"recv_ns":%d,"msg":' % (T0 + 5) + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
    "a receive time in 2255": frame_line(
        9_000_000_000_000_000_000, 99, '{"event":"heartbeat"}', True
    ),
    "a receive time above int64": b'{"recv_ns":99999999999999999999999,"msg":{"event":"heartbeat"}}\n',
    "a 10,000-digit price": frame_line(
        T0 + 5,
        99,
        '[1,{"a":[["%s.0","1.0","1"]],"c":"1"},"book-10","XBT/USD"]' % ("9" * 10_000),
        True,
    ),
    "a checkpoint of no Kraken depth": meta_line(
        T0 + 5,
        {"type": "checkpoint", "pair": "XBT/USD", "channel": "book-99999", "asks": [], "bids": []},
    ),
}


def recording(folder: Path, hostile: bytes | None) -> Path:
    market = SynthMarket(seed=1)
    lines = [
        frame_line(ns, i, text, True) for i, (ns, text) in enumerate(market.frames(40, T0, 10**8))
    ]
    if hostile is not None:
        lines.insert(5, hostile)
    return write_segment(folder / "s.jsonl.zst", lines)


VOIDS = {"a 10,000-digit price", "a snapshot of 5,000 levels"}
"""A malformed frame of the followed book: the book is void until its next snapshot, as for any
malformed frame."""


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_line_is_reported_and_skipped(name: str, tmp_path: Path) -> None:
    clean = replay.replay_table(recording(tmp_path / "clean", None), every="1s")
    path = recording(tmp_path / "hostile", HOSTILE[name])
    summary = replay.replay_to_dataset(path, tmp_path / "out", every="1s")
    reported = summary.problems or summary.result.malformed_frames
    assert reported, "replay said nothing"
    table = replay.read_snapshots(tmp_path / "out")
    if name in VOIDS:
        assert table.column("valid").to_pylist() == [True] + [False] * (clean.num_rows - 1)
    else:
        assert table.equals(clean)
    report = verify_paths([path])
    assert report.problems, "verify said nothing"
    assert set(report.pairs) == {"BTC/USD"}
    assert report.checksums_failed == 0
    assert survey_segment(path).last_ns is not None
    assert survey_segment(path).last_ns < 4_102_444_800_000_000_000


def test_first_receive_time_is_decoded_whatever_the_key_order(tmp_path: Path) -> None:
    """JSON does not fix the order of keys: a line written ``{"msg":...,"recv_ns":...}`` has
    its receive time read as such, not taken from a later line (which let ``--end`` skip the
    segment and carry a stale book as valid)."""
    market = SynthMarket(seed=2)
    frames = list(market.frames(40, T0, 10**8))
    lines = [
        orjson.dumps({"msg": orjson.Fragment(text), "recv_ns": ns, "seq": i}) + b"\n"
        for i, (ns, text) in enumerate(frames)
    ]
    path = write_segment(tmp_path / "s.jsonl.zst", lines)
    info = survey_segment(path)
    assert (info.first_ns, info.last_ns) == (frames[0][0], frames[-1][0])


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_line_in_deltas_and_on_change_snapshots(name: str, tmp_path: Path) -> None:
    """The message-by-message outputs read the same lines the same way: no traceback, the
    line reported, and the book void until its next snapshot where the grid's is."""
    path = recording(tmp_path / "hostile", HOSTILE[name])
    summary = replay.replay_deltas_to_dataset(path, tmp_path / "deltas")
    assert summary.problems or summary.result.malformed_frames
    deltas = replay.read_deltas(tmp_path / "deltas")
    # Where the book stops being known: at the malformed frame (the clock is then the frame
    # before it's), else at the end of the recording.
    void = T0 + 4 * 10**8 if name in VOIDS else T0 + 39 * 10**8 + 10 * 10**9
    unknown = deltas.filter(deltas.column("side").is_null())
    assert unknown.column("ts").cast(pa.int64()).to_pylist() == [void]
    replay.replay_to_dataset(path, tmp_path / "changes", every="change")
    rows = replay.read_snapshots(tmp_path / "changes")
    invalid = rows.filter(pc.invert(rows.column("valid")))
    assert invalid.column("ts").cast(pa.int64()).to_pylist() == [void]
