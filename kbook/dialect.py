"""What the recorder and ``kbook watch`` say to Kraken and how they read its frames, per API.

The recorder's loop (``recorder.record``), its subscription state machine (``subscriptions``),
its connection (pings) and ``kbook watch`` are the same for Kraken's WebSocket v1 and v2; every
difference of wire shape lives here, in a ``Dialect`` (v1) or a ``V2Dialect``. No I/O.

| | v1 (``shared/kraken/README.md`` section 1) | v2 (section 5) |
|---|---|---|
| book data | arrays ``[id, {...}, "book-10", "XBT/USD"]`` | ``{"channel":"book",...}`` objects |
| numbers | strings: orjson is exact | number lexemes: ``kbook.v2.decode`` keeps them |
| (un)subscribe answer | ``subscriptionStatus`` per pair | ``{"method":...,"success":...}`` per symbol |
| request refused | ``{"event":"error"}`` | a failed answer naming no symbol |
| system state | ``systemStatus`` ``status`` | ``status`` channel ``system`` |
| ping | ``{"event":"ping","reqid":N}`` | ``{"method":"ping","req_id":N}`` |
| pair names | ``XBT/USD`` or ``BTC/USD``: alias retry | ``BTC/USD`` only: no retry |

Heartbeats need nothing here: every frame received, heartbeats of both APIs included, resets the
connection's stall timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from kbook import v2
from kbook.api import DEFAULT, URLS, Api
from kbook.feed import BookFeed
from kbook.pairs import common_name, v1_alias

NOT_JSON = object()
"""What ``decode`` returns for a frame that is not JSON (it is recorded as ``raw``)."""

# ``Answer.kind`` values.
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
REFUSED = "refused"
"""Kraken refused one pair (``name``): unknown pair, bad depth, already subscribed, not found."""
REJECTED = "rejected"
"""Kraken refused a whole request (``Exceeded msg rate``, malformed): nothing in it was done."""
OTHER = "other"
"""A v1 ``subscriptionStatus`` with a status the recorder does not act on."""

RATE_LIMITED = "exceeded msg rate"


@dataclass(frozen=True, slots=True)
class Answer:
    """Kraken's answer to a subscribe or unsubscribe request, in either API's words."""

    kind: str
    name: str | None = None
    """The pair as Kraken spelled it; None for a ``REJECTED`` request."""
    reason: str | None = None
    """Kraken's error text, for ``REFUSED`` and ``REJECTED``."""


def spellings(pair: str) -> tuple[str, ...]:
    """Every v1 spelling of ``pair``, the user's first: ``BTC/USD`` -> (``BTC/USD``, ``XBT/USD``)."""
    names = [pair, v1_alias(pair), common_name(pair)]
    return tuple(dict.fromkeys(name for name in names if name))


class Dialect:
    """Kraken WebSocket v1; ``V2Dialect`` overrides what v2 says differently."""

    api = Api.V1
    url = URLS[Api.V1]

    # -- frames in --------------------------------------------------------------------------------

    def decode(self, text: str) -> tuple[Any, bool]:
        """``(decoded frame or NOT_JSON, is_json)``, parsing once; ``is_json`` is exactly
        ``kbook.segment.is_json_text(text)``: JSON without a newline, kept verbatim as ``msg``."""
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            return NOT_JSON, False
        return msg, "\n" not in text

    def feed(self) -> BookFeed:
        """A fresh book builder for this API's frames."""
        return BookFeed()

    def is_book(self, msg: Any) -> bool:
        """A book data frame (a snapshot or an update), as opposed to a control frame."""
        return type(msg) is list

    def book_frame(self, msg: Any, feed: BookFeed) -> tuple[str, str | None] | None:
        """``(pair as on the wire, "book-N")`` of a well-formed book data frame, else None. The
        channel is None when the frame does not say it and ``feed`` does not know it yet."""
        if type(msg) is not list or len(msg) < 4 or not isinstance(msg[-1], str):
            return None
        channel = msg[-2]
        if type(channel) is not str or not channel.startswith("book-"):
            return None
        return msg[-1], channel

    def route(self, msg: Any) -> Any:
        """The pair name a frame is filed under (its pair's stream); None: every stream.

        A refusal goes to every stream: the refused pair has none.
        """
        if type(msg) is list and msg:
            return msg[-1]
        if type(msg) is dict and msg.get("status") != "error":
            return msg.get("pair")
        return None

    def answer(self, msg: Any) -> Answer | None:
        """The (un)subscribe answer or request refusal in a control frame, else None."""
        if type(msg) is not dict:
            return None
        event = msg.get("event")
        if event == "subscriptionStatus":
            name = msg.get("pair")
            name = name if isinstance(name, str) else None
            status = msg.get("status")
            if status in (SUBSCRIBED, UNSUBSCRIBED):
                return Answer(status, name)
            if status == "error":
                return Answer(REFUSED, name, str(msg.get("errorMessage", "refused")))
            return Answer(OTHER, name)
        if event == "error" or "Error" in msg:
            # ``{"errorMessage":"Exceeded msg rate","event":"error"}``; older ``{"Error":...}``.
            reason = msg.get("errorMessage", msg.get("Error"))
            return Answer(REJECTED, None, str(reason) if reason is not None else None)
        return None

    def system_status(self, msg: Any) -> str | None:
        """Kraken's system state in a status frame (``online``, ``maintenance``...), else None."""
        if type(msg) is dict and msg.get("event") == "systemStatus":
            return str(msg.get("status"))
        return None

    def mismatch(self, msg: Any, feed: BookFeed) -> tuple[str, str | None, int | None]:
        """``(pair, channel, checksum sent)`` of a book frame ``feed`` found a wrong checksum in."""
        expected = msg[-3].get("c")
        return msg[-1], msg[-2], int(expected) if expected is not None else None

    # -- requests out -----------------------------------------------------------------------------

    def spellings(self, pair: str) -> tuple[str, ...]:
        """The names to request ``pair`` under, in order (a refused name is retried as the next)."""
        return spellings(pair)

    def subscribe(self, names: list[str], depth: int, reqid: int) -> dict[str, Any]:
        return self._request("subscribe", names, depth, reqid)

    def unsubscribe(self, names: list[str], depth: int, reqid: int) -> dict[str, Any]:
        return self._request("unsubscribe", names, depth, reqid)

    def ping(self, reqid: int) -> dict[str, Any]:
        return {"event": "ping", "reqid": reqid}

    @staticmethod
    def _request(event: str, names: list[str], depth: int, reqid: int) -> dict[str, Any]:
        return {
            "event": event,
            "pair": names,
            "subscription": {"name": "book", "depth": depth},
            "reqid": reqid,
        }


class V2Dialect(Dialect):
    """Kraken WebSocket v2 (``kbook.v2``)."""

    api = Api.V2
    url = URLS[Api.V2]

    def decode(self, text: str) -> tuple[Any, bool]:
        """As v1's, but decoded with ``kbook.v2.decode``: orjson would turn ``0.10000000`` into a
        float and break the checksum. orjson still decides ``is_json``, because segment readers
        use it: a frame only ``json`` accepts (``NaN``) must be kept as ``raw``."""
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return NOT_JSON, False
        try:
            msg = v2.decode(text)
        except (ValueError, RecursionError):
            return NOT_JSON, False
        return msg, "\n" not in text

    def feed(self) -> BookFeed:
        return v2.V2BookFeed()

    def is_book(self, msg: Any) -> bool:
        return type(msg) is dict and msg.get("channel") == "book"

    def book_frame(self, msg: Any, feed: BookFeed) -> tuple[str, str | None] | None:
        if not self.is_book(msg):
            return None
        symbol = v2.frame_symbol(msg)
        if symbol is None:
            return None
        # v2 book frames never say their depth: the subscribe answer (or a checkpoint) did.
        depth = feed.depths.get(symbol) if isinstance(feed, v2.V2BookFeed) else None
        return symbol, v2.book_key(symbol, depth)[1] if depth is not None else None

    def route(self, msg: Any) -> Any:
        if self.is_book(msg):
            return v2.frame_symbol(msg)
        ack = v2.parse_ack(msg)
        return ack.symbol if ack is not None and ack.success else None

    def answer(self, msg: Any) -> Answer | None:
        ack = v2.parse_ack(msg)
        if ack is None:
            return None
        if ack.success:
            return Answer(SUBSCRIBED if ack.method == "subscribe" else UNSUBSCRIBED, ack.symbol)
        reason = ack.error or "refused"
        if ack.symbol is None or RATE_LIMITED in reason.lower():
            # A rate limit refuses the request, not the symbol: it is sent again later.
            return Answer(REJECTED, None, reason)
        return Answer(REFUSED, ack.symbol, reason)

    def system_status(self, msg: Any) -> str | None:
        status = v2.parse_status(msg)
        return status[0] if status is not None else None

    def mismatch(self, msg: Any, feed: BookFeed) -> tuple[str, str | None, int | None]:
        channel = feed.last_key[1] if feed.last_key is not None else None
        return str(v2.frame_symbol(msg)), channel, v2.frame_checksum(msg)

    def spellings(self, pair: str) -> tuple[str, ...]:
        # v2 knows only the common names and rejects XBT/XDG: nothing to retry under.
        return (common_name(pair),)

    def subscribe(self, names: list[str], depth: int, reqid: int) -> dict[str, Any]:
        return v2.subscribe_request(names, depth, reqid)

    def unsubscribe(self, names: list[str], depth: int, reqid: int) -> dict[str, Any]:
        return v2.subscribe_request(names, depth, reqid, unsubscribe=True)

    def ping(self, reqid: int) -> dict[str, Any]:
        return v2.ping_request(reqid)


DIALECTS: dict[Api, type[Dialect]] = {Api.V1: Dialect, Api.V2: V2Dialect}


def dialect_for(api: str | None) -> Dialect:
    """The dialect of ``api`` (``v1`` or ``v2``); None: of ``kbook.api.DEFAULT``, the API a
    connection speaks when nothing says otherwise."""
    return DIALECTS[Api(api) if api is not None else DEFAULT]()
