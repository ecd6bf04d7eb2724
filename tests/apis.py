"""The per-API fixture table: what a test needs to know to run the same scenario on Kraken's v1 and
v2. A test takes an ``ApiCase`` (``@pytest.mark.parametrize("case", CASES, ids=str)``, or a
fixture parametrised the same way) and asks it for everything that differs between the APIs,
instead of being written twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sim_support import Client, V2Client, strip_timestamps, strip_v2_times

from kbook.api import Api
from kbook.dialect import Dialect, V2Dialect
from kbook.sim import SimulatorConfig


@dataclass(frozen=True)
class ApiCase:
    """One API's answers to "what does it look like here"."""

    api: Api
    dialect: Dialect
    """The dialect kbook reads and speaks this API with (``kbook.dialect``)."""
    client: type[Client]
    """A plain websocket-client of this API with a book builder checking every checksum."""
    btc_wire: str
    """How book frames name BTC/USD when asked for either spelling (v1: the simulator's default
    ``echo-xbt``)."""
    doge_wire: str
    """How book frames name DOGE/USD (v1: ``XDG/USD``)."""
    heartbeat: str
    """The heartbeat frame, whole."""
    strip_times: Callable[[str], str]
    """A frame with its times blanked, to compare runs of one seed."""
    status_start: str
    """How the first frame of a connection (the system status) begins."""
    answer_start: str
    """How a successful subscribe answer begins."""
    maintenance: str
    """Text in the frame that announces maintenance."""
    snapshot_mark: str
    """Text only a book snapshot frame holds."""
    request_key: str
    """The key naming a request's method: ``event`` (v1) or ``method`` (v2)."""
    rate_limited: re.Pattern[str]
    """The whole text of the answer to a rate-limited subscribe (v2's holds times)."""
    price: re.Pattern[str]
    """A BTC/USD price as the simulator prints it: 5 decimals in v1, 1 in v2."""

    def __str__(self) -> str:
        return str(self.api)

    @property
    def other(self) -> ApiCase:
        """The other API."""
        return V2 if self is V1 else V1

    def sim_config(self, **fields: Any) -> SimulatorConfig:
        """A simulator speaking this API."""
        return SimulatorConfig(api=self.api, **fields)

    def request_method(self, request: dict[str, Any]) -> Any:
        """``subscribe``/``unsubscribe``/``ping`` of a request kbook sent."""
        return request[self.request_key]

    def pong_id(self, msg: Any) -> Any:
        """The request id a pong echoes, or None for any other frame."""
        if type(msg) is not dict or msg.get(self.request_key) != "pong":
            return None
        return msg.get("reqid" if self.api is Api.V1 else "req_id")

    def request_pairs(self, request: dict[str, Any]) -> Any:
        """The pairs a (un)subscribe request names."""
        return request["pair"] if self.api is Api.V1 else request["params"]["symbol"]

    def book_pairs(self, lines: list[dict[str, Any]]) -> set[str]:
        """The pairs named by the book frames among segment ``lines``."""
        if self.api is Api.V1:
            return {r["msg"][-1] for r in lines if isinstance(r.get("msg"), list)}
        return {
            entry["symbol"]
            for record in lines
            if isinstance(record.get("msg"), dict) and record["msg"].get("channel") == "book"
            for entry in record["msg"]["data"]
        }


V1 = ApiCase(
    api=Api.V1,
    dialect=Dialect(),
    client=Client,
    btc_wire="XBT/USD",
    doge_wire="XDG/USD",
    heartbeat='{"event":"heartbeat"}',
    strip_times=strip_timestamps,
    status_start='{"connectionID":',
    answer_start='{"channelID":',
    maintenance='"status":"maintenance"',
    snapshot_mark='"as":[',
    request_key="event",
    rate_limited=re.compile(re.escape('{"errorMessage":"Exceeded msg rate","event":"error"}')),
    price=re.compile(r"\b\d{4,6}\.\d{5}\b"),
)
V2 = ApiCase(
    api=Api.V2,
    dialect=V2Dialect(),
    client=V2Client,
    btc_wire="BTC/USD",
    doge_wire="DOGE/USD",
    heartbeat='{"channel":"heartbeat"}',
    strip_times=strip_v2_times,
    status_start='{"channel":"status"',
    answer_start='{"method":"subscribe","result":{"channel":"book"',
    maintenance='"system":"maintenance"',
    snapshot_mark='"type":"snapshot"',
    request_key="method",
    rate_limited=re.compile(
        re.escape('{"error":"Exceeded msg rate","method":"subscribe","success":false,')
        + r'"time_in":"[^"]+","time_out":"[^"]+","req_id":1\}'
    ),
    price=re.compile(r"\b\d{4,6}\.\d\b"),
)
CASES = (V1, V2)
