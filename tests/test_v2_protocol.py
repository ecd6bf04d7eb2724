"""The v2 request builders and answer readers in ``kbook.v2``, against the v2 simulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sim_support import V2Client

from kbook.sim import Simulator, SimulatorConfig
from kbook.v2 import (
    Ack,
    book_key,
    frame_checksum,
    frame_symbol,
    parse_ack,
    parse_status,
    ping_request,
    subscribe_request,
)


@pytest.fixture(scope="module")
def v2sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api="v2", rate=500)) as sim:
        yield sim


def test_requests_are_understood_and_answers_read(v2sim: Simulator) -> None:
    with V2Client(v2sim.url + "/v2") as client:
        assert parse_status(client.status) == (
            "online",
            client.status["data"][0]["connection_id"],
        )
        client.send(subscribe_request(["BTC/USD", "XBT/USD"], 25, 7))
        ok = parse_ack(client.recv_method("subscribe"))
        assert ok == Ack("subscribe", True, "BTC/USD", 25, None, 7, "book")
        refused = parse_ack(client.recv_method("subscribe"))
        assert refused == Ack(
            "subscribe", False, "XBT/USD", None, "Currency pair not supported XBT/USD", 7
        )
        snapshot = client.recv()
        assert frame_symbol(snapshot) == "BTC/USD"
        assert frame_checksum(snapshot) == client.feed.books[book_key("BTC/USD", 25)].checksum()
        client.send(ping_request(8))
        pong = client.recv_method("pong")
        assert pong["req_id"] == 8
        assert parse_ack(pong) is None
        assert frame_symbol(pong) is None
        client.send(subscribe_request(["BTC/USD"], 25, 9, unsubscribe=True))
        gone = parse_ack(client.recv_method("unsubscribe"))
        assert gone == Ack("unsubscribe", True, "BTC/USD", 25, None, 9, "book")


def test_readers_ignore_other_frames() -> None:
    heartbeat = {"channel": "heartbeat"}
    for reader in (parse_ack, parse_status, frame_symbol, frame_checksum):
        assert reader(heartbeat) is None
        assert reader([1, {}, "book-10", "XBT/USD"]) is None
    malformed = {"error": "Malformed request", "method": "subscribe", "success": False}
    assert parse_ack(malformed) == Ack("subscribe", False, None, None, "Malformed request", None)
    maintenance = {"channel": "status", "data": [{"system": "maintenance", "connection_id": 5}]}
    assert parse_status(maintenance) == ("maintenance", 5)
