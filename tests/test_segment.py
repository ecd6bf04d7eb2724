"""The segment format: exact bytes in, exact bytes out; torn files read up to the tear."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kbook.errors import OutputError
from kbook.segment import (
    SegmentReader,
    SegmentWriter,
    find_segments,
    frame_line,
    is_json_text,
    meta_line,
)

FRAME = '[336,{"a":[["27120.00000","0.00000500","1693415327.935623"]],"c":"1897176819"},"book-10","XBT/USD"]'


def test_frame_text_is_kept_byte_for_byte(tmp_path: Path) -> None:
    odd = '{"event":"heartbeat" ,  "x": 1.50}'
    with SegmentWriter(tmp_path / "s.jsonl.zst") as writer:
        writer.write(frame_line(5, 0, FRAME, is_json_text(FRAME)))
        writer.write(frame_line(6, 1, odd, is_json_text(odd)))
        writer.write(frame_line(7, 2, "not json", is_json_text("not json")))
        writer.write(frame_line(8, 3, '{"a":\n1}', is_json_text('{"a":\n1}')))
        writer.write(meta_line(9, {"type": "connect", "url": "ws://x"}))
    reader = SegmentReader(tmp_path / "s.jsonl.zst")
    lines = [line for _, line in reader.raw_lines()]
    assert lines[0] == b'{"recv_ns":5,"seq":0,"msg":' + FRAME.encode() + b"}"
    assert lines[1].endswith(odd.encode() + b"}")
    records = list(SegmentReader(tmp_path / "s.jsonl.zst"))
    assert records[2] == {"recv_ns": 7, "seq": 2, "raw": "not json"}
    assert records[3]["raw"] == '{"a":\n1}'
    assert records[4] == {"recv_ns": 9, "meta": {"type": "connect", "url": "ws://x"}}


def test_partial_name_until_closed_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "a" / "s.jsonl.zst"
    writer = SegmentWriter(path)
    writer.write(frame_line(1, 0, FRAME, True))
    writer.flush()
    assert writer.partial_path.exists()
    assert not path.exists()
    assert len(list(SegmentReader(writer.partial_path))) == 1
    writer.close()
    assert path.exists()
    assert not writer.partial_path.exists()
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"{}\n")
    with pytest.raises(OutputError, match="exists already"):
        SegmentWriter(path)
    leftover = tmp_path / "b.jsonl.zst"
    (tmp_path / "b.jsonl.zst.partial").write_bytes(b"x")
    with pytest.raises(OutputError, match="never reopens"):
        SegmentWriter(leftover)


def test_every_flushed_line_survives_a_cut_at_any_byte(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl.zst"
    flushed_counts = []
    with SegmentWriter(path) as writer:
        for i in range(60):
            writer.write(frame_line(i, i, FRAME, True))
            if i % 10 == 9:
                writer.flush(fsync=False)
                flushed_counts.append((writer.bytes_out, i + 1))
    data = path.read_bytes()
    for cut in range(0, len(data), 7):
        torn = tmp_path / f"cut{cut}.jsonl.zst"
        torn.write_bytes(data[:cut])
        if cut < 4:
            continue
        reader = SegmentReader(torn)
        got = list(reader)
        must_have = max((n for size, n in flushed_counts if size <= cut), default=0)
        assert len(got) >= must_have
        assert all(r["msg"][-1] == "XBT/USD" for r in got)
        if cut < len(data) and cut not in {size for size, _ in flushed_counts}:
            # (a cut right at a flush is a shorter segment, as a kill right after a flush leaves)
            assert reader.problems, f"cut at {cut} not reported"


def test_bit_flip_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl.zst"
    with SegmentWriter(path) as writer:
        for i in range(200):
            writer.write(frame_line(i, i, FRAME.replace("336", str(i)), True))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped = tmp_path / "flip.jsonl.zst"
    flipped.write_bytes(bytes(data))
    reader = SegmentReader(flipped)
    records = list(reader)
    assert len(records) < 200
    assert reader.problems
    assert all(orjson.dumps(r["msg"]) for r in records)


def test_find_segments_orders_by_first_receive_time(tmp_path: Path) -> None:
    for name, start in (("b.jsonl.zst", 5), ("a.jsonl.zst", 9), ("c.jsonl.zst.partial", 1)):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with SegmentWriter(tmp_path / "sub" / name.removesuffix(".partial")) as writer:
            writer.write(frame_line(start, 0, FRAME, True))
        if name.endswith(".partial"):
            final = tmp_path / "sub" / name.removesuffix(".partial")
            final.rename(tmp_path / "sub" / name)
    (tmp_path / "sub" / "notes.txt").write_text("ignored")
    assert [p.name for p in find_segments([tmp_path])] == [
        "c.jsonl.zst.partial",
        "b.jsonl.zst",
        "a.jsonl.zst",
    ]
