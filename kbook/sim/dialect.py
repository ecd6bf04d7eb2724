"""What the simulator's server says, per API: v1 (``protocol``, ``Market``) or v2 (``protocol_v2``,
``V2Market``). No I/O.

``SimServer`` owns connections, subscriptions, pacing and faults, which are the same for both APIs;
it asks a ``Dialect`` for every text it sends and to read every request. The two dialects differ
only in wire shapes: v1 control frames are ``event`` objects and book data arrays, v2 frames are
``method``/``channel`` objects with times in acknowledgements (``received`` is the request's
arrival, epoch seconds, for v2's ``time_in``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kbook.api import DEFAULT, Api
from kbook.sim import protocol, protocol_v2
from kbook.sim.market import Market, SimTrade
from kbook.sim.market_v2 import V2Market, rfc3339
from kbook.sim.protocol import PairDecision, Request

DepthsFor = Callable[[str], tuple[int, ...]]
IsActive = Callable[[tuple[str, int]], bool]

PING = "ping"
SUBSCRIBE = "subscribe"
UNSUBSCRIBE = "unsubscribe"


class Dialect:
    """The v1 dialect; ``V2Dialect`` overrides every text."""

    api = Api.V1
    heartbeat = protocol.HEARTBEAT
    trade_snapshot = False
    """v1 sends no trades from before the subscribe; v2 sends the last ones (up to 50)."""

    def status(self, connection_id: int, system: str = "online") -> str:
        """The first frame of a connection, and the announcement of maintenance."""
        return protocol.system_status(connection_id, system)

    def command(self, msg: Mapping[str, Any]) -> str | None:
        """``ping``, ``subscribe``, ``unsubscribe``, or None for anything else."""
        return _known(msg.get("event"))

    def pong(self, msg: Mapping[str, Any], received: float) -> str:
        return protocol.pong(msg.get("reqid"))

    def malformed(self, received: float) -> str:
        """The answer to a frame that is not a JSON object."""
        return protocol.error(protocol.MALFORMED)

    def malformed_update(self, wire: str, depth: int, channel_id: int) -> str:
        """An update shaped like a book frame whose price is not a number (the malformed fault)."""
        level = '["not-a-price","1.00000000","0.000000"]'
        return f'[{channel_id},{{"a":[{level}],"c":"0"}},"book-{depth}","{wire}"]'

    def unsupported(self, msg: Mapping[str, Any], received: float) -> str:
        return protocol.error(protocol.UNSUPPORTED_EVENT, msg.get("reqid"))

    def rate_limited(self, msg: Mapping[str, Any], received: float) -> str:
        return protocol.error(protocol.RATE_LIMITED)

    def plan(
        self,
        msg: Mapping[str, Any],
        subscribing: bool,
        depths_for: DepthsFor,
        btc: str,
        is_active: IsActive,
    ) -> Request:
        planner = protocol.plan_subscribe if subscribing else protocol.plan_unsubscribe
        return planner(msg, depths_for, btc, is_active)

    def request_error(self, request: Request, msg: Mapping[str, Any], received: float) -> str:
        """The one answer to a request that could not be read at all."""
        return protocol.request_error_frame(request)

    def decision_error(
        self, decision: PairDecision, request: Request, msg: Mapping[str, Any], received: float
    ) -> str:
        """The answer for one pair of a request that was refused."""
        return protocol.decision_error_frame(
            decision, request.reqid, request.depth, request.channel
        )

    def acknowledged(
        self,
        subscribing: bool,
        wire: str,
        depth: int,
        channel_id: int,
        request: Request,
        received: float,
    ) -> str:
        """The answer for one pair that was (un)subscribed."""
        return protocol.subscription_status(
            "subscribed" if subscribing else "unsubscribed",
            pair=wire,
            depth=depth,
            channel_id=channel_id,
            reqid=request.reqid,
            channel=request.channel,
        )

    def market(self, wire: str, depth: int, seed: int, stream: int) -> Market:
        """The market of a new subscription, printing this API's book frames."""
        return Market(wire, depth, seed, stream=stream)

    def trade_frame(
        self, wire: str, channel_id: int, trades: list[tuple[int, SimTrade]], snapshot: bool
    ) -> str:
        """``[id, [[price, volume, time, side, orderType, misc], ...], "trade", pair]``; v1
        prints no trade id (``trades`` are ``(trade id, trade)``) and sends no snapshot."""
        rows = ",".join(
            f'["{t.price}","{t.qty}","{t.time:.6f}","{t.side[0]}","{t.order_type[0]}",""]'
            for _, t in trades
        )
        return f'[{channel_id},[{rows}],"trade","{wire}"]'


class V2Dialect(Dialect):
    """Kraken WebSocket v2 (``kbook.sim.protocol_v2``); the ``btc`` mode does not apply."""

    api = Api.V2
    heartbeat = protocol_v2.HEARTBEAT
    trade_snapshot = True

    def status(self, connection_id: int, system: str = "online") -> str:
        return protocol_v2.status(connection_id, system)

    def command(self, msg: Mapping[str, Any]) -> str | None:
        return _known(msg.get("method"))

    def pong(self, msg: Mapping[str, Any], received: float) -> str:
        return protocol_v2.pong(msg.get("req_id"), received, time.time())

    def malformed(self, received: float) -> str:
        return protocol_v2.error(protocol.MALFORMED, None, None, received, time.time())

    def malformed_update(self, wire: str, depth: int, channel_id: int) -> str:
        level = '{"price":true,"qty":1.00000000}'
        entry = f'{{"symbol":"{wire}","bids":[{level}],"asks":[],"checksum":0}}'
        return f'{{"channel":"book","type":"update","data":[{entry}]}}'

    def unsupported(self, msg: Mapping[str, Any], received: float) -> str:
        return protocol_v2.error(
            protocol_v2.METHOD_NOT_FOUND,
            msg.get("method"),
            msg.get("req_id"),
            received,
            time.time(),
        )

    def rate_limited(self, msg: Mapping[str, Any], received: float) -> str:
        return protocol_v2.error(
            protocol.RATE_LIMITED, msg.get("method"), msg.get("req_id"), received, time.time()
        )

    def plan(
        self,
        msg: Mapping[str, Any],
        subscribing: bool,
        depths_for: DepthsFor,
        btc: str,
        is_active: IsActive,
    ) -> Request:
        planner = protocol_v2.plan_subscribe if subscribing else protocol_v2.plan_unsubscribe
        return planner(msg, depths_for, is_active)

    def request_error(self, request: Request, msg: Mapping[str, Any], received: float) -> str:
        assert request.error is not None
        return protocol_v2.error(
            request.error, msg.get("method"), request.reqid, received, time.time()
        )

    def decision_error(
        self, decision: PairDecision, request: Request, msg: Mapping[str, Any], received: float
    ) -> str:
        assert decision.error is not None
        return protocol_v2.error(
            decision.error,
            msg.get("method"),
            request.reqid,
            received,
            time.time(),
            symbol=decision.requested,
        )

    def acknowledged(
        self,
        subscribing: bool,
        wire: str,
        depth: int,
        channel_id: int,
        request: Request,
        received: float,
    ) -> str:
        return protocol_v2.acknowledgement(
            SUBSCRIBE if subscribing else UNSUBSCRIBE,
            wire,
            depth,
            request.snapshot if subscribing else None,
            request.reqid,
            received,
            time.time(),
            request.channel,
        )

    def market(self, wire: str, depth: int, seed: int, stream: int) -> Market:
        return V2Market(wire, depth, seed, stream=stream)

    def trade_frame(
        self, wire: str, channel_id: int, trades: list[tuple[int, SimTrade]], snapshot: bool
    ) -> str:
        """``{"channel":"trade","type":"snapshot"|"update","data":[{symbol, side, price, qty,
        ord_type, trade_id, timestamp}]}``, numbers printed as the book prints them."""
        entries = ",".join(
            f'{{"symbol":"{wire}","side":"{t.side}","price":{t.price},"qty":{t.qty},'
            f'"ord_type":"{t.order_type}","trade_id":{trade_id},"timestamp":"{rfc3339(t.time)}"}}'
            for trade_id, t in trades
        )
        kind = "snapshot" if snapshot else "update"
        return f'{{"channel":"trade","type":"{kind}","data":[{entries}]}}'


DIALECTS: dict[Api, type[Dialect]] = {Api.V1: Dialect, Api.V2: V2Dialect}


def dialect_for(api: str | None) -> Dialect:
    """The dialect of ``api`` (``v1`` or ``v2``); None: of ``kbook.api.DEFAULT``, the API a
    connection speaks when nothing says otherwise."""
    return DIALECTS[Api(api) if api is not None else DEFAULT]()


def _known(name: Any) -> str | None:
    return name if name in (PING, SUBSCRIBE, UNSUBSCRIBE) else None
