"""Kraken v2 control frames and subscribe requests, as the simulator speaks them. No I/O.

Shapes follow ``shared/kraken/README.md`` section 5 and Kraken's v2 pages:

- status, first on every connection and again on a change of system state:
  ``{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":N,
  "system":"online","version":"2.0.x"}]}`` (``connection_id`` is an unsigned 64-bit int);
- heartbeat ``{"channel":"heartbeat"}``; ``{"method":"ping","req_id":N}`` is answered
  ``{"method":"pong","req_id":N,"time_in":...,"time_out":...}``;
- a subscribe ``{"method":"subscribe","params":{"channel":"book","symbol":[...],"depth":10,
  "snapshot":true},"req_id":1}`` is answered once per symbol: ``{"method":"subscribe","result":
  {"channel":"book","depth":10,"snapshot":true,"symbol":"BTC/USD"},"success":true,"time_in":...,
  "time_out":...,"req_id":1}``, or ``{"error":"...","method":"subscribe","success":false,
  "symbol":...,"time_in":...,"time_out":...,"req_id":1}``; the connection stays open.

v2 names symbols ``BTC/USD`` and ``DOGE/USD`` and rejects v1's ``XBT/...`` and ``XDG/...``
(``Currency pair not supported XBT/USD``). Where Kraken's v2 wording is not documented (bad depth,
already subscribed, not subscribed) the v1 texts from ``kbook.sim.protocol`` are used. Times are
RFC 3339 with microseconds; ``time_in`` is when the request arrived.

The plans return the same ``Request``/``PairDecision`` as v1's, keyed by the v1 (canonical) pair,
so the server keeps one subscription table and one market per pair for both APIs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from kbook.api import Api
from kbook.pairs import common_name
from kbook.sim.market import canonical_pair
from kbook.sim.market_v2 import rfc3339
from kbook.sim.protocol import (
    ALREADY_SUBSCRIBED,
    BOOK,
    DEPTH_NOT_SUPPORTED,
    MALFORMED,
    NOT_FOUND,
    TRADE,
    TRADE_DEPTH,
    PairDecision,
    Request,
)

VERSION = "2.0.9"
"""The v2 API version the simulator claims in its status frame."""

HEARTBEAT = '{"channel":"heartbeat"}'
CHANNEL_NOT_SUPPORTED = "Channel not supported"
METHOD_NOT_FOUND = "Method not found"


def dumps(obj: Mapping[str, Any]) -> str:
    """A control object, compact, keys in the order given (v2 does not sort them)."""
    return orjson.dumps(obj).decode()


def status(connection_id: int, system: str = "online") -> str:
    """The status channel frame; ``system`` is ``online``, ``maintenance``, ``cancel_only``..."""
    entry = {
        "api_version": Api.V2,
        "connection_id": connection_id,
        "system": system,
        "version": VERSION,
    }
    return dumps({"channel": "status", "type": "update", "data": [entry]})


def _timed(body: dict[str, Any], req_id: Any, received: float, now: float) -> str:
    body["time_in"] = rfc3339(received)
    body["time_out"] = rfc3339(max(now, received))
    if req_id is not None:
        body["req_id"] = req_id
    return dumps(body)


def pong(req_id: Any, received: float, now: float) -> str:
    return _timed({"method": "pong"}, req_id, received, now)


def error(
    message: str,
    method: Any,
    req_id: Any,
    received: float,
    now: float,
    symbol: str | None = None,
) -> str:
    """A failed request: ``{"error":...,"method":...,"success":false,...}``."""
    body: dict[str, Any] = {"error": message}
    if isinstance(method, str):
        body["method"] = method
    body["success"] = False
    if symbol is not None:
        body["symbol"] = symbol
    return _timed(body, req_id, received, now)


def acknowledgement(
    method: str,
    symbol: str,
    depth: int,
    snapshot: bool | None,
    req_id: Any,
    received: float,
    now: float,
    channel: str = BOOK,
) -> str:
    """A successful (un)subscribe of one symbol; ``snapshot`` None leaves it out (unsubscribe).
    A ``trade`` answer has no depth."""
    result: dict[str, Any] = {"channel": channel}
    if channel == BOOK:
        result["depth"] = depth
    if snapshot is not None:
        result["snapshot"] = snapshot
    result["symbol"] = symbol
    return _timed({"method": method, "result": result, "success": True}, req_id, received, now)


def _parse(
    msg: Mapping[str, Any],
    depths_for: Callable[[str], tuple[int, ...]],
    is_active: Callable[[tuple[str, int]], bool],
    subscribing: bool,
) -> Request:
    req_id = msg.get("req_id")
    params = msg.get("params")
    if not isinstance(params, dict):
        return Request(req_id, error=MALFORMED)
    channel = params.get("channel")
    depth = params.get("depth", 10) if channel == BOOK else TRADE_DEPTH
    snapshot = params.get("snapshot", True)
    symbols = params.get("symbol")
    if channel not in (BOOK, TRADE):
        return Request(req_id, error=CHANNEL_NOT_SUPPORTED, depth=depth)
    if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
        return Request(req_id, error=MALFORMED, depth=depth)
    if type(snapshot) is not bool:
        return Request(req_id, error=MALFORMED, depth=depth)
    decisions = tuple(_decide(s, depth, depths_for, is_active, subscribing) for s in symbols)
    return Request(req_id, decisions, depth=depth, snapshot=snapshot, channel=str(channel))


def _decide(
    symbol: str,
    depth: Any,
    depths_for: Callable[[str], tuple[int, ...]],
    is_active: Callable[[tuple[str, int]], bool],
    subscribing: bool,
) -> PairDecision:
    valid_depth = depth if type(depth) is int else 0
    canonical = canonical_pair(symbol)
    key = (canonical, valid_depth)
    base, sep, quote = symbol.partition("/")
    well_formed = bool(sep) and base.isalnum() and quote.isalnum()
    served = depths_for(canonical)
    # v2 knows only the common names: XBT/USD and XDG/USD are unknown symbols there.
    if not well_formed or common_name(symbol) != symbol or not served:
        message = f"Currency pair not supported {symbol}"
        return PairDecision(symbol, symbol, key, valid_depth, message)
    if depth == TRADE_DEPTH:  # trades: one subscription per symbol, no depth
        if subscribing and is_active(key):
            return PairDecision(symbol, symbol, key, valid_depth, ALREADY_SUBSCRIBED)
        if not subscribing and not is_active(key):
            return PairDecision(symbol, symbol, key, valid_depth, NOT_FOUND)
        return PairDecision(symbol, symbol, key, valid_depth)
    # v2 book frames do not say their depth, so a connection holds one depth per symbol: a
    # second subscribe is refused whatever its depth, and unsubscribe finds the one there is.
    active = next((d for d in served if is_active((canonical, d))), None)
    if not subscribing:
        if active is None:
            return PairDecision(symbol, symbol, key, valid_depth, NOT_FOUND)
        return PairDecision(symbol, symbol, (canonical, active), active)
    if valid_depth not in served:
        return PairDecision(symbol, symbol, key, valid_depth, DEPTH_NOT_SUPPORTED)
    if active is not None:
        return PairDecision(symbol, symbol, key, valid_depth, ALREADY_SUBSCRIBED)
    return PairDecision(symbol, symbol, key, valid_depth)


def plan_subscribe(
    msg: Mapping[str, Any],
    depths_for: Callable[[str], tuple[int, ...]],
    is_active: Callable[[tuple[str, int]], bool],
) -> Request:
    """Decide a v2 subscribe request (the callables as in ``protocol.plan_subscribe``)."""
    return _parse(msg, depths_for, is_active, subscribing=True)


def plan_unsubscribe(
    msg: Mapping[str, Any],
    depths_for: Callable[[str], tuple[int, ...]],
    is_active: Callable[[tuple[str, int]], bool],
) -> Request:
    """Decide a v2 unsubscribe request; an unknown subscription is ``Subscription Not Found``."""
    return _parse(msg, depths_for, is_active, subscribing=False)
