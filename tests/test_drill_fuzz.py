"""Fuzz: the segment reader, the book builder, verify and replay on bad input.

Nothing may crash or hang; whatever cannot be decoded is reported with its file (and line, when it
is a line); the good data around it is still used. Deterministic (``derandomize``); raise
``KBOOK_FUZZ_EXAMPLES`` for a longer hunt.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kbook.book import Book
from kbook.captures import capture_to_segment
from kbook.errors import SegmentError
from kbook.feed import BookFeed
from kbook.segment import ZSTD_MAGIC, SegmentReader, SegmentWriter, frame_line, write_segment
from kbook.verify import verify_paths
from replay import replay_table

from conftest import CAPTURES

EXAMPLES = int(os.environ.get("KBOOK_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def folder() -> Iterator[Path]:
    """A fresh folder per example (pytest's ``tmp_path`` is one per test, not per example)."""
    with tempfile.TemporaryDirectory(prefix="kbook-fuzz-") as name:
        yield Path(name)


# -- the segment reader ---------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=3000), magic=st.booleans(), partial=st.booleans())
def test_reader_takes_any_bytes(body: bytes, magic: bool, partial: bool) -> None:
    with folder() as where:
        path = where / ("s.jsonl.zst" + (".partial" if partial else ""))
        content = (ZSTD_MAGIC if magic else b"") + body
        path.write_bytes(content)
        head = content[:4]
        skippable = len(head) == 4 and head[1:] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50
        if not (head == ZSTD_MAGIC or skippable or (partial and ZSTD_MAGIC.startswith(head))):
            with pytest.raises(SegmentError, match=f"^{path}: "):
                SegmentReader(path)
            return
        reader = SegmentReader(path)
        records = list(reader)
        assert all(type(record) is dict for record in records)
        assert all(problem.path == path for problem in reader.problems)


FLUSHES = 12
LINES_PER_FLUSH = 8


def flushed_segment(path: Path) -> tuple[bytes, list[int], list[list[bytes]]]:
    """A segment of ``FLUSHES`` zstd frames: its bytes, where each frame ends, each frame's lines."""
    ends, lines = [], []
    with SegmentWriter(path) as writer:
        for flush in range(FLUSHES):
            batch = []
            for i in range(LINES_PER_FLUSH):
                seq = flush * LINES_PER_FLUSH + i
                text = '[336,{"a":[["%d.50000","0.%08d","1693415327.9"]],"c":"%d"},"book-10","XBT/USD"]'
                line = frame_line(seq, seq, text % (27000 + seq, seq * 7919, seq), True)
                writer.write(line)
                batch.append(line.rstrip(b"\n"))
            writer.flush(fsync=False)
            ends.append(writer.bytes_out)
            lines.append(batch)
    return path.read_bytes(), ends, lines


@FUZZ
@given(
    where=st.floats(min_value=0.0, max_value=0.9999),
    damage=st.sampled_from(["flip", "overwrite", "zero", "insert"]),
    bit=st.integers(min_value=0, max_value=7),
    junk=st.binary(min_size=1, max_size=64),
)
def test_damage_inside_a_frame_costs_only_that_frame(
    where: float, damage: str, bit: int, junk: bytes
) -> None:
    """A bit flip (or a run of junk) inside one zstd frame: every line of the others is read,
    and the damage is reported with the file and the byte range skipped."""
    with folder() as tmp:
        clean, ends, lines = flushed_segment(tmp / "clean.jsonl.zst")
        position = int(where * len(clean))
        data = bytearray(clean)
        if damage == "flip":
            data[position] ^= 1 << bit
        elif damage == "overwrite":
            data[position : position + len(junk)] = junk[: len(clean) - position]
        elif damage == "zero":
            data[position : position + len(junk)] = bytes(min(len(junk), len(clean) - position))
        else:
            data[position:position] = junk
        damaged = tmp / "damaged.jsonl.zst"
        damaged.write_bytes(bytes(data))
        first_hit = _frame_of(ends, position)
        last_hit = first_hit if damage in ("flip", "insert") else _frame_of(ends, position + 63)
        if bytes(data[: len(ZSTD_MAGIC)]) != ZSTD_MAGIC:
            # A damaged first magic: the file no longer says it is zstd, and is refused whole
            # with a one-line error naming it (see the README's reliability section).
            with pytest.raises(SegmentError, match="not a zstd segment"):
                SegmentReader(damaged)
            return
        reader = SegmentReader(damaged)
        got = {line for _, line in reader.raw_lines()}
        for index, batch in enumerate(lines):
            if first_hit <= index <= last_hit:
                continue
            missing = [line for line in batch if line not in got]
            assert not missing, f"frame {index} lost {len(missing)} lines (damage in {first_hit})"
        if got != {line for batch in lines for line in batch}:
            assert reader.problems, "damage that lost or changed lines went unreported"
        assert all(problem.path == damaged for problem in reader.problems)


def _frame_of(ends: list[int], position: int) -> int:
    """The frame holding byte ``position`` (``len(ends)``: the empty frame ``close`` adds)."""
    return next((index for index, end in enumerate(ends) if position < end), len(ends))


def test_bit_flip_in_the_middle_frame_is_skipped_and_the_rest_read(tmp_path: Path) -> None:
    """The reader used to stop at the first corrupt frame: every later flush was lost."""
    clean, ends, lines = flushed_segment(tmp_path / "clean.jsonl.zst")
    data = bytearray(clean)
    middle = FLUSHES // 2
    start, end = ends[middle - 1], ends[middle]
    data[start + 4 : end] = bytes(end - start - 4)  # the frame's header and blocks wiped
    damaged = tmp_path / "damaged.jsonl.zst"
    damaged.write_bytes(bytes(data))
    reader = SegmentReader(damaged)
    got = [line for _, line in reader.raw_lines()]
    expected = [line for index, batch in enumerate(lines) if index != middle for line in batch]
    assert got == expected
    [problem] = reader.problems
    assert str(problem).startswith(f"{damaged}: corrupt zstd data (near byte {start}: ")
    assert str(problem).endswith(f"; bytes {start}-{end - 1} skipped")


def test_empty_partial_left_by_kill_9_is_an_empty_segment(tmp_path: Path) -> None:
    """Found by the kill -9 drill: a recorder killed before its first flush leaves an empty
    ``.partial``, and verify or replay of the whole folder then failed on it."""
    good = write_segment(
        tmp_path / "raw" / "a" / "A.20261121T000000Z.jsonl.zst",
        [frame_line(1, 0, '{"event":"heartbeat"}', True)],
    )
    empty = good.with_name("A.20261121T000001Z.jsonl.zst.partial")
    empty.write_bytes(b"")
    started = good.with_name("A.20261121T000002Z.jsonl.zst.partial")
    started.write_bytes(ZSTD_MAGIC[:2])
    report = verify_paths([tmp_path])
    assert [str(p) for p in report.problems] == [
        f"{empty}: no data: the recorder stopped before its first flush",
        f"{started}: torn zstd frame at the end (file cut at byte 2)",
    ]
    not_partial = tmp_path / "empty.jsonl.zst"
    not_partial.write_bytes(b"")
    with pytest.raises(SegmentError, match="empty file, not a segment"):
        SegmentReader(not_partial)


# -- the book builder -----------------------------------------------------------------------------

NUMBERS = (
    st.sampled_from(
        [
            "0",
            "0.00000000",
            "1.0",
            "27120.00000",
            "-1",
            "1e308",
            "1e-99999999",
            "1e99999999",
            "NaN",
            "inf",
            "Infinity",
            "",
            " 12 ",
            "1_000",
            "0x10",
            "\u0661\u0662\u0663",
            "1.2.3",
            "9" * 80 + "." + "9" * 80,
            "0." + "0" * 200 + "1",
            "0E-8",
            "5E-7",
            "-0",
            ".",
            "e",
        ]
    )
    | st.text(max_size=12)
    | st.decimals(allow_nan=False, allow_infinity=False).map(str)
)
LEVEL = st.lists(NUMBERS, min_size=0, max_size=4) | st.tuples(NUMBERS, NUMBERS, NUMBERS).map(list)
INTEGERS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
"""What JSON (as orjson writes it) holds: a wider integer is not a frame anyone could send."""
JSON = st.recursive(
    st.none() | st.booleans() | INTEGERS | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
CHANNELS = st.sampled_from(
    [
        "book-10",
        "book-100",
        "book-0",
        "book--5",
        "book-x",
        "book-",
        "ticker",
        "trade",
        "book-99999999999999999999",
        "book-1",
        "spread-10",
    ]
) | st.text(max_size=10)
PAIRS = st.sampled_from(["XBT/USD", "ETH/USD", "FOO/BAR", ""]) | st.text(max_size=6)


@st.composite
def kraken_shaped(draw: st.DrawFn) -> Any:
    """Frames that look like Kraken's book frames, with anything in them."""
    payload: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(["as", "bs", "a", "b", "c"]), max_size=4)):
        payload[key] = draw(st.lists(LEVEL, max_size=5)) if key != "c" else draw(NUMBERS | JSON)
    middle = [payload] + draw(st.lists(st.just({"b": [["1.0", "1.0", "1"]], "c": "1"}), max_size=1))
    frame = [draw(INTEGERS | JSON), *middle, draw(CHANNELS), draw(PAIRS)]
    return draw(st.sampled_from([frame, frame[:3], frame[1:], frame + [draw(JSON)]]))


CONTROL = st.fixed_dictionaries(
    {
        "event": st.sampled_from(
            ["systemStatus", "subscriptionStatus", "heartbeat", "error", "pong"]
        )
    },
    optional={
        "connectionID": INTEGERS | JSON,
        "pair": PAIRS | JSON,
        "status": st.sampled_from(["subscribed", "unsubscribed", "error", "online"]) | JSON,
    },
)


@pytest.mark.slow
@FUZZ
@given(frames=st.lists(kraken_shaped() | JSON | CONTROL, min_size=1, max_size=25))
def test_book_builder_takes_any_frame(frames: list[Any]) -> None:
    """Any frame: an outcome, never an exception; a valid book can always be read and hashed."""
    feed = BookFeed()
    for clock, msg in enumerate(frames):
        feed.on_message(msg, clock)
        for book in feed.books.values():
            if book.valid:
                book.checksum()
                book.top_asks(10)
                book.top_bids(10)
    feed.finish()


@pytest.mark.parametrize(
    "price",
    ["1e-99999999", "1e99999999", "\u0661\u0662\u0663", "9" * 4000, "0." + "0" * 5000 + "1"],
)
def test_absurd_prices_cost_nothing_and_break_nothing(price: str) -> None:
    """Found by fuzzing: ``1e-99999999`` was written out as 10**8 digits and every key rescaled
    by as much (it hung); ``"١٢٣"`` (``int`` reads those digits) made ``checksum()`` raise, which
    the recorder calls when it writes checkpoints."""
    feed = BookFeed()
    snapshot = [1, {"as": [[price, "1.0", "1"]], "bs": [["1.0", "1.0", "1"]]}, "book-10", "X/Y"]
    feed.on_message(snapshot, 1)
    book = feed.books[("X/Y", "book-10")]
    if book.valid:
        assert isinstance(book.checksum(), int)
    assert isinstance(Book(10).checksum(), int)


# -- verify and replay on a real capture with junk spliced in ------------------------------------

HARMLESS = st.one_of(
    st.text(max_size=30)
    .filter(lambda t: "\n" not in t)
    .map(lambda t: ("not json", ("{" + t).encode())),
    st.sampled_from([b"[1,2]", b'"x"', b"3", b"null"]).map(lambda b: ("not object", b)),
    st.sampled_from([b'{"foo":1}', b'{"recv_ns":"x","msg":[]}']).map(lambda b: ("ignored", b)),
    kraken_shaped()
    .filter(lambda f: not (isinstance(f, list) and f and f[-1] == "XBT/USD"))
    .map(lambda f: ("frame", orjson.dumps({"recv_ns": 0, "seq": 0, "msg": f}))),
    st.sampled_from(
        [{"event": "heartbeat"}, {"event": "foo"}, {"Error": "x"}, {"event": "pong"}]
    ).map(lambda m: ("frame", orjson.dumps({"recv_ns": 0, "seq": 0, "msg": m}))),
    st.just(("frame", b'{"recv_ns":0,"seq":0,"raw":"<html>"}')),
)
"""Junk that must not change the XBT/USD book: undecodable lines, other channels and pairs,
updates before any snapshot, absurd depths and prices (never XBT/USD's, never a reconnect)."""


@pytest.fixture(scope="module")
def capture_lines(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("capture") / "xbt.jsonl.zst"
    capture_to_segment(CAPTURES / "orderbook-v1.json", path)
    return [line for _, line in SegmentReader(path).raw_lines()]


@pytest.fixture(scope="module")
def clean_run(capture_lines: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("clean") / "xbt.jsonl.zst"
    write_segment(path, [line + b"\n" for line in capture_lines])
    return verify_paths([path]), replay_table([path], every="1s", levels=10, pairs="XBT/USD")


@settings(FUZZ, max_examples=max(10, EXAMPLES // 6))
@given(data=st.data())
def test_junk_around_a_real_capture_is_reported_and_the_rest_used(
    data: st.DataObject, capture_lines: list[bytes], clean_run: Any
) -> None:
    clean_report, clean_table = clean_run
    lines = list(capture_lines)
    junk = data.draw(
        st.lists(st.tuples(st.integers(0, len(lines)), HARMLESS), min_size=1, max_size=12)
    )
    for position, item in sorted(junk, key=lambda j: j[0], reverse=True):
        lines.insert(position, item)
    with folder() as where:
        path = where / "xbt.jsonl.zst"
        write_segment(
            path, [(line[1] if isinstance(line, tuple) else line) + b"\n" for line in lines]
        )
        report = verify_paths([path])
        expected_problems = [
            f"{path}:{number}: line is not {'JSON' if line[0] == 'not json' else 'a JSON object'}"
            for number, line in enumerate(lines, 1)
            if isinstance(line, tuple) and line[0] in ("not json", "not object")
        ]
        malformed = [p for p in report.problems if "well-formed Kraken frame" in p.reason]
        rest = [
            p for p in report.problems if p not in malformed and "more malformed" not in p.reason
        ]
        assert [str(problem) for problem in rest] == expected_problems
        # Junk frames that are not Kraken frames are reported where they are; real ones never.
        junk_frames = {
            number
            for number, line in enumerate(lines, 1)
            if isinstance(line, tuple) and line[0] == "frame"
        }
        assert {problem.line for problem in malformed} <= junk_frames
        xbt, clean = report.pairs["BTC/USD"], clean_report.pairs["BTC/USD"]
        assert (xbt.checksums_ok, xbt.checksums_failed) == (
            clean.checksums_ok,
            clean.checksums_failed,
        )
        table = replay_table([path], every="1s", levels=10, pairs="XBT/USD")
        assert table.equals(clean_table)


def test_junk_in_the_followed_book_invalidates_it_without_crashing(
    capture_lines: list[bytes], tmp_path: Path
) -> None:
    """A malformed XBT/USD frame in the middle: the book is void from there (a half-applied
    message leaves it unknown), counted as malformed; replay's rows after it are invalid."""
    lines = list(capture_lines)
    middle = len(lines) // 2
    recv_ns = orjson.loads(lines[middle])["recv_ns"]
    bad = [1, {"a": [["1e-99999999", "1.0", "1"]], "c": "5"}, "book-10", "XBT/USD"]
    lines.insert(middle, orjson.dumps({"recv_ns": recv_ns, "seq": 0, "msg": bad}))
    path = write_segment(tmp_path / "xbt.jsonl.zst", [line + b"\n" for line in lines])
    report = verify_paths([path])
    assert report.feed.malformed_frames == 1
    assert report.pairs["BTC/USD"].malformed == 1
    table = replay_table([path], every="10ms", levels=10)  # the capture's lines are 1 ms apart
    ts = table.column("ts").cast("int64")
    before = table.filter(pc.less(ts, recv_ns))
    after = table.filter(pc.greater_equal(ts, recv_ns))
    assert before.num_rows > 10
    assert after.num_rows > 10
    assert all(before.column("valid").to_pylist())
    assert not any(after.column("valid").to_pylist())


def test_damage_in_the_first_flush_keeps_the_rest_for_verify_and_replay(tmp_path: Path) -> None:
    """A wiped first zstd frame (the first second of an hour's segment): verify and replay both
    read the frames after it (replay's survey used to stop at the damage and skip the segment)."""
    snapshot = '[1,{"as":[["10.0","1.0","1"]],"bs":[["9.0","1.0","1"]]},"book-10","XBT/USD"]'
    path = tmp_path / "XBT-USD.20261121T000000Z.jsonl.zst"
    ends = []
    start = 1_700_000_000 * 10**9
    with SegmentWriter(path) as writer:
        for flush in range(5):
            for i in range(10):
                recv_ns = start + (flush * 10 + i) * 10**8
                writer.write(frame_line(recv_ns, flush * 10 + i, snapshot, True))
            writer.flush(fsync=False)
            ends.append(writer.bytes_out)
    data = bytearray(path.read_bytes())
    data[4 : ends[0]] = bytes(ends[0] - 4)
    path.write_bytes(bytes(data))
    report = verify_paths([path])
    assert report.pairs["BTC/USD"].snapshots == 40
    assert [p.reason.split(";")[1] for p in report.problems] == [f" bytes 0-{ends[0] - 1} skipped"]
    table = replay_table([path], every="1s", levels=1)
    ts = table.column("ts").cast("int64").to_pylist()
    assert ts[0] == start + 1 * 10**9  # the first row at or after the first snapshot read
    assert all(table.column("valid").to_pylist())
