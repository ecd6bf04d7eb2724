"""Each fault appears exactly when asked, on a real socket."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
import websocket
from sim_support import Client

from kbook.api import Api
from kbook.feed import Outcome
from kbook.sim import Simulator, SimulatorConfig
from kbook.sim.protocol import NON_JSON_FRAME


def book_frames(client: Client) -> int:
    return sum(1 for text in client.texts if text.startswith("["))


def subscribed_and_paused(sim: Simulator, pair: str = "XBT/USD") -> Client:
    """A client subscribed to ``pair`` that has read every book frame sent, updates paused."""
    client = Client(sim.url)
    number = sim.connections
    client.subscribe([pair])
    client.read_updates(5)
    sim.pause()
    sent = sim.count("snapshot", number) + sim.count("update", number)
    while book_frames(client) < sent:
        client.recv()
    return client


@pytest.fixture
def fast() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(api=Api.V1, rate=2_000, heartbeat_interval=0.05)) as sim:
        yield sim


def test_drop_after_n_cuts_tcp_without_close_frame(fast: Simulator) -> None:
    client = subscribed_and_paused(fast)
    before = book_frames(client)
    fast.faults.drop_after(3)
    fast.resume()
    assert client.read_to_end() is None  # no close frame
    assert book_frames(client) == before + 3
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
    book_sent = [f for f in fast.sent if f.kind in ("snapshot", "update")]
    assert len(book_sent) == before + 3
    client.close()


def test_drop_armed_before_connecting_hits_the_next_connection(fast: Simulator) -> None:
    fast.faults.drop_after(1)  # the snapshot is the one book frame that gets out
    with Client(fast.url) as client:
        client.subscribe(["ETH/USD"])
        assert client.read_to_end() is None
        assert book_frames(client) == 1
        assert client.outcomes[Outcome.SNAPSHOT] == 1
    with Client(fast.url) as second:  # one-shot: the next connection is healthy
        second.subscribe(["ETH/USD"])
        second.read_updates(20)
        assert second.outcomes[Outcome.UPDATE_OK] == 20


def test_repeated_drop_hits_every_connection(fast: Simulator) -> None:
    fast.faults.drop_after(2, repeat=True)
    for _ in range(2):
        with Client(fast.url) as client:
            client.subscribe(["ETH/USD"])
            assert client.read_to_end() is None
            assert book_frames(client) == 2


def test_stall_is_silent_for_its_whole_length_then_carries_on(fast: Simulator) -> None:
    client = subscribed_and_paused(fast)
    before = book_frames(client)
    fast.faults.stall_after(2, seconds=0.5)
    fast.resume()
    while book_frames(client) < before + 2:
        client.recv()
    stalled_at = time.monotonic()
    client.send({"event": "ping", "reqid": 5})  # not even a pong during a stall
    count = len(client.texts)
    client.recv_text()
    gap = time.monotonic() - stalled_at
    assert gap >= 0.4, f"a frame came {gap:.3f} s into a 0.5 s stall"
    assert len(client.texts) == count + 1
    client.feed.on_message(orjson.loads(client.texts[-1]), 0)
    assert client.recv_event("pong")["reqid"] == 5
    client.read_updates(10)  # the market carries on where it stopped: no gap in the book
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
    assert client.outcomes[Outcome.DROPPED] == 0
    client.close()


def test_endless_stall_even_without_heartbeats(fast: Simulator) -> None:
    client = subscribed_and_paused(fast)
    fast.faults.stall_after(0)
    fast.resume()
    client.ws.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv_text()
    client.ws.shutdown()


def test_bad_checksum_at_n(fast: Simulator) -> None:
    client = subscribed_and_paused(fast)
    ok_before = client.outcomes[Outcome.UPDATE_OK]
    fast.faults.bad_checksum_at(4)
    fast.resume()
    client.read_updates(4)
    assert client.outcomes[Outcome.UPDATE_OK] == ok_before + 3
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 1
    client.read_updates(5)  # the book stays void until a new snapshot
    assert client.outcomes[Outcome.DROPPED] == 5
    client.close()


def test_bad_checksum_counts_updates_not_snapshots(fast: Simulator) -> None:
    fast.faults.bad_checksum_at(1)
    with Client(fast.url) as client:
        client.subscribe(["XBT/USD"])
        client.read_updates(2)
        assert client.outcomes[Outcome.SNAPSHOT] == 1
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 1


def test_non_json_after_n_then_business_as_usual(fast: Simulator) -> None:
    client = subscribed_and_paused(fast)
    before = len(client.texts)
    fast.faults.non_json_after(2)
    fast.resume()
    while NON_JSON_FRAME not in client.texts:
        text = client.recv_text()
        if text != NON_JSON_FRAME:
            client.feed.on_message(orjson.loads(text), 0)
    since = client.texts[before:]
    assert sum(t.startswith("[") for t in since) == 2
    assert [f.text for f in fast.sent if f.kind == "raw"] == [NON_JSON_FRAME]
    client.read_updates(10)
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
    client.close()


def test_non_json_exactly_after_n_book_frames(fast: Simulator) -> None:
    fast.faults.non_json_after(3)
    with Client(fast.url) as client:
        client.subscribe(["ETH/USD"])
        texts = []
        while NON_JSON_FRAME not in texts:
            texts.append(client.recv_text())
        assert sum(t.startswith("[") for t in texts) == 3


def test_maintenance_then_close(fast: Simulator) -> None:
    fast.faults.maintenance_after(4)
    with Client(fast.url) as client:
        client.subscribe(["ETH/USD"])
        assert client.read_to_end() == 1001
        assert book_frames(client) == 4
        last = orjson.loads(client.texts[-1])
        assert last == {
            "connectionID": client.status["connectionID"],
            "event": "systemStatus",
            "status": "maintenance",
            "version": client.status["version"],
        }


def test_rate_limited_subscribe(simulator: Simulator) -> None:
    simulator.faults.rate_limit_next_subscribe()
    with Client(simulator.url) as client:
        client.subscribe(["XBT/USD"], reqid=1)
        assert client.recv_text() == '{"errorMessage":"Exceeded msg rate","event":"error"}'
        client.subscribe(["XBT/USD"], reqid=2)  # still open; the next subscribe works
        assert client.recv()["status"] == "subscribed"


def test_refuse_next_connections(simulator: Simulator) -> None:
    simulator.faults.refuse_connections(count=2)
    for _ in range(2):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(simulator.url, timeout=5)
        assert refused.value.status_code == 503
    with Client(simulator.url) as client:
        assert client.status["status"] == "online"
    assert simulator.refused == 2
    assert simulator.connections == 1


def test_refuse_connections_for_a_while(simulator: Simulator) -> None:
    simulator.faults.refuse_connections(None, seconds=0.3)
    refused_until = time.monotonic() + 0.3
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(simulator.url, timeout=5)
    delay = 0.05
    while True:  # retry with backoff, as a client would
        try:
            ws = websocket.create_connection(simulator.url, timeout=5)
        except websocket.WebSocketBadStatusException:
            assert time.monotonic() < refused_until + 2, "still refused long after the window"
            time.sleep(delay)
            delay *= 2
            continue
        break
    assert time.monotonic() >= refused_until - 0.05
    ws.close()
    assert simulator.refused >= 1
    assert simulator.connections == 1
