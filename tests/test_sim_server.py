"""The simulator over a real socket: protocol, wording, checksums, aliases, heartbeats, idle close."""

from __future__ import annotations

import orjson
import pytest
from apis import ApiCase
from sim_support import Client

from kbook.api import Api
from kbook.errors import UsageError
from kbook.feed import Outcome
from kbook.sim import Simulator, SimulatorConfig


def test_status_first_with_unsigned_64_bit_connection_id(simulator: Simulator) -> None:
    with Client(simulator.url) as first, Client(simulator.url) as second:
        for client in (first, second):
            assert set(client.status) == {"connectionID", "event", "status", "version"}
            assert client.status["event"] == "systemStatus"
            assert client.status["status"] == "online"
            assert 2**63 <= client.status["connectionID"] < 2**64
        assert first.status["connectionID"] != second.status["connectionID"]
    assert simulator.connections == 2


def test_subscribe_acks_each_pair_with_reqid_then_snapshots(simulator: Simulator) -> None:
    with Client(simulator.url) as client:
        client.subscribe(["XBT/USD", "ETH/USD"], depth=25, reqid=7)
        acks = [client.recv_text() for _ in range(2)]
        assert orjson.loads(acks[0]) == {
            "channelID": orjson.loads(acks[0])["channelID"],
            "channelName": "book-25",
            "event": "subscriptionStatus",
            "pair": "XBT/USD",
            "reqid": 7,
            "status": "subscribed",
            "subscription": {"depth": 25, "name": "book"},
        }
        assert acks[0].startswith('{"channelID":')  # keys sorted, as Kraken prints them
        assert orjson.loads(acks[1])["pair"] == "ETH/USD"
        ids = {orjson.loads(ack)["channelID"] for ack in acks}
        assert len(ids) == 2
        assert all(type(i) is int for i in ids)
        snapshots = [client.recv() for _ in range(2)]
        for snapshot, pair in zip(snapshots, ("XBT/USD", "ETH/USD"), strict=True):
            assert snapshot[-2:] == ["book-25", pair]
            assert snapshot[0] in ids
            assert len(snapshot[1]["as"]) == 25
            assert len(snapshot[1]["bs"]) == 25
        client.read_updates(50)
        assert client.outcomes[Outcome.UPDATE_OK] == 50
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0


def test_default_depth_is_10(simulator: Simulator) -> None:
    with Client(simulator.url) as client:
        client.subscribe(["ETH/USD"], depth=None)
        ack = client.recv()
        assert ack["channelName"] == "book-10"
        assert ack["subscription"] == {"depth": 10, "name": "book"}
        assert "reqid" not in ack


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (
            {"pair": ["FOO/BAR"], "subscription": {"name": "book", "depth": 10}, "reqid": 3},
            {
                "errorMessage": "Currency pair not supported FOO/BAR",
                "event": "subscriptionStatus",
                "pair": "FOO/BAR",
                "reqid": 3,
                "status": "error",
                "subscription": {"depth": 10, "name": "book"},
            },
        ),
        (
            {"pair": ["XBT/USD"], "subscription": {"name": "book", "depth": 42}, "reqid": 4},
            {
                "errorMessage": "Subscription depth not supported",
                "event": "subscriptionStatus",
                "pair": "XBT/USD",
                "reqid": 4,
                "status": "error",
                "subscription": {"depth": 42, "name": "book"},
            },
        ),
        (
            {"pair": ["XBTUSD"], "subscription": {"name": "book"}},
            {
                "errorMessage": "Currency pair not in ISO 4217-A3 format XBTUSD",
                "event": "subscriptionStatus",
                "pair": "XBTUSD",
                "status": "error",
                "subscription": {"depth": 10, "name": "book"},
            },
        ),
        (
            {"pair": ["XBT/USD"], "subscription": {"depth": 10}, "reqid": 5},
            {
                "errorMessage": "Malformed request",
                "event": "subscriptionStatus",
                "reqid": 5,
                "status": "error",
            },
        ),
        (
            {"pair": ["XBT/USD"]},
            {"errorMessage": "Malformed request", "event": "subscriptionStatus", "status": "error"},
        ),
    ],
    ids=["unknown-pair", "bad-depth", "not-iso", "no-name", "no-subscription"],
)
def test_subscribe_errors_are_worded_as_kraken_and_keep_the_connection(
    simulator: Simulator, request_: dict[str, object], expected: dict[str, object]
) -> None:
    with Client(simulator.url) as client:
        client.send({"event": "subscribe", **request_})
        assert client.recv() == expected
        client.send({"event": "ping", "reqid": 99})
        assert client.recv() == {"event": "pong", "reqid": 99}


def test_already_subscribed_unsubscribe_and_not_found(simulator: Simulator) -> None:
    with Client(simulator.url) as client:
        client.subscribe(["XBT/USD"], depth=10, reqid=1)
        subscribed = client.recv()
        client.recv()  # snapshot
        client.subscribe(["XBT/USD"], depth=10, reqid=2)
        error = client.recv_event("subscriptionStatus")
        assert error["errorMessage"] == "Already subscribed"
        assert error["reqid"] == 2
        client.send(
            {
                "event": "unsubscribe",
                "pair": ["XBT/USD"],
                "subscription": {"name": "book", "depth": 10},
                "reqid": 3,
            }
        )
        gone = client.recv_event("subscriptionStatus")
        assert gone == {
            "channelID": subscribed["channelID"],
            "channelName": "book-10",
            "event": "subscriptionStatus",
            "pair": "XBT/USD",
            "reqid": 3,
            "status": "unsubscribed",
            "subscription": {"depth": 10, "name": "book"},
        }
        sent_before = simulator.count("update", connection=1)
        client.send({"event": "unsubscribe", "pair": ["XBT/USD"], "subscription": {"name": "book"}})
        not_found = client.recv_event("subscriptionStatus")
        assert not_found["errorMessage"] == "Subscription Not Found"
        assert not_found["status"] == "error"
        assert simulator.count("update", connection=1) == sent_before  # no updates once gone


def test_ping_pong_and_unknown_event(simulator: Simulator) -> None:
    with Client(simulator.url) as client:
        client.send({"event": "ping", "reqid": 1693415329704})
        assert client.recv_text() == '{"event":"pong","reqid":1693415329704}'
        client.send({"event": "ping"})
        assert client.recv() == {"event": "pong"}
        client.ws.send("not json")
        assert client.recv() == {"errorMessage": "Malformed request", "event": "error"}
        client.send({"event": "dance", "reqid": 8})
        assert client.recv()["errorMessage"] == "Unsupported event"


@pytest.mark.parametrize(
    ("mode", "echoed"), [("echo-xbt", "XBT/USD"), ("echo-btc", "BTC/USD"), ("reject", None)]
)
def test_btc_modes(mode: str, echoed: str | None) -> None:
    with Simulator(SimulatorConfig(api=Api.V1, btc=mode)) as sim, Client(sim.url) as client:
        client.subscribe(["BTC/USD"], reqid=1)
        ack = client.recv()
        if echoed is None:
            assert ack["errorMessage"] == "Currency pair not supported BTC/USD"
            assert ack["pair"] == "BTC/USD"
            client.subscribe(["XBT/USD"], reqid=2)  # the retry under Kraken's other name
            ack = client.recv()
            echoed = "XBT/USD"
        assert ack["status"] == "subscribed"
        assert ack["pair"] == echoed
        snapshot = client.recv()
        assert snapshot[-1] == echoed
        client.read_updates(20)
        assert all(orjson.loads(t)[-1] == echoed for t in client.texts if t.startswith("["))
        assert client.outcomes[Outcome.UPDATE_OK] == 20


def test_doge_alias_follows_the_btc_mode() -> None:
    with Simulator(SimulatorConfig(api=Api.V1, btc="echo-xbt")) as sim, Client(sim.url) as client:
        client.subscribe(["DOGE/USD"])
        assert client.recv()["pair"] == "XDG/USD"
        snapshot = client.recv()
        price = snapshot[1]["as"][0][0]
        assert len(price.split(".")[1]) == 9  # XDG/USD prices carry 9 decimals on the wire


@pytest.mark.slow
@pytest.mark.parametrize("depth", [10, 1000])
def test_10000_updates_verify_over_the_socket(depth: int) -> None:
    config = SimulatorConfig(api=Api.V1, pairs=("XBT/USD", "ETH/USD"), rate=20_000, record=False)
    with Simulator(config) as sim, Client(sim.url) as client:
        client.subscribe(["XBT/USD", "ETH/USD"], depth=depth)
        client.read_updates(10_000)
        assert client.outcomes[Outcome.SNAPSHOT] == 2
        assert client.outcomes[Outcome.UPDATE_OK] == 10_000
        assert client.outcomes[Outcome.CHECKSUM_FAILED] == 0
        assert client.outcomes[Outcome.MALFORMED] == 0


@pytest.mark.slow
def test_client_book_matches_simulator_book_after_pause(case: ApiCase) -> None:
    config = case.sim_config(rate=5_000)
    with Simulator(config) as sim, case.client(sim.url) as client:
        client.subscribe(["BTC/USD"], depth=100)
        client.read_updates(500)
        sim.pause()
        sent = sim.count("update")
        while sim.count("update", connection=1) > client.outcomes[Outcome.UPDATE_OK]:
            client.recv()
        assert client.outcomes[Outcome.UPDATE_OK] == sent
        book = client.feed.books[(case.btc_wire, "book-100")]
        asks, bids = sim.book(case.btc_wire)
        assert book.top_asks(100) == asks
        assert book.top_bids(100) == bids
        assert len(asks) == len(bids) == 100


def test_same_seed_same_frames_over_the_socket(case: ApiCase) -> None:
    def run() -> list[str]:
        config = case.sim_config(rate=10_000, seed=11)
        with Simulator(config) as sim, case.client(sim.url) as client:
            client.subscribe([case.btc_wire, case.doge_wire], 25, 1)
            client.read_updates(300)
            frames = [t for t in client.texts if '"heartbeat"' not in t]
            return [case.strip_times(t) for t in frames[:300]]

    first, second = run(), run()
    assert first == second
    assert first[0].startswith(case.status_start)
    assert f'"{case.doge_wire}"' in "".join(first)


def test_heartbeats_while_subscribed(case: ApiCase) -> None:
    config = case.sim_config(rate=50, heartbeat_interval=0.05)
    with Simulator(config) as sim, case.client(sim.url) as client:
        client.subscribe(["ETH/USD"])
        while case.heartbeat not in client.texts:
            client.recv()
        text = next(f.text for f in sim.sent if f.kind == "heartbeat")
        assert text == case.heartbeat


def test_idle_connection_is_closed(case: ApiCase) -> None:
    config = case.sim_config(rate=10, idle_timeout=0.3)
    with Simulator(config) as sim, case.client(sim.url) as client:
        client.subscribe(["ETH/USD"])
        assert client.read_to_end() == 1001
        assert client.outcomes[Outcome.UPDATE_OK] > 0
    assert sim.connections == 1


def test_pinging_keeps_a_connection_alive(case: ApiCase) -> None:
    config = case.sim_config(rate=100, idle_timeout=0.4)
    with Simulator(config) as sim, case.client(sim.url) as client:
        client.subscribe(["ETH/USD"])
        for reqid in range(6):  # 6 x 0.1 s of updates, pinging each time: longer than 0.4 s
            sent = sim.count("update")
            sim.wait_for(lambda s, sent=sent: s.count("update") >= sent + 10)
            client.send(client.dialect.ping(reqid))
            pong = next(msg for msg in iter(client.recv, None) if case.pong_id(msg) is not None)
            assert case.pong_id(pong) == reqid


def test_port_in_use_is_a_usage_error(simulator: Simulator) -> None:
    taken = SimulatorConfig(api=Api.V1, port=simulator.port)
    with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{simulator.port}"):
        Simulator(taken).start()


def test_bad_config_names_the_option() -> None:
    with pytest.raises(UsageError, match="--btc 'xbt' is not one of"):
        SimulatorConfig(api=Api.V1, btc="xbt")
    with pytest.raises(UsageError, match="pair 'XBTUSD' is not BASE/QUOTE"):
        SimulatorConfig(api=Api.V1, pairs=("XBTUSD",))
    assert SimulatorConfig(api=Api.V1, pairs=("btc/usd", "DOGE/USD")).pairs == (
        "XBT/USD",
        "XDG/USD",
    )
