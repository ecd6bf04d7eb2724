"""A segment's survey facts (``SegmentInfo``) and the fast scan that finds them, one per API.

``replay.survey`` decompresses each segment in large pieces that end at a line break and hands
them to the scan its dialect makes (``kbook.dialect.Dialect.survey_scan``): which books the
segment holds, which of them its head checkpoints restore, the connection in force after it,
the recorder run that wrote it, its first and last receive time. The recorder runs the same
scan over each zstd frame's text as it writes it and ends the segment with the facts
(``kbook.segment.read_trailer``); ``facts_json``/``facts_info`` are their JSON form there, in the
survey cache and in a dataset's manifest. The scan never decodes data frames, which are nearly
every line: it searches the text.

v1 (``V1Scan``): book frames end with ``"book-N","<pair>"]`` (the frame text is copied verbatim by
the recorder and by ``kbook.captures``; nothing else in a segment looks like that). The native
core finds those endings and the rare ``meta``/``connectionID`` lines in one ``memchr`` pass
each (``_scan_body``); without it, byte-level regular expressions do, each distinct ending found
once per chunk and removed with ``bytes.replace``. The rare lines are decoded with orjson.

v2 (``V2Scan``): a book frame names its symbol but not its depth, which comes from the subscribe
acknowledgement (``result.depth``) or a checkpoint's channel, exactly as ``kbook.v2.V2BookFeed``
files its books, so the scan follows the same state through the dialect's
``kbook.dialect.BookNamer`` (which watch and the tests use too). A book update (nearly every
line) only says its symbol, which is read off the text as v1's endings are (the native core's
``survey_v2_body`` walks the lines in place); every other line is decoded.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from kbook.api import Api
from kbook.lines import native_core
from kbook.segment import SegmentPath, sane_recv_ns
from kbook.v2 import parse_status

if TYPE_CHECKING:
    from kbook.dialect import BookNamer

_BOOK_END = re.compile(rb'"(book-\d+)"\s*,\s*"([^"\n]*)"\s*\]')
_RARE = re.compile(rb'"meta"\s*:|"connectionID"\s*:')

Book = tuple[str, str]
"""(wire pair, channel name), as ``BookFeed`` keys its books."""


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What the survey learnt about one segment."""

    path: SegmentPath
    size: int
    """Compressed size in bytes (progress is measured in these)."""
    first_ns: int | None
    """``recv_ns`` of the first line."""
    books: frozenset[Book]
    """Every book with a data frame or a checkpoint in the segment."""
    head_checkpoints: frozenset[Book]
    """Books restored by ``checkpoint`` lines before the first ``msg`` line: replay can start here."""
    connection_changed: bool
    """True when a ``systemStatus``, ``connect`` or ``disconnect`` line sets the connection."""
    connection_at_end: int | None
    """If ``connection_changed``: the ``connectionID`` in force after the last line (None after a
    connect/disconnect), as ``BookFeed.connection_id`` will hold it."""
    api: str = Api.V1
    """The Kraken WebSocket API of its frames (``kbook.v2.segment_api``): ``v1`` or ``v2``."""
    last_ns: int | None = None
    """``recv_ns`` of the last whole line (the recorder's stamps never go back within a run)."""
    run_id: str | None = None
    """The recorder run that wrote it, when its head holds the run's ``session_start`` line (the
    first segment of each pair of a run; later segments of the run carry no run id)."""


def facts_json(info: SegmentInfo) -> dict[str, Any]:
    """A survey's facts as JSON data (the dataset's manifest and the survey cache keep them)."""
    return {
        "first_ns": info.first_ns,
        "last_ns": info.last_ns,
        "books": sorted(info.books),
        "head_checkpoints": sorted(info.head_checkpoints),
        "connection_changed": info.connection_changed,
        "connection_at_end": info.connection_at_end,
        "api": str(info.api),
        "run_id": info.run_id,
    }


def facts_info(path: SegmentPath, size: int, data: object) -> SegmentInfo | None:
    """``facts_json``'s data back as the survey of ``path``, or None when it is not of that
    shape: a stored survey comes from a file anyone may have edited, so each fact is checked to
    be one the survey could have found (a receive time ``sane_recv_ns`` takes, books of two
    strings, a known API), never trusted blindly."""
    if type(data) is not dict:
        return None
    first_ns, last_ns = data.get("first_ns"), data.get("last_ns")
    connection, run_id = data.get("connection_at_end"), data.get("run_id")
    books, head = _books(data.get("books")), _books(data.get("head_checkpoints"))
    changed, api = data.get("connection_changed"), data.get("api")
    if (
        (first_ns is not None and not sane_recv_ns(first_ns))
        or (last_ns is not None and not sane_recv_ns(last_ns))
        or books is None
        or head is None
        or not head <= books
        or type(changed) is not bool
        or (connection is not None and type(connection) is not int)
        or (run_id is not None and not (type(run_id) is str and 0 < len(run_id) <= 64))
        or api not in tuple(Api)
    ):
        return None
    return SegmentInfo(
        path=path,
        size=size,
        first_ns=first_ns,
        books=books,
        head_checkpoints=head,
        connection_changed=changed,
        connection_at_end=connection,
        api=Api(api),
        last_ns=last_ns,
        run_id=run_id,
    )


def _books(data: object) -> frozenset[Book] | None:
    """A list of ``[pair, channel]`` string pairs as books, or None when it is not one."""
    if type(data) is not list:
        return None
    books: set[Book] = set()
    for book in data:
        if type(book) is not list or len(book) != 2:
            return None
        pair, channel = book
        if type(pair) is not str or type(channel) is not str:
            return None
        books.add((pair, channel))
    return frozenset(books)


class SurveyScan(Protocol):
    """A scan of one segment's pieces: ``body`` each in order, ``damaged`` when the pieces start
    again from the first line (``replay.survey._bodies``); ``facts`` then holds what it found."""

    facts: ScanFacts

    def body(self, body: bytes) -> None: ...

    def damaged(self) -> None: ...

    def info(self, path: SegmentPath, size: int) -> SegmentInfo: ...


@dataclass
class ScanFacts:
    """What the survey of one segment has found so far (``SegmentInfo``'s facts but its path,
    size, API and last receive time)."""

    first_ns: int | None = None

    books: set[Book] = field(default_factory=set)
    head: set[Book] = field(default_factory=set)
    seen_msg: bool = False
    connection_changed: bool = False
    connection: int | None = None
    run_id: str | None = None

    def rare_line(self, line: bytes, after_msg: bool) -> None:
        """A meta or systemStatus line: track checkpoints and connections as ``BookFeed`` will."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if type(record) is dict:
            self.record(record, after_msg)

    def record(self, record: dict[str, Any], after_msg: bool) -> None:
        """A decoded meta or status line (v1 ``systemStatus``; v2 status frames go elsewhere)."""
        meta, msg = record.get("meta"), record.get("msg")
        if type(meta) is dict:
            kind = meta.get("type")
            pair, channel = meta.get("pair"), meta.get("channel")
            if kind == "checkpoint" and isinstance(pair, str) and isinstance(channel, str):
                self.books.add((pair, channel))
                if not after_msg:
                    self.head.add((pair, channel))
            elif kind in ("connect", "disconnect"):
                self.connection_changed, self.connection = True, None
            elif kind == "session_start" and not after_msg:
                run_id = meta.get("run_id")
                if isinstance(run_id, str) and 0 < len(run_id) <= 64:
                    self.run_id = run_id
        elif type(msg) is dict and msg.get("event") == "systemStatus":
            self.connection_changed, self.connection = True, msg.get("connectionID")

    def info(self, path: SegmentPath, size: int, api: Api, last_ns: int | None) -> SegmentInfo:
        """These facts as the survey of ``path``, whose last line's receive time is ``last_ns``."""
        return SegmentInfo(
            path=path,
            size=size,
            first_ns=self.first_ns,
            books=frozenset(self.books),
            head_checkpoints=frozenset(self.head),
            connection_changed=self.connection_changed,
            connection_at_end=self.connection,
            api=api,
            last_ns=last_ns,
            run_id=self.run_id,
        )


class V1Scan:
    """The v1 scan (see the module docstring): ``body`` each piece in order, ``damaged`` when
    the pieces start again from the first line; ``facts`` then holds what it found."""

    api = Api.V1

    def __init__(self) -> None:
        self.facts = ScanFacts()
        self.last_ns: int | None = None
        """The last receive time of the last piece (``line_recv_ns``)."""

    def body(self, body: bytes) -> None:
        self.last_ns = line_recv_ns(body, first=False)
        facts = self.facts
        if facts.first_ns is None:
            facts.first_ns = line_recv_ns(body, first=True)
        first_msg = -1 if facts.seen_msg else body.find(b'"msg":')
        rare, books = _scan_body(body)
        for start, stop in rare:
            facts.rare_line(body[start:stop], after_msg=facts.seen_msg or 0 <= first_msg < start)
        facts.seen_msg = facts.seen_msg or first_msg >= 0
        facts.books.update((_json_text(pair), channel.decode()) for pair, channel in books)

    def damaged(self) -> None:
        """Every line is read again, and found again harmlessly."""

    def info(self, path: SegmentPath, size: int) -> SegmentInfo:
        """What the scan found, as the survey of ``path``."""
        return self.facts.info(path, size, self.api, self.last_ns)


class V2Scan:
    """The v2 scan (see the module docstring): book updates by their symbol, every other line
    decoded (orjson; the number lexemes do not matter here), books named ``(symbol, "book-N")``
    as ``V2BookFeed`` keys them: ``namer`` follows what sets each depth."""

    api = Api.V2

    def __init__(self, namer: BookNamer) -> None:
        self.namer = namer
        self.facts = ScanFacts()
        self.last_ns: int | None = None
        """The last receive time of the last piece (``line_recv_ns``)."""

    def body(self, body: bytes) -> None:
        self.last_ns = line_recv_ns(body, first=False)
        start = 0
        while self.facts.first_ns is None and start < len(body):  # first receive time: decoded
            stop = body.index(b"\n", start)  # a body is whole lines
            if stop > start:
                self._other(_decoded(body[start:stop]))
            start = stop + 1
        core = native_core()
        if core is not None:
            for item in core.survey_v2_body(body, start):
                if type(item) is tuple:
                    self._other(_decoded(body[item[0] : item[1]]))
                else:
                    with contextlib.suppress(UnicodeDecodeError):  # such a line is not JSON
                        self._update(item.decode())
            return
        for line in body[start:].split(b"\n"):
            symbol = _plain_update_symbol(line) if line else None
            if symbol is not None:
                self._update(symbol)
            elif line:
                self._other(_decoded(line))

    def damaged(self) -> None:
        """Every line is read again from the start: so is the scan."""
        self.facts = ScanFacts()
        self.namer = type(self.namer)(self.namer.dialect)

    def info(self, path: SegmentPath, size: int) -> SegmentInfo:
        """What the scan found, as the survey of ``path``."""
        return self.facts.info(path, size, self.api, self.last_ns)

    def _update(self, symbol: str) -> None:
        """A book update: its book, at the depth the feed would file it under."""
        self.facts.seen_msg = True
        depth = self.namer.depths.get(symbol) or self.namer.configured
        if depth:
            self.facts.books.add((symbol, f"book-{depth}"))

    def _other(self, record: dict[str, Any] | None) -> None:
        """Any other line, decoded."""
        if record is None:
            return
        facts = self.facts
        recv_ns = record.get("recv_ns")
        if facts.first_ns is None and sane_recv_ns(recv_ns):
            facts.first_ns = recv_ns
        meta, msg = record.get("meta"), record.get("msg")
        if type(meta) is dict:
            self.namer.on_meta(meta)
            facts.record(record, after_msg=facts.seen_msg)
        elif type(msg) is dict:
            facts.seen_msg = True
            status = parse_status(msg)
            if status is not None and status[1] is not None:
                facts.connection_changed, facts.connection = True, status[1]
            facts.books.update(self.namer.on_frame(msg))
        elif msg is not None:
            facts.seen_msg = True


def _json_text(raw: bytes) -> str:
    """A JSON string's text from its raw bytes: ``XBT\\/USD`` is ``XBT/USD`` (JSON may escape any
    slash), as the feed will read it."""
    if b"\\" not in raw:
        return raw.decode(errors="replace")
    try:
        text = orjson.loads(b'"' + raw + b'"')
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")
    return text if isinstance(text, str) else raw.decode(errors="replace")


def line_recv_ns(body: bytes, first: bool) -> int | None:
    """``recv_ns`` of the first (or last) line of ``body`` that has one, decoded as JSON: the
    format does not fix the order of keys, so no pattern over the text can be trusted."""
    lines = body.split(b"\n", 8) if first else body.rsplit(b"\n", 8)
    for line in lines if first else reversed(lines):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        recv_ns = record.get("recv_ns") if type(record) is dict else None
        if sane_recv_ns(recv_ns):
            return recv_ns
    return None


def _decoded(line: bytes) -> dict[str, Any] | None:
    """A line as a dict, or None when it is not a JSON object (the replay reports it)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if type(record) is dict else None


_V2_UPDATE = b'"msg":{"channel":"book","type":"update","data":[{"symbol":"'
"""How a v2 book update opens in a segment line (the recorder keeps Kraken's text verbatim)."""


def _plain_update_symbol(line: bytes) -> str | None:
    """The symbol of a v2 book update line with one entry, read off its text, or None when the
    line must be decoded (another frame, several entries, an escape in the symbol, not JSON).
    The native core's ``survey_v2_body`` reads it the same way, and faster."""
    at = line.find(_V2_UPDATE)
    if at < 0 or line.count(b'"symbol"') != 1:
        return None
    start = at + len(_V2_UPDATE)
    end = line.find(b'"', start)
    symbol = line[start:end]
    if end < 0 or b"\\" in symbol:
        return None
    try:
        text = symbol.decode()
        record = orjson.loads(line)  # a broken line is decoded (and dropped) instead
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return None
    return text if type(record) is dict else None


def _scan_body(body: bytes) -> tuple[list[tuple[int, int]], list[tuple[bytes, bytes]]]:
    """``(start, stop)`` of each rare line (``_rare_lines``) and the ``(pair, channel)`` of each
    book frame ending, by the native core when it was built (one ``memchr`` pass for each, at
    memory speed), else by the regular expressions below. The two agree on every segment the
    recorder writes; ``tests/test_native.py`` holds them together."""
    core = native_core()
    if core is not None:
        return core.survey_body(body)
    rare = [(start, start + len(line)) for start, line in _rare_lines(body)]
    books: list[tuple[bytes, bytes]] = []
    while match := _search(_BOOK_END, (b'"book-',), body):
        books.append((match.group(2), match.group(1)))
        body = body.replace(match.group(0), b"\n")
    return rare, books


def _rare_lines(body: bytes) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of each line holding a meta record or a ``connectionID``."""
    position = 0
    while match := _search(_RARE, (b'"meta"', b'"connectionID"'), body, position):
        start = body.rfind(b"\n", 0, match.start()) + 1
        end = body.find(b"\n", match.end())
        yield start, body[start:end]
        position = end + 1


def _search(
    pattern: re.Pattern[bytes], heads: tuple[bytes, ...], body: bytes, position: int = 0
) -> re.Match[bytes] | None:
    """``pattern.search(body, position)`` for a pattern whose matches all begin with one of
    ``heads``: candidates are found with ``bytes.find`` rather than by the regex engine, which
    tries a match at every quote of the JSON text (a fifth of the survey's time went there)."""
    found = [body.find(head, position) for head in heads]
    while True:
        at = min((where for where in found if where >= 0), default=-1)
        if at < 0:
            return None
        if match := pattern.match(body, at):
            return match
        found = [
            body.find(head, at + 1) if where == at else where
            for head, where in zip(heads, found, strict=True)
        ]
