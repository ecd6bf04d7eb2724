"""The notebook API, which ``kbook replay`` calls too.

    import replay
    table = replay.replay_table(["data/raw"], every="1s", levels=10)      # pyarrow.Table
    summary = replay.replay_to_dataset(["data/raw"], "data/snapshots", every="100ms")
    table = replay.read_snapshots("data/snapshots", pair="BTC/USD", start="2026-11-21T10:00")

Work is split into tasks, one per source and UTC day (``replay.plan``); with ``workers > 1`` the
survey of segments and the tasks run on a process pool or a Dask cluster (``replay.executor``),
and the output is the same byte for byte as in this process.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from kbook import __version__
from kbook.errors import InputError, UsageError
from kbook.feed import channel_depth
from kbook.pairs import common_name, file_name
from kbook.segment import Problem, SegmentPath, find_segments
from kbook.storage import (
    Inputs,
    Location,
    Place,
    StagedPublish,
    check_remote_output,
    is_remote,
    open_location,
    publish_partitions,
    publish_staged,
    read_remote_manifest,
    remove_tree,
    segment_inputs,
    source_name,
    unfinished_manifest,
)
from kbook.units import utc_day, utc_text
from replay.columns import TIMESTAMP, file_schema, row_group_rows, table_schema
from replay.engine import StreamResult, merge_results
from replay.executor import Executor, open_executor, parse_engine
from replay.options import (
    MAX_SILENCE_NS,
    DurationLike,
    ReplayOptions,
    TimeLike,
    make_options,
    parse_pairs,
    to_ns,
)
from replay.parquet import (
    MANIFEST,
    SOURCES,
    DatasetWriter,
    check_output,
    discard,
    publish,
    require_snapshots,
    source_spools,
    temporary_folder,
    write_manifest,
)
from replay.plan import Stream, plan_streams, plan_tasks
from replay.sampler import PairSummary
from replay.survey import SegmentInfo, survey_segments, trailer_survey
from replay.survey_cache import cached_surveys
from replay.tasks import Rows, read_spool, run_tasks
from replay.timeline import SourceRows, merge
from replay.update import (
    PARTITIONS,
    SEGMENTS,
    changed,
    check_options,
    fingerprints,
    known_surveys,
    options_json,
    read_manifest,
    replace_partitions,
    segment_json,
    write_manifest_atomically,
)

PathsLike: TypeAlias = Inputs
Tick = Callable[[int], None]
ProgressCallback = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)`` of compressed segment data."""


@dataclass(frozen=True)
class Run:
    """How a replay runs, beside what it computes: progress, and the engine of its work."""

    progress: ProgressCallback | None
    engine: str
    scheduler: str | None


@dataclass
class ReplaySummary:
    """What a replay did: rows and invalid spans per pair, problems met, where it went."""

    options: ReplayOptions
    segments: Sequence[SegmentPath]
    result: StreamResult
    out: Path | str | None = None
    """A local folder, or an ``s3://`` URI."""
    files: list[Path] | list[str] = field(default_factory=list)
    """The dataset's files (URIs for a dataset on object storage)."""
    seconds: float = 0.0
    updated: int | None = None
    """With ``update``: partitions rewritten (None for a full replay)."""
    unchanged: int = 0
    """With ``update``: partitions left as they were."""

    @property
    def pairs(self) -> dict[str, PairSummary]:
        return self.result.pairs

    @property
    def problems(self) -> list[Problem]:
        return self.result.problems

    @property
    def rows(self) -> int:
        return sum(summary.rows for summary in self.pairs.values())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (the dataset's manifest)."""
        options = self.options
        return {
            "kbook_version": __version__,
            "every_ns": options.every_ns,
            "levels": options.levels,
            "max_silence_ns": options.max_silence_ns,
            "start": utc_text(options.start_ns) if options.start_ns is not None else None,
            "end": utc_text(options.end_ns) if options.end_ns is not None else None,
            "segments": len(self.segments),
            "segments_read": self.result.segments_read,
            "pairs": {
                pair: {
                    "channel": s.channel,
                    "sources": s.sources,
                    "rows": s.rows,
                    "valid_rows": s.valid_rows,
                    "first": utc_text(s.first_ts),
                    "last": utc_text(s.last_ts),
                    "frames": s.frames,
                    "checksum_failures": s.checksum_failures,
                    "invalid_spans": [
                        {"first": utc_text(a), "last": utc_text(b), "cause": str(cause)}
                        for a, b, cause in s.invalid_spans
                    ],
                }
                for pair, s in self.pairs.items()
            },
            "problems": [str(problem) for problem in self.problems],
        }


def replay_table(
    paths: PathsLike,
    every: DurationLike = "1s",
    levels: int = 10,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    workers: int | None = 1,
    api: str | None = None,
    max_silence: DurationLike = MAX_SILENCE_NS,
) -> pa.Table:
    """Replay segments into one in-memory ``pyarrow.Table`` (sorted by pair, then ``ts``).

    ``api`` (``"v1"``/``"v2"``) keeps the segments of one Kraken API (by default a pair
    recorded under both is one timeline, see ``replay.plan``); ``max_silence`` is the staleness
    bound (``replay.sampler``)."""
    options = make_options(every, levels, pairs, start, end, workers, api, max_silence)
    return table_and_result(paths, options)[0]


def table_and_result(paths: PathsLike, options: ReplayOptions) -> tuple[pa.Table, StreamResult]:
    """``replay_table``'s table, and the replay's result beside it: per pair, the summary
    with its invalid spans and their causes (``kbook verify --coverage`` reports those)."""
    tables: dict[str, list[pa.Table]] = {}
    infos, outcomes = run_replay(paths, options, None, None)
    for _result, rows in outcomes:
        tables.update(rows.batches)
    result = merge_results([outcome[0] for outcome in outcomes])
    _require_rows(result, options, infos)
    schema = table_schema(options.levels)
    parts = []
    for pair in sorted(tables):
        for batch in tables[pair]:
            column = pa.repeat(pa.scalar(pair, pa.string()), batch.num_rows)
            parts.append(batch.add_column(1, schema.field("pair"), column))
    return (pa.concat_tables(parts) if parts else schema.empty_table()), result


def replay_to_dataset(
    paths: PathsLike,
    out: str | Path,
    every: DurationLike = "1s",
    levels: int = 10,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    force: bool = False,
    workers: int | None = 1,
    progress: ProgressCallback | None = None,
    api: str | None = None,
    max_silence: DurationLike = MAX_SILENCE_NS,
    update: bool = False,
    engine: str = "local",
    scheduler: str | None = None,
) -> ReplaySummary:
    """Replay segments into a Parquet dataset at ``out`` (a folder or ``s3://`` URI),
    atomically (see ``replay.parquet``, ``kbook.storage``); ``api`` and ``max_silence`` as in
    ``replay_table``. ``update`` rewrites only the partitions of an existing dataset whose inputs
    changed (``replay.update``).

    ``every="change"`` writes on-change snapshots instead (``replay.changes``).

    ``engine="dask"`` runs the work on a Dask ``LocalCluster`` of ``workers`` processes, or on
    the cluster of ``scheduler`` (``tcp://host:8786``); see ``replay.executor``."""
    if every == "change":  # on-change snapshots, message by message (replay.changes)
        if update or engine != "local":
            raise UsageError("--every change goes without --update and --engine dask")
        from replay.changes import replay_changes_to_dataset

        return replay_changes_to_dataset(
            paths, out, levels, pairs, start, end, force, api, max_silence, progress
        )
    began = time.monotonic()
    options = make_options(every, levels, pairs, start, end, workers, api, max_silence)
    run = Run(progress, parse_engine(engine, scheduler), scheduler)
    if update and force:
        raise UsageError("--update keeps what did not change and --force replaces it all: pick one")
    if is_remote(out):
        location = open_location(out, "--out")
        held = None
        if update:  # a dataset's manifest, or the one an update killed while publishing left
            held = read_remote_manifest(location, MANIFEST) or unfinished_manifest(
                location, MANIFEST
            )
        if held is not None:
            return _update(paths, location, held, options, run, began)
        return _replay_to_remote(paths, location, options, force, run)
    out = Path(out)
    if update and (out / MANIFEST).is_file():
        return _update(paths, out, read_manifest(out / MANIFEST), options, run, began)
    check_output(out, force)
    folder: Path | None = None
    done = False
    try:
        folder = temporary_folder(out)
        summary, manifest, files = _replay_into(paths, options, folder, run, out, began)
        write_manifest(folder, manifest)
        publish(folder, out, force)
        done = True
        summary.files = [out / Path(str(path)).relative_to(folder) for path in files]
        return summary
    finally:
        if folder is not None and not done:
            discard(folder)


def _manifest(
    summary: ReplaySummary, infos: list[SegmentInfo], pairs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The dataset's manifest: the run's summary, the options, and what ``--update`` needs."""
    options = summary.options
    manifest = summary.to_json() | options_json(options)
    if pairs is not None:
        manifest["pairs"] = pairs | manifest["pairs"]
    manifest[PARTITIONS] = fingerprints(plan_streams(infos, options), options)
    manifest[SEGMENTS] = {source_name(info.path): segment_json(info) for info in infos}
    return manifest


def _update(
    paths: PathsLike,
    out: Path | Location,
    manifest: dict[str, Any],
    options: ReplayOptions,
    run: Run,
    began: float,
) -> ReplaySummary:
    """``replay_to_dataset(update=True)`` on an existing dataset with its ``manifest`` (see
    ``replay.update``), a local folder or on object storage (``kbook.storage``); the changed
    pair-days run on ``run.engine`` as a full replay's tasks do."""
    name = out.text if isinstance(out, Location) else out
    check_options(manifest, options, name)
    segments = find_segments(segment_inputs(paths))
    known = known_surveys(manifest, segments)
    infos = cached_surveys(segments, survey_segments, known)
    prints = fingerprints(plan_streams(infos, options), options)
    old: dict[str, str] = manifest[PARTITIONS]
    todo = set(changed(old, prints)) | (old.keys() - prints.keys())
    # On object storage the tasks write under the publish's temporary prefix, published
    # partition by partition; locally, into a temporary folder whose partitions are renamed
    # into place.
    staged: StagedPublish | None = None
    folder: Place
    if isinstance(out, Location):
        staged = StagedPublish(out, MANIFEST, aside=True)
        folder = staged.root
    else:
        folder = temporary_folder(out)
    try:
        with ExitStack() as publishing:
            if staged is not None:
                publishing.enter_context(staged)
            replaced, kept, summary = _update_tasks(
                segments, infos, manifest, todo, options, run, folder, out, staged
            )
    finally:
        remove_tree(folder)
    summary.updated = len(replaced)
    summary.unchanged = len(prints) - len(set(replaced) & prints.keys())
    summary.seconds = time.monotonic() - began
    if not isinstance(out, Location):
        write_manifest_atomically(out / MANIFEST, _manifest(summary, infos, kept))
    return summary


def _update_tasks(
    segments: list[SegmentPath],
    infos: list[SegmentInfo],
    manifest: dict[str, Any],
    todo: set[str],
    options: ReplayOptions,
    run: Run,
    folder: Place,
    out: Path | Location,
    staged: StagedPublish | None,
) -> tuple[list[str], dict[str, Any], ReplaySummary]:
    """``_update``'s work: the pair-days ``todo`` replayed into ``folder`` and put in place
    (on object storage through ``staged``); the pair-days replaced, the manifest's ``pairs``
    kept, and the summary."""
    result = StreamResult()
    name = out.text if isinstance(out, Location) else out
    if todo:
        first_day = min(to_ns(key.split("/")[1], "date") or 0 for key in todo)
        start = first_day if options.start_ns is None else max(first_day, options.start_ns)
        pairs = frozenset(common_name(key.split("/")[0].replace("-", "/", 1)) for key in todo)
        wanted = dataclasses.replace(options, pairs=pairs & _recorded(infos), start_ns=start)
        if wanted.pairs:
            known = {info.path: info for info in infos}
            _, outcomes = run_replay(
                segments, wanted, folder, run.progress, known, run.engine, run.scheduler
            )
            result = merge_results([outcome[0] for outcome in outcomes])
    summary = ReplaySummary(options, segments, result, name)
    kept = {pair: data for pair, data in manifest.get("pairs", {}).items()}
    if isinstance(out, Location):
        assert staged is not None
        partitions = ["pair={}/date={}".format(*key.split("/")) for key in todo]
        record = _manifest(summary, infos, kept) | {"files": manifest.get("files", {})}
        moved = publish_partitions(staged, partitions, record)
        replaced = [part.removeprefix("pair=").replace("/date=", "/") for part in moved]
        summary.files = [out.uri(key) for key in record["files"] if key.startswith(tuple(moved))]
    else:
        assert isinstance(folder, Path)
        replaced = replace_partitions(folder, out, todo)
        summary.files = [
            path
            for key in replaced
            for path in sorted((out / "pair={}/date={}".format(*key.split("/"))).glob("*.parquet"))
        ]
    return replaced, kept, summary


def _recorded(infos: list[SegmentInfo]) -> frozenset[str]:
    return frozenset(common_name(pair) for info in infos for pair, _ in info.books)


def _replay_into(
    paths: PathsLike,
    options: ReplayOptions,
    folder: Place,
    run: Run,
    out: Path | str,
    began: float,
) -> tuple[ReplaySummary, dict[str, Any], list[Place]]:
    """Replay into the unpublished dataset ``folder`` (a local folder or a temporary prefix);
    the summary, the dataset's manifest (to write when publishing) and its files under
    ``folder``."""
    infos, outcomes = run_replay(
        paths, options, folder, run.progress, None, run.engine, run.scheduler
    )
    result = merge_results([outcome[0] for outcome in outcomes])
    _require_rows(result, options, infos)
    segments = [info.path for info in infos]
    files = sorted(path for _result, rows in outcomes for path in rows.files)
    summary = ReplaySummary(options, segments, result, out)
    summary.seconds = time.monotonic() - began
    return summary, _manifest(summary, infos), files


def _replay_to_remote(
    paths: PathsLike,
    location: Location,
    options: ReplayOptions,
    force: bool,
    run: Run,
) -> ReplaySummary:
    """``replay_to_dataset`` into object storage: the tasks write the dataset under the
    publish's temporary prefix at ``location`` themselves, wherever they run (no local folder,
    no shared file system), and it is published from there, its manifest last
    (``kbook.storage.publish_staged``). A run that fails or is stopped removes the temporary
    prefix; one killed outright leaves it to the next replay into ``location``."""
    began = time.monotonic()
    check_remote_output(location, MANIFEST, force)
    with StagedPublish(location, MANIFEST) as staged:
        summary, manifest, _files = _replay_into(
            paths, options, staged.root, run, location.text, began
        )
        keys = publish_staged(staged, manifest)
    summary.files = [location.uri(key) for key in keys]
    return summary


def read_snapshots(
    out: str | Path,
    pair: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Load part of a snapshot dataset; only the partitions and row groups needed are read.

    ``pair`` takes either spelling; a pair the dataset does not hold is a ``UsageError`` (as
    ``kbook replay --pair`` refuses one). The returned ``pair`` column holds common names
    (``BTC/USD``), as ``replay_table`` does. ``start`` is inclusive, ``end`` exclusive.
    """
    table = read_dataset(out, pair, start, end, columns)
    return table.sort_by([("pair", "ascending"), ("ts", "ascending")])


def read_dataset(
    out: str | Path,
    pair: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    columns: Sequence[str] | None = None,
    kind: str = "snapshots",
) -> pa.Table:
    """What ``read_snapshots`` and ``replay.read_deltas`` share: the rows of a kbook dataset of
    ``kind`` (its manifest's ``format``), ``pair`` as common names, unsorted."""
    import pyarrow.dataset as ds  # here: it imports pandas, which replay workers never need

    partitioning = ds.partitioning(
        pa.schema([("pair", pa.string()), ("date", pa.string())]), flavor="hive"
    )
    noun = kind.removesuffix("s")
    require_kind(out, kind)
    _require_pairs(out, pair, noun)
    condition, wanted = _filter(pair, start, end), _wanted(columns)
    try:  # a stray file that is not Parquet, a damaged one, a column it does not hold
        if is_remote(out):
            # On object storage the manifest says which files make the dataset (kbook.storage).
            location = open_location(out, "SNAPSHOTS")
            dataset = ds.dataset(
                [location.join(key) for key in snapshot_keys(location)],
                filesystem=location.fs,
                format="parquet",
                partitioning=partitioning,
                partition_base_dir=location.path,
            )
        else:
            out = Path(out)
            require_snapshots(out)
            dataset = ds.dataset(out, format="parquet", partitioning=partitioning)
        table = dataset.to_table(filter=condition, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{out}: cannot read the {noun}s: {exc}") from None
    common = pc.replace_substring(
        table.column("pair").cast(pa.string()), "-", "/", max_replacements=1
    )
    pair_field = pa.field("pair", pa.string(), nullable=False)
    table = table.set_column(table.schema.get_field_index("pair"), pair_field, common)
    order = [name for name in table_schema_names(table) if name != "date"]
    return table.select(order)


def require_kind(out: str | Path, kind: str) -> None:
    """A dataset of another kind (deltas read as snapshots) is a ``UsageError`` naming the
    function that reads it, rather than columns that do not match (local or on object
    storage)."""
    if is_remote(out):
        record = read_remote_manifest(open_location(out, "SNAPSHOTS"), MANIFEST)
        if record is None:
            return  # no dataset: its reader says so
        held = record.get("format", "snapshots")
    else:
        manifest = Path(out) / MANIFEST
        if not manifest.is_file():
            return
        try:
            held = orjson.loads(manifest.read_bytes()).get("format", "snapshots")
        except (orjson.JSONDecodeError, AttributeError, OSError) as exc:
            raise InputError(f"{manifest}: not a kbook manifest: {exc}") from None
    if held != kind:
        advice = (
            f"read it with replay.read_{held}"
            if held in ("snapshots", "deltas")
            else f"its files are {held}'s to load (README, For backtests)"
        )
        raise UsageError(f"{out}: is a {held} dataset, not {kind}; {advice}")


def _require_pairs(out: str | Path, pair: Iterable[str] | str | None, noun: str) -> None:
    """A pair the dataset does not hold is a ``UsageError``, as ``kbook replay --pair`` refuses
    one, rather than an empty table."""
    names = parse_pairs(pair)
    if names is None:
        return
    if is_remote(out):
        keys = snapshot_keys(open_location(out, "SNAPSHOTS"))
        folders = {key.split("/", 1)[0] for key in keys}
    else:
        folders = {path.name for path in Path(out).glob("pair=*")}
    held = {common_name(name.removeprefix("pair=").replace("-", "/", 1)) for name in folders}
    missing = sorted(names - held)
    if missing:
        raise UsageError(
            f"pair {', '.join(missing)} not found in the {noun} dataset {out}; it holds: "
            + (", ".join(sorted(held)) or "no pairs")
        )


def snapshot_keys(location: Location) -> list[str]:
    """The files of the dataset at ``location`` on object storage, as its manifest lists them."""
    record = read_remote_manifest(location, MANIFEST)
    files = record.get("files") if record is not None else None
    if not isinstance(files, dict) or not files:
        raise InputError(
            f"{location.text}: no finished snapshot dataset here (no {MANIFEST} listing its "
            "files: not written by kbook replay, or its replay did not finish); replay it again"
        )
    return sorted(str(key) for key in files)


def _filter(
    pair: Iterable[str] | str | None, start: TimeLike, end: TimeLike
) -> pc.Expression | None:
    """The dataset filter of ``read_snapshots``: partitions (pair, date) and rows (ts)."""
    import pyarrow.dataset as ds

    condition = None
    names = parse_pairs(pair)
    if names is not None:
        condition = _and(condition, ds.field("pair").isin([file_name(name) for name in names]))
    start_ns, end_ns = to_ns(start, "start"), to_ns(end, "end")
    if start_ns is not None:
        condition = _and(condition, ds.field("date") >= utc_day(start_ns))
        condition = _and(condition, ds.field("ts") >= pa.scalar(start_ns, TIMESTAMP))
    if end_ns is not None:
        condition = _and(condition, ds.field("date") <= utc_day(end_ns - 1))
        condition = _and(condition, ds.field("ts") < pa.scalar(end_ns, TIMESTAMP))
    return condition


def _wanted(columns: Sequence[str] | None) -> list[str] | None:
    return None if columns is None else list(dict.fromkeys(["ts", "pair", *columns]))


def table_schema_names(table: pa.Table) -> list[str]:
    """``ts, pair`` first, then the file columns in their stored order."""
    rest = [name for name in table.column_names if name not in ("ts", "pair")]
    return ["ts", "pair", *rest]


# -- internals ------------------------------------------------------------------------------------


def run_replay(
    paths: PathsLike,
    options: ReplayOptions,
    folder: Place | None,
    progress: ProgressCallback | None,
    known: dict[SegmentPath, SegmentInfo] | None = None,
    engine: str = "local",
    scheduler: str | None = None,
) -> tuple[list[SegmentInfo], list[tuple[StreamResult, Rows]]]:
    """Find, survey and plan, then run every task (``replay.plan.plan_tasks``) on the executor
    of ``engine`` (``replay.executor``); one outcome per source, in the plan's order.

    What both public functions share. Rows go to in-memory batches when ``folder`` is None, else
    into Parquet files under ``folder``, a local folder or a temporary prefix on object storage
    (no manifest; nothing published). Tests call it with
    options ``make_options`` does not expose (``task_bytes``).
    """
    dropped: list[Problem] = []
    segments = find_segments(segment_inputs(paths), dropped)
    return _run_local(segments, dropped, options, folder, progress, known or {}, engine, scheduler)


def _run_local(
    segments: list[SegmentPath],
    dropped: list[Problem],
    options: ReplayOptions,
    folder: Place | None,
    progress: ProgressCallback | None,
    known: dict[SegmentPath, SegmentInfo],
    engine: str,
    scheduler: str | None,
) -> tuple[list[SegmentInfo], list[tuple[StreamResult, Rows]]]:
    total = sum(path.stat().st_size for path in segments)
    # A pool costs a fresh interpreter per worker (about 0.3 s here): below one task's worth of
    # segments (16 MB by default, half a second of replay with the native core) this process
    # alone is as fast.
    workers = options.workers if engine == "dask" or total > options.task_bytes else 1
    # kbook's own LocalCluster starts in the background while this process surveys and plans.
    with open_executor(engine, workers, scheduler) as executor:
        infos = _survey(segments, executor, known)
        streams = plan_streams(infos, options)
        tasks = plan_tasks(streams, options)
        if progress is not None:
            progress(0, total)
        done = total - sum(task.size for task in tasks)

        def tick(size: int) -> None:
            nonlocal done
            done += size
            if progress is not None:
                progress(done, total)

        outcomes = run_tasks(tasks, len(streams), options, folder, executor, tick)
    if outcomes:  # stale copies left out of the replay, warned about first
        outcomes[0][0].problems[:0] = dropped
    windows = [0] * len(streams)
    for task in tasks:
        windows[task.source] = max(windows[task.source], task.window + 1)
    return infos, outcomes + _timelines(streams, outcomes, options, folder, windows)


def _timelines(
    streams: list[Stream],
    outcomes: list[tuple[StreamResult, Rows]],
    options: ReplayOptions,
    folder: Place | None,
    windows: list[int],
) -> list[tuple[StreamResult, Rows]]:
    """Merge each pair with several sources into one timeline (``replay.timeline``): their
    rows leave the streams' outcomes, and one more outcome holds the merged rows. A source's
    rows are in the spools of its ``windows`` windows, one after another."""
    holders: dict[str, list[int]] = {}
    for index, stream in enumerate(streams):
        for pair in sorted(stream.shared):
            holders.setdefault(pair, []).append(index)
    if not holders:
        return []
    merged = StreamResult()
    capacity = row_group_rows(options.levels)
    schema = file_schema(options.levels)
    batches: dict[str, list[pa.Table]] = {}
    writer = None if folder is None else DatasetWriter(folder, options.levels, own=True)
    try:
        for pair, indexes in sorted(holders.items()):
            parts = [outcomes[index][0].pairs.pop(pair) for index in indexes]
            sources = []
            for index, part in zip(indexes, parts, strict=True):
                stream = streams[index]
                depth = channel_depth(stream.channels[pair])
                if folder is None:
                    tables = outcomes[index][1].batches.pop(pair, [])
                    sources.append(SourceRows(depth, iter(tables), part.invalid_spans))
                else:
                    paths = source_spools(folder, pair, stream.rank, windows[index])
                    spooled = (table for path in paths for table in read_spool(path))
                    sources.append(SourceRows(depth, spooled, part.invalid_spans))
            channels = sorted({p.channel for p in parts}, key=channel_depth, reverse=True)
            sink = batches.setdefault(pair, []).append if writer is None else writer.sink(pair)
            summary = merge(
                pair, ", ".join(channels), sources, options.every_ns, capacity, sink, schema
            )
            summary.frames = sum(p.frames for p in parts)
            summary.checksum_failures = sum(p.checksum_failures for p in parts)
            summary.sources = [label for p in parts for label in p.sources]
            merged.pairs[pair] = summary
    finally:
        if writer is not None:
            writer.close()
            remove_tree(folder / SOURCES)  # type: ignore[operator]
    rows = Rows(batches=batches) if writer is None else Rows(files=writer.files)
    return [(merged, rows)]


SURVEY_BATCHES = 4
"""Batches of segments to survey per worker: a task on a Dask cluster costs some 20-40 ms of
round trip, which a task per segment would pay hundreds of times over."""


def _survey(
    segments: list[SegmentPath], executor: Executor, known: dict[SegmentPath, SegmentInfo]
) -> list[SegmentInfo]:
    """Survey each segment (``known`` ones were surveyed before, by an ``--update``'s
    manifest; others may be in the survey cache, ``replay.survey_cache``); on a pool or
    cluster, in a few batches per worker.

    While kbook's own ``LocalCluster`` starts (``Executor.starting``), the segments that end
    with the recorder's trailer are surveyed here, two small reads each, hiding the cluster's
    start rather than waiting for it; only those that must be scanned go to its workers."""

    def survey(todo: list[SegmentPath]) -> list[SegmentInfo]:
        here: dict[SegmentPath, SegmentInfo] = {}
        if executor.starting is not None:
            here = {path: info for path in todo if (info := trailer_survey(path)) is not None}
        scans = [path for path in todo if path not in here]
        size = max(1, -(-len(scans) // (SURVEY_BATCHES * executor.slots))) if scans else 1
        batches = [scans[first : first + size] for first in range(0, len(scans), size)]
        found: dict[int, list[SegmentInfo]] = {}
        executor.run(survey_segments, batches, found.__setitem__, _describe_survey)
        scanned = [info for index in range(len(batches)) for info in found[index]]
        here.update(zip(scans, scanned, strict=True))
        return [here[path] for path in todo]

    return cached_surveys(segments, survey, known)


def _describe_survey(paths: list[SegmentPath]) -> str:
    more = f" to {paths[-1]}" if len(paths) > 1 else ""
    return f"the survey of {paths[0]}{more}"


def _require_rows(result: StreamResult, options: ReplayOptions, infos: list[SegmentInfo]) -> None:
    """An empty result is a mistake (usually --start/--end outside the recording): say so."""
    if any(summary.rows for summary in result.pairs.values()):
        return
    starts = [info.first_ns for info in infos if info.first_ns is not None]
    recorded = f"segments start from {utc_text(min(starts))} to {utc_text(max(starts))}"
    if options.start_ns is None and options.end_ns is None:
        raise UsageError(f"no snapshot rows: no grid time falls within the books ({recorded})")
    raise UsageError(
        f"no snapshot rows between {utc_text(options.start_ns)} and "
        f"{utc_text(options.end_ns)}; {len(infos)} {recorded}"
    )


def _and(condition: Any, more: Any) -> Any:
    """``condition & more`` for dataset filter expressions (None: no condition yet)."""
    return more if condition is None else condition & more
