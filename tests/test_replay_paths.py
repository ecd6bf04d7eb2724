"""Replay writes the same Parquet bytes whichever path applies the frames.

Three ways through ``replay.engine``: the native core (the default where it was built), the
pure-Python loop of ``LineFeed.run`` (``KBOOK_NATIVE=0``), and the straightforward one, where
``run`` applies nothing and every line is decoded and applied by ``BookFeed.on_message`` alone.
Same files, byte for byte, on the real captures and on recorder-style recordings of the
benchmark's kind (the simulator's market, with every fault ``perf_support`` sprinkles in), in
Kraken's v1 and v2 alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from perf_support import write_recording

import replay
from kbook.api import Api
from kbook.lines import LineFeed, native_core

from conftest import V1_CAPTURES

PATHS = ["native", "python", "straightforward"]


def hand_back_everything(self: LineFeed, lines: Sequence[bytes], start: int) -> int:
    """``LineFeed.run`` that applies nothing: the caller's general path does all the work."""
    return start


def replay_bytes(
    source: Path, out: Path, path: str, monkeypatch: pytest.MonkeyPatch, every: str
) -> dict[str, bytes]:
    with monkeypatch.context() as patch:
        if path == "python":
            patch.setenv("KBOOK_NATIVE", "0")
        elif path == "straightforward":
            patch.setattr(LineFeed, "run", hand_back_everything)
        replay.replay_to_dataset(source, out, every=every, levels=10, workers=1)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def assert_same_bytes(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: str
) -> None:
    if native_core() is None:
        pytest.skip("kbook's native core was not built")
    written = {
        path: replay_bytes(source, tmp_path / path, path, monkeypatch, every) for path in PATHS
    }
    assert written["native"], "no Parquet written"
    assert written["python"] == written["native"]
    assert written["straightforward"] == written["native"]


@pytest.mark.parametrize("capture", sorted(V1_CAPTURES))
def test_captures_replay_to_the_same_bytes(
    capture: str,
    capture_segment: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert_same_bytes(capture_segment(capture), tmp_path, monkeypatch, "100ms")


@pytest.mark.parametrize(
    ("pairs", "shared"), [(("XBT/USD",), False), (("XBT/USD", "ETH/USD"), True)]
)
def test_simulated_recordings_replay_to_the_same_bytes(
    pairs: tuple[str, ...], shared: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_recording(tmp_path / "raw", pairs, 6_000, seed=11, depth=100, shared=shared)
    assert_same_bytes(source, tmp_path, monkeypatch, "250ms")


@pytest.mark.parametrize(
    ("pairs", "shared"), [(("BTC/USD",), False), (("BTC/USD", "ETH/USD"), True)]
)
def test_simulated_v2_recordings_replay_to_the_same_bytes(
    pairs: tuple[str, ...], shared: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_recording(
        tmp_path / "raw", pairs, 6_000, seed=12, depth=100, shared=shared, api=Api.V2
    )
    assert_same_bytes(source, tmp_path, monkeypatch, "250ms")


def test_v2_capture_replays_to_the_same_bytes(
    captures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim_support import write_v2_segment
    from test_v2 import capture_frames

    source = write_v2_segment(tmp_path / "capture.jsonl.zst", capture_frames(captures_dir))
    assert_same_bytes(source, tmp_path, monkeypatch, "10ms")


def test_v2_survey_reads_updates_off_the_text_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The v2 survey reads a book update's symbol off its text (natively, or in Python with
    ``KBOOK_NATIVE=0``) and decodes every other line: an update of two entries, an escaped
    symbol, a line that only looks like an update, and depths that acknowledgements and
    checkpoints change between updates all give the books the feed files them under."""
    from kbook.segment import frame_line, meta_line, write_segment
    from replay.survey import survey_segment

    def update(*symbols: str) -> str:
        entries = ",".join(f'{{"symbol":"{s}","bids":[],"asks":[],"checksum":1}}' for s in symbols)
        return f'{{"channel":"book","type":"update","data":[{entries}]}}'

    def ack(symbol: str, depth: int) -> str:
        result = f'{{"channel":"book","depth":{depth},"symbol":"{symbol}"}}'
        return f'{{"method":"subscribe","result":{result},"success":true}}'

    texts = [
        ack("BTC/USD", 25),
        update("BTC/USD"),
        update("BTC/USD"),
        update("ETH/USD", "SOL/USD"),  # SOL/USD only here: both entries count
        update("ETH\\/EUR"),  # an escape: decoded, "ETH/EUR"
        ack("BTC/USD", 10),
        update("BTC/USD"),  # the same symbol as two lines before, at a new depth
    ]
    lines = [meta_line(1, {"type": "session_start", "api": Api.V2, "config": {"depth": 100}})]
    lines += [frame_line(2 + i, i, text, True) for i, text in enumerate(texts)]
    lines.append(b'{"recv_ns":99,"msg":{"channel":"book","type":"update","data":[{"symbol":"X"\n')
    checkpoint = {"type": "checkpoint", "pair": "DOGE/USD", "channel": "book-500"}
    lines.append(meta_line(100, {**checkpoint, "asks": [], "bids": []}))
    lines.append(frame_line(101, 9, update("DOGE/USD"), True))
    path = write_segment(tmp_path / "ALL.20231114T221320Z.jsonl.zst", lines)
    expected = {
        ("BTC/USD", "book-25"),
        ("BTC/USD", "book-10"),
        ("ETH/USD", "book-100"),
        ("SOL/USD", "book-100"),
        ("ETH/EUR", "book-100"),
        ("DOGE/USD", "book-500"),
    }
    for native in ("1", "0"):
        with monkeypatch.context() as patch:
            patch.setenv("KBOOK_NATIVE", native)
            info = survey_segment(path)
        assert info.books == expected, f"KBOOK_NATIVE={native}"
        assert info.first_ns == 1


def test_v2_survey_of_a_damaged_segment_names_books_as_one_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After damage the survey reads the segment again from its first line, with the books'
    depths as they stood at its start: an update read before a later acknowledgement is not
    filed under that acknowledgement's depth (natively and with ``KBOOK_NATIVE=0``)."""
    import zstandard

    from kbook.segment import frame_line, meta_line
    from replay.survey import survey_segment

    def update(symbol: str) -> bytes:
        entry = f'{{"symbol":"{symbol}","bids":[],"asks":[],"checksum":1}}'
        text = f'{{"channel":"book","type":"update","data":[{entry}]}}'
        return frame_line(3, 1, text, True)

    result = '{"channel":"book","depth":25,"symbol":"ETH/USD"}'
    ack = f'{{"method":"subscribe","result":{result},"success":true}}'
    heartbeats = [frame_line(5, 3, '{"channel":"heartbeat"}', True)] * 40_000  # 2.5 MB: the
    # survey reads its first pieces (the acknowledgement's among them) before the damage
    head = [
        meta_line(1, {"type": "session_start", "api": Api.V2, "config": {"depth": 100}}),
        update("ETH/USD"),
        frame_line(4, 2, ack, True),
        *heartbeats,
    ]
    compress = zstandard.ZstdCompressor().compress
    damaged = b"\x28\xb5\x2f\xfd" + b"\xff" * 32  # a frame's magic, then nothing zstd can read
    data = compress(b"".join(head)) + damaged + compress(update("BTC/USD"))
    path = tmp_path / "ALL.20231114T221320Z.jsonl.zst"
    path.write_bytes(data)
    for native in ("1", "0"):
        with monkeypatch.context() as patch:
            patch.setenv("KBOOK_NATIVE", native)
            info = survey_segment(path)
        assert info.books == {("ETH/USD", "book-100"), ("BTC/USD", "book-100")}, native
        assert info.first_ns == 1
