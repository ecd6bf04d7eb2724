"""Kraken v1 control frames and subscribe requests, as the simulator speaks them. No I/O.

Frame texts follow ``shared/kraken/README.md`` section 1. Kraken prints control objects with their
keys in alphabetical order (``channelID, channelName, event, pair, reqid, status, subscription``),
so they are serialised with sorted keys; ``reqid`` is echoed whenever the request had one.

``plan_subscribe`` and ``plan_unsubscribe`` turn one request into per-pair decisions (accept, or the
error text Kraken would answer) without touching a connection, so the wording is testable alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kbook.sim.market import canonical_pair

VERSION = "1.9.1"
"""The v1 API version the simulator claims in systemStatus (the 2023 captures say 1.9.1)."""

HEARTBEAT = '{"event":"heartbeat"}'
NON_JSON_FRAME = "<html><body><h1>502 Bad Gateway</h1></body></html>"
"""What the ``non_json`` fault sends: an edge proxy's error page, as seen in the wild."""

MALFORMED = "Malformed request"
DEPTH_NOT_SUPPORTED = "Subscription depth not supported"
NAME_INVALID = "Subscription name invalid"
ALREADY_SUBSCRIBED = "Already subscribed"
NOT_FOUND = "Subscription Not Found"
RATE_LIMITED = "Exceeded msg rate"
UNSUPPORTED_EVENT = "Unsupported event"

BOOK = "book"
TRADE = "trade"
TRADE_DEPTH = 0
"""The depth in the subscription key of a ``trade`` subscription, which has none: keys are
``(canonical pair, depth)``, and no book depth is 0."""

BTC_MODES = ("echo-xbt", "echo-btc", "reject")
"""How a request for ``BTC/USD`` (or ``DOGE/...``) is answered; see ``kbook.sim``."""

_SORTED = orjson.OPT_SORT_KEYS


def dumps(obj: Mapping[str, Any]) -> str:
    """A control object as Kraken prints it: compact, keys sorted."""
    return orjson.dumps(obj, option=_SORTED).decode()


def system_status(connection_id: int, status: str = "online") -> str:
    return dumps(
        {
            "connectionID": connection_id,
            "event": "systemStatus",
            "status": status,
            "version": VERSION,
        }
    )


def pong(reqid: Any) -> str:
    return dumps({"event": "pong"} if reqid is None else {"event": "pong", "reqid": reqid})


def error(message: str, reqid: Any = None) -> str:
    """A connection-level error, e.g. ``{"errorMessage":"Exceeded msg rate","event":"error"}``."""
    body: dict[str, Any] = {"errorMessage": message, "event": "error"}
    if reqid is not None:
        body["reqid"] = reqid
    return dumps(body)


def subscription_status(
    status: str,
    *,
    pair: str | None = None,
    depth: Any = None,
    channel_id: int | None = None,
    reqid: Any = None,
    message: str | None = None,
    channel: str = BOOK,
) -> str:
    """A ``subscriptionStatus`` frame: ``subscribed``, ``unsubscribed`` or ``error``; for the
    ``trade`` channel ``channelName`` is ``trade`` and the subscription has no depth."""
    body: dict[str, Any] = {"event": "subscriptionStatus", "status": status}
    if channel_id is not None:
        body["channelID"] = channel_id
        body["channelName"] = f"book-{depth}" if channel == BOOK else channel
    if pair is not None:
        body["pair"] = pair
    if channel != BOOK:
        body["subscription"] = {"name": channel}
    elif depth is not None or pair is not None:
        body["subscription"] = {"depth": depth, "name": "book"}
    if reqid is not None:
        body["reqid"] = reqid
    if message is not None:
        body["errorMessage"] = message
    return dumps(body)


@dataclass(frozen=True, slots=True)
class PairDecision:
    """What to answer for one pair of a (un)subscribe request."""

    requested: str
    """The pair as the client spelled it."""
    wire: str
    """The pair as frames will print it (``XBT/USD`` for ``BTC/USD`` in ``echo-xbt`` mode)."""
    key: tuple[str, int]
    """(canonical pair, depth): one subscription per key and connection."""
    depth: int
    error: str | None = None
    """Kraken's error text, or None when accepted."""


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed (un)subscribe request: either one ``error`` for the whole request, or decisions."""

    reqid: Any
    decisions: tuple[PairDecision, ...] = ()
    error: str | None = None
    depth: Any = None
    snapshot: bool = True
    """Send a snapshot after the acknowledgement (v2's ``params.snapshot``; v1 always does)."""
    channel: str = BOOK
    """``book`` or ``trade``: a request names one channel."""


def wire_pair(requested: str, btc: str) -> str | None:
    """How ``requested`` is echoed under the BTC mode, or None when it is rejected."""
    canonical = canonical_pair(requested)
    if canonical == requested:
        return requested
    if btc == "reject":
        return None
    return canonical if btc == "echo-xbt" else requested


def _parse(
    msg: Mapping[str, Any],
    depths_for: Callable[[str], tuple[int, ...]],
    btc: str,
    is_active: Callable[[tuple[str, int]], bool],
    subscribing: bool,
) -> Request:
    reqid = msg.get("reqid")
    subscription = msg.get("subscription")
    pairs = msg.get("pair")
    if not isinstance(subscription, dict) or "name" not in subscription:
        return Request(reqid, error=MALFORMED)
    channel = subscription["name"]
    depth = subscription.get("depth", 10) if channel == BOOK else TRADE_DEPTH
    if channel not in (BOOK, TRADE):
        return Request(reqid, error=NAME_INVALID, depth=depth)
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, str) for p in pairs):
        return Request(reqid, error=MALFORMED, depth=depth, channel=channel)
    decisions = []
    for requested in pairs:
        decisions.append(_decide(requested, depth, depths_for, btc, is_active, subscribing))
    return Request(reqid, tuple(decisions), depth=depth, channel=channel)


def _decide(
    requested: str,
    depth: Any,
    depths_for: Callable[[str], tuple[int, ...]],
    btc: str,
    is_active: Callable[[tuple[str, int]], bool],
    subscribing: bool,
) -> PairDecision:
    valid_depth = depth if type(depth) is int else 0
    base, sep, quote = requested.partition("/")
    if not sep or not base.isalnum() or not quote.isalnum():
        message = f"Currency pair not in ISO 4217-A3 format {requested}"
        return PairDecision(requested, requested, (requested, valid_depth), valid_depth, message)
    wire = wire_pair(requested, btc)
    canonical = canonical_pair(requested)
    key = (canonical, valid_depth)
    allowed = depths_for(canonical)
    if wire is None or not allowed:
        message = f"Currency pair not supported {requested}"
        return PairDecision(requested, requested, key, valid_depth, message)
    if valid_depth not in allowed and depth != TRADE_DEPTH:
        return PairDecision(requested, wire, key, valid_depth, DEPTH_NOT_SUPPORTED)
    if subscribing and is_active(key):
        return PairDecision(requested, wire, key, valid_depth, ALREADY_SUBSCRIBED)
    if not subscribing and not is_active(key):
        return PairDecision(requested, wire, key, valid_depth, NOT_FOUND)
    return PairDecision(requested, wire, key, valid_depth)


def plan_subscribe(
    msg: Mapping[str, Any],
    depths_for: Callable[[str], tuple[int, ...]],
    btc: str,
    is_active: Callable[[tuple[str, int]], bool],
) -> Request:
    """Decide a subscribe request.

    ``depths_for(canonical_pair)`` gives the depths served for a pair (empty: pair not supported;
    Kraken's five depths for the market, the recorded ones in playback); ``is_active(key)`` says
    whether ``(canonical_pair, depth)`` is subscribed on this connection already.
    """
    return _parse(msg, depths_for, btc, is_active, subscribing=True)


def plan_unsubscribe(
    msg: Mapping[str, Any],
    depths_for: Callable[[str], tuple[int, ...]],
    btc: str,
    is_active: Callable[[tuple[str, int]], bool],
) -> Request:
    """Decide an unsubscribe request; an unknown subscription is ``Subscription Not Found``."""
    return _parse(msg, depths_for, btc, is_active, subscribing=False)


def decision_error_frame(
    decision: PairDecision, reqid: Any, depth: Any, channel: str = BOOK
) -> str:
    """The per-pair ``subscriptionStatus`` error for a rejected decision."""
    return subscription_status(
        "error",
        pair=decision.requested,
        depth=depth,
        reqid=reqid,
        message=decision.error,
        channel=channel,
    )


def request_error_frame(request: Request) -> str:
    """The single ``subscriptionStatus`` error for a request that could not be read at all."""
    body: dict[str, Any] = {
        "errorMessage": request.error,
        "event": "subscriptionStatus",
        "status": "error",
    }
    if request.reqid is not None:
        body["reqid"] = request.reqid
    return dumps(body)
