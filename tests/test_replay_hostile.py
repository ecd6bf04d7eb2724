"""Input kbook did not write: replay and verify read it without crashing, misreading or
exhausting the machine. Each hostile line below sits in an otherwise good recording; it is
reported and skipped (or refused in one line), and the book's rows are those of the recording
without it."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from replay_support import SynthMarket

import replay
from kbook.errors import InputError
from kbook.lines import native_core
from kbook.segment import MAX_LINE_BYTES, frame_line, meta_line, write_segment
from kbook.sim.market_v2 import V2Market
from kbook.verify import verify_paths
from kbook.watch.sources import find_book
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


# -- books of a depth Kraken does not serve ----------------------------------------------------------

NO_KRAKEN_DEPTHS = ["book-3", "book-11", "book-0", "book-999999999"]
"""Channels of no Kraken depth (``kbook.api.DEPTHS``): shallower, between two, none, absurd."""


@pytest.fixture(params=["native", "python"])
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Replay and verify through the native core, then through the pure-Python path."""
    if request.param == "native" and native_core() is None:
        pytest.skip("the native core was not built")
    monkeypatch.setenv("KBOOK_NATIVE", "1" if request.param == "native" else "0")
    return str(request.param)


def recording_with(folder: Path, hostile: list[bytes], at: int = 5) -> Path:
    """``recording`` with several hostile lines side by side from line ``at``."""
    market = SynthMarket(seed=1)
    lines = [
        frame_line(ns, i, text, True) for i, (ns, text) in enumerate(market.frames(40, T0, 10**8))
    ]
    lines[at:at] = hostile
    return write_segment(folder / "s.jsonl.zst", lines)


@pytest.mark.parametrize("channel", NO_KRAKEN_DEPTHS)
def test_a_v1_book_of_no_kraken_depth_is_reported_and_skipped(
    channel: str, core: str, tmp_path: Path
) -> None:
    """A snapshot and an update of the followed pair on such a channel, a snapshot of a pair
    seen nowhere else, and a checkpoint of such a channel: each a malformed frame, reported by
    replay and by verify on its line; no book of that depth is made (so none is followed, and
    none is sized by the claim), and the recording's own book replays exactly."""
    clean = replay.replay_table(recording(tmp_path / "clean", None), every="1s")
    hostile = [
        frame_line(T0 + 5, 90, f'[1,{SNAP},"{channel}","XBT/USD"]', True),
        frame_line(
            T0 + 6, 91, f'[1,{{"a":[["0.9","1.0","1"]],"c":"1"}},"{channel}","XBT/USD"]', True
        ),
        frame_line(T0 + 7, 92, f'[1,{SNAP},"{channel}","ETH/USD"]', True),
        meta_line(
            T0 + 8,
            {"type": "checkpoint", "pair": "XBT/USD", "channel": channel, "asks": [], "bids": []},
        ),
    ]
    path = recording_with(tmp_path / "hostile", hostile)
    summary = replay.replay_to_dataset(path, tmp_path / "out", every="1s")
    assert summary.result.malformed_frames == len(hostile)
    assert replay.read_snapshots(tmp_path / "out").equals(clean)
    tracemalloc.start()
    try:
        report = verify_paths([path])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"verify took {peak} bytes"
    assert [(problem.line, problem.reason) for problem in report.problems] == [
        (line, "JSON, but not a well-formed Kraken frame") for line in range(6, 10)
    ]
    assert set(report.pairs) == {"BTC/USD"}
    assert report.checksums_failed == 0
    assert report.pairs["BTC/USD"].checksums_ok == 39


def v2_answer(symbol: str, depth: object) -> str:
    """Kraken v2's answer to a book subscribe request, saying ``depth``."""
    result = {"channel": "book", "depth": depth, "snapshot": True, "symbol": symbol}
    return orjson.dumps({"method": "subscribe", "result": result, "success": True}).decode()


def v2_recording(folder: Path, hostile: list[bytes]) -> Path:
    """A v2 recording of BTC/USD at depth 10 (answer, snapshot, 40 updates 100 ms apart) with
    ``hostile`` lines after its fifth update."""
    market = V2Market("BTC/USD", 10, seed=2, clock=lambda: 1_763_683_200.0)
    texts = [v2_answer("BTC/USD", 10), market.snapshot_frame()]
    texts += [market.update_frame() for _ in range(40)]
    start = {"type": "session_start", "kbook": "test", "api": "v2", "pair": "BTC/USD"}
    lines = [meta_line(T0, start)]
    lines += [frame_line(T0 + (i + 1) * 10**8, i, text, True) for i, text in enumerate(texts)]
    lines[8:8] = hostile
    return write_segment(folder / "s.jsonl.zst", lines)


@pytest.mark.parametrize("depth", [3, 11, 0, 999_999_999, "10", None])
def test_a_v2_answer_of_no_kraken_depth_voids_the_book_until_a_kraken_depth(
    depth: object, core: str, tmp_path: Path
) -> None:
    """A subscribe answer saying a depth Kraken does not serve is malformed and reported, and
    the book is void from it: what follows is a subscription of no known depth, whose snapshot
    is malformed too and whose updates are dropped (until an answer or checkpoint says a Kraken
    depth). The rows before it are the recording's own."""
    ns = T0 + 7 * 10**8 + 1  # after the fifth update
    again = V2Market("BTC/USD", 10, seed=9, clock=lambda: 1_763_683_200.0)
    hostile = [
        frame_line(ns, 90, v2_answer("BTC/USD", depth), True),
        frame_line(ns + 1, 91, again.snapshot_frame(), True),
        frame_line(ns + 2, 92, again.update_frame(), True),
    ]
    clean = v2_recording(tmp_path / "clean", [])
    path = v2_recording(tmp_path / "hostile", hostile)
    summary = replay.replay_to_dataset(path, tmp_path / "out", every="100ms")
    assert summary.result.malformed_frames == 2  # the answer and the snapshot after it
    rows = replay.read_snapshots(tmp_path / "out")
    expected = replay.replay_table(clean, every="100ms")
    valid = rows.column("valid").to_pylist()
    assert valid == [ns // 10**8 * 10**8 + 10**8 > ts for ts in times(rows)]
    assert valid.count(True) == 6
    assert rows.slice(0, 6).equals(expected.slice(0, 6))
    report = verify_paths([path])
    assert [problem.line for problem in report.problems] == [9, 10]
    assert report.pairs["BTC/USD"].malformed == 1  # the snapshot; the answer is the feed's
    assert report.checksums_failed == 0


def times(table: pa.Table) -> list[int]:
    return table.column("ts").cast(pa.int64()).to_pylist()


def test_a_v2_checkpoint_of_no_kraken_depth_is_reported_and_skipped(
    core: str, tmp_path: Path
) -> None:
    """A checkpoint whose channel is no Kraken book: malformed, reported, and the recording's
    own book replays exactly."""
    checkpoint = {"type": "checkpoint", "pair": "BTC/USD", "channel": "book-3"}
    hostile = [meta_line(T0 + 7 * 10**8 + 1, {**checkpoint, "asks": [], "bids": []})]
    clean = replay.replay_table(v2_recording(tmp_path / "clean", []), every="100ms")
    path = v2_recording(tmp_path / "hostile", hostile)
    summary = replay.replay_to_dataset(path, tmp_path / "out", every="100ms")
    assert summary.result.malformed_frames == 1
    assert replay.read_snapshots(tmp_path / "out").equals(clean)
    report = verify_paths([path])
    assert [problem.line for problem in report.problems] == [9]


@pytest.mark.parametrize("channel", NO_KRAKEN_DEPTHS)
def test_watch_from_follows_no_book_of_no_kraken_depth(channel: str, tmp_path: Path) -> None:
    """``kbook watch --from`` shows the first book recorded of the pair: a frame of a depth
    Kraken does not serve before it is malformed, not a book to show (nor one to list)."""
    hostile = [frame_line(T0 - 1, 90, f'[1,{SNAP},"{channel}","XBT/USD"]', True)]
    path = recording_with(tmp_path, hostile, at=0)
    assert find_book([path], "XBT/USD", None) == ("book-10", "v1")
    with pytest.raises(InputError, match=r"holds: BTC/USD book-10\)"):
        find_book([path], "XBT/USD", channel)
