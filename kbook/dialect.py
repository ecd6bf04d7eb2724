"""What kbook says to Kraken and how it reads Kraken's frames, live and recorded, per API.

The recorder's loop (``recorder.record``), its subscription state machine (``subscriptions``),
its connection (pings) and ``kbook watch`` are the same for Kraken's WebSocket v1 and v2; every
difference of wire shape lives here, in a ``Dialect`` (v1) or a ``V2Dialect``. So do the offline
questions that readers of segments (verify, replay, watch ``--from``) ask of a frame: how to decode
a segment's line (``decode_line``), what kind of frame it is (``kind``: book snapshot or update,
system status, an answer to a request, other control), which books it touches (``BookNamer``,
which follows what sets a v2 book's depth), its levels as exact text (``entries``) and a status
frame's connection id (``connection_id``), the survey's fast scan of a segment's text
(``survey_scan``); ``segment_dialect`` picks the dialect of a segment.
No I/O but ``segment_dialect``'s read of a segment's first lines.

| | v1 (``shared/kraken/README.md`` section 1) | v2 (section 5) |
|---|---|---|
| book data | arrays ``[id, {...}, "book-10", "XBT/USD"]`` | ``{"channel":"book",...}`` objects |
| numbers | strings: orjson is exact | number lexemes: ``kbook.v2.decode`` keeps them |
| (un)subscribe answer | ``subscriptionStatus`` per pair | ``{"method":...,"success":...}`` per symbol |
| request refused | ``{"event":"error"}`` | a failed answer naming no symbol |
| system state | ``systemStatus`` ``status`` | ``status`` channel ``system`` |
| ping | ``{"event":"ping","reqid":N}`` | ``{"method":"ping","req_id":N}`` |
| pair names | ``XBT/USD`` or ``BTC/USD``: alias retry | ``BTC/USD`` only: no retry |
| trades | ``[id, [[price, qty, time, side, type, misc]], "trade", pair]`` | ``{"channel":"trade",...}`` |

The ``trade`` channel rides on the same connection as the book (``--channels book,trade``): one
subscribe request per channel, answers telling their channel (v1 ``subscription.name``; v2
``result.channel``, or for a refusal, which names none, the request's ``req_id``). ``trades``
decodes a trade frame exactly: prices and sizes as the wire's text, times as integer ns.

Heartbeats need nothing here: every frame received, heartbeats of both APIs included, resets the
connection's stall timer.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from kbook import v2
from kbook.api import DEFAULT, DEPTHS, URLS, Api, Channel
from kbook.errors import FrameError
from kbook.feed import BookFeed, book_depth, channel_depth, misnamed, sane_pair
from kbook.pairs import common_name, v1_alias
from kbook.segment import SegmentPath
from kbook.survey_scan import SurveyScan, V1Scan, V2Scan

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


class FrameKind(StrEnum):
    """What a decoded frame is, in either API's shape (``Dialect.kind``)."""

    SNAPSHOT = "snapshot"
    """A book snapshot (v2: every entry of the frame is one)."""
    UPDATE = "update"
    """A book update."""
    STATUS = "status"
    """Kraken's system status: the first frame of a connection, and maintenance."""
    ANSWER = "answer"
    """An answer to a request: (un)subscribed, refused, rate limited (``Dialect.answer``)."""
    CONTROL = "control"
    """Any other control frame: heartbeat, pong, another channel's control object."""
    TRADE = "trade"
    """Trades of the ``trade`` channel (v2: a snapshot of recent trades, or new ones)."""
    OTHER = "other"
    """Not a frame of this API's shapes (another channel's data, a malformed book frame)."""


@dataclass(frozen=True, slots=True)
class BookEntry:
    """One book's part of a book frame, levels as exact text (``Dialect.entries``)."""

    pair: str
    """The pair as the frame names it."""
    snapshot: bool
    asks: list[tuple[str, str]]
    """``(price, qty)`` texts exactly as Kraken printed them, in the frame's order."""
    bids: list[tuple[str, str]]
    checksum: int | None
    """The CRC32 the frame carries, if any."""
    channel: str | None = None
    """``book-N`` when the frame says it (v1); None for v2, whose frames never do."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Kraken's answer to a subscribe or unsubscribe request, in either API's words."""

    kind: str
    name: str | None = None
    """The pair as Kraken spelled it; None for a ``REJECTED`` request."""
    reason: str | None = None
    """Kraken's error text, for ``REFUSED`` and ``REJECTED``."""
    channel: Channel | None = None
    """The channel answered, when the answer says it (v2 refusals do not)."""
    reqid: Any = None
    """The request's id as echoed, to tell the channel of an answer that does not say it."""


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade of a ``trade`` frame, exactly as Kraken printed it (``Dialect.trades``)."""

    pair: str
    """The pair as the frame names it."""
    price: str
    """The price's text as on the wire (v1 strings, v2 number lexemes)."""
    qty: str
    side: str
    """``buy`` or ``sell``: the taker's side."""
    order_type: str
    """``market`` or ``limit``: the taker's order type."""
    exch_ns: int
    """Kraken's trade time, integer ns UTC, from the wire's text (no float on the way)."""
    trade_id: int | None
    """Kraken's trade id (v2); None under v1, which has none."""
    snapshot: bool
    """Part of v2's batch of recent trades sent on subscribe (v1 sends none)."""


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
        return _v1_book(msg)

    def unfiled(self, msg: Any) -> bool:
        """True for a book data frame (``is_book``) no feed can file under a book: one naming
        no usable pair (not text of 1 to 255 printable bytes), or (v1) a ``book-N`` channel of
        no Kraken depth. Another channel's data (v1 ``trade``, ``ticker``) is not one."""
        return type(msg) is not list or len(msg) < 4 or misnamed(msg[-1], msg[-2])

    def voids_books(self, msg: Any) -> bool:
        """A control frame that may void books: a system status (a new connection) or an
        (un)subscribe answer (``BookFeed`` voids the pair's books on one)."""
        return type(msg) is dict and msg.get("event") in ("systemStatus", "subscriptionStatus")

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
            channel, reqid = _v1_channel(msg), msg.get("reqid")
            if status in (SUBSCRIBED, UNSUBSCRIBED):
                return Answer(status, name, channel=channel, reqid=reqid)
            if status == "error":
                refusal = str(msg.get("errorMessage", "refused"))
                return Answer(REFUSED, name, refusal, channel, reqid)
            return Answer(OTHER, name, channel=channel, reqid=reqid)
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

    def is_trade(self, msg: Any) -> bool:
        """A ``trade`` channel data frame (``trades`` reads it)."""
        return (
            type(msg) is list
            and len(msg) == 4
            and msg[-2] == Channel.TRADE
            and isinstance(msg[-1], str)
        )

    def trades(self, msg: Any) -> list[Trade]:
        """The trades of a trade frame, in the frame's order; ``FrameError`` when malformed.
        v1: ``[id, [[price, volume, time, side, orderType, misc], ...], "trade", pair]``, side
        ``b``/``s``, order type ``m``/``l``, time ``"1534614057.321597"`` (seconds, as text)."""
        if not self.is_trade(msg) or type(msg[1]) is not list:
            raise FrameError(f"not a v1 trade frame: {str(msg)[:80]}")
        found = []
        for row in msg[1]:
            if type(row) is not list or len(row) < 5 or not all(type(x) is str for x in row[:5]):
                raise FrameError(f"v1 trade {row!r} is not [price, volume, time, side, type]")
            price, qty, time_text, side, order_type = row[:5]
            if not (_NUMBER.fullmatch(price) and _NUMBER.fullmatch(qty)):
                raise FrameError(f"v1 trade {row!r} holds text that is not a number")
            found.append(
                Trade(
                    msg[-1],
                    price,
                    qty,
                    _choice(_V1_SIDES, side, "side"),
                    _choice(_V1_ORDER_TYPES, order_type, "order type"),
                    _seconds_ns(time_text),
                    None,
                    False,
                )
            )
        return found

    # -- frames recorded ------------------------------------------------------------------------

    tag = ""
    """Appended to a pair's name where books of both APIs are listed together."""
    lock_prefix = ""
    """Before the pairs in a recorder's lock file name: v1's is the name older recorders take."""

    def survey_scan(self) -> SurveyScan:
        """The survey's fast scan of a segment of this API (``kbook.survey_scan``)."""
        return V1Scan()

    def decode_line(self, line: bytes | str) -> Any:
        """A segment line (or a frame's text) decoded as this API needs; ``ValueError`` (or
        ``RecursionError``) when it is not JSON. orjson is exact for v1, whose numbers are text."""
        return orjson.loads(line)

    def kind(self, msg: Any) -> FrameKind:
        """What a decoded frame is."""
        if self.is_trade(msg):
            return FrameKind.TRADE if type(msg[1]) is list else FrameKind.OTHER
        if type(msg) is list:
            if _v1_book(msg) is None:
                return FrameKind.OTHER
            payloads = msg[1:-2]
            if not payloads or not all(type(p) is dict for p in payloads):
                return FrameKind.OTHER
            snapshot = any("as" in p or "bs" in p for p in payloads)
            return FrameKind.SNAPSHOT if snapshot else FrameKind.UPDATE
        if type(msg) is not dict:
            return FrameKind.OTHER
        if self.system_status(msg) is not None:
            return FrameKind.STATUS
        return FrameKind.ANSWER if self.answer(msg) is not None else FrameKind.CONTROL

    def connection_id(self, msg: Any) -> int | None:
        """The connection id a status frame announces, else None."""
        if self.system_status(msg) is None:
            return None
        found = msg.get("connectionID")
        return found if type(found) is int else None

    def entries(self, msg: Any) -> list[BookEntry]:
        """The books of a book frame with their levels as exact text; ``FrameError`` when a
        snapshot or update is malformed. v1 sends one payload or two (asks, then bids and the
        checksum); they are joined, asks before bids, as the book applies them."""
        kind = self.kind(msg)
        if kind not in (FrameKind.SNAPSHOT, FrameKind.UPDATE):
            raise FrameError(f"not a v1 book frame: {str(msg)[:80]}")
        snapshot = kind is FrameKind.SNAPSHOT
        asks: list[tuple[str, str]] = []
        bids: list[tuple[str, str]] = []
        for payload in msg[1:-2]:
            asks += _v1_levels(payload.get("as" if snapshot else "a", ()))
            bids += _v1_levels(payload.get("bs" if snapshot else "b", ()))
        checksum = msg[-3].get("c")
        try:
            crc = int(checksum) if checksum is not None else None
        except (TypeError, ValueError):
            raise FrameError(f"checksum {checksum!r} is not a number") from None
        return [BookEntry(msg[-1], snapshot, asks, bids, crc, msg[-2])]

    def books(
        self, msg: Any, depths: Mapping[str, int], configured: int | None
    ) -> list[tuple[str, str]]:
        """``(pair, "book-N")`` of each book a frame touches, as this API's feed files them.
        ``depths`` (per pair) and ``configured`` (the recorder's ``--depth``) are what v2 needs,
        whose frames do not say their depth; v1 frames do."""
        frame = _v1_book(msg)
        return [frame] if frame is not None else []

    def answer_depth(self, msg: Any) -> tuple[str, int] | None:
        """``(pair, depth)`` a subscribe answer settles for the frames after it, when the API's
        book frames do not say their depth (v2); None for v1, whose frames say it."""
        return None

    # -- requests out -----------------------------------------------------------------------------

    def spellings(self, pair: str) -> tuple[str, ...]:
        """The names to request ``pair`` under, in order (a refused name is retried as the next)."""
        return spellings(pair)

    def subscribe(
        self, names: list[str], depth: int, reqid: int, channel: Channel = Channel.BOOK
    ) -> dict[str, Any]:
        """A request for ``channel`` of ``names`` (``depth`` is the book's; trades have none)."""
        return self._request("subscribe", names, depth, reqid, channel)

    def unsubscribe(
        self, names: list[str], depth: int, reqid: int, channel: Channel = Channel.BOOK
    ) -> dict[str, Any]:
        return self._request("unsubscribe", names, depth, reqid, channel)

    def ping(self, reqid: int) -> dict[str, Any]:
        return {"event": "ping", "reqid": reqid}

    @staticmethod
    def _request(
        event: str, names: list[str], depth: int, reqid: int, channel: Channel
    ) -> dict[str, Any]:
        subscription: dict[str, Any] = {"name": str(channel)}
        if channel is Channel.BOOK:
            subscription["depth"] = depth
        return {"event": event, "pair": names, "subscription": subscription, "reqid": reqid}


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
        return symbol, v2.book_key(symbol, depth)[1] if depth else None  # NO_DEPTH: unknown

    def unfiled(self, msg: Any) -> bool:
        symbol = v2.frame_symbol(msg)
        return symbol is None or not sane_pair(symbol)

    def voids_books(self, msg: Any) -> bool:
        if type(msg) is not dict:
            return False
        channel = msg.get("channel")
        return channel == "status" or (
            channel is None and msg.get("method") in ("subscribe", "unsubscribe")
        )

    def route(self, msg: Any) -> Any:
        if self.is_book(msg) or self.is_trade(msg):
            return v2.frame_symbol(msg)
        ack = v2.parse_ack(msg)
        return ack.symbol if ack is not None and ack.success else None

    def answer(self, msg: Any) -> Answer | None:
        ack = v2.parse_ack(msg)
        if ack is None:
            return None
        channel = _channel(ack.channel)
        if ack.success:
            kind = SUBSCRIBED if ack.method == "subscribe" else UNSUBSCRIBED
            return Answer(kind, ack.symbol, channel=channel, reqid=ack.req_id)
        reason = ack.error or "refused"
        if ack.symbol is None or RATE_LIMITED in reason.lower():
            # A rate limit refuses the request, not the symbol: it is sent again later.
            return Answer(REJECTED, None, reason, channel, ack.req_id)
        return Answer(REFUSED, ack.symbol, reason, channel, ack.req_id)

    def system_status(self, msg: Any) -> str | None:
        status = v2.parse_status(msg)
        return status[0] if status is not None else None

    def mismatch(self, msg: Any, feed: BookFeed) -> tuple[str, str | None, int | None]:
        channel = feed.last_key[1] if feed.last_key is not None else None
        return str(v2.frame_symbol(msg)), channel, v2.frame_checksum(msg)

    def is_trade(self, msg: Any) -> bool:
        return type(msg) is dict and msg.get("channel") == Channel.TRADE

    def trades(self, msg: Any) -> list[Trade]:
        """v2: ``{"channel":"trade","type":"snapshot"|"update","data":[{symbol, side, price,
        qty, ord_type, trade_id, timestamp}]}``; numbers as the lexemes ``kbook.v2.decode``
        kept, ``timestamp`` RFC 3339 (``2023-09-25T07:48:36.925533Z``)."""
        kind = msg.get("type") if self.is_trade(msg) else None
        data = msg.get("data") if kind in ("snapshot", "update") else None
        if type(data) is not list:
            raise FrameError(f"not a v2 trade frame: {str(msg)[:80]}")
        found = []
        for entry in data:
            if type(entry) is not dict or not isinstance(entry.get("symbol"), str):
                raise FrameError("a v2 trade names no symbol")
            trade_id = entry.get("trade_id")
            if type(trade_id) is not int:
                raise FrameError(f"v2 trade id {trade_id!r} is not an integer")
            timestamp = entry.get("timestamp")
            if not isinstance(timestamp, str):
                raise FrameError(f"v2 trade time {timestamp!r} is not text")
            found.append(
                Trade(
                    entry["symbol"],
                    _v2_number(entry.get("price")),
                    _v2_number(entry.get("qty")),
                    _choice(_V2_SIDES, entry.get("side"), "side"),
                    _choice(_V2_ORDER_TYPES, entry.get("ord_type"), "order type"),
                    _rfc3339_ns(timestamp),
                    trade_id,
                    kind == "snapshot",
                )
            )
        return found

    tag = " (v2)"
    lock_prefix = "v2."

    def survey_scan(self) -> SurveyScan:
        return V2Scan(BookNamer(self))

    def decode_line(self, line: bytes | str) -> Any:
        """``kbook.v2.decode``: each number's exact text kept (orjson would make floats of
        them and break the checksum)."""
        return v2.decode(line)

    def kind(self, msg: Any) -> FrameKind:
        if type(msg) is not dict:
            return FrameKind.OTHER
        if self.is_trade(msg):
            kinds = ("snapshot", "update")
            ok = msg.get("type") in kinds and type(msg.get("data")) is list
            return FrameKind.TRADE if ok else FrameKind.OTHER
        if self.is_book(msg):
            kind = msg.get("type")
            data = msg.get("data")
            if type(data) is not list or not data:
                return FrameKind.OTHER
            if kind == "snapshot":
                return FrameKind.SNAPSHOT
            return FrameKind.UPDATE if kind == "update" else FrameKind.OTHER
        if v2.parse_status(msg) is not None:
            return FrameKind.STATUS
        return FrameKind.ANSWER if self.answer(msg) is not None else FrameKind.CONTROL

    def connection_id(self, msg: Any) -> int | None:
        status = v2.parse_status(msg)
        return status[1] if status is not None else None

    def entries(self, msg: Any) -> list[BookEntry]:
        kind = self.kind(msg)
        if kind not in (FrameKind.SNAPSHOT, FrameKind.UPDATE):
            raise FrameError(f"not a v2 book frame: {str(msg)[:80]}")
        found = []
        for entry in msg["data"]:
            symbol = entry.get("symbol") if type(entry) is dict else None
            if not isinstance(symbol, str):
                raise FrameError("a v2 book entry names no symbol")
            try:
                asks = _v2_levels(entry.get("asks") or ())
                bids = _v2_levels(entry.get("bids") or ())
                checksum = entry.get("checksum")
                crc = int(checksum) if checksum is not None else None
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise FrameError(f"malformed v2 book entry for {symbol}: {exc}") from None
            found.append(BookEntry(symbol, kind is FrameKind.SNAPSHOT, asks, bids, crc))
        return found

    def books(
        self, msg: Any, depths: Mapping[str, int], configured: int | None
    ) -> list[tuple[str, str]]:
        kind = self.kind(msg)
        if kind not in (FrameKind.SNAPSHOT, FrameKind.UPDATE):
            return []
        found = []
        for entry in msg["data"]:
            symbol = entry.get("symbol") if type(entry) is dict else None
            if not isinstance(symbol, str):
                continue
            depth = depths.get(symbol)
            if depth == v2.NO_DEPTH:  # an answer of no Kraken depth: the feed files none
                continue
            if depth is None and kind is FrameKind.SNAPSHOT:
                # No answer said the depth: the smallest one that holds the snapshot, as
                # ``V2BookFeed`` infers it.
                asks, bids = entry.get("asks"), entry.get("bids")
                size = max(
                    len(asks) if type(asks) is list else 0, len(bids) if type(bids) is list else 0
                )
                depth = next((d for d in DEPTHS if d >= size), None)
            depth = depth or configured
            if depth:  # none for a snapshot deeper than any book: the feed finds it malformed
                found.append(v2.book_key(symbol, depth))
        return found

    def answer_depth(self, msg: Any) -> tuple[str, int] | None:
        answer = v2.book_answer(msg)
        if answer is None or answer[1] is None:
            return None
        return answer[0], answer[1]  # NO_DEPTH for a depth Kraken does not serve

    def spellings(self, pair: str) -> tuple[str, ...]:
        # v2 knows only the common names and rejects XBT/XDG: nothing to retry under.
        return (common_name(pair),)

    def subscribe(
        self, names: list[str], depth: int, reqid: int, channel: Channel = Channel.BOOK
    ) -> dict[str, Any]:
        return v2.subscribe_request(names, depth, reqid, channel=channel)

    def unsubscribe(
        self, names: list[str], depth: int, reqid: int, channel: Channel = Channel.BOOK
    ) -> dict[str, Any]:
        return v2.subscribe_request(names, depth, reqid, unsubscribe=True, channel=channel)

    def ping(self, reqid: int) -> dict[str, Any]:
        return v2.ping_request(reqid)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
"""A JSON number's lexeme, as v1 prints its prices and quantities inside strings."""

_V1_SIDES = {"b": "buy", "s": "sell"}
_V1_ORDER_TYPES = {"m": "market", "l": "limit"}
_V2_SIDES = {"buy": "buy", "sell": "sell"}
_V2_ORDER_TYPES = {"market": "market", "limit": "limit"}
_SECONDS = re.compile(r"(\d+)(?:\.(\d{1,9}))?")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


def _channel(name: Any) -> Channel | None:
    """The ``Channel`` a name in an answer says, None for none or one kbook does not record."""
    try:
        return Channel(name) if isinstance(name, str) else None
    except ValueError:
        return None


def _v1_channel(msg: dict[str, Any]) -> Channel | None:
    """The channel of a v1 ``subscriptionStatus``: its ``subscription.name``, else the
    ``channelName`` (``book-10`` is the book)."""
    subscription = msg.get("subscription")
    if type(subscription) is dict and _channel(subscription.get("name")) is not None:
        return _channel(subscription.get("name"))
    name = msg.get("channelName")
    if isinstance(name, str) and name.startswith("book-"):
        return Channel.BOOK
    return _channel(name)


def _choice(choices: Mapping[str, str], value: Any, what: str) -> str:
    found = choices.get(value) if isinstance(value, str) else None
    if found is None:
        raise FrameError(f"trade {what} {value!r} is not one of {', '.join(choices)}")
    return found


def _seconds_ns(text: str) -> int:
    """``"1534614057.321597"`` (v1 times: seconds as text) as integer ns, exactly."""
    match = _SECONDS.fullmatch(text)
    if match is None:
        raise FrameError(f"trade time {text!r} is not seconds")
    return int(match[1]) * 1_000_000_000 + int((match[2] or "").ljust(9, "0"))


def _rfc3339_ns(text: str) -> int:
    """``"2023-09-25T07:48:36.925533Z"`` (v2 times) as integer ns UTC, exactly."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise FrameError(f"time {text!r} is not RFC 3339 UTC")
    try:
        whole = datetime.fromisoformat(match[1]).replace(tzinfo=UTC)
    except ValueError:
        raise FrameError(f"time {text!r} is not a date") from None
    return int(whole.timestamp()) * 1_000_000_000 + int((match[2] or "").ljust(9, "0"))


def _v1_book(msg: Any) -> tuple[str, str] | None:
    """``(pair, "book-N")`` of a v1 book data frame ``[id, {...}(, {...}), "book-N", pair]``."""
    if type(msg) is not list or len(msg) < 4 or not isinstance(msg[-1], str):
        return None
    channel = msg[-2]
    if type(channel) is not str or not channel.startswith("book-"):
        return None
    return msg[-1], channel


def _v1_levels(levels: Any) -> list[tuple[str, str]]:
    """v1 levels ``[price, qty, time(, "r")]`` as ``(price, qty)`` texts (v1 prints strings)."""
    if type(levels) not in (list, tuple):
        raise FrameError("v1 levels are not a list")
    found = []
    for level in levels:
        if type(level) is not list or len(level) < 2:
            raise FrameError(f"v1 level {level!r} is not [price, qty, time]")
        price, qty = level[0], level[1]
        if type(price) is not str or type(qty) is not str:
            raise FrameError(f"v1 level {level!r} does not print its numbers as text")
        if not (_NUMBER.fullmatch(price) and _NUMBER.fullmatch(qty)):
            raise FrameError(f"v1 level {level!r} holds text that is not a number")
        found.append((price, qty))
    return found


def _v2_levels(levels: Any) -> list[tuple[str, str]]:
    """v2 levels ``{"price": p, "qty": q}`` as ``(price, qty)`` texts: the lexemes
    ``kbook.v2.decode`` kept (integers are exact either way)."""
    if type(levels) not in (list, tuple):
        raise FrameError("v2 levels are not a list")
    return [(_v2_number(level["price"]), _v2_number(level["qty"])) for level in levels]


def _v2_number(value: Any) -> str:
    if type(value) is str:
        return value
    if type(value) is int:
        return str(value)
    if type(value) is float:
        raise FrameError("v2 numbers were decoded as floats; decode with kbook.v2.decode")
    raise FrameError(f"v2 level number {value!r} is not a number")


@dataclass
class BookNamer:
    """Names the books of a segment's frames as its API's feed files them, ``(pair, "book-N")``,
    line after line: v2 frames do not say their depth, so it follows what does (subscribe answers,
    checkpoints, the recorder's ``--depth`` in ``session_start``), as ``V2BookFeed`` does."""

    dialect: Dialect
    depths: dict[str, int] = field(default_factory=dict)
    """Depth per pair as the feed knows it: answers, then checkpoints."""
    configured: int | None = None
    """The recorder's ``--depth``, for updates whose depth nothing else gave."""

    def on_meta(self, meta: Mapping[str, Any]) -> None:
        """A segment's meta line: a ``session_start`` or a ``checkpoint`` may tell a depth."""
        kind = meta.get("type")
        if kind == "session_start":
            config = meta.get("config")
            depth = config.get("depth") if isinstance(config, Mapping) else None
            with contextlib.suppress(FrameError):  # none, or of no Kraken book: says nothing
                self.configured = book_depth(depth)
        elif kind == "checkpoint":
            pair, channel = meta.get("pair"), meta.get("channel")
            if isinstance(pair, str) and isinstance(channel, str):
                with contextlib.suppress(FrameError):
                    depth = channel_depth(channel)
                    if not self.depths.get(pair):  # as V2BookFeed.restore: none, or NO_DEPTH
                        self.depths[pair] = depth

    def on_frame(self, msg: Any) -> list[tuple[str, str]]:
        """The books a decoded frame touches (none for a control frame, which may set a depth)."""
        settled = self.dialect.answer_depth(msg)
        if settled is not None:
            self.depths[settled[0]] = settled[1]
            return []
        return self.dialect.books(msg, self.depths, self.configured)

    def on_records(self, records: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
        """Every book named in a segment's decoded ``records`` (frames and checkpoints)."""
        found: set[tuple[str, str]] = set()
        for record in records:
            meta, msg = record.get("meta"), record.get("msg")
            if isinstance(meta, Mapping):
                self.on_meta(meta)
                if meta.get("type") == "checkpoint":
                    pair, channel = meta.get("pair"), meta.get("channel")
                    if isinstance(pair, str) and isinstance(channel, str):
                        found.add((pair, channel))
            elif msg is not None:
                found.update(self.on_frame(msg))
        return found


DIALECTS: dict[Api, type[Dialect]] = {Api.V1: Dialect, Api.V2: V2Dialect}


def dialect_for(api: str | None) -> Dialect:
    """The dialect of ``api`` (``v1`` or ``v2``); None: of ``kbook.api.DEFAULT``, the API a
    connection speaks when nothing says otherwise."""
    return DIALECTS[Api(api) if api is not None else DEFAULT]()


def segment_dialect(path: SegmentPath) -> Dialect:
    """The dialect of the frames in the segment at ``path`` (``kbook.v2.segment_api``: the API
    its meta lines name, else the shape of its first frames, else v1)."""
    return dialect_for(v2.segment_api(path))
