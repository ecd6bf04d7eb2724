"""Where kbook reads and writes files: a local folder or object storage (``s3://bucket/prefix``).

One seam for every command that takes a location (``replay``, ``verify``, ``plot``, ``upload``):
``open_location`` turns a path or an ``s3://`` URI into a ``pyarrow.fs`` filesystem and a path on
it. Object storage is configured by the standard AWS variables, as the AWS SDK reads them:
credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, ...), ``AWS_ENDPOINT_URL`` for an S3-compatible server (MinIO, SeaweedFS, ...),
``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Requests time out (5 s to connect, 30 s per request)
and are retried three times, so a stalled server is an error, not a hang.

Reading: ``segment_inputs`` lists the segments under ``s3://`` inputs as ``ObjectSegment``
references, which every segment reader opens in place, a megabyte per request (bounded memory, no
local copy), exactly as it opens a local file; Dask workers open them with their own client.

Writing: every output kind reaches object storage through one ``StagedPublish``: the files go
up under a temporary key (``_kbook_tmp-<id>/...``, a prefix dataset readers skip) while the old
dataset stays whole (a replay's tasks write theirs there themselves, through ``ObjectPath``,
on whichever machine they run, so that no machine needs another's file system); then, at the
commit point, the old manifest is deleted (``--update``: set aside), the files are copied to
their places, old files the new dataset lacks are deleted, and
the manifest, listing every file, is written last (then the temporary keys are removed, with
those that killed runs left). A run that dies before the commit point leaves the old dataset as
it was; one that dies after it leaves no manifest, which ``read_snapshots`` refuses ("did not
finish"): readers that trust the manifest never see half a dataset. Each file is one object
written in one piece, and no zero-byte "folder" object is left inside a dataset (they break
readers going through s3fs). ``publish_dataset`` publishes a whole local dataset,
``publish_staged`` one its tasks wrote under the temporary prefix, ``publish_partitions``
replaces some partitions of a published one (``--update``) by those its tasks wrote there.

Objects are written and read as their very bytes: ``pyarrow.fs`` streams guess a compression from
the key's extension (a ``.jsonl.zst`` segment would be compressed again), so every stream here
passes ``compression=None``.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import os
import shutil
import uuid
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from kbook.errors import InputError, OutputError, UsageError
from kbook.segment import PARTIAL_SUFFIX, SUFFIX, SegmentPath

SCHEME = "s3://"
CHUNK = 1 << 20
TEMPORARY_PREFIX = "_kbook_tmp-"
ASIDE = "-aside"
"""The temporary prefix that keeps an updated dataset's old manifest until the new one is in."""


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


_AWS_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 client configured by the standard AWS variables (see the module docstring); one
    per setting of them in a process, so that the segments a replay opens one after another
    share its connections (on TLS, a new connection is a handshake)."""
    return _s3_client(tuple(os.environ.get(name) for name in _AWS_VARIABLES))


@functools.lru_cache(maxsize=4)
def _s3_client(variables: tuple[str | None, ...]) -> pafs.S3FileSystem:
    """The client for these values of ``_AWS_VARIABLES`` (the SDK reads the credentials from
    the environment itself: they are in the key so that new ones make a new client)."""
    endpoint, region, default_region = variables[:3]
    return pafs.S3FileSystem(
        endpoint_override=endpoint or None,
        region=region or default_region or "us-east-1",
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


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """What ``ObjectSegment.stat`` answers: the two fields of ``os.stat_result`` readers use."""

    st_size: int
    st_mtime_ns: int


@dataclass(frozen=True, slots=True)
class ObjectSegment:
    """A segment in object storage, read in place: never copied to a local file.

    Made by ``segment_inputs`` from a listing (so it exists, with this size and modification
    time, as listed) and read through ``pyarrow.fs`` by whoever holds it: it answers the
    ``Path`` methods that segment readers use (``kbook.segment.SegmentPath``). It carries its
    URI, not a client, so it pickles small and a Dask worker on another machine opens it with
    its own client, configured by its own AWS variables.
    """

    uri: str
    """``s3://bucket/key``: how users and manifests name it."""
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.uri

    def open(self, mode: str = "rb", buffering: int = -1) -> BinaryIO:
        """The object for reading: seekable (``SegmentReader`` resynchronises after damage by
        seeking), a megabyte per request (each read of a raw S3 file is one ranged GET), or
        unbuffered with ``buffering=0`` (a look at the first bytes costs a request that
        small)."""
        if mode != "rb":
            raise ValueError(f"{self.uri}: objects are opened for reading only ('rb')")
        raw = s3_filesystem().open_input_file(self.uri.removeprefix(SCHEME))
        return raw if buffering == 0 else io.BufferedReader(raw, CHUNK)

    def stat(self) -> ObjectStat:
        return ObjectStat(self.size, self.mtime_ns)

    def exists(self) -> bool:
        return True  # as listed; a key deleted since fails when opened, naming it

    def is_file(self) -> bool:
        return True

    def resolve(self) -> ObjectSegment:
        """Its name for good, as ``Path.resolve`` is a local file's (see ``source_name``)."""
        return self


def source_name(path: SegmentPath) -> str:
    """What a segment is called for good: an object's ``s3://`` URI, a local file's absolute
    path (resolved)."""
    return str(path.resolve())


Inputs: TypeAlias = Iterable[str | Path | ObjectSegment] | str | Path
"""Segments as the Python API takes them: paths, ``s3://`` URIs, or segments listed already."""


def segment_inputs(paths: Inputs) -> list[SegmentPath]:
    """``paths`` as ``kbook.segment.find_segments`` takes them: local paths as ``Path``, every
    ``s3://`` input as the ``ObjectSegment`` it names, or those of every segment under the
    prefix it names (in key order). Nothing is read or copied here, only listed."""
    given = [paths] if isinstance(paths, str | Path) else list(paths)
    found: list[SegmentPath] = []
    for path in given:
        if isinstance(path, ObjectSegment | Path):
            found.append(path)
            continue
        if not is_remote(path):
            found.append(Path(path))
            continue
        location = open_location(path, "PATH")
        try:
            info = location.fs.get_file_info(location.path)
        except OSError as exc:
            raise InputError(f"{location.text}: cannot read: {_first_line(exc)}") from exc
        if info.type == pafs.FileType.File:
            found.append(_object_segment(info))
            continue
        selector = pafs.FileSelector(location.path, recursive=True, allow_not_found=True)
        try:
            infos = location.fs.get_file_info(selector)
        except OSError as exc:
            raise InputError(f"{location.text}: cannot list: {_first_line(exc)}") from exc
        inside = sorted(
            (_object_segment(item) for item in infos if item.type == pafs.FileType.File),
            key=lambda segment: segment.uri,
        )
        inside = [segment for segment in inside if _is_segment_key(segment.name)]
        if not inside:
            raise InputError(f"{location.text}: no segments (*{SUFFIX}) under this prefix")
        found.extend(inside)
    return found


def _object_segment(info: pafs.FileInfo) -> ObjectSegment:
    return ObjectSegment(SCHEME + info.path, info.size or 0, info.mtime_ns or 0)


# -- writing under a temporary prefix ----------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class ObjectPath:
    """A key under a publish's temporary prefix in object storage, which a replay's tasks write
    and read as they would a file under a local folder (``replay.parquet``, ``replay.tasks``):
    the few ``Path`` operations they use, a request each at most. Like ``ObjectSegment`` it
    carries no client, so it pickles small and a Dask worker on another machine reaches it with
    its own. Object storage has no folders: ``mkdir`` makes nothing (no zero-byte "folder"
    objects), and ``remove_tree`` removes every key under a prefix."""

    key: str
    """``bucket/prefix/...``, no scheme."""

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(f"{self.key}/{name}")

    def __str__(self) -> str:
        return SCHEME + self.key

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.key.rsplit("/", 1)[0])

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        if not self.key.startswith(other.key + "/"):
            raise ValueError(f"{self} is not under {other}")
        return PurePosixPath(self.key.removeprefix(other.key + "/"))

    def exists(self) -> bool:
        return s3_filesystem().get_file_info(self.key).type != pafs.FileType.NotFound

    def mkdir(self, exist_ok: bool = False) -> None:
        """Nothing to make: a key needs no folder."""

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            s3_filesystem().delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise


Place: TypeAlias = Path | ObjectPath
"""Where a replay writes a file before it is published: under a local folder, or under a
publish's temporary prefix in object storage."""


def parquet_target(path: Place) -> tuple[str, pafs.FileSystem | None]:
    """``path`` as ``pyarrow.parquet.ParquetWriter`` takes it (``where``, ``filesystem``)."""
    if isinstance(path, ObjectPath):
        return path.key, s3_filesystem()
    return str(path), None


def open_output(path: Place) -> pa.NativeFile:
    """``path`` for writing from its start: one object on object storage, written in one
    piece when closed (a task that dies on the way leaves no object)."""
    if isinstance(path, ObjectPath):
        return s3_filesystem().open_output_stream(path.key, compression=None)
    return pa.OSFile(str(path), "wb")


def open_input(path: Place) -> pa.NativeFile:
    """``path`` for reading at any offset: a local file memory-mapped (nothing copied), an
    object read range by range (what is asked for, when it is asked for)."""
    if isinstance(path, ObjectPath):
        return s3_filesystem().open_input_file(path.key)
    return pa.memory_map(str(path))


def remove_tree(path: Place) -> None:
    """Remove ``path`` and all under it, if there (best effort: a publish removes its
    temporary prefix, and the next one into the same place what killed runs left)."""
    if isinstance(path, ObjectPath):
        _remove_prefix(s3_filesystem(), path.key)
    else:
        shutil.rmtree(path, ignore_errors=True)


# -- publishing a dataset ----------------------------------------------------------------------

DATASET_KEYS: tuple[str, ...] = ("pair=*",)
"""The keys of a kbook dataset (``fnmatch`` patterns) besides its manifest: its partitions.
Output kinds with other files (Tardis's and hftbacktest's) name theirs."""


def _owned(key: str, owned: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in owned)


def check_remote_output(
    location: Location, manifest: str, force: bool, owned: tuple[str, ...] = DATASET_KEYS
) -> None:
    """Refuse before any work, as for a local folder: something there already (unless
    ``force``), or objects that are not a kbook dataset (never replaced): no manifest, and a key
    that is not one of ``owned`` (what a publish killed before its manifest leaves)."""
    keys = [key for key in list_files(location) if not key.startswith(TEMPORARY_PREFIX)]
    if not keys:
        return
    if not force:
        raise OutputError(f"{location.text}: holds objects already; pass --force to replace them")
    if manifest not in keys and not all(_owned(key, owned) for key in keys):
        raise OutputError(
            f"{location.text}: is not a kbook snapshot dataset (no {manifest}); not replacing it"
        )


class StagedPublish:
    """One publish to object storage: the one way every output kind gets there (snapshots,
    trades, deltas, on-change snapshots, Tardis and hftbacktest files, ``--update``).

    Object storage has no atomic rename of a folder, so the dataset's manifest is the commit
    point. Files are first written under this publish's temporary prefix (``stage``; or
    straight to ``staged(key)`` by whoever makes them): the old dataset stays whole and readable
    meanwhile. ``commit`` then deletes the old manifest (or, for ``--update``, sets it aside:
    ``unfinished_manifest``), from which moment readers refuse the dataset; copies each staged
    object to its key, deletes the old objects the new dataset lacks, writes the manifest last,
    and removes the temporary prefixes (its own, and those that killed runs left).

    Used as a context manager: on an error or an interrupt the staged objects are removed, an
    ``OSError`` becomes one ``OutputError`` line, and either says in what state the location is
    left (``left``, also added as a note to an interrupt: ``left_as``).

    pyarrow's S3 filesystem marks the parent of every object it deletes with a zero-byte
    "folder" object: staged objects are copied rather than moved and removed with their prefix,
    and stale objects by the highest folder they empty, so that the only such object is the
    location's own (``OUT/``), never one inside a partition.
    """

    def __init__(self, location: Location, manifest: str, aside: bool = False) -> None:
        self.location = location
        self.manifest = manifest
        self.aside = aside
        """Set the old manifest aside rather than delete it (``--update``)."""
        self.staging = f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:12]}"
        self.old = list_files(location)
        """The keys at the location before this publish."""
        self.unfinished = False
        """The old dataset is no longer readable and the new one not yet."""
        self.published = False
        self.set_aside = False

    def __enter__(self) -> StagedPublish:
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is None:
            return
        _remove_prefix(self.location.fs, self.location.join(self.staging))
        if isinstance(error, OSError):
            raise OutputError(
                f"{self.location.text}: cannot publish: {_first_line(error)}; {self.left()}"
            ) from error
        error.add_note(f"{self.location.text} {self.left()}")

    def left(self) -> str:
        """The state of the location, said to a user whose publish stopped here."""
        if self.published:
            return "published whole (a later replay removes its temporary objects)"
        if not self.unfinished:
            return "left as it was"
        again = "the next --update finishes it" if self.aside else "replay again with --force"
        return f"left unfinished (no {self.manifest}: readers refuse it); {again}"

    def staged(self, key: str) -> str:
        """The path under which the file ``key`` (relative) is staged."""
        return self.location.join(f"{self.staging}/{key}")

    @property
    def root(self) -> ObjectPath:
        """The temporary prefix, where a replay's tasks write the dataset themselves."""
        return ObjectPath(self.location.join(self.staging))

    def staged_files(self) -> dict[str, int]:
        """The partition files under the temporary prefix (relative keys, sorted) and their
        sizes: what a replay's tasks wrote there (their spools are gone by then)."""
        fs, prefix = self.location.fs, self.root.key + "/"
        selector = pafs.FileSelector(self.root.key, recursive=True, allow_not_found=True)
        return dict(
            sorted(
                (info.path.removeprefix(prefix), info.size or 0)
                for info in fs.get_file_info(selector)
                if info.type == pafs.FileType.File and info.path.startswith(prefix + "pair=")
            )
        )

    def stale(self, owned: tuple[str, ...]) -> list[str]:
        """The objects a new whole dataset replaces: the old dataset's files (those its
        manifest lists, and those ``owned``), whatever the new one holds."""
        held = read_remote_manifest(self.location, self.manifest) if self.old_manifest else None
        listed = set(held.get("files") or {}) if isinstance(held, dict) else set()
        return [
            key
            for key in self.old
            if not key.startswith(TEMPORARY_PREFIX)
            and key != self.manifest
            and (key in listed or _owned(key, owned))
        ]

    @property
    def old_manifest(self) -> bool:
        return self.manifest in self.old

    def stage(self, folder: Path, keys: Iterable[str]) -> None:
        """Upload each local file ``folder/key`` under the temporary prefix."""
        for key in keys:
            _upload(self.location.fs, folder / key, self.staged(key))

    def commit(self, keys: Iterable[str], stale: Iterable[str], record: dict[str, Any]) -> None:
        """Put the staged ``keys`` in place, delete the objects ``stale``, and write ``record``
        as the manifest, last (the class docstring says in what order, and why)."""
        fs, location = self.location.fs, self.location
        keys = sorted(keys)
        stale = set(stale) - set(keys)
        aside = f"{self.staging}{ASIDE}"
        if (keys or stale) and self.manifest in self.old:
            self.unfinished = True  # from here on: readers refuse the dataset
            if self.aside:
                fs.move(location.join(self.manifest), location.join(f"{aside}/{self.manifest}"))
                self.set_aside = True
            else:
                fs.delete_file(location.join(self.manifest))
        elif keys or stale:
            self.unfinished = True
        for key in keys:
            fs.copy_file(self.staged(key), location.join(key))
        kept = (set(self.old) - stale) | set(keys)
        for target in _highest_emptied(stale, kept):
            if target.endswith("/"):
                fs.delete_dir(location.join(target.rstrip("/")))
            else:
                fs.delete_file(location.join(target))
        with fs.open_output_stream(location.join(self.manifest), compression=None) as out:
            out.write(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        self.unfinished, self.published = False, True
        debris = {key.split("/", 1)[0] for key in self.old if key.startswith(TEMPORARY_PREFIX)}
        ours = {self.staging}  # even with no keys: a replay's tasks may have written there
        if self.set_aside:
            ours.add(aside)
        for prefix in sorted(debris | ours):
            _remove_prefix(fs, location.join(prefix))  # ours, and those killed runs left


def _highest_emptied(stale: set[str], kept: set[str]) -> list[str]:
    """The fewest keys and folders (ending in ``/``) whose removal removes ``stale`` and
    nothing of ``kept``: the highest folder of each stale key that holds nothing kept."""
    holding = {key.rsplit("/", depth)[0] for key in kept for depth in range(1, key.count("/") + 1)}
    targets: set[str] = set()
    for key in stale:
        parts = key.split("/")
        target = key
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder not in holding:
                target = folder + "/"
                break
        targets.add(target)
    return sorted(targets)


def left_as(error: BaseException, out: str) -> str:
    """What a replay to ``out`` stopped by ``error`` (an interrupt) left there: what its
    ``StagedPublish`` noted, else that ``out`` is as it was (nothing was published yet)."""
    for note in reversed(getattr(error, "__notes__", None) or []):
        if note.startswith(f"{out} "):
            return str(note)
    return f"{out} left as it was"


def _local_files(folder: Path, manifest: str) -> list[str]:
    """The files of the local dataset ``folder`` but its manifest, as relative keys."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != manifest
    )


def publish_dataset(
    folder: Path,
    location: Location,
    manifest: str,
    force: bool,
    owned: tuple[str, ...] = DATASET_KEYS,
) -> list[str]:
    """Publish the finished local dataset ``folder`` (its manifest included) at ``location``,
    replacing what is there (``--force``: the old dataset's files and those ``owned``); the
    relative keys of its files. The manifest gets ``files``: every file and its size."""
    check_remote_output(location, manifest, force, owned)
    files = _local_files(folder, manifest)
    record: dict[str, Any] = orjson.loads((folder / manifest).read_bytes())
    record["files"] = {key: (folder / key).stat().st_size for key in files}
    with StagedPublish(location, manifest) as staged:
        staged.stage(folder, files)
        staged.commit(files, staged.stale(owned), record)
    return files


def publish_staged(staged: StagedPublish, record: dict[str, Any]) -> list[str]:
    """Publish the whole dataset a replay's tasks wrote under ``staged.root``, with ``record``
    as its manifest (which gets ``files``: every file and its size), replacing the old one;
    the relative keys of its files. Inside the ``StagedPublish``'s block, which checked the
    location first (``check_remote_output``)."""
    files = staged.staged_files()
    record["files"] = files
    staged.commit(list(files), staged.stale(DATASET_KEYS), record)
    return list(files)


def publish_partitions(
    staged: StagedPublish, partitions: Iterable[str], record: dict[str, Any]
) -> list[str]:
    """``--update`` on object storage: replace each partition (``pair=X/date=D``) of
    ``partitions`` at ``staged.location`` by the files an update's tasks wrote under
    ``staged.root`` (none: the partition is removed), then write ``record`` as the manifest; the
    partitions replaced. A partition whose new files are byte for byte its objects is left
    alone, and no other object is touched. ``staged`` sets the old manifest aside at the commit
    point: an update killed after it leaves it there (``unfinished_manifest``), its fingerprints
    still hold for every partition it did not touch, and those it did have other inputs, so the
    next ``--update`` starts from it and redoes them; it removes the debris once its own
    manifest is written."""
    files = staged.staged_files()
    held: dict[str, int] = dict(record.get("files", {}))
    replaced: list[str] = []
    new_keys: list[str] = []
    stale: set[str] = set()
    for partition in sorted(set(partitions)):
        prefix = partition + "/"
        new = [key for key in files if key.startswith(prefix)]
        there = [key for key in staged.old if key.startswith(prefix)]
        if _same_objects(staged, new, there):
            continue
        replaced.append(partition)
        new_keys += new
        stale |= set(there) - set(new)
        held = {key: size for key, size in held.items() if not key.startswith(prefix)}
        held.update({key: files[key] for key in new})
    record["files"] = dict(sorted(held.items()))
    staged.commit(new_keys, stale, record)
    return replaced


def _same_objects(staged: StagedPublish, new: list[str], there: list[str]) -> bool:
    """The staged objects ``new`` (relative keys) are the objects ``there``, byte for byte (read
    a megabyte at a time)."""
    if new != there:
        return False
    fs = staged.location.fs
    for key in new:
        with (
            fs.open_input_stream(staged.staged(key), compression=None) as mine,
            fs.open_input_stream(staged.location.join(key), compression=None) as stream,
        ):
            while True:
                ours, theirs = mine.read(CHUNK), stream.read(CHUNK)
                if ours != theirs:
                    return False
                if not ours:
                    break
    return True


def _upload(fs: pafs.FileSystem, source: Path, key: str) -> None:
    with source.open("rb") as file, fs.open_output_stream(key, compression=None) as out:
        while chunk := file.read(CHUNK):
            out.write(chunk)


def _remove_prefix(fs: pafs.FileSystem, path: str) -> None:
    """Best effort: the temporary keys of a publish."""
    with suppress(OSError):
        fs.delete_dir(path)


def unfinished_manifest(location: Location, manifest: str) -> dict[str, Any] | None:
    """The manifest an ``--update`` killed while publishing left aside (``publish_partitions``),
    or None."""
    for key in list_files(location):
        first, _, rest = key.partition("/")
        if first.startswith(TEMPORARY_PREFIX) and first.endswith(ASIDE) and rest == manifest:
            return read_remote_manifest(location, f"{first}/{manifest}")
    return None


def read_remote_manifest(location: Location, manifest: str) -> dict[str, Any] | None:
    """The dataset's manifest at ``location`` (or at the relative key ``manifest``), or None
    when there is none."""
    try:
        with location.fs.open_input_stream(location.join(manifest), compression=None) as stream:
            record = orjson.loads(stream.read())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{location.text}: cannot read: {_first_line(exc)}") from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{location.uri(manifest)}: not JSON ({exc})") from exc
    return record if isinstance(record, dict) else None
