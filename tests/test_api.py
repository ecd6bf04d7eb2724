"""Which Kraken API a connection speaks: ``--api`` wins, else the address says, else v2."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kbook
from kbook.api import DEFAULT, URLS, Api, api_of_url, choose_api
from kbook.errors import UsageError
from kbook.sim import Simulator, SimulatorConfig
from kbook.watch import WatchOptions, live_config
from recorder import RecordConfig


@pytest.mark.parametrize(
    ("url", "api"),
    [
        ("wss://ws.kraken.com/v2", Api.V2),
        ("wss://ws.kraken.com/v2/", Api.V2),
        ("ws://127.0.0.1:8765/v2", Api.V2),
        ("ws://127.0.0.1:8765/feeds/v2?x=1", Api.V2),
        ("wss://ws.kraken.com", Api.V1),
        ("wss://ws.kraken.com/", Api.V1),
        ("ws://127.0.0.1:8765", Api.V1),
        ("ws://127.0.0.1:8765/v2x", Api.V1),
        ("ws://127.0.0.1:8765/v1", Api.V1),
        ("ws://host/?path=/v2", Api.V1),
    ],
)
def test_the_address_says_the_api(url: str, api: Api) -> None:
    assert api_of_url(url) is api


def test_api_given_wins_else_the_url_else_v2() -> None:
    assert DEFAULT is Api.V2
    assert choose_api(None, None) == (Api.V2, URLS[Api.V2])
    assert choose_api("v1", None) == (Api.V1, URLS[Api.V1])
    assert choose_api("v2", None) == (Api.V2, URLS[Api.V2])
    assert choose_api(None, "ws://h:1") == (Api.V1, "ws://h:1")
    assert choose_api(None, "ws://h:1/v2") == (Api.V2, "ws://h:1/v2")
    # An explicit --api wins over what the address says, both ways.
    assert choose_api("v2", "ws://h:1") == (Api.V2, "ws://h:1")
    assert choose_api("v1", "ws://h:1/v2") == (Api.V1, "ws://h:1/v2")
    with pytest.raises(UsageError, match="--api 'v3' is not one of v1, v2"):
        choose_api("v3", "ws://h:1/v2")


def test_record_and_watch_default_to_v2_and_follow_the_url() -> None:
    assert (RecordConfig(pairs=("BTC/USD",)).api, RecordConfig(pairs=("BTC/USD",)).url) == (
        Api.V2,
        URLS[Api.V2],
    )
    assert RecordConfig(pairs=("BTC/USD",), url="ws://h:1").api is Api.V1
    assert RecordConfig(pairs=("BTC/USD",), url="ws://h:1/v2").api is Api.V2
    assert RecordConfig(pairs=("BTC/USD",), url="ws://h:1/v2", api="v1").api is Api.V1
    assert RecordConfig(pairs=("BTC/USD",), api="v1").url == URLS[Api.V1]
    live = WatchOptions(pair="BTC/USD")
    assert (live.api, live.url) == (Api.V2, URLS[Api.V2])
    assert live_config(live).api is Api.V2
    assert WatchOptions(pair="BTC/USD", url="ws://h:1").api is Api.V1
    assert live_config(WatchOptions(pair="BTC/USD", url="ws://h:1")).api is Api.V1
    assert WatchOptions(pair="BTC/USD", url="ws://h:1", api="v2").api is Api.V2
    # With --from the recording decides, unless --api is given.
    assert WatchOptions(pair="BTC/USD", paths=(Path("x"),)).api is None
    assert WatchOptions(pair="BTC/USD", paths=(Path("x"),), api="v1").api is Api.V1


def test_the_simulator_defaults_to_v2_and_its_url_says_its_api(tmp_path: Path) -> None:
    assert SimulatorConfig().api is Api.V2
    assert SimulatorConfig(capture=tmp_path / "capture.json").api is Api.V1
    with pytest.raises(UsageError, match="--from plays back v1 recordings only"):
        SimulatorConfig(capture=tmp_path / "capture.json", api="v2")
    for api in Api:
        with Simulator(SimulatorConfig(api=api, rate=0.0)) as sim:
            assert api_of_url(sim.url) is api
            assert RecordConfig(pairs=("BTC/USD",), url=sim.url).api is api


ROOT = Path(kbook.__file__).resolve().parent.parent
API_HOMES = {"kbook/api.py", "kbook/dialect.py", "kbook/sim/dialect.py"}
"""Where the APIs are named (``Api``) and where what differs between them lives (the dialects)."""
NOT_AN_API = {("kbook/lines.py", "v2")}
"""``"v2"`` there names the native ``LineFeed.v2`` attribute in its declared interface, not an API."""


def api_literals(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string constant in ``path`` that is exactly an API's name."""
    tree = ast.parse(path.read_text(), str(path))
    names = {str(api) for api in Api}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]


def test_no_bare_api_names_outside_the_api_type_and_the_dialects() -> None:
    found = []
    for folder in ("kbook", "recorder", "replay", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name in API_HOMES:
                continue
            found += [
                f"{name}:{line}: {text!r}"
                for line, text in api_literals(path)
                if (name, text) not in NOT_AN_API
            ]
    assert found == [], "use Api.V1 / Api.V2 (kbook.api), or ask the dialect"
