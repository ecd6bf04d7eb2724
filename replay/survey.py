"""A fast first pass over each segment: which books it holds, when it starts, how it ends.

Replay needs this before it applies a single frame: pairs are grouped into independent streams
(``replay.plan``), ``--pair`` and ``--levels`` are checked against what was recorded (so a bad
option fails before anything is written), and segments wholly outside ``--start``/``--end`` can be
skipped. It must cost little next to the replay itself, so it never decodes data frames: it
decompresses each segment in large pieces and hands them to the scan of the segment's dialect
(``kbook.dialect.Dialect.survey_scan``, per API in ``kbook.survey_scan``), which searches the
text. A segment the recorder closed needs none of that: its facts end it (the recorder's own
scan of the text it wrote, ``kbook.segment.read_trailer``), and only its last bytes are read. A
trailer is the segment's own claim, as trustworthy as its lines (a forged file can lie in
either): it is believed only when it ends the file where it says it starts and its facts are of
a shape a scan could find, and the facts tasks are cut by (head checkpoints, the connection)
are checked again where a task meets them (``replay.tasks``' join). A run over segments
surveyed before finds their facts in the survey cache (``replay.survey_cache``) instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import orjson
import zstandard

from kbook.dialect import segment_dialect
from kbook.errors import SegmentError
from kbook.segment import (
    MAX_LINE_BYTES,
    SegmentPath,
    SegmentReader,
    os_error_text,
    read_trailer,
)
from kbook.survey_scan import SegmentInfo, facts_info, facts_json

__all__ = [
    "SegmentInfo",
    "facts_info",
    "facts_json",
    "scan_segment",
    "survey_segment",
    "survey_segments",
    "trailer_survey",
]

_CHUNK = 1 << 20


def survey_segments(paths: list[SegmentPath]) -> list[SegmentInfo]:
    """``survey_segment`` of each path, in order."""
    return [survey_segment(path) for path in paths]


def survey_segment(path: SegmentPath) -> SegmentInfo:
    """Survey one segment: the facts its trailer holds (the recorder wrote them as it closed it,
    ``kbook.segment.read_trailer``), else those the scan of its text finds (a damaged tail is
    tolerated here; the replay reports it)."""
    info = trailer_survey(path)
    return info if info is not None else scan_segment(path)


def trailer_survey(path: SegmentPath) -> SegmentInfo | None:
    """The facts the segment's trailer holds, or None when it has none to believe (the segment
    must then be scanned): two small reads of its end."""
    size = path.stat().st_size
    trailer = read_trailer(path)
    if trailer is None:
        return None
    with contextlib.suppress(orjson.JSONDecodeError):
        return facts_info(path, size, orjson.loads(trailer))
    return None


def scan_segment(path: SegmentPath) -> SegmentInfo:
    """Survey one segment by the scan of its text, whatever its trailer says."""
    dialect = segment_dialect(path)
    scan = dialect.survey_scan()
    for body in _bodies(path):
        if body:
            scan.body(body)
        else:  # damage: the pieces start again from the first line
            scan.damaged()
    return scan.info(path, path.stat().st_size)


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
