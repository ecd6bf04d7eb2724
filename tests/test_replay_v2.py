"""Replaying Kraken WebSocket v2 segments: a real v2 recording (faults, rotations) checked row by
row against an independent reference, the real v2 capture, v1 and v2 of one pair kept apart
(``--api``), and a rotated segment replayed alone from its checkpoint."""

from __future__ import annotations

import dataclasses
import io
import shutil
import sys
from bisect import bisect_right
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import zstandard
from record_support import SECOND, Background, fast_config, updates_on
from replay_support import RefBook, SynthMarket, assert_rows_match, write_frames
from sim_support import write_v2_segment
from test_v2 import capture_frames

from kbook.api import Api
from kbook.cli import main
from kbook.errors import UsageError
from kbook.segment import find_segments
from kbook.sim import Simulator, SimulatorConfig
from kbook.v2 import decode
from replay import replay_table
from replay.api import run_replay
from replay.options import make_options
from replay.plan import plan_streams, plan_tasks
from replay.survey import survey_segment

PAIR = "BTC/USD"
EVERY = 100_000  # 100 us: the faults' invalid spans (a few ms) cover several grid times

State = tuple[int, bool, list[tuple[str, str]], list[tuple[str, str]]]


# -- an independent v2 reference -------------------------------------------------------------------


def read_v2_records(path: Path) -> list[dict[str, Any]]:
    """Every line of a segment, decoded with ``kbook.v2.decode`` (number lexemes kept)."""
    with open(path, "rb") as fh:
        reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        text = io.TextIOWrapper(reader, encoding="utf-8").read()
    return [decode(line) for line in text.splitlines() if line.strip()]


def _ref_book(depth: int, asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> RefBook:
    book = RefBook(depth)
    for price, qty in asks:
        book.set(book.asks, [price, qty])
    for price, qty in bids:
        book.set(book.bids, [price, qty])
    return book


def _v2_levels(entries: list[dict[str, str]]) -> list[tuple[str, str]]:
    for entry in entries:
        assert type(entry["price"]) is str  # lexemes, not floats
        assert type(entry["qty"]) is str
    return [(entry["price"], entry["qty"]) for entry in entries]


def v2_reference_states(
    records: list[dict[str, Any]], pair: str, levels: int, depth: int = 10
) -> list[State]:
    """``(clock, valid, bids, asks)`` after every event touching ``pair``'s book, by Kraken's v2
    rules written out plainly: a snapshot (checksummed too) or checkpoint starts the book; an
    update applies while valid and must match its checksum; disconnect, connect, a new status
    ``connection_id`` and an (un)subscribe answer void it."""
    book: RefBook | None = None
    valid = False
    connection: int | None = None
    adopt = False
    clock = -1
    states: list[State] = []
    for record in records:
        clock = max(clock, record["recv_ns"])
        touched = False
        meta, msg = record.get("meta"), record.get("msg")
        if meta is not None:
            if meta["type"] == "checkpoint" and meta["pair"] == pair:
                depth = int(meta["channel"].split("-")[1])
                asks = [(p, q) for p, q in meta["asks"]]
                bids = [(p, q) for p, q in meta["bids"]]
                book = _ref_book(depth, asks, bids)
                valid = touched = True
                adopt = adopt or connection is None
            elif meta["type"] in ("connect", "disconnect"):
                touched, valid = valid, False
                connection, adopt = None, False
        elif msg.get("channel") == "status":
            new = msg["data"][0].get("connection_id")
            if new is not None and new != connection:
                if adopt:
                    adopt = False
                elif connection is not None or book is not None:
                    touched, valid = valid, False
                connection = new
        elif msg.get("method") in ("subscribe", "unsubscribe"):
            result = msg.get("result") or {}
            if msg.get("success") and result.get("symbol") == pair:
                if msg["method"] == "subscribe":
                    depth = result["depth"]
                touched, valid = valid, False
        elif msg.get("channel") == "book":
            entry = msg["data"][0]
            if entry["symbol"] != pair:
                continue
            asks, bids = _v2_levels(entry["asks"]), _v2_levels(entry["bids"])
            if msg["type"] == "snapshot":
                book = _ref_book(depth, asks, bids)
                book.truncate()
                valid = book.checksum() == entry["checksum"]
            elif book is not None and valid:
                for price, qty in asks:
                    book.set(book.asks, [price, qty])
                for price, qty in bids:
                    book.set(book.bids, [price, qty])
                book.truncate()
                valid = book.checksum() == entry["checksum"]
            touched = book is not None
        if touched and book is not None:
            bids_out = book.sorted_bids()[:levels] if valid else []
            asks_out = book.sorted_asks()[:levels] if valid else []
            states.append((clock, valid, bids_out, asks_out))
    return states


def grid_rows(states: list[State], every: int) -> list[State]:
    """The reference row at every grid time from the first valid book to the last event."""
    clocks = [state[0] for state in states]
    start = next(state[0] for state in states if state[1])
    first = -(-start // every) * every
    last = clocks[-1] // every * every
    rows = []
    for t in range(first, last + 1, every):
        _clock, valid, bids, asks = states[bisect_right(clocks, t) - 1]
        rows.append((t, valid, bids, asks))
    return rows


def one_pair(table: pa.Table, pair: str = PAIR) -> pa.Table:
    assert set(table.column("pair").to_pylist()) == {pair}
    return table


# -- (a) a real v2 recording: faults and rotations ---------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The v2 recorder against the v2 simulator: a dropped connection, a bad checksum (the
    recorder resubscribes) and rotations every second (later segments open with checkpoints)."""
    out = tmp_path_factory.mktemp("v2rec")
    config = SimulatorConfig(api="v2", pairs=(PAIR,), rate=200.0, seed=7)
    with Simulator(config) as sim:
        record = fast_config(sim, out, (PAIR,), api="v2", rotate_ns=SECOND, max_segment_bytes=6000)
        with Background(record) as run:
            sim.wait_for(lambda s: updates_on(s, 1) >= 20, timeout=5)
            sim.faults.drop_after(40)
            sim.wait_for(lambda s: updates_on(s, 2) >= 50, timeout=10)
            sim.faults.bad_checksum_at(10)
            sim.wait_for(lambda s: s.count("snapshot", 2) == 2, timeout=10)
            sim.wait_for(lambda s: updates_on(s, 2) >= 250, timeout=10)
            run.finish()
    return out / "raw"


def all_records(raw: Path) -> list[dict[str, Any]]:
    return [record for path in find_segments([raw]) for record in read_v2_records(path)]


def fault_spans(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """``[fault, next snapshot)`` receive times of each disconnect and failed checksum."""
    spans = []
    fault: int | None = None
    last_update: int | None = None
    for record in records:
        meta, msg = record.get("meta") or {}, record.get("msg") or {}
        kind = meta.get("type")
        if fault is None and (
            (kind == "disconnect" and meta.get("reason") != "stopped")
            or kind == "checksum_mismatch"
        ):
            # The recorder writes checksum_mismatch after the failing frame: its frame is the
            # last book update before it.
            fault = record["recv_ns"] if kind == "disconnect" else last_update
        if msg.get("channel") == "book":
            if msg.get("type") == "update":
                last_update = record["recv_ns"]
            elif fault is not None:
                spans.append((fault, record["recv_ns"]))
                fault = None
    return spans


def test_v2_recording_replays_exactly(recording: Path) -> None:
    segments = find_segments([recording])
    assert len(segments) >= 2
    infos = [survey_segment(path) for path in segments]
    assert {info.api for info in infos} == {"v2"}
    # On a loaded machine the first rotation may come before the first book frame: a segment
    # may hold no book, never another one.
    assert all(info.books <= {(PAIR, "book-10")} for info in infos)
    assert sum(info.books == {(PAIR, "book-10")} for info in infos) >= 2
    assert infos[0].head_checkpoints == frozenset()
    assert sum(info.head_checkpoints == {(PAIR, "book-10")} for info in infos) >= 1
    records = all_records(recording)

    table = one_pair(replay_table([recording], every=EVERY, levels=10))
    expected = grid_rows(v2_reference_states(records, PAIR, 10), EVERY)
    assert_rows_match(table, expected, 10)

    # Invalid rows: exactly the grid times from each fault to the snapshot after it.
    spans = fault_spans(records)
    assert len(spans) == 2  # the drop, the bad checksum
    wanted = set()
    for fault, snapshot in spans:
        times = set(range(-(-fault // EVERY) * EVERY, snapshot, EVERY))
        assert times, (fault, snapshot)
        wanted |= times
    ts = [t.value for t in table.column("ts")]
    invalid = {
        t for t, valid in zip(ts, table.column("valid").to_pylist(), strict=True) if not valid
    }
    assert invalid == wanted


def test_v2_stream_is_cut_across_a_pool(recording: Path) -> None:
    """A v2 stream is cut at its checkpointed segments as a v1 one is; with workers it gives one
    worker's output."""
    options = dataclasses.replace(make_options(every="10ms"), task_bytes=0)
    infos = [survey_segment(path) for path in find_segments([recording])]
    [stream] = plan_streams(infos, options)
    assert stream.api == Api.V2
    assert len(plan_tasks([stream], options)) > 1
    whole = dataclasses.replace(options, task_bytes=1 << 62)
    _, one = run_replay([recording], whole, None, None)
    _, two = run_replay([recording], dataclasses.replace(options, workers=2), None, None)
    assert [batches for _, batches in one] == [batches for _, batches in two]
    # The invalid spans and their causes survive the join of the pieces.
    spans = [[s.invalid_spans for s in result.pairs.values()] for result, _ in one]
    assert spans == [[s.invalid_spans for s in result.pairs.values()] for result, _ in two]
    # The faults' spans (a few ms each) may fall between two grid times: no other cause.
    assert {cause for pairs in spans for found in pairs for _, _, cause in found} <= {
        "disconnect",
        "checksum",
    }


# -- (b) the real v2 capture -------------------------------------------------------------------


def capture_segment(captures_dir: Path, path: Path) -> Path:
    return write_v2_segment(path, capture_frames(captures_dir), session_start=False)


def test_v2_capture_replays_all_valid(captures_dir: Path, tmp_path: Path) -> None:
    path = capture_segment(captures_dir, tmp_path / "capture.jsonl.zst")
    assert survey_segment(path).api == "v2"
    table = one_pair(replay_table([path], every="10ms", levels=10))
    assert table.num_rows >= 50
    assert all(table.column("valid").to_pylist())
    assert table.column("bid_px_9").null_count == 0
    expected = grid_rows(v2_reference_states(read_v2_records(path), PAIR, 10), 10_000_000)
    assert_rows_match(table, expected, 10)
    assert sum(table.column("checksum_failures").to_pylist()) == 0


# -- (c) v1 and v2 of one pair -----------------------------------------------------------------


@pytest.fixture
def both_apis(captures_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "raw"
    capture_segment(captures_dir, folder / "v2.jsonl.zst")
    market = SynthMarket("XBT/USD", depth=10, seed=3)
    write_frames(folder / "v1.jsonl.zst", market.frames(40, 1_763_683_200_000_000_000, 10**8))
    return folder


def test_one_pair_in_both_apis_is_one_timeline(both_apis: Path) -> None:
    """A pair recorded under v1, then under v2 (a migration), replays as one timeline; --api
    only restricts it to one API's sources."""
    both = one_pair(replay_table([both_apis], every="10ms"))
    v1 = one_pair(replay_table([both_apis], every="10ms", api="v1"))
    v2 = one_pair(replay_table([both_apis], every="10ms", api="v2"))
    assert v1.column("ts")[0].value == 1_763_683_200_000_000_000
    assert v1.column("ts")[0] != v2.column("ts")[0]
    assert all(v1.column("valid").to_pylist())
    assert all(v2.column("valid").to_pylist())
    sources = {label.split()[0] for label in both.column("source").drop_null().to_pylist()}
    assert sources == {"v1", "v2"}
    # Where one API alone has a row, the timeline's row is that one, level for level.
    joined = {row["ts"]: row for row in both.to_pylist()}
    for alone in (v1, v2):
        for row in alone.to_pylist():
            other = v2 if alone is v1 else v1
            if other.column("ts")[0].as_py() <= row["ts"] <= other.column("ts")[-1].as_py():
                continue
            assert joined[row["ts"]] == row
    with pytest.raises(UsageError, match="--api 'v3' is not one of v1, v2"):
        replay_table([both_apis], every="10ms", api="v3")


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> object:
    monkeypatch.setattr(sys, "argv", ["kbook", "replay", "--workers", "1", *args])
    try:
        main()
    except SystemExit as exc:
        return exc.code
    return 0


def test_replay_command_api_option(
    both_apis: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "snapshots"
    assert run_cli(monkeypatch, str(both_apis), "--out", str(out), "--every", "10ms") == 0
    assert (out / "pair=BTC-USD").is_dir()
    shutil.rmtree(out)
    for api in ("v1", "v2"):
        args = ("--out", str(out), "--api", api, "--every", "10ms")
        assert run_cli(monkeypatch, str(both_apis), *args) == 0
        assert (out / "pair=BTC-USD").is_dir()
        shutil.rmtree(out)


# -- (d) a rotated v2 segment alone ----------------------------------------------------------------


def test_v2_segment_alone_starts_at_its_checkpoint(recording: Path, tmp_path: Path) -> None:
    later = next(
        path
        for path in find_segments([recording])[1:]
        if survey_segment(path).head_checkpoints == {(PAIR, "book-10")}
    )
    alone = shutil.copy(later, tmp_path / later.name)
    records = read_v2_records(Path(alone))
    assert records[0]["meta"]["type"] == "checkpoint"
    table = one_pair(replay_table([alone], every=EVERY))
    assert table.column("valid")[0].as_py() is True
    assert table.column("ts")[0].value == -(-records[0]["recv_ns"] // EVERY) * EVERY
    expected = grid_rows(v2_reference_states(records, PAIR, 10), EVERY)
    assert_rows_match(table, expected, 10)


def test_decimal_reference_reads_v2_zero_quantities() -> None:
    """The reference deletes a level on ``0E-8`` as Kraken means it."""
    book = _ref_book(10, [("100.0", "1.00000000")], [])
    book.set(book.asks, ["100.0", "0E-8"])
    assert book.asks == {}


def status(connection_id: int) -> str:
    return (
        '{"channel":"status","type":"update","data":[{"api_version":"v2",'
        f'"connection_id":{connection_id},"system":"online","version":"2.0.0"}}]}}'
    )


ACK = (
    '{"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,'
    '"symbol":"BTC/USD"},"success":true,"req_id":7}'
)


@pytest.mark.parametrize("event", ["new connection", "resubscribe"])
def test_v2_status_and_ack_void_the_book(event: str, captures_dir: Path, tmp_path: Path) -> None:
    """A status frame naming a new ``connection_id``, or a (re)subscribe answer, voids the book
    until the next snapshot, as v1's systemStatus and subscriptionStatus do."""
    frames = capture_frames(captures_dir)
    middle = status(2) if event == "new connection" else ACK
    texts = [status(1), ACK, *frames[:200], middle, *frames[200:300], frames[0]]
    path = write_v2_segment(tmp_path / "s.jsonl.zst", texts, session_start=False)
    every = 10_000_000
    table = one_pair(replay_table([path], every=every))
    records = read_v2_records(path)
    expected = grid_rows(v2_reference_states(records, PAIR, 10), every)
    assert_rows_match(table, expected, 10)
    void_ns = records[202]["recv_ns"]
    snapshot_ns = records[-1]["recv_ns"]
    invalid = [
        t.value
        for t, ok in zip(table.column("ts"), table.column("valid"), strict=True)
        if not ok.as_py()
    ]
    assert invalid == list(range(-(-void_ns // every) * every, snapshot_ns, every))


def test_a_v2_book_frame_naming_no_symbol_is_malformed_in_replay_as_in_verify(
    captures_dir: Path, tmp_path: Path
) -> None:
    """Replay asks the dialect whether a book frame can be filed at all: one whose entry names
    no symbol is malformed (the feed counts it so, and verify reports it), not merely a frame of
    a book not followed."""
    from kbook.verify import verify_paths

    frames = capture_frames(captures_dir)
    nameless = '{"channel":"book","type":"update","data":[{"bids":[],"asks":[],"checksum":1}]}'
    path = write_v2_segment(
        tmp_path / "capture.jsonl.zst", [*frames[:5], nameless, *frames[5:]], session_start=False
    )
    _, outcomes = run_replay([path], make_options("10ms"), None, None)
    replayed = sum(result.malformed_frames for result, _ in outcomes)
    assert replayed == verify_paths([path]).feed.malformed_frames == 1
    assert sum(result.skipped_frames for result, _ in outcomes) == 0
