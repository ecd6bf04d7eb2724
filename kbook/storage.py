"""Where kbook reads and writes files: a local folder or object storage (``s3://bucket/prefix``).

One seam for every command that takes a location (``replay``, ``verify``, ``plot``, ``upload``):
``open_location`` turns a path or an ``s3://`` URI into a ``pyarrow.fs`` filesystem and a path on
it. Object storage is configured by the standard AWS variables, as the AWS SDK reads them:
credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ...), ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO, SeaweedFS, ...),
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Requests time out (5 s to connect, 30 s per request)
and are retried three times, so a stalled server is an error, not a hang.

Reading: ``local_segments`` copies the segments under ``s3://`` inputs into a private local
folder for the duration of a block (streamed, a megabyte at a time) and hands back local paths, so
the segment reader reads exactly the bytes it reads from a local copy.

Writing: ``publish_dataset`` moves a finished local dataset to ``s3://``. Object storage has no
atomic rename of a folder, so the dataset's own manifest is the commit point: the old manifest is
deleted first, every file is uploaded under a temporary key (``_kbook_tmp-<id>/...``, a prefix
dataset readers skip) and moved to its place, files of an older dataset that the new one does not
have are deleted, and the manifest, listing every file, is written last (then the temporary keys
that killed runs left are removed). A run that dies on the way leaves no manifest, which
``read_snapshots`` refuses ("did not finish"); readers that trust the manifest never see half a
dataset. Each file is one object written in one piece: no zero-byte
"folder" objects (which break readers going through s3fs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs

from kbook.errors import InputError, OutputError, UsageError
from kbook.segment import PARTIAL_SUFFIX, SUFFIX

SCHEME = "s3://"
CHUNK = 1 << 20
TEMPORARY_PREFIX = "_kbook_tmp-"


def is_remote(location: str | Path) -> bool:
    """True for an ``s3://`` URI (a ``Path`` is always local)."""
    return isinstance(location, str) and location.startswith(SCHEME)


@dataclass(frozen=True)
class Location:
    """A place as given (``text``) and as ``pyarrow.fs`` reaches it (``fs`` and ``path``)."""

    text: str
    fs: pafs.FileSystem
    path: str
    """``bucket/prefix`` on S3 (no trailing slash), an absolute path locally."""

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, relative: str) -> str:
        return f"{self.path}/{relative}" if relative else self.path

    def uri(self, relative: str = "") -> str:
        """How to name ``relative`` under this place to a user."""
        if self.remote:
            return SCHEME + self.join(relative)
        return str(Path(self.path) / relative) if relative else self.path


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 client configured by the standard AWS variables (see the module docstring)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return pafs.S3FileSystem(
        endpoint_override=endpoint,
        region=region or "us-east-1",
        connect_timeout=5,
        request_timeout=30,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    )


def open_location(location: str | Path, what: str) -> Location:
    """The filesystem and path for ``s3://bucket/prefix``, ``file://...`` or a local path.

    ``what`` names the argument in errors (``--out``, ``PATH``)."""
    text = str(location)
    if is_remote(location):
        base = text.removeprefix(SCHEME).strip("/")
        if not base:
            raise UsageError(f"{what} {text!r}: name a bucket, e.g. s3://my-bucket/kbook")
        return Location(text, s3_filesystem(), base)
    if isinstance(location, str) and "://" in text and not text.startswith("file://"):
        raise UsageError(f"{what} {text!r}: give s3://bucket/prefix or a local folder or file")
    local = Path(text.removeprefix("file://")) if isinstance(location, str) else location
    return Location(text, pafs.LocalFileSystem(), str(local.absolute()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def list_files(location: Location) -> list[str]:
    """Every file under ``location``, relative to it (``/``-separated), sorted."""
    selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
    try:
        infos = location.fs.get_file_info(selector)
    except OSError as exc:
        raise InputError(f"{location.text}: cannot list: {_first_line(exc)}") from exc
    prefix = location.path + "/"
    return sorted(
        info.path.removeprefix(prefix)
        for info in infos
        if info.type == pafs.FileType.File and info.path.startswith(prefix)
    )


def _is_segment_key(relative: str) -> bool:
    return relative.endswith(SUFFIX) or relative.endswith(SUFFIX + PARTIAL_SUFFIX)


def copy_object(fs: pafs.FileSystem, source: str, target: Path) -> None:
    """Stream one object to a local file, a chunk at a time (bounded memory); the copy keeps
    the object's modification time, so that ``--update`` sees an unchanged object as unchanged."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mtime_ns = fs.get_file_info(source).mtime_ns
    with fs.open_input_stream(source) as stream, target.open("wb") as out:
        while chunk := stream.read(CHUNK):
            out.write(chunk)
    if mtime_ns is not None:
        os.utime(target, ns=(mtime_ns, mtime_ns))


_COPIES: set[Path] = set()
"""The private folders of the ``local_segments`` blocks under way."""


def source_name(path: Path) -> str:
    """What a segment is called for good: the ``s3://`` URI of a local copy that
    ``local_segments`` made, or the path itself (resolved) for a local file."""
    for folder in _COPIES:
        if path.is_relative_to(folder):
            return SCHEME + path.relative_to(folder).as_posix()
    return str(path.resolve())


@contextmanager
def local_segments(paths: Iterable[str | Path]) -> Iterator[list[Path]]:
    """``paths`` with every ``s3://`` input replaced by a local copy of its segments.

    A URI naming one object is copied alone; one naming a prefix brings every segment under it,
    keeping the layout under a private folder removed when the block ends."""
    given = list(paths)
    if not any(is_remote(path) for path in given):
        yield [Path(path) for path in given]
        return
    folder = Path(tempfile.mkdtemp(prefix="kbook-s3-"))
    _COPIES.add(folder)
    try:
        local: list[Path] = []
        for path in given:
            if not is_remote(path):
                local.append(Path(path))
                continue
            location = open_location(path, "PATH")
            # Under bucket/prefix, so that problems name the object they were found in.
            local.append(_fetch(location, folder / location.path))
        yield local
    finally:
        _COPIES.discard(folder)
        shutil.rmtree(folder, ignore_errors=True)


def _fetch(location: Location, into: Path) -> Path:
    """Copy the object or the segments under ``location`` into ``into``; the local path."""
    try:
        info = location.fs.get_file_info(location.path)
        if info.type == pafs.FileType.File:
            copy_object(location.fs, location.path, into)
            return into
        keys = [key for key in list_files(location) if _is_segment_key(key)]
        if not keys:
            raise InputError(f"{location.text}: no segments (*{SUFFIX}) under this prefix")
        for key in keys:
            copy_object(location.fs, location.join(key), into / key)
    except OSError as exc:
        raise InputError(f"{location.text}: cannot read: {_first_line(exc)}") from exc
    return into


# -- publishing a dataset ----------------------------------------------------------------------


def check_remote_output(location: Location, manifest: str, force: bool) -> None:
    """Refuse before any work, as for a local folder: something there already (unless
    ``force``), or objects that are not a kbook dataset (never replaced)."""
    keys = [key for key in list_files(location) if not key.startswith(TEMPORARY_PREFIX)]
    if not keys:
        return
    if not force:
        raise OutputError(f"{location.text}: holds objects already; pass --force to replace them")
    if manifest not in keys and not all(key.startswith("pair=") for key in keys):
        raise OutputError(
            f"{location.text}: is not a kbook snapshot dataset (no {manifest}); not replacing it"
        )


def publish_dataset(folder: Path, location: Location, manifest: str, force: bool) -> list[str]:
    """Upload the finished local dataset ``folder`` to ``location``, manifest last (see the
    module docstring); the relative keys of its files."""
    check_remote_output(location, manifest, force)
    fs = location.fs
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != manifest
    )
    staging = f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}"
    old = set(list_files(location))
    try:
        if manifest in old:
            fs.delete_file(location.join(manifest))  # from here on: unfinished
        for key in files:
            _upload(fs, folder / key, location.join(f"{staging}/{key}"))
        for key in files:
            fs.move(location.join(f"{staging}/{key}"), location.join(key))
        for key in sorted(old - set(files) - {manifest}):
            if key.startswith("pair="):
                fs.delete_file(location.join(key))
        record: dict[str, Any] = orjson.loads((folder / manifest).read_bytes())
        record["files"] = {key: (folder / key).stat().st_size for key in files}
        with fs.open_output_stream(location.join(manifest)) as out:
            out.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        for debris in sorted(
            {key.split("/", 1)[0] for key in old if key.startswith(TEMPORARY_PREFIX)}
        ):
            _remove_prefix(fs, location.join(debris))  # left by a replay killed while publishing
    except OSError as exc:
        _remove_prefix(fs, location.join(staging))
        raise OutputError(
            f"{location.text}: cannot publish the dataset: {_first_line(exc)}"
        ) from exc
    except BaseException:
        _remove_prefix(fs, location.join(staging))
        raise
    return files


def _upload(fs: pafs.FileSystem, source: Path, key: str) -> None:
    with source.open("rb") as file, fs.open_output_stream(key) as out:
        while chunk := file.read(CHUNK):
            out.write(chunk)


def _remove_prefix(fs: pafs.FileSystem, path: str) -> None:
    """Best effort: the temporary keys of a failed publish."""
    with suppress(OSError):
        fs.delete_dir(path)


def read_remote_manifest(location: Location, manifest: str) -> dict[str, Any] | None:
    """The dataset's manifest at ``location``, or None when there is none."""
    try:
        with location.fs.open_input_stream(location.join(manifest)) as stream:
            record = orjson.loads(stream.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{location.text}: cannot read: {_first_line(exc)}") from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{location.uri(manifest)}: not JSON ({exc})") from exc
    return record if isinstance(record, dict) else None
