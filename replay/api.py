"""The notebook API, which ``kbook replay`` calls too.

    import replay
    table = replay.replay_table(["data/raw"], every="1s", levels=10)      # pyarrow.Table
    summary = replay.replay_to_dataset(["data/raw"], "data/snapshots", every="100ms")
    table = replay.read_snapshots("data/snapshots", pair="BTC/USD", start="2026-11-21T10:00")

Work is split into streams (``replay.plan``); with ``workers > 1`` the survey of segments and the
streams run on a process pool, and the output is the same as with one worker.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from kbook import __version__
from kbook.errors import InputError, UsageError
from kbook.pairs import file_name
from kbook.segment import Problem, find_segments
from kbook.units import utc_day, utc_text
from replay.columns import TIMESTAMP, table_schema
from replay.engine import StreamResult, merge_results
from replay.options import (
    DurationLike,
    ReplayOptions,
    TimeLike,
    make_options,
    parse_pairs,
    to_ns,
)
from replay.parallel import Rows, Workers, run_streams, share
from replay.parquet import (
    check_output,
    discard,
    publish,
    require_snapshots,
    temporary_folder,
    write_manifest,
)
from replay.plan import plan_streams
from replay.sampler import PairSummary
from replay.survey import SegmentInfo, survey_segment

PathsLike = Iterable[str | Path] | str | Path
Tick = Callable[[int], None]
ProgressCallback = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)`` of compressed segment data."""


@dataclass
class ReplaySummary:
    """What a replay did: rows and invalid spans per pair, problems met, where it went."""

    options: ReplayOptions
    segments: list[Path]
    result: StreamResult
    out: Path | None = None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0

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
            "start": utc_text(options.start_ns) if options.start_ns is not None else None,
            "end": utc_text(options.end_ns) if options.end_ns is not None else None,
            "segments": len(self.segments),
            "segments_read": self.result.segments_read,
            "pairs": {
                pair: {
                    "channel": s.channel,
                    "rows": s.rows,
                    "valid_rows": s.valid_rows,
                    "first": utc_text(s.first_ts),
                    "last": utc_text(s.last_ts),
                    "frames": s.frames,
                    "checksum_failures": s.checksum_failures,
                    "invalid_spans": [[utc_text(a), utc_text(b)] for a, b in s.invalid_spans],
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
) -> pa.Table:
    """Replay segments into one in-memory ``pyarrow.Table`` (sorted by pair, then ``ts``).

    ``api`` (``"v1"``/``"v2"``) keeps the segments of one Kraken API; it is required when a
    replayed pair was recorded under both (see ``replay.plan``)."""
    options = make_options(every, levels, pairs, start, end, workers, api)
    tables: dict[str, list[pa.Table]] = {}
    infos, outcomes = run_replay(paths, options, None, None)
    for _result, rows in outcomes:
        tables.update(rows.batches)
    _require_rows(merge_results([outcome[0] for outcome in outcomes]), options, infos)
    schema = table_schema(options.levels)
    parts = []
    for pair in sorted(tables):
        for batch in tables[pair]:
            column = pa.repeat(pa.scalar(pair, pa.string()), batch.num_rows)
            parts.append(batch.add_column(1, schema.field("pair"), column))
    return pa.concat_tables(parts) if parts else schema.empty_table()


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
) -> ReplaySummary:
    """Replay segments into a Parquet dataset at ``out``, atomically (see ``replay.parquet``);
    ``api`` as in ``replay_table``."""
    began = time.monotonic()
    options = make_options(every, levels, pairs, start, end, workers, api)
    out = Path(out)
    check_output(out, force)
    folder: Path | None = None
    done = False
    try:
        folder = temporary_folder(out)
        infos, outcomes = run_replay(paths, options, folder, progress)
        result = merge_results([outcome[0] for outcome in outcomes])
        _require_rows(result, options, infos)
        segments = [info.path for info in infos]
        files = sorted(path for _result, rows in outcomes for path in rows.files)
        summary = ReplaySummary(options, segments, result, out, files)
        summary.seconds = time.monotonic() - began
        write_manifest(folder, summary.to_json())
        publish(folder, out, force)
        done = True
        summary.files = [out / path.relative_to(folder) for path in files]
        return summary
    finally:
        if folder is not None and not done:
            discard(folder)


def read_snapshots(
    out: str | Path,
    pair: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Load part of a snapshot dataset; only the partitions and row groups needed are read.

    ``pair`` takes either spelling; the returned ``pair`` column holds common names (``BTC/USD``),
    as ``replay_table`` does. ``start`` is inclusive, ``end`` exclusive.
    """
    import pyarrow.dataset as ds  # here: it imports pandas, which replay workers never need

    out = Path(out)
    require_snapshots(out)
    partitioning = ds.partitioning(
        pa.schema([("pair", pa.string()), ("date", pa.string())]), flavor="hive"
    )
    condition, wanted = _filter(pair, start, end), _wanted(columns)
    try:  # a stray file that is not Parquet, a damaged one, a column it does not hold
        dataset = ds.dataset(out, format="parquet", partitioning=partitioning)
        table = dataset.to_table(filter=condition, columns=wanted)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{out}: cannot read the snapshots: {exc}") from None
    common = pc.replace_substring(
        table.column("pair").cast(pa.string()), "-", "/", max_replacements=1
    )
    pair_field = pa.field("pair", pa.string(), nullable=False)
    table = table.set_column(table.schema.get_field_index("pair"), pair_field, common)
    order = [name for name in table_schema_names(table) if name != "date"]
    return table.select(order).sort_by([("pair", "ascending"), ("ts", "ascending")])


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
    folder: Path | None,
    progress: ProgressCallback | None,
) -> tuple[list[SegmentInfo], list[tuple[StreamResult, Rows]]]:
    """Find, survey and plan, then run every stream (on a pool when it pays); outcomes in order.

    What both public functions share. Rows go to in-memory batches when ``folder`` is None, else
    into Parquet files under ``folder`` (no manifest; nothing published). Tests call it with
    options ``make_options`` does not expose (``min_chunk_bytes``).
    """
    segments = find_segments(_as_paths(paths))
    total = sum(path.stat().st_size for path in segments)
    # A pool costs a fresh interpreter per worker (about 0.3 s here) and the join; below some
    # 16 MB of segments (half a second of replay with the native core) one process is as fast:
    # measured 0.32 s alone against 0.38 s with a pool at 9 MB, 0.57 s against 0.48 s at 17 MB.
    use_pool = options.workers > 1 and len(segments) > 1 and total >= 16 * options.min_chunk_bytes
    context = multiprocessing.get_context("spawn")
    pool_cm = (
        # This process works too (``replay.parallel.share``): one worker fewer.
        ProcessPoolExecutor(max_workers=options.workers - 1, mp_context=context)
        if use_pool
        else nullcontext()
    )
    with pool_cm as pool:
        workers = None
        if pool is not None:
            # Workers start while this process surveys; work goes to each once it is up.
            started = [pool.submit(_warm_up) for _ in range(options.workers - 1)]
            workers = Workers(pool, started)
        infos = _survey(segments, workers)
        streams = plan_streams(infos, options)
        if progress is not None:
            progress(0, total)
        done = total - sum(stream.size for stream in streams)

        def tick(size: int) -> None:
            nonlocal done
            done += size
            if progress is not None:
                progress(done, total)

        return infos, run_streams(streams, options, folder, tick, workers)


def _warm_up() -> None:
    """Nothing: importing this module in a worker is the point."""


def _survey(segments: list[Path], workers: Workers | None) -> list[SegmentInfo]:
    if workers is None:
        return [survey_segment(path) for path in segments]
    infos: dict[int, SegmentInfo] = {}
    share(workers, survey_segment, segments, infos.__setitem__)
    return [infos[index] for index in range(len(segments))]


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


def _as_paths(paths: PathsLike) -> list[Path]:
    if isinstance(paths, str | Path):
        return [Path(paths)]
    return [Path(path) for path in paths]
