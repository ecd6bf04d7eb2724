"""A fast first pass over each segment: which books it holds, when it starts, how it ends.

Replay needs this before it applies a single frame: pairs are grouped into independent streams
(``replay.plan``), ``--pair`` and ``--levels`` are checked against what was recorded (so a bad
option fails before anything is written), and segments wholly outside ``--start``/``--end`` can be
skipped. It must cost little next to the replay itself, so it never decodes data frames: it
decompresses each segment in large pieces and hands them to the scan of the segment's dialect
(``kbook.dialect.Dialect.survey_scan``, per API in ``kbook.survey_scan``), which searches the
text. A run over segments surveyed before finds their facts in the survey cache
(``replay.survey_cache``) instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from kbook.api import Api
from kbook.dialect import segment_dialect
from kbook.errors import SegmentError
from kbook.segment import (
    MAX_LINE_BYTES,
    SegmentPath,
    SegmentReader,
    os_error_text,
    sane_recv_ns,
)
from kbook.survey_scan import Book, line_recv_ns

_CHUNK = 1 << 20


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


def survey_segments(paths: list[SegmentPath]) -> list[SegmentInfo]:
    """``survey_segment`` of each path, in order."""
    return [survey_segment(path) for path in paths]


def survey_segment(path: SegmentPath) -> SegmentInfo:
    """Survey one segment (a damaged tail is tolerated here; the replay reports it)."""
    dialect = segment_dialect(path)
    scan = dialect.survey_scan()
    last_body = b""
    for body in _bodies(path):
        if not body:  # damage: the pieces start again from the first line
            scan.damaged()
            continue
        last_body = body
        scan.body(body)
    facts = scan.facts
    return SegmentInfo(
        path=path,
        size=path.stat().st_size,
        first_ns=facts.first_ns,
        books=frozenset(facts.books),
        head_checkpoints=frozenset(facts.head),
        connection_changed=facts.connection_changed,
        connection_at_end=facts.connection,
        api=dialect.api,
        last_ns=line_recv_ns(last_body, first=False),
        run_id=facts.run_id,
    )


def _bodies(path: SegmentPath) -> Iterator[bytes]:
    """Decompressed text in large pieces that end at a line break (a torn tail is dropped); an
    empty piece means damage was met and the pieces start again from the first line."""
    tail = b""
    try:
        with path.open("rb") as fh:
            reader = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
            skipping = False  # inside a line longer than MAX_LINE_BYTES (the replay reports it)
            while chunk := reader.read(_CHUNK):
                if skipping:
                    end = chunk.find(b"\n")
                    if end < 0:
                        continue
                    chunk, skipping = chunk[end + 1 :], False
                cut = chunk.rfind(b"\n") + 1  # a tail holds no line break: this is the last
                if not cut:
                    tail += chunk
                    if len(tail) > MAX_LINE_BYTES:
                        tail, skipping = b"", True
                    continue
                body = tail + memoryview(chunk)[:cut]  # one copy of the text, not two
                tail = chunk[cut:]
                if len(tail) > MAX_LINE_BYTES:
                    tail, skipping = b"", True
                yield body
    except zstandard.ZstdError:
        # Damaged data: scan again as the replay's SegmentReader reads (and reports) it, going on
        # after each damaged frame, from the start: an empty body first says so.
        yield b""
        yield from _resynced_bodies(path)
    except OSError as exc:
        raise SegmentError(f"{path}: cannot read: {os_error_text(exc)}") from exc


def _resynced_bodies(path: SegmentPath) -> Iterator[bytes]:
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
