"""Each fault appears exactly when asked, on a real socket, under each API (``case``)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import websocket
from apis import ApiCase
from sim_support import Client

from kbook.api import Api, Channel
from kbook.dialect import REJECTED, SUBSCRIBED, Answer
from kbook.feed import Outcome
from kbook.sim import Simulator
from kbook.sim.protocol import NON_JSON_FRAME


def subscribed_and_paused(case: ApiCase, sim: Simulator) -> Client:
    """A client subscribed to BTC/USD that has read every book frame sent, updates paused."""
    client = case.client(sim.url)
    number = sim.connections
    client.subscribe([case.btc_wire])
    client.read_updates(5)
    sim.pause()
    sent = sim.count("snapshot", number) + sim.count("update", number)
    while client.book_frames() < sent:
        client.recv()
    return client


@pytest.fixture
def fast(case: ApiCase) -> Iterator[Simulator]:
    with Simulator(case.sim_config(rate=2_000, heartbeat_interval=0.05)) as sim:
        yield sim


def test_drop_after_n_cuts_tcp_without_close_frame(case: ApiCase, fast: Simulator) -> None:
    client = subscribed_and_paused(case, fast)
    before = client.book_frames()
    fast.faults.drop_after(3)
    fast.resume()
    assert client.read_to_end() is None  # no close frame
    assert client.book_frames() == before + 3
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
    book_sent = [f for f in fast.sent if f.kind in ("snapshot", "update")]
    assert len(book_sent) == before + 3
    client.close()


def test_drop_armed_before_connecting_hits_the_next_connection(
    case: ApiCase, fast: Simulator
) -> None:
    fast.faults.drop_after(1)  # the snapshot is the one book frame that gets out
    with case.client(fast.url) as client:
        client.subscribe(["ETH/USD"])
        assert client.read_to_end() is None
        assert client.book_frames() == 1
        assert client.outcomes[Outcome.SNAPSHOT] == 1
    with case.client(fast.url) as second:  # one-shot: the next connection is healthy
        second.subscribe(["ETH/USD"])
        second.read_updates(20)
        assert second.outcomes[Outcome.UPDATE_OK] == 20


def test_repeated_drop_hits_every_connection(case: ApiCase, fast: Simulator) -> None:
    fast.faults.drop_after(2, repeat=True)
    for _ in range(2):
        with case.client(fast.url) as client:
            client.subscribe(["ETH/USD"])
            assert client.read_to_end() is None
            assert client.book_frames() == 2


def test_stall_is_silent_for_its_whole_length_then_carries_on(
    case: ApiCase, fast: Simulator
) -> None:
    client = subscribed_and_paused(case, fast)
    before = client.book_frames()
    fast.faults.stall_after(2, seconds=0.5)
    fast.resume()
    while client.book_frames() < before + 2:
        client.recv()
    stalled_at = time.monotonic()
    client.send(client.dialect.ping(5))  # not even a pong during a stall
    count = len(client.texts)
    client.recv_text()
    gap = time.monotonic() - stalled_at
    assert gap >= 0.4, f"a frame came {gap:.3f} s into a 0.5 s stall"
    assert len(client.texts) == count + 1
    # The pong and the next book frame both wait for the stall's end; either may come first.
    first = client.decode(client.texts[-1])
    client.outcomes[client.feed.on_message(first, 0)] += 1
    after_stall = itertools.chain([first], iter(client.recv, None))
    pong = next(msg for msg in after_stall if case.pong_id(msg) is not None)
    assert case.pong_id(pong) == 5
    client.read_updates(10)  # the market carries on where it stopped: no gap in the book
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
    assert client.outcomes[Outcome.DROPPED] == 0
    client.close()


def test_endless_stall_even_without_heartbeats(case: ApiCase, fast: Simulator) -> None:
    client = subscribed_and_paused(case, fast)
    fast.faults.stall_after(0)
    fast.resume()
    client.ws.settimeout(0.5)
    with pytest.raises(websocket.WebSocketTimeoutException):
        client.recv_text()
    client.ws.shutdown()


def test_bad_checksum_at_n(case: ApiCase, fast: Simulator) -> None:
    client = subscribed_and_paused(case, fast)
    ok_before = client.outcomes[Outcome.UPDATE_OK]
    fast.faults.bad_checksum_at(4)
    fast.resume()
    client.read_updates(4)
    assert client.outcomes[Outcome.UPDATE_OK] == ok_before + 3
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 1
    client.read_updates(5)  # the book stays void until a new snapshot
    assert client.outcomes[Outcome.DROPPED] == 5
    client.close()


def test_bad_checksum_counts_updates_not_snapshots(case: ApiCase, fast: Simulator) -> None:
    fast.faults.bad_checksum_at(1)
    with case.client(fast.url) as client:
        client.subscribe([case.btc_wire])
        client.read_updates(2)
        assert client.outcomes[Outcome.SNAPSHOT] == 1
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 1


def test_non_json_after_n_then_business_as_usual(case: ApiCase, fast: Simulator) -> None:
    client = subscribed_and_paused(case, fast)
    before = len(client.texts)
    fast.faults.non_json_after(2)
    fast.resume()
    while NON_JSON_FRAME not in client.texts:
        text = client.recv_text()
        if text != NON_JSON_FRAME:
            client.feed.on_message(client.decode(text), 0)
    since = client.texts[before:]
    assert client.book_frames(since) == 2
    assert [f.text for f in fast.sent if f.kind == "raw"] == [NON_JSON_FRAME]
    client.read_updates(10)
    assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
    client.close()


def test_non_json_exactly_after_n_book_frames(case: ApiCase, fast: Simulator) -> None:
    fast.faults.non_json_after(3)
    with case.client(fast.url) as client:
        client.subscribe(["ETH/USD"])
        texts = []
        while NON_JSON_FRAME not in texts:
            texts.append(client.recv_text())
        assert client.book_frames(texts) == 3


def test_maintenance_then_close(case: ApiCase, fast: Simulator) -> None:
    fast.faults.maintenance_after(4)
    with case.client(fast.url) as client:
        client.subscribe(["ETH/USD"])
        assert client.read_to_end() == 1001
        assert client.book_frames() == 4
        # The connection's own status frame (its id, its version), saying maintenance.
        assert client.texts[-1] == client.texts[0].replace('"online"', '"maintenance"')
        last = client.decode(client.texts[-1])
        assert client.dialect.system_status(last) == "maintenance"
        assert client.dialect.connection_id(last) == client.dialect.connection_id(client.status)


def test_rate_limited_subscribe(case: ApiCase, fast: Simulator) -> None:
    fast.faults.rate_limit_next_subscribe()
    with case.client(fast.url) as client:
        client.send(client.dialect.subscribe([case.btc_wire], 10, 1))
        echoed = 1 if case.api is Api.V2 else None  # v1's error event echoes no reqid
        assert client.recv_answer() == Answer(REJECTED, None, "Exceeded msg rate", reqid=echoed)
        assert case.rate_limited.fullmatch(client.texts[-1])
        client.send(client.dialect.subscribe([case.btc_wire], 10, 2))  # still open; this works
        answer = Answer(SUBSCRIBED, case.btc_wire, channel=Channel.BOOK, reqid=2)
        assert client.recv_answer() == answer


def test_refuse_next_connections(case: ApiCase, fast: Simulator) -> None:
    fast.faults.refuse_connections(count=2)
    for _ in range(2):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(fast.url, timeout=5)
        assert refused.value.status_code == 503
    with case.client(fast.url) as client:
        assert client.dialect.system_status(client.status) == "online"
        client.subscribe([case.btc_wire], depth=None)  # Kraken's default depth
        client.read_updates(5)
    assert fast.refused == 2
    assert fast.connections == 1


def test_refuse_connections_for_a_while(case: ApiCase, fast: Simulator) -> None:
    fast.faults.refuse_connections(None, seconds=0.3)
    refused_until = time.monotonic() + 0.3
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(fast.url, timeout=5)
    delay = 0.05
    while True:  # retry with backoff, as a client would
        try:
            ws = websocket.create_connection(fast.url, timeout=5)
        except websocket.WebSocketBadStatusException:
            assert time.monotonic() < refused_until + 2, "still refused long after the window"
            time.sleep(delay)
            delay *= 2
            continue
        break
    assert time.monotonic() >= refused_until - 0.05
    ws.close()
    assert fast.refused >= 1
    assert fast.connections == 1
