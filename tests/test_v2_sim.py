"""The simulator speaking Kraken v2 over a real socket: shapes, checksums, errors, faults, and a
recorded session that ``kbook verify`` accepts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sim_support import V2Client, book_texts, write_v2_segment

from kbook.errors import UsageError
from kbook.feed import Outcome
from kbook.sim import Simulator, SimulatorConfig
from kbook.v2 import segment_api

LEVEL = re.compile(r'\{"price":([^,]+),"qty":([^}]+)\}')


@pytest.fixture
def v2sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api="v2", rate=2_000, heartbeat_interval=0.05)) as sim:
        yield sim


@pytest.fixture(scope="module")
def session() -> list[str]:
    """Every frame of one v2 connection: 10,000 BTC/USD updates at depth 10, then an
    unsubscribe and 2,000 updates at depth 1000, every checksum checked on the way."""
    config = SimulatorConfig(api="v2", rate=0, record=False)
    with Simulator(config) as sim, V2Client(sim.url + "/v2") as client:
        client.subscribe(["BTC/USD"], depth=10, req_id=1)
        client.read_updates(10_000)
        client.unsubscribe(["BTC/USD"], depth=None, req_id=2)
        client.recv_method("unsubscribe")
        client.subscribe(["BTC/USD"], depth=1000, req_id=3)
        client.recv_method("subscribe")
        client.read_updates(2_000)
        assert client.outcomes[Outcome.SNAPSHOT] == 2
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
        assert client.outcomes[Outcome.MALFORMED] == 0
        assert client.outcomes[Outcome.UPDATE_OK] >= 12_000  # plus updates sent meanwhile
        stats = client.feed.stats["BTC/USD"]
        assert stats.checksums_ok == 2 + client.outcomes[Outcome.UPDATE_OK]  # snapshots too
        assert stats.dropped == client.outcomes[Outcome.DROPPED]
        return list(client.texts)


def test_status_first_with_unsigned_64_bit_connection_id(v2sim: Simulator) -> None:
    with V2Client(v2sim.url) as first, V2Client(v2sim.url + "/v2") as second:
        ids = set()
        for client in (first, second):
            assert client.status["channel"] == "status"
            assert client.status["type"] == "update"
            (entry,) = client.status["data"]
            assert set(entry) == {"api_version", "connection_id", "system", "version"}
            assert entry["api_version"] == "v2"
            assert entry["system"] == "online"
            assert entry["version"].startswith("2.0.")
            assert 2**63 <= entry["connection_id"] < 2**64
            ids.add(entry["connection_id"])
            assert client.texts[0].startswith('{"channel":"status","type":"update","data":[')
        assert len(ids) == 2


@pytest.mark.slow
def test_round_trip_verifies_every_checksum(session: list[str]) -> None:
    ack = json.loads(session[1])
    assert ack["success"] is True
    assert ack["result"] == {"channel": "book", "depth": 10, "snapshot": True, "symbol": "BTC/USD"}
    assert ack["req_id"] == 1
    assert session[1].startswith('{"method":"subscribe","result":{"channel":"book","depth":10,')
    for key in ("time_in", "time_out"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ack[key])
    snapshot = json.loads(session[2])
    assert snapshot["type"] == "snapshot"
    (entry,) = snapshot["data"]
    assert len(entry["bids"]) == len(entry["asks"]) == 10
    assert isinstance(entry["checksum"], int)
    assert "timestamp" not in entry  # as in the real capture: snapshots carry no time
    depths = [
        json.loads(t)["result"]["depth"] for t in session if t.startswith('{"method":"subscribe"')
    ]
    assert depths == [10, 1000]


def test_numbers_are_lexemes_at_full_precision(session: list[str]) -> None:
    levels = [level for text in book_texts(session) for level in LEVEL.findall(text)]
    assert len(levels) > 20_000
    zeros = {qty for _price, qty in levels if qty == "0E-8" or not qty.strip("0.")}
    assert zeros == {"0.00000000", "0E-8"}  # both ways Kraken prints a deletion
    for price, qty in levels:
        assert re.fullmatch(r"\d+\.\d", price), price  # BTC/USD: 1 decimal
        assert qty == "0E-8" or re.fullmatch(r"\d+\.\d{8}", qty), qty
    assert any(qty.endswith("0") and qty != "0.00000000" for _p, qty in levels)
    update = next(t for t in book_texts(session) if '"type":"update"' in t)
    assert re.search(r'"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"', update)
    assert '"r"' not in "".join(book_texts(session))  # v2 has no republish marker


@pytest.mark.parametrize(
    ("symbols", "depth", "error", "symbol"),
    [
        (["XBT/USD"], 10, "Currency pair not supported XBT/USD", "XBT/USD"),
        (["XDG/USD"], 10, "Currency pair not supported XDG/USD", "XDG/USD"),
        (["FOO/BAR"], 10, "Currency pair not supported FOO/BAR", "FOO/BAR"),
        (["BTCUSD"], 10, "Currency pair not supported BTCUSD", "BTCUSD"),
        (["BTC/USD"], 42, "Subscription depth not supported", "BTC/USD"),
    ],
)
def test_subscribe_errors_keep_the_connection(
    v2sim: Simulator, symbols: list[str], depth: int, error: str, symbol: str
) -> None:
    with V2Client(v2sim.url) as client:
        client.subscribe(symbols, depth=depth, req_id=5)
        answer = client.recv_method("subscribe")
        assert answer["success"] is False
        assert answer["error"] == error
        assert answer["symbol"] == symbol
        assert answer["req_id"] == 5
        assert "time_in" in answer
        assert "time_out" in answer
        client.send({"method": "ping", "req_id": 6})
        pong = client.recv_method("pong")
        assert pong["req_id"] == 6
        assert set(pong) == {"method", "req_id", "time_in", "time_out"}


def test_already_subscribed_unsubscribe_and_not_found(v2sim: Simulator) -> None:
    with V2Client(v2sim.url) as client:
        client.subscribe(["BTC/USD", "ETH/USD"], depth=25, req_id=1)
        acks = [client.recv_method("subscribe") for _ in range(2)]
        assert [a["result"]["symbol"] for a in acks] == ["BTC/USD", "ETH/USD"]
        assert all(a["success"] for a in acks)
        # v2 book frames do not name a depth: one depth per symbol and connection.
        for depth in (25, 100):
            client.subscribe(["BTC/USD"], depth=depth, req_id=2)
            assert client.recv_method("subscribe")["error"] == "Already subscribed"
        client.unsubscribe(["BTC/USD"], depth=None, req_id=3)
        gone = client.recv_method("unsubscribe")
        assert gone["success"] is True
        assert gone["result"] == {"channel": "book", "depth": 25, "symbol": "BTC/USD"}
        client.unsubscribe(["BTC/USD"], req_id=4)
        missing = client.recv_method("unsubscribe")
        assert missing["success"] is False
        assert missing["error"] == "Subscription Not Found"
        client.subscribe(["BTC/USD"], depth=25, req_id=5)  # again: a fresh snapshot follows
        assert client.recv_method("subscribe")["success"] is True
        while client.outcomes[Outcome.SNAPSHOT] < 2:
            client.recv()
        client.read_updates(50)
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0


def test_requests_that_cannot_be_read(v2sim: Simulator) -> None:
    with V2Client(v2sim.url) as client:
        client.send({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"]}})
        assert client.recv_method("subscribe")["error"] == "Channel not supported"
        client.send({"method": "subscribe", "req_id": 8})
        answer = client.recv_method("subscribe")
        assert answer["error"] == "Malformed request"
        assert answer["req_id"] == 8
        client.send({"method": "frobnicate", "req_id": 9})
        assert client.recv_method("frobnicate")["error"] == "Method not found"
        client.ws.send("not json")
        junk = client.recv()
        assert junk["success"] is False
        assert junk["error"] == "Malformed request"


def test_heartbeats_and_no_snapshot_subscription(v2sim: Simulator) -> None:
    with V2Client(v2sim.url) as client:
        client.subscribe(["ETH/USD"], snapshot=False)
        ack = client.recv_method("subscribe")
        assert ack["result"]["snapshot"] is False
        client.recv_channel("heartbeat")
        client.read_updates(20)
        assert client.outcomes[Outcome.SNAPSHOT] == 0
        assert client.outcomes[Outcome.DROPPED] >= 20  # nothing to apply them to
    assert '{"channel":"heartbeat"}' in [f.text for f in v2sim.sent if f.kind == "heartbeat"]


def test_config_api() -> None:
    with pytest.raises(UsageError, match="--api 'v3' is not one of v1, v2"):
        SimulatorConfig(api="v3")
    with pytest.raises(UsageError, match="--from plays back v1 recordings only"):
        SimulatorConfig(api="v2", capture=Path("x.jsonl.zst"))


# -- the session as a kbook segment ---------------------------------------------------------------


def kbook_verify(*paths: Path) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "kbook", "verify", "--json", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_recorded_session_verifies(session: list[str], tmp_path: Path) -> None:
    segment = write_v2_segment(tmp_path / "BTC-USD.20231121T000000Z.jsonl.zst", session)
    assert segment_api(segment) == "v2"
    code, report = kbook_verify(segment)
    assert code == 0
    pair = report["pairs"]["BTC/USD"]
    books = len(book_texts(session))
    assert pair["api"] == "v2"
    assert pair["snapshots"] == 2
    assert pair["checksums_failed"] == 0
    # Updates that arrived between the unsubscribe and the new snapshot are dropped, not failed.
    assert pair["checksums_ok"] + pair["dropped"] == books
    assert pair["checksums_ok"] >= 12_002
    assert report["malformed_frames"] == 0


def test_bare_session_without_meta_is_v2_too(session: list[str], tmp_path: Path) -> None:
    bare = write_v2_segment(tmp_path / "bare.jsonl.zst", session[:3000], session_start=False)
    assert segment_api(bare) == "v2"
    code, report = kbook_verify(bare)
    assert code == 0
    assert report["pairs"]["BTC/USD"]["checksums_failed"] == 0
    assert report["pairs"]["BTC/USD"]["checksums_ok"] > 2900


# -- kbook simulate --api v2 ----------------------------------------------------------------------

KBOOK = Path(sys.executable).parent / "kbook"


@pytest.mark.slow
@pytest.mark.parametrize("api_args", [[], ["--api", "v2"]], ids=["default", "api-v2"])
def test_simulate_api_v2_serves_v2(api_args: list[str]) -> None:
    process = subprocess.Popen(
        [str(KBOOK), "simulate", "--port", "0", *api_args, "--duration", "2s", "--rate", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    assert url.startswith("ws://127.0.0.1:")
    assert url.endswith("/v2")  # the path says the API
    with V2Client(url) as client:
        assert client.status["data"][0]["api_version"] == "v2"
        client.subscribe(["BTC/USD"], req_id=1)
        assert client.recv_method("subscribe")["result"]["symbol"] == "BTC/USD"
        client.read_updates(20)
        assert client.outcomes[Outcome.UPDATE_OK] == 20
    _out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err


def test_simulate_bad_api_is_one_line() -> None:
    result = subprocess.run(
        [str(KBOOK), "simulate", "--port", "0", "--api", "v3"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "kbook: error: --api 'v3' is not one of v1, v2\n"
