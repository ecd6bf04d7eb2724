"""The snapshot dataset on disk: hive-partitioned Parquet, written whole or not at all.

Layout under ``--out``::

    pair=BTC-USD/date=2026-11-21/part-0.parquet
    _kbook_replay.json            what produced it (options, kbook version, rows per pair)

One file per pair and UTC day, zstd-compressed, dictionary encoding off (faster and smaller for
float columns), row groups of up to 64k rows (fewer for very deep books). ``pair`` and ``date``
are stored only in the folder names: pandas refuses a dataset whose files also hold a column
named like a partition, so the files hold ``ts, valid, levels..., extras`` and every reader adds
``pair`` (as ``BTC-USD``) and ``date`` from the path.

Atomicity: everything is written into a hidden sibling folder (``.<out>.tmp-*``) and renamed to
``--out`` once complete (into a temporary prefix of an ``s3://`` ``--out``, then published:
``kbook.storage``), so a crash or an error leaves either the old dataset or the new one,
never a mix. An error, Ctrl+C or SIGTERM removes the hidden folder; one left by ``kill -9`` is
removed by the next replay into the same ``--out``. Replacing an existing dataset needs
``force`` and is refused for a folder that does not look like one (so ``--out ~`` cannot delete
a home folder).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from kbook.errors import InputError, OutputError
from kbook.pairs import file_name
from kbook.storage import ObjectPath, Place, open_input, open_output, parquet_target
from kbook.units import utc_day
from replay.columns import file_schema

MANIFEST = "_kbook_replay.json"
SOURCES = ".sources"
"""Folder inside the dataset's temporary folder where the rows of each source of a pair with
several wait for ``replay.timeline``: ``.sources/<pair>/<rank>.arrow``."""


def source_spool(root: Place, pair: str, rank: int, window: int = 0) -> Place:
    """Where a source's rows of ``pair`` wait for the timeline (see ``SOURCES``): those of
    its window ``window`` (``replay.plan``) after the first in ``<rank>-<window>.arrow``."""
    name = f"{rank}-{window}" if window else f"{rank}"
    return root / SOURCES / file_name(pair) / f"{name}.arrow"


def source_spools(root: Place, pair: str, rank: int, windows: int) -> list[Place]:
    """The spools of a source's ``windows`` windows that hold rows of ``pair``, in order."""
    paths = [source_spool(root, pair, rank, window) for window in range(windows)]
    return [path for path in paths if path.exists()]


Root = TypeVar("Root", bound=Place)
"""A ``DatasetWriter``'s root: its files are of the same kind (local paths, or keys)."""


class DatasetWriter(Generic[Root]):
    """Writes each pair's row batches (one UTC day per batch) to its partition files under
    ``root`` (a local folder, or a temporary prefix on object storage); the rows of ``spooled``
    pairs go to the source spool of source ``rank``'s window ``window`` instead (``SOURCES``)."""

    def __init__(
        self,
        root: Root,
        levels: int,
        spooled: frozenset[str] = frozenset(),
        rank: int = 0,
        schema: pa.Schema | None = None,
        window: int = 0,
        own: bool = False,
    ) -> None:
        self.root = root
        self.own = own
        """Every partition it writes is its alone in the run (a replay task's, ``replay.tasks``):
        it writes ``part-0`` over what an earlier attempt of the same task left, so a task run
        again after its worker died once it had written them gives the same files, not a
        second part (``new_part``)."""
        self.schema = file_schema(levels) if schema is None else schema
        """The snapshot columns, or another table's (``replay.deltas``): same layout, same rules."""
        self.files: list[Root] = []
        self._open: dict[str, tuple[str, pq.ParquetWriter]] = {}
        self.spooled = spooled
        self.rank = rank
        self.window = window
        self._spools: dict[str, IpcFile] = {}

    def sink(self, pair: str) -> Callable[[pa.Table], None]:
        """Where ``pair``'s batches go (batches arrive in time order, never spanning a day)."""
        if pair in self.spooled:
            return lambda table: self.spool(pair, table)
        return lambda table: self.write(pair, table)

    def spool(self, pair: str, table: pa.Table) -> None:
        writer = self._spools.get(pair)
        try:
            if writer is None:
                path = source_spool(self.root, pair, self.rank, self.window)
                make_folders(self.root, path.parent)
                writer = self._spools[pair] = IpcFile(path, self.schema)
            writer.write_table(table)
        except OSError as exc:
            raise OutputError(f"{self.root}: cannot write snapshots: {exc}") from exc

    def write(self, pair: str, table: pa.Table) -> None:
        day = utc_day(table.column("ts")[0].value)
        current = self._open.get(pair)
        if current is None or current[0] != day:
            if current is not None:
                current[1].close()
            current = self._open[pair] = (day, self._writer(pair, day))
        try:
            current[1].write_table(table, row_group_size=table.num_rows)
        except OSError as exc:
            raise OutputError(f"{self.root}: cannot write snapshots: {exc}") from exc

    def close(self) -> None:
        for _day, writer in self._open.values():
            writer.close()
        self._open.clear()
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()

    def _writer(self, pair: str, day: str) -> pq.ParquetWriter:
        path = new_part(self.root, pair, day, own=self.own)
        where, filesystem = parquet_target(path)
        try:
            writer = pq.ParquetWriter(
                where,
                self.schema,
                filesystem=filesystem,
                compression="zstd",
                use_dictionary=[name for name in ("source", "side") if name in self.schema.names],
                write_statistics=True,
            )
        except OSError as exc:
            raise OutputError(f"{path}: cannot create: {exc}") from exc
        self.files.append(path)
        return writer


def new_part(root: Root, pair: str, day: str, own: bool = False) -> Root:
    """The next free ``part-N.parquet`` of the (pair, UTC day) partition under ``root``, whose
    folder this creates: the one hive layout every kbook dataset shares. ``root`` must exist.
    With ``own``, ``part-0`` whatever is there (a partition one writer owns)."""
    folder = root / f"pair={file_name(pair)}" / f"date={day}"
    number = 0
    while not own and (folder / f"part-{number}.parquet").exists():
        number += 1
    try:
        make_folders(root, folder)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create: {exc}") from exc
    return cast(Root, folder / f"part-{number}.parquet")  # of its root's kind


class IpcFile:
    """An Arrow IPC file being written (a spool of rows waiting for a join): its writer, and
    the stream under it, both closed by ``close``."""

    def __init__(self, path: Place, schema: pa.Schema) -> None:
        self.sink = open_output(path)
        try:
            self.writer = pa.ipc.new_file(self.sink, schema)
        except BaseException:
            self.sink.close()
            raise

    def write_table(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            self.sink.close()


def read_ipc(path: Place) -> Iterator[pa.Table]:
    """The batches an ``IpcFile`` wrote, in order, one at a time (bounded memory)."""
    with open_input(path) as source:
        reader = pa.ipc.open_file(source)
        for index in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(index)])


def make_folders(root: Place, folder: Place) -> None:
    """Create ``folder`` and the folders between it and ``root``, but never ``root`` itself: a
    task still running on a cluster after its replay failed and removed the unfinished dataset
    cannot bring it back (its write fails instead). Object storage has no folders to make: a
    task there that outlives its replay leaves keys under the temporary prefix, which the next
    replay into the same ``--out`` removes."""
    if isinstance(root, ObjectPath) or isinstance(folder, ObjectPath):
        return
    current = root
    for name in folder.relative_to(root).parts:
        current = current / name
        current.mkdir(exist_ok=True)  # FileNotFoundError when root is gone


# -- the whole dataset, atomically -----------------------------------------------------------------


def check_output(out: Path, force: bool) -> None:
    """Refuse before any work when ``out`` exists (unless ``force``) or is not a dataset."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not force:
        raise OutputError(f"{out}: exists already; pass --force to replace it")
    if not looks_like_dataset(out):
        raise OutputError(
            f"{out}: is not a kbook snapshot dataset (no {MANIFEST}); not replacing it"
        )


def require_snapshots(folder: Path) -> None:
    """Refuse, in one line, a path that is not a snapshot dataset to read; most often it is the
    recorder's folder of raw segments, which must be replayed first."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such snapshot dataset (a folder written by kbook replay)")
    if next(folder.rglob("*.parquet"), None) is not None:
        return
    if next(folder.rglob("*.jsonl.zst*"), None) is not None:
        raise InputError(
            f"{folder}: is a folder of raw segments, not snapshots; replay it first: "
            f"kbook replay {folder} --out data/snapshots"
        )
    raise InputError(f"{folder}: holds no Parquet files; not a snapshot dataset")


def looks_like_dataset(folder: Path) -> bool:
    """True for a folder kbook wrote: a manifest, or nothing but ``pair=`` partitions."""
    entries = list(folder.iterdir())
    return (folder / MANIFEST).is_file() or all(
        entry.is_dir() and entry.name.startswith("pair=") for entry in entries
    )


def temporary_folder(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` (same file system, so the final rename is atomic).

    Folders that earlier runs killed outright (``kill -9``, a power cut) left are removed first:
    their names hold the writer's process id, and one whose process is gone is debris."""
    for stale in out.parent.glob(f".{out.name}.tmp-*-*"):
        pid = stale.name.removeprefix(f".{out.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create: {exc.strerror}") from exc
    except BaseException:
        # A signal handled as the folder was made (Ctrl+C, SIGTERM: see kbook.cli) raises here,
        # before the caller holds the folder to remove it.
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _alive(pid: int) -> bool:
    """True if process ``pid`` exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))


def publish(folder: Path, out: Path, force: bool) -> None:
    """Move the finished ``folder`` to ``out``, replacing an old dataset only with ``force``."""
    check_output(out, force)
    old: Path | None = None
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
        os.rename(folder, out)
    except OSError as exc:
        if old is not None and not out.exists():
            os.rename(old, out)
        raise OutputError(f"{out}: cannot move the new dataset in place: {exc.strerror}") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(folder: Path) -> None:
    """Remove an unfinished dataset folder."""
    shutil.rmtree(folder, ignore_errors=True)
