"""Kraken WebSocket v2 ``book`` frames, fed into the same ``Book`` as v1.

v2 prints prices and quantities as JSON *numbers* at full precision (``"qty":0.10000000``), and the
checksum is computed over those lexemes, so a float parser breaks it (``0.10000000`` becomes
``0.1``). ``decode`` keeps every float's text as a ``str`` (integers are exact either way), and
``V2BookFeed`` turns levels into ``(price_text, qty_text)`` for the protocol-neutral book. A zero
quantity may read ``0E-8``; ``kbook.book.is_zero`` knows.

What differs from v1 (``shared/kraken/README.md`` section 5): every frame is an object; a snapshot
carries a checksum too; depth comes from the subscribe acknowledgement (``result.depth``), else
from the snapshot's size; the ``status`` channel's ``connection_id`` marks a new connection;
symbols are ``BTC/USD`` and ``DOGE/USD`` (no XBT/XDG).

Segments: a segment holds one API. ``segment_api`` tells which (the ``session_start`` meta line's
``"api"``, else the shape of the first frames), and ``RecordReader`` decodes its lines with the
right decoder: orjson for v1 (fast; v1 numbers are strings anyway), ``decode`` for v2, because
orjson turns ``0.10000000`` into a float and the checksum with it. ``feed_for(api)`` gives the
matching feed; never put frames of both APIs through one feed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from kbook.api import DEPTHS, Api
from kbook.book import Book, Level
from kbook.errors import FrameError
from kbook.feed import BookFeed, Outcome, book_depth, sane_pair
from kbook.segment import Problem, SegmentPath, SegmentReader

decode = partial(json.loads, parse_float=str)
"""JSON decoding that keeps each float's exact text (``0.10000000`` stays ``"0.10000000"``)."""


def book_key(symbol: str, depth: int) -> tuple[str, str]:
    """The key ``V2BookFeed`` files a book under: ``("BTC/USD", "book-10")``, v1's shape, so that
    checkpoints, samplers and reports treat books of both APIs alike."""
    return (symbol, f"book-{depth}")


def frame_api(msg: Any) -> str | None:
    """Which API a decoded frame belongs to: v1 data are arrays and v1 control objects have an
    ``event``; v2 frames are objects with ``channel`` or ``method``. None when it cannot tell."""
    if type(msg) is list:
        return Api.V1
    if type(msg) is dict:
        if "event" in msg:
            return Api.V1
        if "channel" in msg or "method" in msg:
            return Api.V2
    return None


def _levels(entries: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """v2 levels ``{"price": p, "qty": q}`` as exact ``(price, qty)`` texts."""
    levels = []
    for entry in entries:
        price, qty = entry["price"], entry["qty"]
        if type(price) is float or type(qty) is float:
            raise FrameError("v2 numbers were decoded as floats; decode with kbook.v2.decode")
        levels.append(
            (price if type(price) is str else str(price), qty if type(qty) is str else str(qty))
        )
    return levels


NO_DEPTH = 0
"""The depth of a symbol whose subscribe answer named a depth Kraken does not serve: no book has
it, so the frames that would have been filed by it are filed nowhere (``kbook.feed.book_depth``)."""


def book_answer(msg: Any) -> tuple[str, int | None] | None:
    """``(symbol, depth)`` of a successful answer to a book (un)subscribe request, else None.

    ``depth`` is what a subscribe answer settles for the symbol's frames after it: its
    ``result.depth`` when that is one of Kraken's depths, ``NO_DEPTH`` when it is anything else
    (a malformed answer), None when it settles nothing (an unsubscribe, or no depth said).
    ``V2BookFeed`` and the dialect's ``BookNamer`` both read answers through this."""
    if type(msg) is not dict or msg.get("channel") is not None or not msg.get("success"):
        return None
    method = msg.get("method")
    result = msg.get("result")
    if method not in ("subscribe", "unsubscribe") or type(result) is not dict:
        return None
    symbol = result.get("symbol")
    if result.get("channel") != "book" or not isinstance(symbol, str):
        return None
    if method != "subscribe" or "depth" not in result:
        return symbol, None
    try:
        return symbol, book_depth(result["depth"])
    except FrameError:
        return symbol, NO_DEPTH


def _inferred_depth(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """The smallest subscribable depth that holds the snapshot, when no ack said the depth."""
    size = max(len(asks), len(bids))
    return next((depth for depth in DEPTHS if depth >= size), size)


@dataclass
class V2BookFeed(BookFeed):
    """``BookFeed`` for v2 frames: same books, counts and outcomes, v2 wire shapes."""

    depths: dict[str, int] = field(default_factory=dict)
    """Depth per symbol from subscribe acknowledgements and checkpoints (``NO_DEPTH`` after an
    answer of a depth Kraken does not serve)."""

    def on_message(self, msg: Any, recv_ns: int) -> Outcome:
        if type(msg) is not dict:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        channel = msg.get("channel")
        if channel == "book":
            return self._on_book(msg, recv_ns)
        if channel == "status":
            self._on_status(msg, recv_ns)
        elif channel is None and msg.get("method") in ("subscribe", "unsubscribe"):
            return self._on_ack(msg, recv_ns)
        elif channel not in (None, "heartbeat", "pong"):
            self.other_channel_frames += 1
            return Outcome.OTHER_CHANNEL
        return Outcome.CONTROL

    def _on_status(self, msg: dict[str, Any], recv_ns: int) -> None:
        for entry in msg.get("data") or ():
            connection_id = entry.get("connection_id") if type(entry) is dict else None
            if connection_id is not None and connection_id != self.connection_id:
                # As in v1: after a checkpoint the first status names the recorder's current
                # connection; a new connection in a segment comes after a ``connect`` meta line.
                if self.adopt_connection:
                    self.adopt_connection = False
                elif self.connection_id is not None or self.books:
                    self.connection_lost(recv_ns)
                self.connection_id = connection_id

    def restore(
        self, pair: str, channel: str, asks: list[Level], bids: list[Level], recv_ns: int
    ) -> Book:
        """A recorder checkpoint, as in v1; it also says the depth, which v2 frames never do, so
        a snapshot after a reconnect in a rotated segment (no acknowledgement in it) is filed
        under the checkpoint's book rather than one guessed from the snapshot's size."""
        book = super().restore(pair, channel, asks, bids, recv_ns)
        if not self.depths.get(pair):  # none yet, or NO_DEPTH
            self.depths[pair] = book.depth
        return book

    def _on_ack(self, msg: dict[str, Any], recv_ns: int) -> Outcome:
        """A book's (un)subscribe answer voids the symbol's books (a new subscription starts
        with a snapshot); a subscribe answer also says the depth of the frames after it. One
        that says a depth Kraken does not serve is malformed: counted, and the symbol's
        snapshots are malformed too until an answer or a checkpoint says a Kraken depth."""
        answer = book_answer(msg)
        if answer is None:
            return Outcome.CONTROL
        symbol, depth = answer
        if depth is not None:
            self.depths[symbol] = depth
        self.void(symbol, recv_ns)
        if depth == NO_DEPTH:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        return Outcome.CONTROL

    def _on_book(self, msg: dict[str, Any], recv_ns: int) -> Outcome:
        kind = msg.get("type")
        data = msg.get("data")
        if kind not in ("snapshot", "update") or type(data) is not list or not data:
            self.malformed_frames += 1
            return Outcome.MALFORMED
        outcome = Outcome.CONTROL
        for entry in data:
            result = self._on_entry(kind == "snapshot", entry, recv_ns)
            outcome = max(outcome, result, key=_severity)
        return outcome

    def _on_entry(self, is_snapshot: bool, entry: Any, recv_ns: int) -> Outcome:
        symbol = entry.get("symbol") if type(entry) is dict else None
        if not isinstance(symbol, str) or (symbol not in self.stats and not sane_pair(symbol)):
            self.malformed_frames += 1
            return Outcome.MALFORMED
        stats = self.pair_stats(symbol)
        stats.frames += 1
        stats.touch(recv_ns)
        book: Book | None = None
        key: tuple[str, str] | None = None
        try:
            asks = _levels(entry.get("asks") or ())
            bids = _levels(entry.get("bids") or ())
            if is_snapshot:
                depth = self.depths.get(symbol)
                if depth is None:  # no answer said it
                    depth = _inferred_depth(asks, bids)
                depth = book_depth(depth)  # NO_DEPTH, or more levels than any book: malformed
                key = book_key(symbol, depth)
                book = self.books.get(key)
                if book is None:
                    book = self.books[key] = self.new_book(key, depth)
                book.apply_snapshot(asks, bids)
                book.exch_source = (entry.get("timestamp"),)  # parsed if read (Book.exch_ns)
                stats.snapshots += 1
            else:
                stats.updates += 1
                key = self._valid_key(symbol)
                if key is None:
                    stats.dropped += 1
                    return Outcome.DROPPED
                book = self.books[key]
                book.apply_update(asks, bids)
                book.exch_source = (entry.get("timestamp"),)  # parsed if read (Book.exch_ns)
            self.last_key = key
            checksum = entry.get("checksum")
            if checksum is None:
                if is_snapshot:
                    stats.become_valid(recv_ns)
                    return Outcome.SNAPSHOT
                return Outcome.UNVERIFIED
            if book.verify(int(checksum)):
                # Unlike v1, a v2 snapshot carries a checksum: it counts as a verified one.
                stats.checksums_ok += 1
                if is_snapshot:
                    stats.become_valid(recv_ns)
                    return Outcome.SNAPSHOT
                return Outcome.UPDATE_OK
            stats.checksums_failed += 1
            stats.become_invalid(recv_ns)
            return Outcome.CHECKSUM_FAILED
        except (FrameError, AttributeError, KeyError, TypeError, ValueError):
            stats.malformed += 1
            self.malformed_frames += 1
            if book is not None and book.valid:
                book.invalidate()
                stats.become_invalid(recv_ns)
            return Outcome.MALFORMED

    def _valid_key(self, symbol: str) -> tuple[str, str] | None:
        for key, book in self.books.items():
            if key[0] == symbol and book.valid:
                return key
        return None


_SEVERITY = {
    Outcome.CONTROL: 0,
    Outcome.OTHER_CHANNEL: 1,
    Outcome.UPDATE_OK: 2,
    Outcome.SNAPSHOT: 3,
    Outcome.UNVERIFIED: 4,
    Outcome.DROPPED: 5,
    Outcome.MALFORMED: 6,
    Outcome.CHECKSUM_FAILED: 7,
}


def _severity(outcome: Outcome) -> int:
    return _SEVERITY[outcome]


# -- segments: which API, and records decoded to match ------------------------------------------

_API_PROBE_LINES = 1000
"""How many lines ``segment_api`` reads at most before settling on v1."""


def feed_for(api: str) -> BookFeed:
    """A fresh feed for frames of ``api``: ``BookFeed`` (v1) or ``V2BookFeed`` (its dialect's)."""
    from kbook.dialect import dialect_for  # the dialects build on this module

    return dialect_for(api).feed()


def segment_api(path: SegmentPath) -> str:
    """``"v1"`` or ``"v2"``: the API of the frames in the segment at ``path``.

    A recorder's segment opens with a ``session_start`` meta line that names its ``api`` (any meta
    line with an ``"api"`` counts, so a rotated segment that opens with checkpoints can say it
    too). A bare segment (converted capture, other tools) has none, so the first frame whose
    shape tells (``frame_api``) decides. A segment with neither (only meta lines, or nothing readable in the
    first lines) is v1, which is what kbook recorded before v2 existed. Raises ``SegmentError`` /
    ``InputError`` like ``SegmentReader`` for a file that is not a segment.
    """
    lines = SegmentReader(path).raw_lines()
    try:
        for count, (_number, line) in enumerate(lines):
            if count >= _API_PROBE_LINES:
                break
            api = _line_api(line)
            if api is not None:
                return api
    finally:
        lines.close()  # closes the file now, not whenever the generator is collected
    return Api.V1


def _line_api(line: bytes) -> str | None:
    """The API a segment line names (a meta's ``api``) or shows (a ``msg`` frame), else None."""
    try:
        record = orjson.loads(line)  # only the shape matters here: floats are harmless
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict:
        return None
    meta = record.get("meta")
    if type(meta) is dict:
        api = meta.get("api")
        return Api(api) if api in tuple(Api) else None
    return frame_api(record["msg"]) if "msg" in record else None


@dataclass
class RecordReader:
    """The decoded lines (dicts) of one segment, each decoded as its API needs.

    Like ``SegmentReader`` (which it wraps): a torn tail or a bad line becomes a ``Problem`` in
    ``problems`` and every good line is still yielded; a file that is not a segment raises
    ``SegmentError`` naming it. ``api`` None means "find out" (``segment_api``). v1 lines go
    through orjson; v2 lines through ``decode``, so ``"qty":0.10000000`` arrives as the text
    ``"0.10000000"`` that the checksum needs.
    """

    path: SegmentPath
    api: str | None = None
    reader: SegmentReader = field(init=False)
    _decode_line: Callable[[bytes], Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from kbook.dialect import dialect_for  # the dialects build on this module

        self.reader = SegmentReader(self.path)
        if self.api is None:
            self.api = segment_api(self.path)
        else:
            self.api = Api(self.api)
        self._decode_line = dialect_for(self.api).decode_line

    @property
    def problems(self) -> list[Problem]:
        return self.reader.problems

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _number, record in self.numbered():
            yield record

    def numbered(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(line number, record)`` for every good line, so callers can say where a frame is."""
        decode_line = self.decode
        for number, line in self.reader.raw_lines():
            record = decode_line(number, line)
            if record is not None:
                yield number, record

    def batches(self) -> Iterator[tuple[int, list[bytes]]]:
        """Raw lines a piece at a time, as ``SegmentReader.batches`` (replay's hot path); a line
        it hands back goes through ``decode``."""
        return self.reader.batches()

    def decode(self, number: int, line: bytes) -> dict[str, Any] | None:
        """Line ``number`` as a dict decoded for the segment's API, or None after noting why it
        is not one in ``problems``."""
        try:
            record = self._decode_line(line)
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nests
            self.reader.problems.append(Problem(self.path, number, "line is not JSON"))
            return None
        if type(record) is not dict:
            self.reader.problems.append(Problem(self.path, number, "line is not a JSON object"))
            return None
        return record


def iter_records(
    path: SegmentPath, api: str | None = None, problems: list[Problem] | None = None
) -> Iterator[dict[str, Any]]:
    """The decoded records of ``path`` (see ``RecordReader``); its problems are appended to
    ``problems`` once the iteration ends (also when the caller stops early)."""
    reader = RecordReader(path, api)
    try:
        yield from reader
    finally:
        if problems is not None:
            problems.extend(reader.problems)


# -- talking v2 (for the recorder and watch): requests out, answers in ---------------------------


def subscribe_request(
    symbols: list[str],
    depth: int,
    req_id: int,
    *,
    unsubscribe: bool = False,
    channel: str = "book",
) -> dict[str, Any]:
    """``{"method":"subscribe","params":{"channel":"book","symbol":[...],"depth":N,
    "snapshot":true},"req_id":N}``; several symbols in one request, one answer per symbol.
    The ``trade`` channel has no depth; its snapshot is the last trades before the subscribe."""
    params: dict[str, Any] = {"channel": channel, "symbol": list(symbols)}
    if channel == "book":
        params["depth"] = depth
    if not unsubscribe:
        params["snapshot"] = True
    method = "unsubscribe" if unsubscribe else "subscribe"
    return {"method": method, "params": params, "req_id": req_id}


def ping_request(req_id: int) -> dict[str, Any]:
    """``{"method":"ping","req_id":N}``: Kraken closes a connection idle for about a minute."""
    return {"method": "ping", "req_id": req_id}


@dataclass(frozen=True, slots=True)
class Ack:
    """One answer to a v2 (un)subscribe request, for one symbol."""

    method: str
    """``subscribe`` or ``unsubscribe``."""
    success: bool
    symbol: str | None
    """None for a request that could not be read at all (it names no symbol)."""
    depth: int | None
    error: str | None
    req_id: Any
    channel: str | None = None
    """``result.channel`` of a success; refusals do not say it."""


def parse_ack(msg: Any) -> Ack | None:
    """The (un)subscribe answer in a decoded v2 frame, or None for any other frame.

    Success: ``{"method":"subscribe","result":{"channel":"book","depth":10,"symbol":...},
    "success":true,...}``; failure: ``{"error":"...","method":"subscribe","success":false,
    "symbol":...}`` (the connection stays open, as in v1).
    """
    if type(msg) is not dict or "channel" in msg:
        return None
    method = msg.get("method")
    if method not in ("subscribe", "unsubscribe"):
        return None
    result = msg.get("result")
    result = result if type(result) is dict else {}
    symbol = result.get("symbol", msg.get("symbol"))
    depth = result.get("depth")
    error = msg.get("error")
    channel = result.get("channel")
    return Ack(
        method=method,
        success=msg.get("success") is True,
        symbol=symbol if isinstance(symbol, str) else None,
        depth=depth if type(depth) is int else None,
        error=error if isinstance(error, str) else None,
        req_id=msg.get("req_id"),
        channel=channel if isinstance(channel, str) else None,
    )


def parse_status(msg: Any) -> tuple[str, int | None] | None:
    """``(system, connection_id)`` of a v2 status frame (``online``, ``maintenance``,
    ``cancel_only``...), or None for any other frame."""
    if type(msg) is not dict or msg.get("channel") != "status":
        return None
    for entry in msg.get("data") or ():
        if type(entry) is dict and isinstance(entry.get("system"), str):
            connection_id = entry.get("connection_id")
            return entry["system"], connection_id if type(connection_id) is int else None
    return None


def frame_symbol(msg: Any) -> str | None:
    """The symbol a decoded v2 frame is about: a book frame's (first) entry, an (un)subscribe
    answer's; None for status, heartbeat, pong and requests that named none. The recorder routes
    frames to their pair's stream by it, as it routes v1 frames by ``msg[-1]``/``msg["pair"]``."""
    if type(msg) is not dict:
        return None
    if msg.get("channel") in ("book", "trade"):
        data = msg.get("data")
        entry = data[0] if type(data) is list and data else None
        symbol = entry.get("symbol") if type(entry) is dict else None
        return symbol if isinstance(symbol, str) else None
    ack = parse_ack(msg)
    return ack.symbol if ack is not None else None


def frame_checksum(msg: Any) -> int | None:
    """The checksum a decoded v2 book frame carries (for a ``checksum_mismatch`` meta line)."""
    if type(msg) is not dict or msg.get("channel") != "book":
        return None
    data = msg.get("data")
    entry = data[0] if type(data) is list and data else None
    checksum = entry.get("checksum") if type(entry) is dict else None
    return checksum if type(checksum) is int else None
