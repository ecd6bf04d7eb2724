"""Book deltas: a deliberately naive consumer of the rows holds kbook's book after every message.

The consumer knows nothing of Kraken: a dict per side, ``size`` 0 deletes, Tardis's reset rule (a
run of ``is_snapshot`` rows after other rows starts the book afresh), the unknown row clears it,
and it never truncates. kbook's book is ``BookFeed``'s, driven line by line over the same
segment; both are compared at every receive time, top of book and every level up to the depth.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from replay_support import SynthMarket, books_after_each_line, write_records
from test_v2 import capture_frames

import replay
from kbook.api import Api
from kbook.errors import UsageError
from kbook.pairs import common_name
from kbook.segment import frame_line, meta_line, write_segment
from kbook.sim.market import Market
from kbook.sim.market_v2 import V2Market
from kbook.units import SECOND, rfc3339_ns, seconds_text_ns

BASE_NS = 1_700_000_000 * SECOND
STEP_NS = 1_000_000


class NaiveConsumer:
    """What a backtester does with the rows, and nothing more."""

    def __init__(self) -> None:
        self.sides: dict[str, dict[float, float]] = {"bid": {}, "ask": {}}
        self.known = False
        self.in_snapshot = False
        self.depth = 0

    def apply(self, side: str | None, price: float, size: float, is_snapshot: bool) -> None:
        if side is None:  # the book is unknown from here
            self.sides = {"bid": {}, "ask": {}}
            self.known = self.in_snapshot = False
            return
        if is_snapshot and not self.in_snapshot:
            self.sides = {"bid": {}, "ask": {}}
            self.known = True
        self.in_snapshot = is_snapshot
        if size == 0:
            self.sides[side].pop(price, None)
        else:
            self.sides[side][price] = size


Books = dict[tuple[str, str], list[tuple[int, bool, dict[float, float], dict[float, float]]]]


def kbook_books(segment: Path, api: str) -> Books:
    """Per (wire pair, channel): ``(clock, valid, bids, asks)`` of kbook's book after the last
    line of each receive time that touched it, from a plain ``BookFeed`` fed line by line."""
    states: Books = {}
    for clock, key, book in books_after_each_line(segment, api):
        held = states.setdefault(key, [])
        if held and held[-1][0] == clock:
            held.pop()
        if book.valid:
            bids = {float(p): float(v) for p, v in book.top_bids(book.depth)}
            asks = {float(p): float(v) for p, v in book.top_asks(book.depth)}
            held.append((clock, True, bids, asks))
        else:
            held.append((clock, False, {}, {}))
    return states


def assert_consumer_exact(deltas: pa.Table, states: list[Any], depth: int) -> int:
    """Apply the rows up to each state's clock; the consumer's book equals kbook's whenever
    kbook's is valid, is unknown whenever it is not, and never holds more than ``depth`` levels
    after a message (Kraken truncates after the whole message, and so do the rows).
    Returns how many states were compared with a valid book."""
    ts = deltas.column("ts").cast(pa.int64()).to_pylist()
    side = deltas.column("side").to_pylist()
    price = deltas.column("price").to_pylist()
    size = deltas.column("size").to_pylist()
    snap = deltas.column("is_snapshot").to_pylist()
    assert set(deltas.column("depth").to_pylist()) == {depth}
    consumer = NaiveConsumer()
    row = 0
    compared = 0
    seq = deltas.column("seq").to_pylist()
    for clock, valid, bids, asks in states:
        while row < len(ts) and ts[row] <= clock:
            consumer.apply(side[row], price[row], size[row], snap[row])
            row += 1
            if row == len(ts) or seq[row] != seq[row - 1]:  # a message's last row
                assert len(consumer.sides["bid"]) <= depth >= len(consumer.sides["ask"])
        assert consumer.known is valid, clock
        if valid:
            compared += 1
            held_bids, held_asks = consumer.sides["bid"], consumer.sides["ask"]
            assert max(held_bids, default=None) == max(bids, default=None), clock
            assert min(held_asks, default=None) == min(asks, default=None), clock
            assert (held_bids, held_asks) == (bids, asks), clock
    return compared


def check_segment(segment: Path, api: str, tmp_path: Path, exact_text: bool = False) -> int:
    """Deltas of every book in ``segment`` against kbook's books; returns states compared."""
    out = tmp_path / f"deltas-{segment.name}"
    summary = replay.replay_deltas_to_dataset(segment, out, exact_text=exact_text)
    books = kbook_books(segment, api)
    compared = 0
    for name, pair in summary.pairs.items():
        deltas = replay.read_deltas(out, pair=name)
        assert deltas.column("seq").to_pylist() == sorted(deltas.column("seq").to_pylist())
        depth = int(pair.channel.split("-")[1])
        (key,) = [key for key in books if common_name(key[0]) == name and key[1] == pair.channel]
        compared += assert_consumer_exact(deltas, books[key], depth)
    assert compared
    return compared


# -- real captures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "capture",
    [
        "orderbook-v1.json",
        "XDG-USD_book-10.jsonl",
        "LUNA-EUR_book-10.jsonl",
        "GST-EUR_book-10.jsonl",
        pytest.param("KRAKEN.ws.50.0", marks=pytest.mark.slow),  # ten books of 1000 levels
    ],
)
def test_real_capture_deltas_rebuild_the_book(
    capture_segment: Callable[[str], Path], capture: str, tmp_path: Path
) -> None:
    assert check_segment(capture_segment(capture), Api.V1, tmp_path)


def test_real_v2_capture_deltas_rebuild_the_book(captures_dir: Path, tmp_path: Path) -> None:
    from sim_support import write_v2_segment

    segment = write_v2_segment(tmp_path / "v2.jsonl.zst", capture_frames(captures_dir))
    assert check_segment(segment, Api.V2, tmp_path, exact_text=True) > 100


# -- simulated recordings with the faults of a real stream --------------------------------------


def fixed_clock() -> float:
    return 1_700_000_000.0


def simulated_segment(path: Path, api: str, depth: int, seed: int, updates: int) -> Path:
    """Two books interleaved (one at ``depth``, one at 10), with failed checksums (the book
    dropped until a new snapshot), checkpoints, heartbeats and a disconnect."""
    rng = random.Random(seed)
    kind = V2Market if api == Api.V2 else Market
    names = ("BTC/USD", "ETH/USD") if api == Api.V2 else ("XBT/USD", "ETH/USD")
    markets = {names[0]: kind(names[0], depth, seed, clock=fixed_clock)}
    markets[names[1]] = kind(names[1], 10, seed, clock=fixed_clock)
    texts: list[str | dict[str, Any]] = []
    if api == Api.V2:
        texts.append({"type": "session_start", "kbook": "test", "api": "v2"})
    texts += [market.snapshot_frame(7) for market in markets.values()]
    resubscribe = dict.fromkeys(markets, -1)
    for step in range(updates):
        pair = names[0] if rng.random() < 0.7 else names[1]
        market = markets[pair]
        roll = rng.random()
        resubscribe[pair] -= 1
        if step == updates // 2:
            texts.append({"type": "disconnect", "reason": "test"})
            texts.append({"type": "connect"})
            texts += [m.snapshot_frame(7) for m in markets.values()]
        elif resubscribe[pair] == 0:
            texts.append(market.snapshot_frame(7))
        elif roll < 0.004:
            texts.append(market.update_frame(7, bad_checksum=True))
            resubscribe[pair] = 5
        elif roll < 0.008:
            asks, bids = market.window()
            channel = f"book-{market.depth}"
            texts.append({"type": "checkpoint", "pair": pair, "channel": channel})
            texts[-1].update(asks=[list(a) for a in asks], bids=[list(b) for b in bids])  # type: ignore[union-attr]
        elif roll < 0.02:
            texts.append('{"event":"heartbeat"}' if api == Api.V1 else '{"channel":"heartbeat"}')
        else:
            texts.append(market.update_frame(7))
    lines = []
    for index, text in enumerate(texts):
        recv_ns = BASE_NS + index * STEP_NS
        if isinstance(text, dict):
            lines.append(meta_line(recv_ns, text))
        else:
            lines.append(frame_line(recv_ns, index, text, True))
    return write_segment(path, lines)


@pytest.mark.parametrize("api", [Api.V1, Api.V2])
@pytest.mark.parametrize(
    ("depth", "seed", "updates"),
    [(10, 1, 1500), (25, 2, 1500), pytest.param(100, 3, 3000, marks=pytest.mark.slow)],
)
def test_simulated_deltas_rebuild_the_book(
    api: str, depth: int, seed: int, updates: int, tmp_path: Path
) -> None:
    segment = simulated_segment(tmp_path / "sim.jsonl.zst", api, depth, seed, updates)
    assert check_segment(segment, api, tmp_path, exact_text=seed == 2) > updates // 2


# -- the dataset -----------------------------------------------------------------------------------


def test_read_deltas_refuses_a_pair_it_does_not_hold(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "deltas"
    replay.replay_deltas_to_dataset(capture_segment("orderbook-v1.json"), out)
    with pytest.raises(UsageError, match="pair ETH/USD not found in the delta dataset"):
        replay.read_deltas(out, pair="ETH/USD")
    assert replay.read_deltas(out, pair="XBT/USD").num_rows > 0


def test_read_deltas_keeps_the_written_order_whatever_columns_are_asked(
    capture_segment: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "deltas"
    replay.replay_deltas_to_dataset(capture_segment("orderbook-v1.json"), out)
    whole = replay.read_deltas(out)
    some = replay.read_deltas(out, columns=["price", "size"])
    assert some.column_names == ["ts", "pair", "price", "size"]
    assert some == whole.select(["ts", "pair", "price", "size"])


# -- the rules around the book's validity -----------------------------------------------------------


def deltas_of(segment: Path | list[Path] | Path, tmp_path: Path, **options: Any) -> pa.Table:
    out = tmp_path / "deltas"
    replay.replay_deltas_to_dataset(segment, out, **options)
    return replay.read_deltas(out)


@pytest.mark.slow  # about 3 s: two recorder runs of rotated segments
def test_two_sources_one_timeline_with_an_outage(tmp_path: Path) -> None:
    """Two recorders of one pair at once; the one followed loses 30 s. The rows switch to the
    other with the unknown row and its whole book, and the consumer holds the complete run's
    book at every frame, never unknown."""
    from test_replay_timeline import STEP, T0, recorder_segments

    raw = tmp_path / "raw"
    frames = list(SynthMarket(seed=5).frames(200, T0, STEP))
    outage = (T0 + 15 * SECOND, T0 + 30 * SECOND)
    recorder_segments(raw / "a", frames, "a" * 32, outage=outage, rotate=None)
    recorder_segments(raw / "b", frames, "b" * 32)
    deltas = deltas_of(raw, tmp_path)
    alone = write_records(tmp_path / "alone.jsonl.zst", [(ns, text) for ns, text in frames])
    states = kbook_books(alone, Api.V1)[("XBT/USD", "book-10")]
    assert assert_consumer_exact(deltas, states, 10) == len(frames)
    unknown = deltas.filter(pc.is_null(deltas.column("side")))
    # The switch at the outage, and the end of the run.
    assert unknown.column("ts").cast(pa.int64()).to_pylist() == [
        frames[60][0],
        frames[-1][0] + 10 * SECOND,
    ]


def test_a_silence_writes_the_unknown_row_then_the_book_again(tmp_path: Path) -> None:
    frames = list(SynthMarket(seed=6).frames(200, BASE_NS, STEP_NS))
    frames = frames[:100] + [(ns + 30 * SECOND, text) for ns, text in frames[100:]]
    segment = write_records(tmp_path / "gap.jsonl.zst", list(frames))
    deltas = deltas_of(segment, tmp_path)
    unknown = deltas.filter(pc.is_null(deltas.column("side")))
    stale = frames[99][0] + 10 * SECOND
    assert unknown.column("ts").cast(pa.int64()).to_pylist() == [stale, frames[-1][0] + 10 * SECOND]
    after = deltas.filter(pc.greater(deltas.column("ts").cast(pa.int64()), stale))
    assert after.column("ts").cast(pa.int64())[0].as_py() == frames[100][0]
    assert after.column("is_snapshot")[0].as_py()
    assert assert_consumer_exact(deltas, kbook_books(segment, Api.V1)[("XBT/USD", "book-10")], 10)


def test_each_day_and_start_begin_with_the_whole_book(tmp_path: Path) -> None:
    midnight = (BASE_NS // (86_400 * SECOND) + 1) * 86_400 * SECOND
    frames = list(SynthMarket(seed=7).frames(300, midnight - 100 * STEP_NS, STEP_NS))
    segment = write_records(tmp_path / "night.jsonl.zst", list(frames))
    out = tmp_path / "deltas"
    replay.replay_deltas_to_dataset(segment, out)
    assert len(list(out.rglob("*.parquet"))) == 2
    states = kbook_books(segment, Api.V1)[("XBT/USD", "book-10")]
    second_day = replay.read_deltas(out, start=midnight)
    assert second_day.column("is_snapshot")[0].as_py()
    assert assert_consumer_exact(second_day, [s for s in states if s[0] >= midnight], 10) == 200
    begin = frames[150][0]
    later = deltas_of(segment, tmp_path / "later", start=begin)
    assert later.column("ts").cast(pa.int64())[0].as_py() == begin
    assert later.column("is_snapshot")[0].as_py()
    assert assert_consumer_exact(later, [s for s in states if s[0] >= begin], 10) == 150


def test_exchange_times_v1_levels_and_v2_updates(tmp_path: Path) -> None:
    """v1: each row's ``exch_ts`` is its level's third field; v2: the update's ``timestamp``."""
    ticks = iter(range(10**6))

    def clock() -> float:
        return 1_700_000_000.0 + next(ticks) * 0.001

    for api, kind in ((Api.V1, Market), (Api.V2, V2Market)):
        market = kind("BTC/USD" if api == Api.V2 else "XBT/USD", 10, 3, clock=clock)
        texts = [market.snapshot_frame(7)] + [market.update_frame(7) for _ in range(50)]
        lines = [frame_line(BASE_NS + i * STEP_NS, i, t, True) for i, t in enumerate(texts)]
        segment = write_segment(tmp_path / f"{api}.jsonl.zst", lines)
        deltas = deltas_of(segment, tmp_path / str(api), exact_text=True)
        updates = deltas.filter(pc.invert(deltas.column("is_snapshot"))).to_pylist()
        stamps: dict[tuple[int, float], int] = {}
        for index, text in enumerate(texts[1:], start=1):
            msg = orjson.loads(text)
            recv = BASE_NS + index * STEP_NS
            if api == Api.V1:
                for payload in msg[1:-2]:
                    for level in payload.get("a", []) + payload.get("b", []):
                        stamps[(recv, float(level[0]))] = seconds_text_ns(level[2])  # type: ignore[assignment]
            else:
                moment = rfc3339_ns(msg["data"][0]["timestamp"])
                for level in msg["data"][0]["asks"] + msg["data"][0]["bids"]:
                    stamps[(recv, float(level["price"]))] = moment  # type: ignore[assignment]
        checked = 0
        for row in updates:
            if row["side"] is None or row["size_text"] == "0":  # unknown row, truncation delete
                assert row["exch_ts"] is None
                continue
            key = (row["ts"].value, row["price"])
            assert row["exch_ts"].value == stamps[key]
            checked += 1
        assert checked > 40
        assert len(set(stamps.values())) > 40


def test_cli_writes_deltas_and_refuses_what_does_not_go_with_them(
    capture_segment: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from test_replay_cli import run_main

    segment = str(capture_segment("orderbook-v1.json"))
    out = tmp_path / "deltas"
    code, _, err = run_main(monkeypatch, capsys, segment, "--format", "deltas", "--out", str(out))
    assert code == 0, err
    rows = replay.read_deltas(out).num_rows
    assert rows > 1000
    manifest = orjson.loads((out / "_kbook_replay.json").read_bytes())
    assert manifest["format"] == "deltas"
    assert manifest["pairs"]["BTC/USD"]["rows"] == rows
    for extra, message in (
        (["--format", "deltas", "--trades"], "--format deltas goes without"),
        (["--format", "grid"], "--format must be snapshots, deltas, tardis or hftbacktest"),
        (["--exact-text"], "--exact-text goes with --format deltas"),
    ):
        code, _, err = run_main(monkeypatch, capsys, segment, "--out", str(tmp_path / "x"), *extra)
        assert code == 2
        assert err.startswith("kbook: error: ")
        assert message in err
        assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="is a deltas dataset, not snapshots"):
        replay.read_snapshots(out)


def test_exchange_time_texts_parse_exactly_or_not_at_all() -> None:
    assert seconds_text_ns("1693415327.935623") == 1_693_415_327_935_623_000
    assert seconds_text_ns("1693415327") == 1_693_415_327 * SECOND
    assert rfc3339_ns("2023-11-14T22:13:20.001Z") == 1_700_000_000_001_000_000
    assert rfc3339_ns("2023-11-14T22:13:20Z") == 1_700_000_000 * SECOND
    for text in ("1.", "١٢٣.5", "1.1234567891", "12\n", "", None, 5, "99999999999"):
        assert seconds_text_ns(text) is None  # the last: after a timestamp[ns] column's end
    for text in ("2023-13-14T22:13:20Z", "2023-11-14T22:13:20", "2023-11-14T22:13:20Z\n", 0):
        assert rfc3339_ns(text) is None
    assert rfc3339_ns("9999-12-31T23:59:59Z") is None
    assert rfc3339_ns("1969-12-31T23:59:59Z") is None
