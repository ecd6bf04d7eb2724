"""Ship closed segments to object storage, verify each, and free local disk by retention rules.

A segment is uploaded to ``DEST/<path under the raw folder>`` (``s3://bucket/prefix/BTC-USD/
2026-11-21/BTC-USD.20261121T000000Z.jsonl.zst``), read back, and counted as uploaded only when the
object's size and SHA-256 equal the local file's. Only then is it written to the *ledger*, the
append-only file ``.kbook-uploads.jsonl`` in the raw folder (one JSON line per segment: path,
destination, size, hash), fsynced. The ledger is what survives restarts: every closed segment
under the raw folder that it does not list for this destination is uploaded by the next run, and
only segments it lists may ever be deleted. ``.partial`` files (open, or left by a killed run)
are never uploaded nor deleted.

Retention (``Retention``), applied after uploads: ``keep_local_ns`` deletes uploaded segments
closed longer ago than that; ``min_free_bytes`` deletes uploaded segments, oldest first, while the
disk has less free space than that. When it is short of space and nothing uploaded is left to
delete, the uploader warns (once per episode) and shows it (``below_floor``).

``Uploader`` does this in a thread of its own beside the recorder, so writing segments never waits
on the network; failures are retried with capped exponential backoff and counted as backlog.
``upload_folder`` is the same work once over an existing folder (``kbook upload``); it is
idempotent: what the ledger lists is skipped, and an object already there with the same size and
hash is recorded without being sent again.

Object storage goes through ``pyarrow.fs`` with the standard AWS variables: credentials as the
AWS SDK finds them (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...),
``AWS_ENDPOINT_URL`` for an S3-compatible server, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.
A local folder (or ``file://``) works as a destination too.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow.fs as pafs

from kbook.errors import OutputError, UsageError
from kbook.live.backoff import Backoff
from kbook.segment import SUFFIX
from kbook.storage import open_location
from kbook.units import SECOND
from recorder.metrics import disk_free_bytes

LEDGER_NAME = ".kbook-uploads.jsonl"
CHUNK = 1 << 20


class UploadFailed(Exception):
    """One segment could not be uploaded and verified; the message says why."""


@dataclass(frozen=True)
class Retention:
    """When a local copy of an uploaded segment may go (None: that rule is off)."""

    keep_local_ns: int | None = None
    min_free_bytes: int | None = None


@dataclass(frozen=True)
class Entry:
    """An uploaded and verified segment, as the ledger lists it."""

    path: str
    """Relative to the raw folder, ``/``-separated: also the object's key under the prefix."""
    size: int
    sha256: str


# -- the destination ---------------------------------------------------------------------------


def open_destination(uri: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and base path for ``s3://bucket/prefix`` or a local folder (``kbook.storage``)."""
    location = open_location(uri, "--upload")
    return location.fs, location.path


def sha256_of(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a local file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _remote_digest(fs: pafs.FileSystem, key: str) -> tuple[int, str] | None:
    """Size and SHA-256 of an object read back in full; None when it does not exist."""
    info = fs.get_file_info(key)
    if info.type != pafs.FileType.File:
        return None
    digest = hashlib.sha256()
    size = 0
    with fs.open_input_stream(key, compression=None) as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def upload_segment(fs: pafs.FileSystem, base: str, raw: Path, path: Path) -> tuple[Entry, bool]:
    """Upload ``path`` (under ``raw``) and verify it by reading it back.

    Returns the ledger entry and whether bytes were sent (False: the same object was there).
    Raises ``UploadFailed``; a vanished local file raises ``FileNotFoundError``.
    """
    relative = path.relative_to(raw).as_posix()
    key = f"{base}/{relative}"
    size, digest = sha256_of(path)
    try:
        if _remote_digest(fs, key) == (size, digest):
            return Entry(relative, size, digest), False
        parent = key.rsplit("/", 1)[0]
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(parent, recursive=True)
        with path.open("rb") as file, fs.open_output_stream(key, compression=None) as out:
            while chunk := file.read(CHUNK):
                out.write(chunk)
        remote = _remote_digest(fs, key)
    except OSError as exc:
        raise UploadFailed(f"{relative}: {_first_line(exc)}") from exc
    if remote != (size, digest):
        raise UploadFailed(
            f"{relative}: the object read back differs ({remote} != {(size, digest)})"
        )
    return Entry(relative, size, digest), True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the ledger --------------------------------------------------------------------------------


class Ledger:
    """The segments of ``raw`` uploaded to ``destination``, kept in ``raw/.kbook-uploads.jsonl``.

    Appends are one line each, flushed and fsynced before a segment counts as uploaded; a line
    cut by a crash is ignored when read (that segment is then checked again, which is harmless).
    """

    def __init__(self, raw: Path, destination: str, compact: bool = False) -> None:
        """``compact``: first rewrite the file without the segments no longer on disk."""
        self.raw = raw
        self.path = raw / LEDGER_NAME
        self.destination = destination
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()
        lines = self._read()
        if compact:
            lines = self._compact(lines)
        for line in lines:
            try:
                record = orjson.loads(line)
                entry = Entry(record["path"], int(record["size"]), str(record["sha256"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            if record.get("dest") == destination:
                self.entries[entry.path] = entry

    def _read(self) -> list[bytes]:
        try:
            return self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot read the upload ledger ({exc})") from exc

    def _compact(self, lines: list[bytes]) -> list[bytes]:
        """Keep the lines of segments still on disk (for any destination), replacing the file
        atomically: the ledger stays as small as the folder however long the recorder runs."""
        kept = []
        for line in lines:
            try:
                relative = orjson.loads(line)["path"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if isinstance(relative, str) and (self.raw / relative).exists():
                kept.append(line)
        if len(kept) == len(lines):
            return lines
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with temporary.open("wb") as file:
                file.write(b"".join(line + b"\n" for line in kept))
                file.flush()
                os.fsync(file.fileno())
            temporary.replace(self.path)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot rewrite the upload ledger ({exc})") from exc
        return kept

    def __contains__(self, relative: str) -> bool:
        return relative in self.entries

    def record(self, entry: Entry) -> None:
        line = orjson.dumps(
            {
                "path": entry.path,
                "dest": self.destination,
                "size": entry.size,
                "sha256": entry.sha256,
                "uploaded_ns": time.time_ns(),
            }
        )
        with self._lock:
            try:
                with self.path.open("ab") as file:
                    file.write(line + b"\n")
                    file.flush()
                    os.fsync(file.fileno())
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot write the upload ledger ({exc})") from exc
            self.entries[entry.path] = entry


def closed_segments(raw: Path) -> list[Path]:
    """Every closed segment under ``raw``, oldest first (by the start time in its name)."""
    found = [
        Path(folder) / name
        for folder, _dirs, names in os.walk(raw)
        for name in names
        if name.endswith(SUFFIX)
    ]
    return sorted(found, key=_start_key)


def _start_key(path: Path) -> tuple[str, str]:
    """``BTC-USD.20261121T000000Z-1.jsonl.zst`` -> (``20261121T000000Z-1``, full path)."""
    name = path.name.removesuffix(SUFFIX)
    return (name.split(".", 1)[1] if "." in name else name, str(path))


# -- retention ---------------------------------------------------------------------------------


@dataclass
class RetentionResult:
    deleted: list[Path]
    below_floor: bool


def apply_retention(
    raw: Path, ledger: Ledger, retention: Retention, now_ns: int | None = None
) -> RetentionResult:
    """Delete local copies the rules allow: uploaded ones only, oldest first."""
    deleted: list[Path] = []
    if retention.keep_local_ns is None and retention.min_free_bytes is None:
        return RetentionResult(deleted, False)
    now_ns = time.time_ns() if now_ns is None else now_ns
    uploaded = []
    for entry in list(ledger.entries.values()):
        path = raw / entry.path
        try:
            stat = path.stat()
        except OSError:
            continue  # gone already
        if stat.st_size == entry.size:  # the very file that was verified, not a new one
            uploaded.append((stat.st_mtime_ns, path))
    uploaded.sort()
    remaining: list[Path] = []
    for mtime_ns, path in uploaded:
        if retention.keep_local_ns is not None and now_ns - mtime_ns >= retention.keep_local_ns:
            if _delete(path):
                deleted.append(path)
        else:
            remaining.append(path)
    below = False
    if retention.min_free_bytes is not None:
        free = disk_free_bytes(raw)
        while free is not None and free < retention.min_free_bytes:
            if not remaining:
                below = True
                break
            path = remaining.pop(0)
            if _delete(path):
                deleted.append(path)
            free = disk_free_bytes(raw)
    return RetentionResult(deleted, below)


def _delete(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# -- the uploader thread -----------------------------------------------------------------------


class Uploader:
    """Uploads closed segments of ``raw`` in a thread of its own; see the module docstring."""

    def __init__(
        self,
        raw: Path,
        destination: str,
        retention: Retention | None = None,
        warn: Callable[[str], None] = lambda text: None,
        backoff: Backoff | None = None,
        interval_ns: int = SECOND,
        rescan_ns: int = 600 * SECOND,
    ) -> None:
        """``warn`` takes one-line warnings (a failed upload, a disk under the floor);
        ``rescan_ns``: how often the whole folder is searched again for segments to upload."""
        self.raw = raw
        self.destination = destination
        self.fs, self.base = open_destination(destination)
        self.retention = retention or Retention()
        self.warn = warn
        self.backoff = backoff or Backoff(immediate=0, base_ns=SECOND, cap_ns=60 * SECOND)
        self.interval_ns = interval_ns
        self.rescan_ns = rescan_ns
        self.ledger = Ledger(raw, destination, compact=True)
        self.uploaded = 0
        """Segments uploaded by this uploader."""
        self.deleted = 0
        """Local copies deleted by retention."""
        self._pending: set[Path] = set()
        self._notified: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_success_ns: int | None = None
        self._below_floor = False
        self._failing = False
        self._retry_mono = 0
        self._draining = False

    # -- what the metrics read (from another thread) --------------------------------------------

    @property
    def backlog_files(self) -> int:
        """Segments waiting: pending, and handed over but not looked at yet."""
        return len(self._pending) + self._notified.qsize()

    @property
    def last_success_ns(self) -> int | None:
        return self._last_success_ns

    @property
    def below_floor(self) -> bool:
        return self._below_floor

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> Uploader:
        self._thread = threading.Thread(target=self._run, name="kbook-upload", daemon=True)
        self._thread.start()
        return self

    def notify(self, paths: Iterable[Path]) -> None:
        """Segments just closed (any thread): uploaded without waiting for the next rescan."""
        for path in paths:
            self._notified.put(path)
        self._wake.set()

    def stop(self, drain: bool = False, timeout: float = 30.0) -> None:
        """Stop after the segment being uploaded. With ``drain``, first try once more to upload
        what is pending (the segments closed as the recording stopped), for up to ``timeout``
        seconds; whatever is left waits for the next run (an unfinished upload leaves no object,
        S3 writes being all or nothing)."""
        self._draining = drain
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        next_scan = 0
        while not self._stop.is_set():
            now = time.monotonic_ns()
            if now >= next_scan:
                self._rescan()
                next_scan = now + self.rescan_ns
            self._take_notified()
            if now >= self._retry_mono:
                self.upload_pending()
            self.retain()
            self._wake.wait(self.interval_ns / SECOND)
            self._wake.clear()
        if self._draining:
            self._take_notified()
            self.upload_pending()
            self.retain()

    def _rescan(self) -> None:
        try:
            found = closed_segments(self.raw)
        except OSError as exc:
            self.warn(f"cannot search {self.raw} for segments to upload: {exc}")
            return
        self._pending |= {path for path in found if self._key(path) not in self.ledger}

    def _take_notified(self) -> None:
        while True:
            try:
                path = self._notified.get_nowait()
            except queue.Empty:
                return
            if self._key(path) not in self.ledger:
                self._pending.add(path)

    def _key(self, path: Path) -> str:
        return path.relative_to(self.raw).as_posix()

    def upload_pending(self) -> None:
        """Upload what is pending, oldest first; on a failure, back off and try again later."""
        for path in sorted(self._pending, key=_start_key):
            if self._stop.is_set() and not self._draining:
                return
            try:
                entry, _sent = upload_segment(self.fs, self.base, self.raw, path)
            except FileNotFoundError:
                self._pending.discard(path)  # deleted by hand: nothing left to upload
                continue
            except UploadFailed as exc:
                delay = self.backoff.next_delay_ns()
                if not self._failing:
                    self.warn(f"upload to {self.destination} failed: {exc}; retrying")
                self._failing = True
                self._retry_mono = time.monotonic_ns() + delay
                return
            self.ledger.record(entry)
            self._pending.discard(path)
            self.uploaded += 1
            self._last_success_ns = time.time_ns()
            self.backoff.healthy()
            if self._failing:
                self._failing = False
                self.warn(f"uploads to {self.destination} work again")

    def retain(self) -> None:
        """Apply the retention rules once (the thread does after every round of uploads)."""
        result = apply_retention(self.raw, self.ledger, self.retention)
        self.deleted += len(result.deleted)
        if result.below_floor and not self._below_floor:
            self.warn(
                f"{self.raw}: free space is below --min-free and no uploaded segment is left to "
                "delete; the segments not yet uploaded are kept"
            )
        self._below_floor = result.below_floor


# -- once over a folder (kbook upload) ---------------------------------------------------------


@dataclass
class UploadSummary:
    uploaded: int = 0
    """Segments sent and verified."""
    already: int = 0
    """Segments the ledger listed, or found at the destination with the same size and hash."""
    failed: list[str] = field(default_factory=list)
    deleted: int = 0


def upload_folder(
    raw: Path, destination: str, retention: Retention | None = None, attempts: int = 3
) -> UploadSummary:
    """Upload every closed segment under ``raw`` not yet uploaded, then apply ``retention``."""
    if not raw.is_dir():
        raise UsageError(f"{raw}: no such folder of segments (give the recorder's OUT/raw)")
    fs, base = open_destination(destination)
    ledger = Ledger(raw, destination, compact=True)
    summary = UploadSummary()
    for path in closed_segments(raw):
        if path.relative_to(raw).as_posix() in ledger:
            summary.already += 1
            continue
        for attempt in _attempts(attempts):
            try:
                entry, sent = upload_segment(fs, base, raw, path)
            except FileNotFoundError:
                break
            except UploadFailed as exc:
                if attempt == attempts:
                    summary.failed.append(str(exc))
                continue
            ledger.record(entry)
            if sent:
                summary.uploaded += 1
            else:
                summary.already += 1
            break
    if retention is not None:
        summary.deleted = len(apply_retention(raw, ledger, retention).deleted)
    return summary


def _attempts(count: int) -> Iterator[int]:
    """1..count, sleeping 1 s, 2 s, 4 s ... between attempts."""
    for attempt in range(1, count + 1):
        if attempt > 1:
            time.sleep(min(2 ** (attempt - 2), 60))
        yield attempt
