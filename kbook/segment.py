"""The segment file format: the contract between the recorder and replay.

A segment is a zstd-compressed file of JSON lines whose name ends ``.jsonl.zst`` (``.partial``
appended while its writer is open). Each line is one object:

- ``{"recv_ns": N, "seq": S, "msg": <frame>}``: one frame as received, its text copied byte for byte
  (Kraken's checksum depends on the exact digits, so it is never parsed and re-serialised);
- ``{"recv_ns": N, "seq": S, "raw": "<text>"}``: a text frame that is not JSON or holds a newline;
- ``{"recv_ns": N, "seq": S, "meta": {"type": ..., ...}}``: the recorder's own events.

``recv_ns`` is the wall-clock receive time, integer nanoseconds since the Unix epoch (UTC); within
one recorder run it never goes back (while the wall clock is behind, it holds). ``seq``
numbers the frames of one recorder run (0, 1, 2, ...; a frame copied into several pairs' segments
keeps its number) and never goes back, whatever the wall clock does; meta lines may omit it.
Readers ignore keys they do not know, and need nothing but ``msg`` lines.

Meta types the recorder writes (``meta.type``): ``session_start`` (kbook version, api, arguments),
``connect``, ``subscribe`` (the request sent), ``disconnect`` (with ``reason``), ``resubscribe``,
``checksum_mismatch``, ``alias`` (pair retried under Kraken's other name), ``checkpoint``,
``clock_step`` (the wall clock went back: ``wall_ns``, ``behind_ns``), ``segment_end``. A
``checkpoint`` holds a validated book so that a segment can be replayed on its own:
``{"type": "checkpoint", "pair": <wire pair>, "channel": "book-N", "asks": [[price, volume], ...],
"bids": [[price, volume], ...], "checksum": <int>}`` with the strings exactly as received.
Readers void every book at ``connect`` and ``disconnect``.

The writer ends a zstd frame at every ``flush`` (the recorder flushes at least once a second), so a
file cut short by ``kill -9`` holds a run of complete frames plus at most one torn one: the reader
yields every complete line and reports the torn tail, naming the file. Each frame carries zstd's
content checksum; a damaged frame is reported with its byte range and skipped, and reading goes on
at the next frame. A ``.partial`` file that is empty is a recorder killed before its first flush.

A segment the recorder closed ends with a zstd skippable frame, the *trailer*
(``TRAILER_MAGIC``): the segment's survey facts as JSON (``kbook.survey_scan.facts_json``), then
the offset where the trailer starts and the facts' length (``<QI``) and ``kbook-survey-1``.
Every zstd reader skips it; ``read_trailer`` finds it from the file's last bytes, and only when
it starts where it says (so that two segments joined end to end are not described by the
second one's facts).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias, TypeGuard, overload

import orjson
import zstandard

from kbook.errors import InputError, KbookError, OutputError, SegmentError
from kbook.pairs import file_name
from kbook.units import utc_day, utc_text

if TYPE_CHECKING:
    from kbook.storage import ObjectSegment

SegmentPath: TypeAlias = "Path | ObjectSegment"
"""A segment to read: a local file, or an object in storage read in place
(``kbook.storage.ObjectSegment``, which answers the few ``Path`` methods readers use: ``name``,
``open``, ``stat``, ``exists``, ``is_file``, ``is_dir``, ``resolve``). Everything that reads,
lists, sorts, de-duplicates or surveys segments takes either; ``str`` of it names it to users."""

SUFFIX = ".jsonl.zst"
PARTIAL_SUFFIX = ".partial"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_SKIPPABLE_MAGIC_HIGH = b"\x2a\x4d\x18"
MAX_LINE_BYTES = 16 << 20
"""Longer lines are skipped and reported, never assembled: Kraken's largest frame (a book-1000
snapshot) is about 100 KB, and a hostile file could hold one line of gigabytes."""
RECV_NS_MIN = 0
"""Receive times before the Unix epoch are not a clock's; such lines are skipped."""
RECV_NS_MAX = 4_102_444_800_000_000_000
"""2100-01-01T00:00Z: receive times from then on are skipped too (a frame stamped in 2255 would
otherwise stretch a replay over 230 years)."""
TRAILER_MAGIC = b"\x5b\x2a\x4d\x18"
"""A zstd skippable frame (magic 0x184D2A5B) that ends a segment the recorder closed: the
segment's survey facts (``read_trailer``). Every zstd reader skips it; kbook's readers too."""
_TRAILER_TAG = b"kbook-survey-1"
"""Ends a trailer's content, after the JSON facts and the two sizes that find it from the end."""
_TRAILER_TAIL = struct.Struct("<QI")
"""(where the trailer starts in the file, bytes of facts), before the tag."""
MAX_TRAILER_BYTES = 1 << 20
"""Facts longer than this are not written (a segment of thousands of books), nor read."""
_READ_CHUNK = 1 << 16
"""Compressed bytes per read: small, because each read is decompressed whole (Kraken text
inflates 5-20x) and split into lines at once, so this bounds the reader's memory."""


# -- encoding lines -------------------------------------------------------------------------------


def is_json_text(text: str) -> bool:
    """True when ``text`` parses as JSON and holds no newline, so it can stand as ``msg``."""
    if "\n" in text:
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def frame_line(recv_ns: int, seq: int, text: str, is_json: bool) -> bytes:
    """One segment line for a received text frame; ``is_json`` as from ``is_json_text``."""
    head = b'{"recv_ns":%d,"seq":%d,' % (recv_ns, seq)
    if is_json:
        return head + b'"msg":' + text.encode("utf-8") + b"}\n"
    return head + b'"raw":' + orjson.dumps(text) + b"}\n"


def meta_line(recv_ns: int, meta: dict[str, Any], seq: int | None = None) -> bytes:
    """One segment line for a recorder event; ``meta`` must have a ``type``."""
    if "type" not in meta:
        raise ValueError("a meta record needs a 'type'")
    record: dict[str, Any] = {"recv_ns": recv_ns}
    if seq is not None:
        record["seq"] = seq
    record["meta"] = meta
    return orjson.dumps(record) + b"\n"


def checkpoint_meta(
    pair: str,
    channel: str,
    asks: Iterable[Sequence[str]],
    bids: Iterable[Sequence[str]],
    checksum: int,
    api: str | None = None,
) -> dict[str, Any]:
    """A ``checkpoint`` record: a validated book, so a segment can be replayed on its own.

    ``pair`` is the name on the wire and ``asks``/``bids`` the ``(price, volume)`` strings
    exactly as received, best first; ``api`` is written when given (``"v1"``/``"v2"``).
    """
    meta: dict[str, Any] = {"type": "checkpoint"}
    if api is not None:
        meta["api"] = api
    meta.update(pair=pair, channel=channel, asks=list(asks), bids=list(bids), checksum=checksum)
    return meta


# -- writing --------------------------------------------------------------------------------------


BUFFER_BYTES = 4 << 20
"""Uncompressed bytes a writer holds before it compresses them into a frame without a flush."""

_compressors = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level``, shared by every writer the thread has open.

    Each flush compresses what was written since the last one as one whole zstd frame, sized
    for that input, so a writer holds no compression window of its own between flushes: a
    recorder of hundreds of pairs needs one compression context, not one per open segment.
    Each frame has zstd's content checksum (4 bytes a flush): a flipped bit is caught and the
    frame skipped, rather than read as a changed digit.
    """
    by_level: dict[int, zstandard.ZstdCompressor] | None = getattr(_compressors, "by_level", None)
    if by_level is None:
        by_level = _compressors.by_level = {}
    compressor = by_level.get(level)
    if compressor is None:
        compressor = by_level[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return compressor


class SegmentWriter:
    """Writes one segment: created as ``<path>.partial``, renamed to ``path`` when closed.

    The ``.partial`` file is created exclusively, so an existing file (finished or left by a killed
    run) is never overwritten or reopened. Lifecycle: open on construction, ``close`` once; writing
    after close raises. Any OS error (disk full, folder gone) is raised as ``OutputError`` naming
    the file; whatever was flushed before stays readable.
    """

    def __init__(self, path: Path, level: int = 3) -> None:
        if not path.name.endswith(SUFFIX):
            raise ValueError(f"a segment name must end with {SUFFIX}: {path}")
        self.path = path
        self.partial_path = path.with_name(path.name + PARTIAL_SUFFIX)
        if path.exists():
            raise OutputError(f"{path}: segment exists already; kbook never overwrites a segment")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO | None = open(self.partial_path, "xb")  # noqa: SIM115
        except FileExistsError as exc:
            raise OutputError(
                f"{self.partial_path}: exists already; kbook never reopens a segment"
            ) from exc
        except OSError as exc:
            raise OutputError(
                f"{self.partial_path}: cannot create segment: {exc.strerror}"
            ) from exc
        self._level = level
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._sealed: list[bytes] = []
        """Compressed frames not written to the file yet (``seal``)."""
        self.lines = 0
        self.bytes_in = 0
        self.pending = 0
        """Lines written since the last flush."""
        self.on_text: Callable[[bytes], None] | None = None
        """Called with the text of the lines of each zstd frame as it is compressed (whole lines,
        in order): the recorder's survey scan, whose facts ``close`` may write as a trailer."""

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def bytes_out(self) -> int:
        """Compressed bytes in the file so far (flushed frames only)."""
        return self._file.tell() if self._file is not None else self.path.stat().st_size

    def on_disk(self) -> bool:
        """True while ``partial_path`` is still this writer's file (not deleted or replaced)."""
        if self._file is None:
            return False
        try:
            mine, there = os.fstat(self._file.fileno()), os.stat(self.partial_path)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def abandon(self, cut_at: int | None = None) -> None:
        """Close without flushing or renaming (the file was deleted or replaced under us, or the
        disk failed); ``cut_at``: first truncate the file to that many bytes, the end of a flush
        that succeeded, so it ends on a whole zstd frame."""
        file, self._file = self._file, None
        self._buffer, self._sealed = [], []
        if file is None:
            return
        if cut_at is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(file.fileno(), cut_at)
        with contextlib.suppress(OSError, ValueError):
            file.close()  # may try to write what is buffered; the disk just failed: ignored
        with contextlib.suppress(OSError):
            if cut_at is not None:
                os.truncate(self.partial_path, cut_at)

    def write(self, line: bytes) -> None:
        """Append one encoded line (from ``frame_line`` or ``meta_line``)."""
        self.write_lines((line,))

    def write_lines(self, lines: Sequence[bytes]) -> None:
        """Append encoded lines, in order."""
        if self._file is None:
            raise ValueError(f"{self.path}: segment writer is closed")
        size = sum(map(len, lines)) if len(lines) != 1 else len(lines[0])
        self._buffer.extend(lines)
        self._buffered += size
        self.lines += len(lines)
        self.pending += len(lines)
        self.bytes_in += size
        if self._buffered >= BUFFER_BYTES:
            self._compress()

    def flush(self, fsync: bool = True) -> None:
        """End the current zstd frame and push it to disk, so a reader sees every line so far."""
        if self._file is None:
            raise ValueError(f"{self.path}: segment writer is closed")
        self._compress()
        try:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"{self.partial_path}: write failed: {exc.strerror}") from exc
        self.pending = 0

    def sync_handle(self) -> int | None:
        """A duplicate of the open file's descriptor, for ``os.fsync`` on another thread (the
        caller closes it); None once closed."""
        if self._file is None:
            return None
        try:
            return os.dup(self._file.fileno())
        except OSError as exc:
            raise OutputError(f"{self.partial_path}: cannot sync: {exc.strerror}") from exc

    def seal(self) -> None:
        """Compress the lines buffered so far into the zstd frame the next write or flush puts
        in the file: the CPU work of a flush, which a recorder does for every file before it
        writes any, so that the files of one flush reach the disk together."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        self._sealed.append(_compressor(self._level).compress(data))
        if self.on_text is not None:
            self.on_text(data)

    def _compress(self) -> None:
        """The lines buffered so far as one zstd frame, written to the file."""
        self.seal()
        if not self._sealed or self._file is None:
            return
        frames, self._sealed = self._sealed, []
        try:
            for frame in frames:
                self._file.write(frame)
        except OSError as exc:
            raise OutputError(f"{self.partial_path}: write failed: {exc.strerror}") from exc

    def close(self, trailer: Callable[[], bytes | None] | None = None) -> Path:
        """Flush, close and give the segment its final name; returns that name. ``trailer``
        gives, once every line is compressed, the JSON facts to end the file with (a skippable
        frame, ``read_trailer``), or None for none."""
        if self._file is None:
            return self.path
        error: OutputError | None = None
        try:
            if trailer is not None:
                self._compress()  # every line through ``on_text`` first
                facts = trailer()
                if facts is not None and len(facts) <= MAX_TRAILER_BYTES:
                    self._file.write(_trailer_frame(self._file.tell(), facts))
            self.flush()
        except OutputError as exc:
            error = exc
        except OSError as exc:
            error = OutputError(f"{self.partial_path}: write failed: {exc.strerror}")
        file, self._file = self._file, None
        try:
            file.close()  # after a failed flush this fails again (data still buffered)
        except OSError as exc:
            error = error or OutputError(f"{self.partial_path}: write failed: {exc.strerror}")
        if error is not None:
            raise error
        try:
            os.rename(self.partial_path, self.path)
        except OSError as exc:
            raise OutputError(f"{self.partial_path}: cannot rename to {self.path.name}") from exc
        return self.path

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _trailer_frame(start: int, facts: bytes) -> bytes:
    """The skippable frame of ``facts`` for a file of ``start`` bytes so far."""
    content = facts + _TRAILER_TAIL.pack(start, len(facts)) + _TRAILER_TAG
    return TRAILER_MAGIC + struct.pack("<I", len(content)) + content


def read_trailer(path: SegmentPath) -> bytes | None:
    """The JSON facts a segment's trailer holds, or None when it ends otherwise: only a trailer
    that ends the file and starts where it says it does counts (so two segments joined by
    ``cat`` are surveyed, never described by the second one's facts). Reads its last bytes."""
    end = len(_TRAILER_TAG) + _TRAILER_TAIL.size
    try:
        size = path.stat().st_size
        if size < end + 8:
            return None
        with path.open("rb", buffering=0) as fh:  # two small reads (two requests on S3)
            fh.seek(size - end)
            tail = fh.read(end)
            if not tail.endswith(_TRAILER_TAG):
                return None
            start, length = _TRAILER_TAIL.unpack_from(tail)
            if length > MAX_TRAILER_BYTES or start + 8 + length + end != size:
                return None
            fh.seek(start)
            head = fh.read(8 + length)
    except (OSError, KbookError):
        return None
    if head[:4] != TRAILER_MAGIC or struct.unpack_from("<I", head, 4)[0] != length + end:
        return None
    return head[8:]


def write_segment(path: Path, lines: Iterable[bytes], level: int = 3) -> Path:
    """Write a whole segment from encoded lines (tests, tools, converters)."""
    with SegmentWriter(path, level=level) as writer:
        for line in lines:
            writer.write(line)
    return path


# -- reading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """Something a reader could not use, with where it was."""

    path: SegmentPath
    line: int
    """1-based line number; 0 for a problem with the file as a whole."""
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.reason}"


@dataclass
class SegmentReader:
    """Iterates the decoded lines (dicts) of one segment, collecting problems instead of failing.

    A torn zstd tail, a cut last line, a line that is not JSON or not an object: each becomes a
    ``Problem`` in ``problems``; every good line around them is still yielded. A file that is not
    zstd at all, or is empty, raises ``SegmentError`` naming it before anything is yielded.
    """

    path: SegmentPath
    problems: list[Problem] = field(default_factory=list)
    lines_read: int = 0

    def __post_init__(self) -> None:
        check_segment_file(self.path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        decode = self.decode
        for number, line in self.raw_lines():
            record = decode(number, line)
            if record is not None:
                yield record

    def decode(self, number: int, line: bytes) -> dict[str, Any] | None:
        """Line ``number`` as a dict, or None after noting why it is not one in ``problems``."""
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.problems.append(Problem(self.path, number, "line is not JSON"))
            return None
        if type(record) is not dict:
            self.problems.append(Problem(self.path, number, "line is not a JSON object"))
            return None
        return record

    def raw_lines(self) -> Generator[tuple[int, bytes]]:
        """``(line number, line bytes without newline)`` for every complete line."""
        for first, lines in self.batches():
            for number, line in enumerate(lines, first):
                if line:
                    yield number, line

    def batches(self) -> Iterator[tuple[int, list[bytes]]]:
        """``(number of the first line, complete lines)`` for each decompressed piece.

        For loops that parse lines themselves (replay's hot path): one Python-level step per
        line instead of a generator hop. Lines are without their newline; empty lines are
        included (skip them) so that numbering stays exact. A cut last line is reported.
        """
        number = 1
        tail = b""
        skipping = False
        """Inside a line longer than ``MAX_LINE_BYTES``: its bytes are dropped up to its end."""
        for chunk in self._decompressed_chunks():
            if skipping:
                end = chunk.find(b"\n")
                if end < 0:
                    continue
                chunk = chunk[end + 1 :]
                skipping = False
                reason = f"line longer than {MAX_LINE_BYTES} bytes skipped"
                self.problems.append(Problem(self.path, number, reason))
                lines = [b""]  # keeps the numbering: the skipped line counts as one
                self.lines_read += 1
                yield number, lines
                number += 1
            text = tail + chunk
            lines = text.split(b"\n")
            tail = lines.pop()
            if len(tail) > MAX_LINE_BYTES:
                tail, skipping = b"", True
            if len(text) > MAX_LINE_BYTES:
                for index, line in enumerate(lines):
                    if len(line) > MAX_LINE_BYTES:
                        reason = f"line longer than {MAX_LINE_BYTES} bytes skipped"
                        self.problems.append(Problem(self.path, number + index, reason))
                        lines[index] = b""
            if lines:
                self.lines_read += len(lines)
                yield number, lines
                number += len(lines)
        if skipping:
            self.problems.append(
                Problem(self.path, number, f"last line longer than {MAX_LINE_BYTES} bytes skipped")
            )
        if tail:
            self.problems.append(
                Problem(self.path, number, f"last line cut short ({len(tail)} bytes dropped)")
            )

    def _decompressed_chunks(self) -> Iterator[bytes]:
        """Decompress frame by frame, so that a torn last frame is noticed and reported.

        After corrupt data (a flipped bit, a frame that never ends) reading resumes at the next
        zstd frame magic, so the flushes after the damage are still read; the skipped byte range
        is reported, and a line cut by the damage ends there (and is reported as not JSON).
        An object in storage fails mid-read (server gone, connection cut) as a ``SegmentError``.
        """
        try:
            yield from self._decompress()
        except OSError as exc:
            raise SegmentError(f"{self.path}: cannot read: {os_error_text(exc)}") from exc

    def _decompress(self) -> Iterator[bytes]:
        context = zstandard.ZstdDecompressor()
        frame = context.decompressobj()
        in_frame = False
        offset = 0
        frame_start = 0
        with self.path.open("rb") as fh:
            while True:
                data = fh.read(_READ_CHUNK)
                if not data and in_frame and (resume := _next_magic(fh, frame_start + 1)):
                    # Not a torn tail: damage made this frame swallow the frames after it.
                    self.problems.append(self._skipped(frame_start, resume, "a frame never ends"))
                    frame, in_frame = context.decompressobj(), False
                    offset = frame_start = resume
                    fh.seek(resume)
                    yield b"\n"
                    continue
                if not data:
                    break
                while data:
                    try:
                        out = frame.decompress(data)
                    except zstandard.ZstdError as exc:
                        resume = _next_magic(fh, frame_start + 1)
                        self.problems.append(
                            self._skipped(frame_start, resume, f"near byte {offset}: {exc}")
                        )
                        if resume is None:
                            return
                        frame, in_frame = context.decompressobj(), False
                        offset = frame_start = resume
                        fh.seek(resume)
                        yield b"\n"
                        break
                    in_frame = True
                    if out:
                        yield out
                    if frame.eof:
                        consumed = len(data) - len(frame.unused_data)
                        offset += consumed
                        frame_start = offset
                        data = frame.unused_data
                        frame = context.decompressobj()
                        in_frame = False
                    else:
                        offset += len(data)
                        data = b""
        if in_frame:
            self.problems.append(
                Problem(self.path, 0, f"torn zstd frame at the end (file cut at byte {offset})")
            )
        elif offset == 0:
            self.problems.append(
                Problem(self.path, 0, "no data: the recorder stopped before its first flush")
            )

    def _skipped(self, start: int, resume: int | None, why: str) -> Problem:
        """The problem for corrupt data from ``start`` up to ``resume`` (None: the end)."""
        where = (
            f"bytes {start}-{resume - 1} skipped"
            if resume
            else f"nothing readable from byte {start}"
        )
        return Problem(self.path, 0, f"corrupt zstd data ({why}); {where}")


def _next_magic(fh: BinaryIO, start: int) -> int | None:
    """File offset of the next zstd frame magic at or after ``start``, or None."""
    fh.seek(start)
    base, carry = start, b""
    while block := fh.read(_READ_CHUNK):
        data = carry + block
        found = data.find(ZSTD_MAGIC)
        if found >= 0:
            return base + found
        carry = data[-(len(ZSTD_MAGIC) - 1) :]
        base += len(data) - len(carry)
    return None


def os_error_text(exc: OSError) -> str:
    """What went wrong, in one line: the system's words for a local file, the first line of
    pyarrow's message for an object in storage (which has no ``strerror``)."""
    text = exc.strerror or str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def check_segment_file(path: SegmentPath) -> None:
    """Raise ``InputError``/``SegmentError`` unless ``path`` is a file that starts like zstd."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        with path.open("rb", buffering=0) as fh:  # 4 bytes: one small request for an object
            head = fh.read(4)
    except OSError as exc:
        raise SegmentError(f"{path}: cannot read: {os_error_text(exc)}") from exc
    if path.name.endswith(PARTIAL_SUFFIX) and ZSTD_MAGIC.startswith(head):
        return  # a recorder killed before (or during) its first flush: a segment, still empty
    if not head:
        raise SegmentError(f"{path}: empty file, not a segment")
    if head != ZSTD_MAGIC and not (head[1:] == _SKIPPABLE_MAGIC_HIGH and head[0] & 0xF0 == 0x50):
        raise SegmentError(f"{path}: not a zstd segment (kbook segments are .jsonl.zst files)")


def is_segment_name(path: SegmentPath) -> bool:
    return path.name.endswith(SUFFIX) or path.name.endswith(SUFFIX + PARTIAL_SUFFIX)


def sane_recv_ns(recv_ns: object) -> TypeGuard[int]:
    """True for an integer receive time within ``RECV_NS_MIN``..``RECV_NS_MAX``."""
    return type(recv_ns) is int and RECV_NS_MIN <= recv_ns < RECV_NS_MAX


def first_recv_ns(path: SegmentPath) -> int | None:
    """The receive time of the first line of a segment, or None when it has none."""
    reader = SegmentReader(path)
    for record in reader:
        recv_ns = record.get("recv_ns")
        if sane_recv_ns(recv_ns):
            return recv_ns
    return None


@overload
def find_segments(paths: Iterable[Path], dropped: list[Problem] | None = None) -> list[Path]: ...


@overload
def find_segments(
    paths: Iterable[SegmentPath], dropped: list[Problem] | None = None
) -> list[SegmentPath]: ...


def find_segments(
    paths: Iterable[SegmentPath], dropped: list[Problem] | None = None
) -> list[Path] | list[SegmentPath]:
    """Segment files named by ``paths`` (files, or folders searched recursively), in time order.
    Objects in storage come listed already (``kbook.storage.segment_inputs``) and are taken as
    files are.

    Order is by each file's first receive time, then by name (a recorder's ``-N`` counter read
    as a number); unfinished ``.partial`` segments count too. A named file is taken whatever its
    name (and checked to be a segment); a missing path or a folder without segments is an
    ``InputError`` naming it.

    Copies are left out, so that every frame is read once: two segments of one stream
    (``stream_name``) that start with the same frame (the run id of a ``session_start`` line
    before it, if any, its receive time and ``seq``, which no two frames of a stream share)
    hold the same frames from there on, since the recorder writes a
    frame once per stream. One is a copy of the other (a segment copied twice into the folder,
    under any name or in any sub-folder), or the head of it (a ``X.partial`` saved before the
    recorder closed and renamed it, e.g. by a sync tool copying it mid-write). The largest is
    read (a finished segment before a ``.partial`` of the same size, then the first in name
    order) and each other one is appended to ``dropped`` as a ``Problem`` naming it and the one
    read, for the caller to warn about.
    """
    found: list[SegmentPath] = []
    for path in paths:
        if isinstance(path, Path) and path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and is_segment_name(p))
            if not inside:
                raise InputError(f"{path}: no segments (*{SUFFIX}) in this folder")
            found.extend(inside)
        elif path.exists():
            check_segment_file(path)
            found.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(found))
    starts = {path: first_recv_ns(path) for path in unique}
    for copy, kept in _copies(unique, starts):
        unique.remove(copy)
        if dropped is not None:
            what = "the head of" if copy.stat().st_size < kept.stat().st_size else "the same as"
            reason = f"a stale copy of {what} {kept}: left out, its frames read once from there"
            dropped.append(Problem(copy, 0, reason))
    return sorted(unique, key=lambda p: (starts[p] is None, starts[p] or 0, *_name_order(p)))


def _copies(
    paths: list[SegmentPath], starts: dict[SegmentPath, int | None]
) -> list[tuple[SegmentPath, SegmentPath]]:
    """``(copy, kept)`` for each segment left out as a copy (see ``find_segments``). Only
    segments of one stream with the same first receive time are opened again for their first
    frame, so a folder without copies costs nothing more."""
    alike: dict[tuple[str, int], list[SegmentPath]] = {}
    for path in paths:
        start = starts[path]
        if start is not None:
            alike.setdefault((stream_name(path), start), []).append(path)
    copies: list[tuple[SegmentPath, SegmentPath]] = []
    for group in alike.values():
        if len(group) < 2:
            continue
        by_frame: dict[tuple[str | None, int, int], list[SegmentPath]] = {}
        for path in group:
            frame = _first_frame(path)
            if frame is not None:
                by_frame.setdefault(frame, []).append(path)
        for same in by_frame.values():
            same.sort(
                key=lambda p: (
                    -p.stat().st_size,
                    p.name.endswith(PARTIAL_SUFFIX),
                    *_name_order(p),
                    str(p),
                )
            )
            copies.extend((copy, same[0]) for copy in same[1:])
    return copies


def _first_frame(path: SegmentPath) -> tuple[str | None, int, int] | None:
    """``(run id, recv_ns, seq)`` of a segment's first line that has both times, or None; the
    run id is the one a ``session_start`` line before it names (the first segment of a run's
    stream), else None."""
    run_id: str | None = None
    try:
        for record in SegmentReader(path):
            recv_ns, seq, meta = record.get("recv_ns"), record.get("seq"), record.get("meta")
            if type(meta) is dict and meta.get("type") == "session_start":
                found = meta.get("run_id")
                run_id = found if isinstance(found, str) else None
            if type(recv_ns) is int and type(seq) is int:
                return run_id, recv_ns, seq
    except SegmentError:
        return None
    return None


def segment_path(root: Path, pair: str, start_ns: int, counter: int = 0) -> Path:
    """Where the recorder puts the segment of ``pair`` that starts at ``start_ns``:
    ``root/raw/BTC-USD/2026-11-21/BTC-USD.20261121T100000Z.jsonl.zst``, with ``-1``, ``-2``, ...
    after the stamp when ``counter`` de-duplicates segments started in the same second."""
    name = file_name(pair)
    stamp = utc_text(start_ns, 0).replace("-", "").replace(":", "")
    suffix = f"-{counter}" if counter else ""
    return root / "raw" / name / utc_day(start_ns) / f"{name}.{stamp}{suffix}{SUFFIX}"


def stream_name(path: SegmentPath) -> str:
    """The stream a segment belongs to (``segment_path``'s pair part): ``BTC-USD``."""
    return path.name.split(".", 1)[0]


def _name_order(path: SegmentPath) -> tuple[str, int, str]:
    """Names in the order the recorder made them: ``X.<start>.jsonl.zst``, then ``X.<start>-1``,
    ``-2``, ... ``-10`` (as plain text ``-1`` sorts before ``.`` and ``-10`` before ``-2``). Ties
    of first receive time are real: while the wall clock is behind, the recorder's stamps hold."""
    stem = path.name.removesuffix(PARTIAL_SUFFIX).removesuffix(SUFFIX)
    base, dash, counter = stem.rpartition("-")
    if dash and counter.isdigit():
        return base, int(counter), path.name
    return stem, 0, path.name
