"""The recorder speaking Kraken WebSocket v2: its pure parts, then what only v2 runs show (v1 and v2
side by side, ``kbook record --api v2``). The scenarios both APIs share run per API in
test_record_sim."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from record_support import (
    Background,
    fast_config,
    updates_on,
)

from kbook.api import URLS, Api
from kbook.dialect import NOT_JSON, V2Dialect
from kbook.errors import UsageError
from kbook.live.subscriptions import State, Subscriptions
from kbook.sim import Simulator, SimulatorConfig
from kbook.v2 import segment_api
from kbook.verify import verify_paths
from recorder import RecordConfig
from recorder.lock import lock_path

PAIRS = ("BTC/USD", "ETH/USD")


# -- the pure parts ---------------------------------------------------------------------------


def ack(symbol: str | None, method: str = "subscribe", error: str | None = None) -> dict[str, Any]:
    """A v2 answer as Kraken words it (``kbook.sim.protocol_v2``)."""
    if error is None:
        return {
            "method": method,
            "result": {"channel": "book", "depth": 10, "symbol": symbol},
            "success": True,
            "req_id": 1,
        }
    answer: dict[str, Any] = {"error": error, "method": method, "success": False, "req_id": 1}
    if symbol is not None:
        answer["symbol"] = symbol
    return answer


def v2_subs(*pairs: str) -> Subscriptions:
    return Subscriptions(pairs, 10, rate_limit_delay_ns=300, dialect=V2Dialect())


def test_v2_subscribe_names_every_symbol_by_its_common_name() -> None:
    subs = v2_subs("XBT/USD", "XDG/USD", "ETH/USD")
    [action] = subs.on_connect(0)
    assert action.send == {
        "method": "subscribe",
        "params": {
            "channel": "book",
            "symbol": ["BTC/USD", "DOGE/USD", "ETH/USD"],
            "depth": 10,
            "snapshot": True,
        },
        "req_id": 1,
    }
    assert subs.on_control(ack("BTC/USD"), 1) == []
    assert subs.subs["XBT/USD"].state is State.SUBSCRIBED
    assert subs.pair_for("BTC/USD") == "XBT/USD"


def test_v2_refusal_is_final_without_an_alias_retry() -> None:
    subs = v2_subs("FOO/USD", "ETH/USD")
    subs.on_connect(0)
    [action] = subs.on_control(ack("FOO/USD", error="Currency pair not supported FOO/USD"), 1)
    assert action.send is None
    assert action.meta == {
        "type": "subscribe_error",
        "pair": "FOO/USD",
        "tried": ["FOO/USD"],
        "reason": "Currency pair not supported FOO/USD",
        "channel": "book",
    }
    assert subs.failed == {"FOO/USD": "Currency pair not supported FOO/USD"}
    assert subs.subs["ETH/USD"].state is State.SENT


def test_v2_rate_limit_retries_the_request_later() -> None:
    subs = v2_subs("BTC/USD")
    subs.on_connect(0)
    assert subs.on_control(ack(None, error="Exceeded msg rate"), 10) == []
    assert subs.subs["BTC/USD"].state is State.PENDING
    assert subs.tick(309) == []
    [retry] = subs.tick(310)
    assert retry.send is not None
    assert retry.send["params"]["symbol"] == ["BTC/USD"]


def test_v2_resync_unsubscribes_then_subscribes() -> None:
    subs = v2_subs("BTC/USD")
    subs.on_connect(0)
    subs.on_control(ack("BTC/USD"), 1)
    subs.on_checksum_failed("BTC/USD", 2)
    [unsubscribe] = subs.tick(2)
    assert unsubscribe.resync
    assert unsubscribe.send is not None
    assert unsubscribe.send["method"] == "unsubscribe"
    assert unsubscribe.send["params"]["symbol"] == ["BTC/USD"]
    assert "snapshot" not in unsubscribe.send["params"]
    [subscribe] = subs.on_control(ack("BTC/USD", method="unsubscribe"), 3)
    assert subscribe.send is not None
    assert subscribe.send["method"] == "subscribe"
    assert not subscribe.resync
    # "Already subscribed" means Kraken still streams the symbol: force a fresh snapshot.
    subs.on_control(ack("BTC/USD", error="Already subscribed"), 4)
    assert subs.subs["BTC/USD"].state is State.SUBSCRIBED
    assert subs.subs["BTC/USD"].resync_at_ns is not None


def test_v2_decode_keeps_number_lexemes_and_json_as_orjson_reads_it() -> None:
    dialect = V2Dialect()
    msg, is_json = dialect.decode('{"channel":"book","data":[{"qty":0.10000000,"price":45283.5}]}')
    assert is_json
    assert msg["data"][0] == {"qty": "0.10000000", "price": "45283.5"}
    assert dialect.decode("NaN") == (NOT_JSON, False)  # json would take it; segments could not
    assert dialect.decode("not json") == (NOT_JSON, False)
    msg, is_json = dialect.decode('{"channel":\n"heartbeat"}')
    assert (msg, is_json) == ({"channel": "heartbeat"}, False)  # kept as raw, still acted on


def test_v2_config_defaults_to_the_v2_address() -> None:
    assert RecordConfig(pairs=("BTC/USD",), api="v2").url == URLS[Api.V2]
    assert RecordConfig(pairs=("BTC/USD",)).url == URLS[Api.V2]
    assert RecordConfig(pairs=("BTC/USD",), api=Api.V1).url == "wss://ws.kraken.com"
    assert RecordConfig(pairs=("BTC/USD",), api="v2", url="ws://x").describe()["api"] == "v2"
    with pytest.raises(UsageError, match="--api 'v3' is not one of v1, v2"):
        RecordConfig(pairs=("BTC/USD",), api="v3")
    out = Path("data")
    assert lock_path(out, ("BTC/USD",)) == out / ".kbook-record.BTC-USD.lock"
    assert lock_path(out, ("BTC/USD",), "v2") == out / ".kbook-record.v2.BTC-USD.lock"


# -- against the simulator --------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimulatorConfig(api="v2", pairs=PAIRS, rate=200.0, seed=7)
    with Simulator(config) as simulator:
        yield simulator


def assert_clean_verify(out: Path, failed: int = 0) -> None:
    report = verify_paths([out / "raw"])
    assert report.problems == []
    assert report.checksums_failed == failed
    assert report.checksums_ok >= 50
    assert set(report.apis.values()) == {Api.V2}


def test_v1_and_v2_of_one_pair_in_one_out_stay_apart(tmp_path: Path) -> None:
    v1 = SimulatorConfig(api=Api.V1, pairs=("XBT/USD",), rate=200.0, btc="echo-btc", seed=3)
    v2 = SimulatorConfig(api="v2", pairs=("XBT/USD",), rate=200.0, seed=4)
    # Side by side: the lock is per API, and the two runs' segments take distinct names.
    with (
        Simulator(v1) as sim1,
        Simulator(v2) as sim2,
        Background(fast_config(sim1, tmp_path, ("BTC/USD",))) as run1,
        Background(fast_config(sim2, tmp_path, ("BTC/USD",), api="v2")) as run2,
    ):
        for sim in (sim1, sim2):
            sim.wait_for(lambda s: updates_on(s, 1) >= 100, timeout=10)
        run1.finish()
        run2.finish()
    files = list((tmp_path / "raw" / "BTC-USD").rglob("*.jsonl.zst"))
    assert {segment_api(path) for path in files} == {"v1", "v2"}
    report = verify_paths([tmp_path])
    assert report.problems == []
    assert report.apis == {"BTC/USD": "v1+v2"}
    assert report.checksums_failed == 0
    for counts in report.by_api["BTC/USD"].values():
        assert counts.snapshots == 1
        assert counts.checksums_ok >= 100


@pytest.mark.slow
def test_record_command_records_v2(sim: Simulator, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kbook", "record", "BTC/USD", "--api", "v2", "--url", sim.url]
        + ["--out", str(tmp_path), "--duration", "1s", "--quiet"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    [path] = (tmp_path / "raw" / "BTC-USD").rglob("*.jsonl.zst")
    assert segment_api(path) == "v2"
    assert_clean_verify(tmp_path)
    bad = subprocess.run(
        [sys.executable, "-m", "kbook", "record", "BTC/USD", "--api", "v3"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2
    assert bad.stderr == "kbook: error: --api 'v3' is not one of v1, v2\n"
