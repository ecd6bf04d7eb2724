"""A fast first pass over each segment: which books it holds, when it starts, how it ends.

Replay needs this before it applies a single frame: pairs are grouped into independent streams
(``replay.plan``), ``--pair`` and ``--levels`` are checked against what was recorded (so a bad
option fails before anything is written), and segments wholly outside ``--start``/``--end`` can be
skipped. It must cost little next to the replay itself, so it never decodes data frames: it
decompresses and searches the text with byte-level regular expressions. Book frames end with
``"book-N","<pair>"]`` (the frame text is copied verbatim by the recorder and by
``kbook.captures``; nothing else in a segment looks like that); each distinct ending is found once
per chunk and removed with ``bytes.replace``, which runs at memory speed. The rare ``meta`` and
``systemStatus`` lines are decoded with orjson.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from kbook.errors import SegmentError
from kbook.segment import SegmentReader

_CHUNK = 1 << 20
_BOOK_END = re.compile(rb'"(book-\d+)"\s*,\s*"([^"\n]*)"\s*\]')
_RARE = re.compile(rb'"meta"\s*:|"connectionID"\s*:')
_RECV = re.compile(rb'"recv_ns"\s*:\s*(\d+)')

Book = tuple[str, str]
"""(wire pair, channel name), as ``BookFeed`` keys its books."""


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What the survey learnt about one segment."""

    path: Path
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


def survey_segment(path: Path) -> SegmentInfo:
    """Survey one segment (a damaged tail is tolerated here; the replay reports it)."""
    scan = _Scan()
    first_ns: int | None = None
    for body in _bodies(path):
        if first_ns is None and (match := _RECV.search(body, 0, 200)):
            first_ns = int(match.group(1))
        first_msg = -1 if scan.seen_msg else body.find(b'"msg":')
        for start, line in _rare_lines(body):
            scan.rare_line(line, after_msg=scan.seen_msg or 0 <= first_msg < start)
        scan.seen_msg = scan.seen_msg or first_msg >= 0
        while match := _search(_BOOK_END, (b'"book-',), body):
            scan.books.add((match.group(2).decode(), match.group(1).decode()))
            body = body.replace(match.group(0), b"\n")
    return SegmentInfo(
        path=path,
        size=path.stat().st_size,
        first_ns=first_ns,
        books=frozenset(scan.books),
        head_checkpoints=frozenset(scan.head),
        connection_changed=scan.connection_changed,
        connection_at_end=scan.connection,
    )


@dataclass
class _Scan:
    """What the survey of one segment has found so far."""

    books: set[Book] = field(default_factory=set)
    head: set[Book] = field(default_factory=set)
    seen_msg: bool = False
    connection_changed: bool = False
    connection: int | None = None

    def rare_line(self, line: bytes, after_msg: bool) -> None:
        """A meta or systemStatus line: track checkpoints and connections as ``BookFeed`` will."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if type(record) is not dict:
            return
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
        elif type(msg) is dict and msg.get("event") == "systemStatus":
            self.connection_changed, self.connection = True, msg.get("connectionID")


def _bodies(path: Path) -> Iterator[bytes]:
    """Decompressed text in large pieces that end at a line break (a torn tail is dropped)."""
    tail = b""
    try:
        with open(path, "rb") as fh:
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            while chunk := reader.read(_CHUNK):
                text = tail + chunk
                cut = text.rfind(b"\n") + 1
                tail = text[cut:]
                if cut:
                    yield text[:cut]
    except zstandard.ZstdError:
        # Damaged data: scan again as the replay's SegmentReader reads (and reports) it, going on
        # after each damaged frame; what was found before the damage is found again, harmlessly.
        yield from _resynced_bodies(path)
    except OSError as exc:
        raise SegmentError(f"{path}: cannot read: {exc.strerror}") from exc


def _resynced_bodies(path: Path) -> Iterator[bytes]:
    """``_bodies`` of a damaged segment: its readable lines, in pieces of about ``_CHUNK``."""
    body: list[bytes] = []
    size = 0
    for _, line in SegmentReader(path).raw_lines():
        body.append(line)
        size += len(line) + 1
        if size >= _CHUNK:
            yield b"\n".join(body) + b"\n"
            body, size = [], 0
    if body:
        yield b"\n".join(body) + b"\n"


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
