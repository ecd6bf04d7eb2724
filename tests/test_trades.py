"""Trades beside the book: the ``trade`` channel subscribed, served, recorded and decoded exactly.

The recording scenario runs once per API (``apis.CASES``) against the real simulator on 127.0.0.1,
with a dropped connection and a reconnect in the middle: every trade frame the simulator sent is in
the pair's segments, the book still verifies, and each trade the simulator made lands in the book's
next update (its level reduced or gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from apis import CASES, ApiCase
from record_support import Background, Output, fast_config, match_connections, read_output

from kbook.api import Api, Channel, parse_channels
from kbook.dialect import Dialect, FrameKind, Trade, V2Dialect
from kbook.errors import FrameError, UsageError
from kbook.feed import BookFeed, Outcome
from kbook.live.subscriptions import State, Subscriptions
from kbook.sim import SentFrame, Simulator, SimulatorConfig
from kbook.verify import verify_paths
from recorder import RecordConfig, RecordSummary

PAIRS = ("XBT/USD", "ETH/USD")
BOTH = (Channel.BOOK, Channel.TRADE)


# -- decoding -------------------------------------------------------------------------------------


def test_v1_trade_frame_is_decoded_exactly() -> None:
    text = (
        '[0,[["5541.20000","0.15850568","1534614057.321597","s","l",""],'
        '["6060.00000","0.02455000","1534614057.324998","b","m",""]],"trade","XBT/USD"]'
    )
    dialect = Dialect()
    msg = dialect.decode_line(text)
    assert dialect.kind(msg) is FrameKind.TRADE
    assert dialect.route(msg) == "XBT/USD"
    assert dialect.trades(msg) == [
        Trade(
            "XBT/USD", "5541.20000", "0.15850568", "sell", "limit", 1534614057321597000, None, False
        ),
        Trade(
            "XBT/USD", "6060.00000", "0.02455000", "buy", "market", 1534614057324998000, None, False
        ),
    ]


def test_v2_trade_frame_is_decoded_exactly() -> None:
    text = (
        '{"channel":"trade","type":"snapshot","data":[{"symbol":"MATIC/USD","side":"buy",'
        '"price":0.5147,"qty":6423.46326000,"ord_type":"limit","trade_id":4665846,'
        '"timestamp":"2023-09-25T07:48:36.925533Z"}]}'
    )
    dialect = V2Dialect()
    msg = dialect.decode_line(text)
    assert dialect.kind(msg) is FrameKind.TRADE
    assert dialect.route(msg) == "MATIC/USD"
    [trade] = dialect.trades(msg)
    assert trade == Trade(
        "MATIC/USD", "0.5147", "6423.46326000", "buy", "limit", 1695628116925533000, 4665846, True
    )


@pytest.mark.parametrize(
    "text",
    [
        '[0,[["5541.2","0.1","1534614057.3","x","l",""]],"trade","XBT/USD"]',
        '[0,[["5541.2","0.1","yesterday","s","l",""]],"trade","XBT/USD"]',
        '[0,[["NaN","0.1","1534614057.3","s","l",""]],"trade","XBT/USD"]',
        '[0,{"a":[]},"trade","XBT/USD"]',
    ],
)
def test_malformed_v1_trades_are_frame_errors(text: str) -> None:
    dialect = Dialect()
    with pytest.raises(FrameError):
        dialect.trades(dialect.decode_line(text))


def test_malformed_v2_trades_are_frame_errors() -> None:
    dialect = V2Dialect()
    entry = '{"symbol":"BTC/USD","side":"buy","price":1.0,"qty":1.0,"ord_type":"limit",'
    for tail in ('"trade_id":"7","timestamp":"2023-09-25T07:48:36Z"}', '"trade_id":7}'):
        msg = dialect.decode_line(
            '{"channel":"trade","type":"update","data":[' + entry + tail + "]}"
        )
        with pytest.raises(FrameError):
            dialect.trades(msg)


def test_channels_option() -> None:
    assert parse_channels("trade,book") == BOTH
    assert parse_channels("trade") == (Channel.TRADE,)
    with pytest.raises(UsageError, match="'ticker' is not a channel"):
        parse_channels("book,ticker")
    with pytest.raises(UsageError, match="--channels"):
        RecordConfig(pairs=("BTC/USD",), channels=("",))
    assert RecordConfig(pairs=("BTC/USD",)).channels == (Channel.BOOK,)


# -- requests and answers -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_channel_is_requested_and_answered_on_its_own(case: ApiCase) -> None:
    subs = Subscriptions(("BTC/USD",), 10, dialect=case.dialect, channels=BOTH)
    book_request, trade_request = (action.send for action in subs.on_connect(0))
    assert book_request is not None
    assert trade_request is not None
    if case.api is Api.V1:
        assert trade_request["subscription"] == {"name": "trade"}
        trade_ok = {
            "channelName": "trade",
            "event": "subscriptionStatus",
            "pair": "BTC/USD",
            "status": "subscribed",
            "subscription": {"name": "trade"},
        }
        # A v2 refusal names no channel; v1's names it.
        refusal = {
            "errorMessage": "Currency pair not supported",
            "event": "subscriptionStatus",
            "pair": "BTC/USD",
            "status": "error",
            "subscription": {"depth": 10, "name": "book"},
        }
    else:
        assert trade_request["params"] == {
            "channel": "trade",
            "symbol": ["BTC/USD"],
            "snapshot": True,
        }
        trade_ok = {
            "method": "subscribe",
            "result": {"channel": "trade", "snapshot": True, "symbol": "BTC/USD"},
            "success": True,
            "req_id": trade_request["req_id"],
        }
        refusal = {
            "error": "Currency pair not supported BTC/USD",
            "method": "subscribe",
            "success": False,
            "symbol": "BTC/USD",
            "req_id": book_request["req_id"],
        }
    subs.on_control(trade_ok, 1)
    assert subs.by_channel[("BTC/USD", Channel.TRADE)].state is State.SUBSCRIBED
    assert subs.by_channel[("BTC/USD", Channel.BOOK)].state is State.SENT
    subs.on_control(refusal, 2)
    book = subs.by_channel[("BTC/USD", Channel.BOOK)]
    assert book.state is State.SENT if case.api is Api.V1 else State.FAILED  # v1: alias retry
    assert subs.by_channel[("BTC/USD", Channel.TRADE)].state is State.SUBSCRIBED


def test_v1_trade_answer_leaves_the_book_valid() -> None:
    """Kraken answers the trade subscription after the book's snapshot may be out: that answer
    is not the book's, which must stay valid (else every update after it is dropped)."""
    feed = BookFeed()
    snapshot = [1, {"as": [["2.0", "1.0", "0"]], "bs": [["1.0", "1.0", "0"]]}, "book-10", "X/Y"]
    assert feed.on_message(snapshot, 1) is Outcome.SNAPSHOT
    answer = {
        "channelName": "trade",
        "event": "subscriptionStatus",
        "pair": "X/Y",
        "status": "subscribed",
        "subscription": {"name": "trade"},
    }
    feed.on_message(answer, 2)
    assert feed.books[("X/Y", "book-10")].valid
    feed.on_message({**answer, "channelName": "book-10", "subscription": {"name": "book"}}, 3)
    assert not feed.books[("X/Y", "book-10")].valid


# -- a recording with both channels, a drop and a reconnect ----------------------------------------


@dataclass
class Recording:
    case: ApiCase
    out: Path
    sent: list[SentFrame]
    output: Output
    summary: RecordSummary


def record_both(case: ApiCase, out: Path, channels: tuple[Channel, ...] = BOTH) -> Recording:
    """Record ``PAIRS`` with ``channels`` while the simulator drops the connection once."""
    config = case.sim_config(pairs=PAIRS, rate=300.0, seed=11)
    with Simulator(config) as sim:
        pairs = ("BTC/USD", "ETH/USD")
        with Background(fast_config(sim, out, pairs, channels=channels)) as run:
            sim.wait_for(lambda s: s.count("trade", 1) >= 30, timeout=10)
            sim.faults.drop_after(25)
            sim.wait_for(lambda s: s.count("trade", 2) >= 30, timeout=10)
            sim.pause()
            sent = len(sim.sent)
            sim.wait_for(lambda s: run.recorder.frames >= sent, timeout=10)
            summary = run.finish()
        sent_frames = list(sim.sent)
    return Recording(case, out, sent_frames, read_output(out), summary)


@pytest.fixture(scope="module", params=CASES, ids=str)
def recording(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Recording:
    case: ApiCase = request.param
    return record_both(case, tmp_path_factory.mktemp(f"trades-{case.api}"))


def test_every_trade_frame_sent_is_in_its_pairs_segments(recording: Recording) -> None:
    sent = recording.sent
    assert recording.summary.reconnects == 1
    lost = match_connections(recording.output.texts, sent)
    assert set(lost.values()) == {0}
    trades = [frame for frame in sent if frame.kind == "trade"]
    assert {frame.connection for frame in trades} == {1, 2}
    dialect = recording.case.dialect
    for frame in trades:
        [pair] = {t.pair for t in dialect.trades(dialect.decode_line(frame.text))}
        name = "BTC-USD" if pair in ("XBT/USD", "BTC/USD") else "ETH-USD"
        in_files = [
            p for p in recording.output.files_of(name) if frame.text in _frame_texts(recording, p)
        ]
        assert len(in_files) == 1, frame.text
    if recording.case.api is Api.V2:
        # The reconnect's snapshot of recent trades repeats trades of the first connection.
        assert any('"type":"snapshot"' in frame.text and frame.connection == 2 for frame in trades)
    report = verify_paths([recording.out / "raw"])
    assert report.problems == []
    assert report.checksums_failed == 0
    assert report.checksums_ok >= 50


def _frame_texts(recording: Recording, path: Path) -> set[str]:
    """The frames of one segment, as the recorder wrote them (verbatim)."""
    lines = recording.output.lines[path]
    return {recording.output.frames[r["seq"]] for r in lines if "seq" in r and "meta" not in r}


def test_each_simulated_trade_lands_in_the_books_next_update(recording: Recording) -> None:
    dialect = recording.case.dialect
    checked = 0
    for connection in (1, 2):
        feed = dialect.feed()
        pending: dict[str, Trade] = {}
        for frame in recording.sent:
            if frame.connection != connection:
                continue
            msg = dialect.decode_line(frame.text)
            if frame.kind == "trade":
                for trade in dialect.trades(msg):
                    if not trade.snapshot:
                        pending[_canonical(trade.pair)] = trade
                continue
            if frame.kind == "update":
                [entry] = dialect.entries(msg)
                trade = pending.pop(_canonical(entry.pair), None)
                if trade is not None:
                    book = feed.books[next(k for k in feed.books if k[0] == entry.pair)]
                    side = book.top_asks if trade.side == "buy" else book.top_bids
                    best_price, best_qty = side(1)[0]
                    assert best_price == trade.price
                    feed.on_message(msg, 0)
                    left = dict(side(book.depth)).get(trade.price)
                    if left is None:
                        assert Decimal(trade.qty) == Decimal(best_qty)
                    else:
                        assert Decimal(left) == Decimal(best_qty) - Decimal(trade.qty)
                    checked += 1
                    continue
            feed.on_message(msg, 0)
    assert checked >= 40


def _canonical(pair: str) -> str:
    return {"BTC/USD": "XBT/USD"}.get(pair, pair)


# -- the trades dataset ---------------------------------------------------------------------------


def _sent_trades(recording: Recording) -> dict[str, list[tuple[object, ...]]]:
    """Per pair (common name), the trades the simulator sent, each once (v2: by id, first
    seen), as ``(exch_ns, price, size, side, order_type, trade_id)``."""
    dialect = recording.case.dialect
    seen: set[tuple[str, int]] = set()
    found: dict[str, list[tuple[object, ...]]] = {}
    for frame in recording.sent:
        if frame.kind != "trade":
            continue
        for t in sorted(dialect.trades(dialect.decode_line(frame.text)), key=_by_id):
            pair = "BTC/USD" if t.pair in ("XBT/USD", "BTC/USD") else t.pair
            if t.trade_id is not None:
                if (pair, t.trade_id) in seen:
                    continue
                seen.add((pair, t.trade_id))
            row = (t.exch_ns, float(t.price), float(t.qty), t.side, t.order_type, t.trade_id)
            found.setdefault(pair, []).append(row)
    return found


def _by_id(trade: Trade) -> int:
    return trade.trade_id or 0


def test_trades_dataset_equals_the_trades_sent(recording: Recording, tmp_path: Path) -> None:
    import replay

    summary = replay.replay_trades_to_dataset(recording.out / "raw", tmp_path / "trades")
    assert summary.problems == []
    table = replay.read_trades(tmp_path / "trades")
    assert table.column_names == [
        "ts",
        "pair",
        "exch_ts",
        "price",
        "size",
        "side",
        "order_type",
        "trade_id",
        "is_snapshot",
        "seq",
    ]
    rows = table.to_pylist()
    for pair in ("BTC/USD", "ETH/USD"):  # in recorded order (one run: seq grows)
        seqs = [row["seq"] for row in rows if row["pair"] == pair]
        assert seqs == sorted(seqs)
    got: dict[str, list[tuple[object, ...]]] = {}
    exch_ns = table.column("exch_ts").cast(pa.int64()).to_pylist()
    for row, exch in zip(rows, exch_ns, strict=True):
        got.setdefault(row["pair"], []).append(
            (
                exch,
                row["price"],
                row["size"],
                row["side"],
                row["order_type"],
                row["trade_id"],
            )
        )
    assert got == _sent_trades(recording)
    assert not any(row["is_snapshot"] for row in rows)  # the first snapshot came empty
    repeated = sum(state.repeated for state in summary.ledger.pairs.values())
    if recording.case.api is Api.V2:
        assert repeated > 0  # the reconnect's snapshot, dropped
        assert all(state.missing == 0 for state in summary.ledger.pairs.values())
    else:
        assert repeated == 0
    # Files are the snapshots' layout: one per pair and UTC day.
    names = sorted(str(p.relative_to(tmp_path / "trades").parent) for p in summary.files)
    assert [name.split("/")[0] for name in names] == ["pair=BTC-USD", "pair=ETH-USD"]


def test_trades_cli_and_a_trades_only_recording(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A recording of trades alone: ``kbook replay`` writes an empty snapshot dataset and says
    why (exit 0), ``--trades`` writes the trades, ``kbook verify`` counts them."""
    import sys

    from apis import V2

    import replay
    from kbook.cli import main

    recording = record_both(V2, tmp_path / "rec", (Channel.TRADE,))
    raw = str(recording.out / "raw")

    def run(*args: str) -> tuple[object, str]:
        monkeypatch.setattr(sys, "argv", ["kbook", *args])
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        else:
            code = 0
        return code, capsys.readouterr().err

    code, err = run("replay", raw, "--out", str(tmp_path / "snaps"))
    assert code in (0, None)
    assert "no order book in the" in err
    assert "--trades" in err
    assert (tmp_path / "snaps" / "_kbook_replay.json").is_file()
    assert not list((tmp_path / "snaps").glob("pair=*"))

    code, err = run("replay", raw, "--trades", "--out", str(tmp_path / "trades"))
    assert code in (0, None), err
    sent = _sent_trades(recording)
    assert f"BTC/USD: {len(sent['BTC/USD'])} trades" in err
    assert replay.read_trades(tmp_path / "trades", pair="XBT/USD").num_rows == len(sent["BTC/USD"])

    code, err = run("replay", raw, "--trades", "--out", str(tmp_path / "trades"))
    assert code == 2
    assert "exists already; pass --force" in err


# -- kbook verify ---------------------------------------------------------------------------------


def test_verify_counts_each_trade_once(recording: Recording) -> None:
    report = verify_paths([recording.out / "raw"])
    sent = _sent_trades(recording)
    counts = {pair: t.kept for pair, t in report.trades.pairs.items()}  # by common name
    assert counts == {"BTC/USD": len(sent["BTC/USD"]), "ETH/USD": len(sent["ETH/USD"])}
    assert report.trade_gaps() == []
    assert report.to_json()["trades"]["ETH/USD"]["trades"] == len(sent["ETH/USD"])


def test_verify_flags_v2_trade_id_gaps(tmp_path: Path) -> None:
    from sim_support import write_v2_segment

    def trade(trade_id: int) -> str:
        return (
            '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USD","side":"buy",'
            f'"price":27120.5,"qty":0.10000000,"ord_type":"market","trade_id":{trade_id},'
            '"timestamp":"2026-11-21T10:00:00.000001Z"}]}'
        )

    path = tmp_path / "raw" / "BTC-USD.20261121T100000Z.jsonl.zst"
    path.parent.mkdir(parents=True)
    write_v2_segment(path, [trade(1), trade(2), trade(2), trade(6), trade(7)])
    report = verify_paths([tmp_path / "raw"])
    [(pair, state)] = report.trades.pairs.items()
    assert (pair, state.kept, state.repeated, state.missing) == ("BTC/USD", 4, 1, 3)
    assert report.trade_gaps() == [
        "BTC/USD: 3 trade id(s) missing in 1 gap(s), the first after trade 2"
    ]


# -- kbook watch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
def test_watch_shows_the_last_trades_under_the_book(case: ApiCase) -> None:
    from record_support import wait_until
    from watch_support import wait_for, watching

    config = case.sim_config(pairs=("XBT/USD",), rate=200.0, seed=5)
    with Simulator(config) as sim, watching(sim.url) as screen:
        wait_for(screen, lambda s: len(s.trades) >= 5 and s.checksum == "ok", "5 trades")
        sim.pause()
        sent = [f for f in sim.sent if f.kind == "trade"]
        dialect = case.dialect
        last = [t for f in sent for t in dialect.trades(dialect.decode_line(f.text))][-5:]
        wait_until(lambda: screen.last.trades == tuple(reversed(last)), what="last trades")
        status, text = screen.shown[-1]
    lines = text.splitlines()
    at = lines.index("last trades")
    assert next(i for i, line in enumerate(lines) if "bid price" in line) < at  # under the book
    newest = status.trades[0]
    assert lines[at + 1].split()[1:4] == [newest.side, newest.qty, "@"]
    assert lines[at + 1].split()[4] == newest.price
    assert lines[at + 1 :] == [*lines[at + 1 : at + 6], ""]  # five, the newest first


def test_the_book_replays_as_before_beside_the_trades(recording: Recording) -> None:
    import replay

    table = replay.replay_table(recording.out / "raw", every="10ms", levels=10)
    assert set(table.column("pair").to_pylist()) == {"BTC/USD", "ETH/USD"}
    assert sum(table.column("valid").to_pylist()) >= 10
    assert sum(table.column("checksum_failures").to_pylist()) == 0


def test_v1_alias_retry_and_refusals_per_channel(tmp_path: Path) -> None:
    """v1 refusing ``BTC/USD`` is retried as ``XBT/USD`` for each channel on its own; a pair
    unknown to Kraken is refused for both and the others keep recording both."""
    config = SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=300.0, seed=5, btc="reject")
    with Simulator(config) as sim:
        pairs = ("BTC/USD", "FOO/BAR")
        with Background(fast_config(sim, tmp_path, pairs, channels=BOTH)) as run:
            sim.wait_for(lambda s: s.count("trade") >= 10 and s.count("update") >= 10)
            summary = run.finish()
    output = read_output(tmp_path)
    aliases = output.metas("alias")
    assert sorted(m["channel"] for m in aliases) == ["book", "trade"]
    assert {(m["tried"], m["alias"]) for m in aliases} == {("BTC/USD", "XBT/USD")}
    errors = output.metas("subscribe_error")
    assert sorted(m["channel"] for m in errors) == ["book", "trade"]
    assert summary.failed == {"FOO/BAR": "Currency pair not supported FOO/BAR"}
    assert summary.subscribed == ("BTC/USD",)
    msgs = [r.get("msg") for p in output.files_of("BTC-USD") for r in output.lines[p]]
    assert len([m for m in msgs if isinstance(m, list) and m[-2:] == ["trade", "XBT/USD"]]) >= 10
    assert output.files_of("FOO-BAR") == []
