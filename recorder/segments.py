"""Per-pair streams of segments: naming, rotation, checkpoints, flushing.

Layout: ``<out>/raw/BTC-USD/2026-11-21/BTC-USD.20261121T000000Z.jsonl.zst``, the time being the
segment's start in UTC. Time rotation is aligned to UTC boundaries (``--rotate 1h`` starts a segment
on every hour); size rotation starts one when the compressed file reaches the limit, checked at each
flush (so a segment may pass the limit by up to one flush interval of data, and however small the
limit, a pair gets at most one new file per flush interval).

A segment the recorder closes ends with its survey facts (``kbook.segment.read_trailer``: a zstd
skippable frame every reader skips), found by the survey's scan (``kbook.survey_scan``) of each
zstd frame's text as it is compressed, so that replay need not decompress the segment to plan.

Every segment stands on its own: a rotated segment's first lines are ``checkpoint`` meta lines of
the pair's books that were valid at that moment, so replay needs no earlier file. Rotation happens
between two frames in the single recorder thread, so no frame is lost or written twice (frames
the recorder's fast path applied together are written together, and the segment rotates after
them: a segment may hold one such batch stamped past its end).

A name is never reused: ``SegmentWriter`` creates ``<name>.partial`` exclusively, and when the name
for that second is taken (a restart, or several size rotations in one second) a counter is added:
``BTC-USD.20261121T000000Z-1.jsonl.zst``.

A stream starts *pending*: its lines are held in memory until the pair is subscribed, so a pair
Kraken refuses leaves no files behind. Held lines are written as soon as the stream commits, when
more than ``max_held`` are held, and when the run stops before the answer came: only a refused
pair's lines are dropped.

On a disk error (full disk, file size limit) every stream is cut back to its last successful
flush and left as ``.partial``: the files hold the same prefix of the feed, nothing newer.

The open ``.partial`` is checked at every flush: when it was deleted or replaced (an operator, a
cleanup script), the lines since the last flush go into a new segment, which starts with a
``segment_lost`` meta line and then the pair's checkpoints.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from kbook.api import Api
from kbook.dialect import dialect_for
from kbook.errors import OutputError
from kbook.segment import PARTIAL_SUFFIX, SegmentWriter, meta_line, segment_path
from kbook.survey_scan import SurveyScan, facts_json

MAX_HELD_LINES = 10_000
"""A pending stream that holds more than this commits anyway: memory is not storage."""
UNFLUSHED_KEPT = 32 * 1024 * 1024
"""Bytes of lines since the last flush kept for a replaced ``.partial``, at most."""

CheckpointSource = Callable[[str], list[dict[str, Any]]]
"""Given a user pair, the ``checkpoint`` meta records of its books that are valid now."""


def open_unique(root: Path, pair: str, start_ns: int) -> SegmentWriter:
    """A writer on the first free name for this start; never touches an existing file."""
    for counter in range(10_000):
        path = segment_path(root, pair, start_ns, counter)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        if path.exists() or partial.exists():
            continue
        try:
            writer = SegmentWriter(path)
        except OutputError:
            if path.exists() or partial.exists():
                continue  # lost a race with another writer: take the next name
            raise
        _sync_folder(path.parent)
        return writer
    raise OutputError(f"{segment_path(root, pair, start_ns)}: no free segment name for this second")


def _sync_folder(folder: Path) -> None:
    """fsync a folder so a new file's name survives a power cut, not just ``kill -9``."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SegmentStream:
    """The successive segments of one pair; at most one open at a time."""

    def __init__(
        self,
        root: Path,
        pair: str,
        rotate_ns: int,
        max_bytes: int | None,
        checkpoints: CheckpointSource,
        max_held: int = MAX_HELD_LINES,
        api: str | None = Api.V1,
    ) -> None:
        self.root = root
        self.pair = pair
        self.api = api
        self.scan: SurveyScan | None = None
        """The survey scan of the open segment's text, whose facts end it when it closes."""
        self.max_held = max_held
        self.rotate_ns = rotate_ns
        self.max_bytes = max_bytes
        self.checkpoints = checkpoints
        self.writer: SegmentWriter | None = None
        self.boundary_ns = 0
        self._head_lines = 0
        self.held: list[tuple[int, bytes]] = []
        self.committed = False
        self.closed = False
        self.finished: list[Path] = []
        """Final paths of the segments closed so far."""
        self.bytes_closed = 0
        self.unflushed: list[bytes] = []
        """Lines written since the last flush, to rewrite if the ``.partial`` disappears."""
        self._flushed_in = 0
        self.good_bytes = 0
        """Size of the open file when the last flush of every stream succeeded: it ends on a
        whole zstd frame."""

    # -- writing --------------------------------------------------------------------------------

    def write(self, now_ns: int, line: bytes) -> None:
        """Append a line, rotating first when the segment's time or size is up."""
        if self.closed:
            return
        if not self.committed:
            self.held.append((now_ns, line))
            if len(self.held) > self.max_held:
                self.commit()
            return
        if now_ns >= self.boundary_ns:
            self.rotate(now_ns, now_ns - now_ns % self.rotate_ns, "rotate")
        assert self.writer is not None
        self.writer.write(line)
        if self.writer.bytes_in - self._flushed_in < UNFLUSHED_KEPT:
            self.unflushed.append(line)

    def write_lines(self, now_ns: int, lines: list[bytes]) -> None:
        """``write`` of frames the books have already taken (the recorder's fast path), in
        order, with one call to the writer. The segment's time may be up: the lines still go
        into it and it rotates after them, so that the checkpoints that start the next one are
        the books as these lines left them."""
        if self.closed or not self.committed:
            for line in lines:
                self.write(now_ns, line)
            return
        assert self.writer is not None
        self.writer.write_lines(lines)
        if self.writer.bytes_in - self._flushed_in < UNFLUSHED_KEPT:
            self.unflushed.extend(lines)
        if now_ns >= self.boundary_ns:
            self.rotate(now_ns, now_ns - now_ns % self.rotate_ns, "rotate")

    def commit(self) -> None:
        """Start writing to disk: open the first segment and write the held lines."""
        if self.committed or self.closed:
            return
        self.committed = True
        held, self.held = self.held, []
        start_ns = held[0][0] if held else time.time_ns()
        self._open(start_ns, [])
        self._flushed_in = 0
        assert self.writer is not None
        for _, line in held:
            self.writer.write(line)
            self.unflushed.append(line)

    def rotate_if_due(self, now_ns: int) -> None:
        """Rotate when ``now_ns`` has passed the next UTC boundary."""
        if self.writer is not None and now_ns >= self.boundary_ns:
            self.rotate(now_ns, now_ns - now_ns % self.rotate_ns, "rotate")

    def _rotate_if_full(self, now_ns: int) -> None:
        """After a flush: rotate when the file reached ``max_bytes``."""
        if (
            self.writer is not None
            and self.max_bytes is not None
            and self.writer.bytes_out >= self.max_bytes
            and self.writer.lines > self._head_lines
        ):
            # Only once something follows the checkpoints: a limit smaller than a checkpoint
            # must not make every segment hold nothing else.
            self.rotate(now_ns, now_ns, "size")

    def rotate(self, now_ns: int, start_ns: int, reason: str) -> None:
        """Close the current segment and open the next, which starts with checkpoints."""
        first = [meta_line(now_ns, record) for record in self.checkpoints(self.pair)]
        self._close_writer(now_ns, reason)
        self._open(start_ns, first)
        assert self.writer is not None
        self.writer.flush()
        self.unflushed = []
        self._flushed_in = self.writer.bytes_in
        self.good_bytes = self.writer.bytes_out

    def flush(self, now_ns: int, syncer: Syncer | None = None) -> bool:
        """End a zstd frame and fsync (on ``syncer``'s thread when given), if anything was
        written since the last flush; then rotate if the file is full. False when the
        ``.partial`` was found deleted or replaced (the lines since the last flush went into a
        new segment)."""
        writer = self.writer
        if writer is None or not writer.pending:
            return True
        if not writer.on_disk():
            self._replace(now_ns, writer)
            return False
        writer.flush(fsync=syncer is None)
        if syncer is not None:
            syncer.sync(writer)
        self.unflushed = []
        self._flushed_in = writer.bytes_in
        self._rotate_if_full(now_ns)
        return True

    def close(self, now_ns: int, reason: str, keep_held: bool = False) -> None:
        """Close for good: write ``segment_end``, flush, rename. Held lines (no answer yet) are
        written first if ``keep_held`` (frames came, the answer did not), else dropped."""
        if self.closed:
            return
        if keep_held and self.held:
            self.commit()
        self.closed = True
        self.held = []
        writer = self.writer
        if writer is not None and not writer.on_disk():
            self._replace(now_ns, writer)
        self._close_writer(now_ns, reason)

    # -- reading --------------------------------------------------------------------------------

    @property
    def current(self) -> Path | None:
        return self.writer.partial_path if self.writer is not None else None

    @property
    def bytes_written(self) -> int:
        """Compressed bytes in this pair's files so far."""
        return self.bytes_closed + (self.writer.bytes_out if self.writer is not None else 0)

    # -- internals ------------------------------------------------------------------------------

    def _replace(self, now_ns: int, lost: SegmentWriter) -> None:
        """The open ``.partial`` is gone: start a new segment with the lines since the last flush,
        then the checkpoints (the books as they are after those lines)."""
        lost.abandon()
        self.writer = None
        lines, self.unflushed = self.unflushed, []
        meta: dict[str, Any] = {"type": "segment_lost", "path": str(lost.partial_path)}
        meta["reason"] = "deleted or replaced while open"
        meta["lines_rewritten"] = len(lines)
        head = [meta_line(now_ns, meta), *lines]
        head += [meta_line(now_ns, record) for record in self.checkpoints(self.pair)]
        self._open(now_ns, head)
        assert self.writer is not None
        self.writer.flush()
        self._flushed_in = self.writer.bytes_in
        self.good_bytes = self.writer.bytes_out

    def cut_back(self) -> None:
        """After a disk error: cut the open file back to its last successful flush and leave it
        as ``.partial``; nothing more is written to this stream."""
        writer, self.writer = self.writer, None
        self.closed = True
        self.held = []
        if writer is not None:
            writer.abandon(cut_at=self.good_bytes)

    def _open(self, start_ns: int, first_lines: Iterable[bytes]) -> None:
        self.good_bytes = 0
        self.writer = open_unique(self.root, self.pair, start_ns)
        self.scan = dialect_for(self.api).survey_scan()
        self.writer.on_text = self._scan_text
        self.boundary_ns = (start_ns // self.rotate_ns + 1) * self.rotate_ns
        for line in first_lines:
            self.writer.write(line)
        self._head_lines = self.writer.lines

    def _scan_text(self, text: bytes) -> None:
        """Scan the text of a zstd frame of the open segment. The scan is made for hostile
        files and should never fail; if it does, the segment ends without facts (replay scans
        it), and the recording goes on."""
        if self.scan is None:
            return
        try:
            self.scan.body(text)
        except Exception:
            self.scan = None

    def _close_writer(self, now_ns: int, reason: str) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return

        def trailer() -> bytes | None:
            """The segment's survey facts, as ``replay.survey`` would find them by reading it."""
            scan = self.scan
            return None if scan is None else orjson.dumps(facts_json(scan.info(writer.path, 0)))

        try:
            writer.write(meta_line(now_ns, {"type": "segment_end", "reason": reason}))
            writer.close(trailer)
        finally:
            self.scan = None
            if writer.closed and writer.path.exists():
                self.finished.append(writer.path)
                self.bytes_closed += writer.path.stat().st_size


class Syncer:
    """fsyncs files on its own thread, so that the recorder's thread never waits on the disk.

    A flush writes every changed file's new zstd frame first (readers and ``kill -9`` see the
    data from then on) and hands the files to this thread, which fsyncs them in one batch (a
    power cut loses at most what was not fsynced yet). A file still waiting from an earlier
    flush is fsynced once. An fsync that fails is raised as ``OutputError`` by the next
    ``check`` (the next flush), like a failed write.
    """

    def __init__(self) -> None:
        self._pending: dict[Path, int] = {}
        """Files to fsync -> a duplicate of their descriptor (closed once synced)."""
        self._error: OutputError | None = None
        self._ready = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        """Started by the first ``sync``."""

    def sync(self, writer: SegmentWriter) -> None:
        handle = writer.sync_handle()
        if handle is None:
            return
        with self._ready:
            old = self._pending.pop(writer.partial_path, None)
            self._pending[writer.partial_path] = handle
            self._ready.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kbook-fsync", daemon=True)
                self._thread.start()
        if old is not None:
            os.close(old)

    def check(self) -> None:
        """Raise the first fsync that failed since the last check."""
        with self._ready:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """fsync what is pending, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            while self._thread is not None and (self._pending or self._busy):
                self._ready.wait()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                batch, self._pending = self._pending, {}
                self._busy = True
            for path, handle in batch.items():
                try:
                    os.fsync(handle)
                except OSError as exc:
                    with self._ready:
                        self._error = self._error or OutputError(
                            f"{path}: write failed: {exc.strerror}"
                        )
                finally:
                    os.close(handle)
            with self._ready:
                self._busy = False
                self._ready.notify_all()


class SegmentStreams:
    """Every pair's stream, with routing helpers and the flush timer."""

    def __init__(
        self,
        root: Path,
        pairs: Iterable[str],
        rotate_ns: int,
        max_bytes: int | None,
        checkpoints: CheckpointSource,
        max_held: int = MAX_HELD_LINES,
        api: str | None = Api.V1,
    ) -> None:
        self.streams = {
            pair: SegmentStream(root, pair, rotate_ns, max_bytes, checkpoints, max_held, api)
            for pair in pairs
        }
        self.syncer = Syncer()

    def write(self, now_ns: int, line: bytes, pairs: Iterable[str] | None = None) -> None:
        """Write ``line`` to the streams of ``pairs`` (None: every open stream)."""
        targets = self.streams if pairs is None else pairs
        try:
            for pair in targets:
                stream = self.streams.get(pair)
                if stream is not None:
                    stream.write(now_ns, line)
        except OutputError:
            self._cut_back()
            raise

    def write_lines(self, now_ns: int, lines: list[bytes], pair: str) -> None:
        """Write ``lines``, in order, to the stream of ``pair``."""
        stream = self.streams.get(pair)
        if stream is None:
            return
        try:
            stream.write_lines(now_ns, lines)
        except OutputError:
            self._cut_back()
            raise

    def rotate_if_due(self, now_ns: int) -> None:
        for stream in self.streams.values():
            stream.rotate_if_due(now_ns)

    def flush(self, now_ns: int) -> list[str]:
        """Flush every stream written since the last flush (one fsync each, on the syncer's
        thread); the pairs whose ``.partial`` was found deleted or replaced."""
        try:
            self.syncer.check()
            for stream in self.streams.values():
                if stream.writer is not None and stream.writer.pending:
                    stream.writer.seal()  # compress every file's frame before writing any
            syncer = self.syncer
            replaced = [p for p, stream in self.streams.items() if not stream.flush(now_ns, syncer)]
        except OutputError:
            self._cut_back()
            raise
        for stream in self.streams.values():
            # Only once every stream is flushed: a pass is all or nothing.
            if stream.writer is not None:
                stream.good_bytes = stream.writer.bytes_out
        return replaced

    def _cut_back(self) -> None:
        """A disk error: every stream is cut back to its last successful flush, so that what is
        on disk is the same prefix of the feed in every pair's file (the streams flushed before
        the one that failed would otherwise hold frames the failed one lost)."""
        for stream in self.streams.values():
            stream.cut_back()

    def close(self, now_ns: int, reason: str, keep_held: bool = False) -> None:
        """Close every stream; on a disk error, still try the others, then raise the first."""
        first_error: OutputError | None = None
        self.syncer.close()
        try:
            self.syncer.check()
        except OutputError as exc:
            first_error = exc
        for stream in self.streams.values():
            try:
                stream.close(now_ns, reason, keep_held)
            except OutputError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    @property
    def bytes_written(self) -> int:
        return sum(stream.bytes_written for stream in self.streams.values())

    @property
    def finished(self) -> list[Path]:
        return [path for stream in self.streams.values() for path in stream.finished]

    def current(self) -> list[Path]:
        return [s.current for s in self.streams.values() if s.current is not None]
