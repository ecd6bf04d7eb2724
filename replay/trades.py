"""Recorded trades into a Parquet dataset: ``kbook replay --trades``, ``replay.read_trades``.

A stage of its own beside the book's: it lists the segments (``kbook.segment.find_segments``, in
time order), reads only their trade frames (a line that does not hold ``"trade"`` is not even
decoded), decodes each trade exactly with the segment's dialect (``kbook.dialect``), keeps each
trade once (``kbook.trades.TradeLedger``: v2 by ``trade_id`` across the snapshots sent again
after every reconnect; v1 has neither ids nor snapshots, so every trade recorded is kept), and
writes the same layout as the snapshots (``replay.parquet``), atomically::

    pair=BTC-USD/date=2026-11-21/part-0.parquet     ts, exch_ts, price, size, side,
                                                    order_type, trade_id, is_snapshot, seq

one row per trade, in the order recorded (a v2 snapshot's trades oldest first); ``date`` is the
UTC day of ``ts``, the receive time, as for snapshots. ``price`` and ``size`` are float64 parsed
from the wire's text (the text itself is in the segments).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kbook import __version__
from kbook.api import Api, parse_api
from kbook.dialect import Dialect, Trade, dialect_for
from kbook.errors import FrameError, InputError, OutputError, UsageError
from kbook.pairs import common_name, file_name
from kbook.segment import Problem, SegmentPath, SegmentReader, find_segments
from kbook.storage import (
    Inputs,
    check_remote_output,
    is_remote,
    open_location,
    publish_dataset,
    segment_inputs,
)
from kbook.trades import TradeLedger, in_order
from kbook.units import utc_day, utc_text
from kbook.v2 import segment_api
from replay.columns import TIMESTAMP
from replay.options import TimeLike, parse_pairs, to_ns
from replay.parquet import (
    MANIFEST,
    check_output,
    discard,
    new_part,
    publish,
    temporary_folder,
    write_manifest,
)

TRADES_SCHEMA = pa.schema(
    [
        pa.field("ts", TIMESTAMP, nullable=False),
        pa.field("exch_ts", TIMESTAMP, nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("size", pa.float64(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("order_type", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64()),
        pa.field("is_snapshot", pa.bool_(), nullable=False),
        pa.field("seq", pa.int64(), nullable=False),
    ]
)
"""The columns of a trades file (``pair`` and ``date`` are in the folder names)."""

BATCH_ROWS = 65_536
"""Rows buffered per pair before they go to its file: bounded memory over months of trades."""

_MARK = b'"trade"'
_BOOK_MARKS = (b'"book-', b'"channel":"book"', b'"type":"checkpoint"')
"""What a line of a book frame (v1, v2) or a recorder's checkpoint of a book holds."""
"""Every trade frame's line holds it (v1 ``"trade"`` as channel name, v2 ``"channel":"trade"``)."""


@dataclass
class TradesSummary:
    """What a trades replay did: trades kept and dropped per pair, problems met, files."""

    segments: list[SegmentPath]
    ledger: TradeLedger = field(default_factory=TradeLedger)
    problems: list[Problem] = field(default_factory=list)
    out: Path | str | None = None
    """A local folder, or an ``s3://`` URI."""
    files: list[Path] | list[str] = field(default_factory=list)
    """The dataset's files (URIs for a dataset on object storage)."""
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(state.kept for state in self.ledger.pairs.values())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (the dataset's manifest)."""
        return {
            "kbook_version": __version__,
            "dataset": "trades",
            "segments": len(self.segments),
            "pairs": {
                pair: {
                    "trades": state.kept,
                    "repeated": state.repeated,
                    "missing_ids": state.missing,
                }
                for pair, state in sorted(self.ledger.pairs.items())
            },
            "problems": [str(problem) for problem in self.problems],
        }


def replay_trades_to_dataset(
    paths: Inputs,
    out: str | Path,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    force: bool = False,
    api: str | None = None,
) -> TradesSummary:
    """Write the trades recorded in ``paths`` to a dataset at ``out``, atomically; ``pairs``,
    ``start`` (inclusive) and ``end`` (exclusive, receive times) narrow it; ``api`` keeps the
    segments of one API and is needed when a pair's trades were recorded under both.

    ``paths`` and ``out`` may be ``s3://`` URIs, as for the snapshots (``kbook.storage``): the
    dataset is made in a private local folder and published object by object, manifest last."""
    began = time.monotonic()
    if not is_remote(out):
        local = Path(out)
        check_output(local, force)
        folder = temporary_folder(local)
        done = False
        try:
            summary = _write_trades(paths, folder, pairs, start, end, api, began)
            publish(folder, local, force)
            done = True
            summary.out = local
            summary.files = [local / Path(path).relative_to(folder) for path in summary.files]
            return summary
        finally:
            if not done:
                discard(folder)
    location = open_location(out, "--out")
    check_remote_output(location, MANIFEST, force)
    folder = Path(tempfile.mkdtemp(prefix="kbook-trades-"))
    try:
        summary = _write_trades(paths, folder, pairs, start, end, api, began)
        keys = publish_dataset(folder, location, MANIFEST, force)
        summary.out = location.text
        summary.files = [location.uri(key) for key in keys]
        return summary
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_trades(
    paths: Inputs,
    folder: Path,
    pairs: Iterable[str] | str | None,
    start: TimeLike,
    end: TimeLike,
    api: str | None,
    began: float,
) -> TradesSummary:
    """The trades dataset, manifest included, into the unpublished ``folder``; the summary
    (files under ``folder``). ``s3://`` inputs are read in place (``kbook.storage``)."""
    summary = TradesSummary([])
    writer = _Writer(folder)
    try:
        for pair, rows in _trades(paths, pairs, start, end, api, summary):
            writer.add(pair, rows)
    finally:
        writer.close()
    if not summary.rows:
        raise UsageError(_no_trades(summary, start, end))
    summary.seconds = time.monotonic() - began
    summary.files = list(writer.files)
    write_manifest(folder, summary.to_json())
    return summary


def read_trades(
    out: str | Path,
    pair: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Load part of a trades dataset, sorted by pair then recorded order; ``pair`` in either
    spelling, returned as common names (``BTC/USD``); ``start`` inclusive, ``end`` exclusive."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out}: no such trades dataset")
    partitioning = ds.partitioning(
        pa.schema([("pair", pa.string()), ("date", pa.string())]), flavor="hive"
    )
    dataset = ds.dataset(out, format="parquet", partitioning=partitioning)
    condition = None
    names = parse_pairs(pair)
    if names is not None:
        condition = ds.field("pair").isin([file_name(name) for name in names])
    start_ns, end_ns = to_ns(start, "start"), to_ns(end, "end")
    for bound in (
        ds.field("ts") >= pa.scalar(start_ns, TIMESTAMP) if start_ns is not None else None,
        ds.field("ts") < pa.scalar(end_ns, TIMESTAMP) if end_ns is not None else None,
    ):
        if bound is not None:
            condition = bound if condition is None else condition & bound
    wanted = None if columns is None else list(dict.fromkeys(["ts", "pair", *columns, "seq"]))
    table = dataset.to_table(filter=condition, columns=wanted)
    if "seq" not in table.column_names or "pair" not in table.column_names:
        raise InputError(f"{out}: is not a kbook trades dataset (no seq or pair column)")
    common = pc.replace_substring(
        table.column("pair").cast(pa.string()), "-", "/", max_replacements=1
    )
    table = table.set_column(
        table.schema.get_field_index("pair"), pa.field("pair", pa.string(), False), common
    )
    order = ["ts", "pair", *(n for n in table.column_names if n not in ("ts", "pair", "date"))]
    table = table.select(order).sort_by([("pair", "ascending"), ("ts", "ascending")])
    if columns is not None and "seq" not in columns:
        table = table.drop_columns(["seq"])
    return table


def replay_without_books(paths: Inputs, out: str | Path, force: bool = False) -> str | None:
    """For ``kbook replay`` of a recording with no order book in it (``--channels trade``): an
    empty snapshot dataset at ``out`` (its manifest says why) and the message that says what to
    do, rather than an error; None, touching nothing, when the segments hold a book.

    Cheap for a recording of the book: the first book line of the first segment ends the look.
    """
    segments = find_segments(segment_inputs(paths))
    for path in segments:
        reader = SegmentReader(path)
        if any(any(mark in line for mark in _BOOK_MARKS) for _, line in reader.raw_lines()):
            return None
    out = Path(out)
    check_output(out, force)
    folder = temporary_folder(out)
    try:
        manifest = {"kbook_version": __version__, "pairs": {}, "segments": len(segments)}
        manifest["note"] = "no order book in the segments (recorded with --channels trade)"
        write_manifest(folder, manifest)
        publish(folder, out, force)
    except BaseException:
        discard(folder)
        raise
    return (
        f"no order book in the {len(segments)} segment(s) given (recorded with --channels "
        f"trade?): wrote an empty snapshot dataset to {out}; replay the trades with --trades"
    )


# -- internals ------------------------------------------------------------------------------------


def _trades(
    paths: Inputs,
    pairs: Iterable[str] | str | None,
    start: TimeLike,
    end: TimeLike,
    api: str | None,
    summary: TradesSummary,
) -> Iterator[tuple[str, list[tuple[int, int, Trade]]]]:
    """``(pair, [(recv_ns, seq, trade)...])`` batches of the trades kept, in recorded order."""
    wanted = parse_pairs(pairs)
    start_ns, end_ns = to_ns(start, "start"), to_ns(end, "end")
    only = parse_api(api) if api is not None else None
    segments = find_segments(segment_inputs(paths))
    apis: dict[str, set[Api]] = {}
    for path in segments:
        segment_api_ = Api(segment_api(path))
        if only is not None and segment_api_ is not only:
            continue
        summary.segments.append(path)
        dialect = dialect_for(segment_api_)
        batch: dict[str, list[tuple[int, int, Trade]]] = {}
        for recv_ns, seq, trade in _segment_trades(path, dialect, summary.problems):
            pair = common_name(trade.pair)
            if wanted is not None and pair not in wanted:
                continue
            if start_ns is not None and recv_ns < start_ns:
                continue
            if end_ns is not None and recv_ns >= end_ns:
                continue
            apis.setdefault(pair, set()).add(segment_api_)
            if len(apis[pair]) > 1:
                raise UsageError(
                    f"{pair}: trades were recorded under both v1 and v2; "
                    "pick one with --api v1 or --api v2"
                )
            if summary.ledger.keep(pair, trade):
                rows = batch.setdefault(pair, [])
                rows.append((recv_ns, seq, trade))
                if len(rows) >= BATCH_ROWS:
                    yield pair, rows
                    batch[pair] = []
        for pair, rows in batch.items():
            if rows:
                yield pair, rows


def _segment_trades(
    path: SegmentPath, dialect: Dialect, problems: list[Problem]
) -> Iterator[tuple[int, int, Trade]]:
    """``(recv_ns, seq, trade)`` of every trade frame of one segment, in order; a frame that is
    not well formed is a ``Problem`` (named by file and line), never an error."""
    reader = SegmentReader(path)
    try:
        for number, line in reader.raw_lines():
            if _MARK not in line:
                continue
            try:
                record = dialect.decode_line(line)
            except (ValueError, RecursionError):
                problems.append(Problem(path, number, "line is not JSON"))
                continue
            msg = record.get("msg") if type(record) is dict else None
            if not dialect.is_trade(msg):
                continue
            recv_ns, seq = record.get("recv_ns"), record.get("seq")
            if type(recv_ns) is not int or type(seq) is not int:
                problems.append(Problem(path, number, "trade frame without recv_ns or seq"))
                continue
            try:
                trades = in_order(dialect.trades(msg))
            except FrameError as exc:
                problems.append(Problem(path, number, f"malformed trade frame: {exc}"))
                continue
            for trade in trades:
                yield recv_ns, seq, trade
    finally:
        problems.extend(reader.problems)


class _Writer:
    """Each pair's rows into ``pair=.../date=.../part-0.parquet``, one open file per pair."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: list[Path] = []
        self._open: dict[str, tuple[str, pq.ParquetWriter]] = {}

    def add(self, pair: str, rows: list[tuple[int, int, Trade]]) -> None:
        start = 0
        while start < len(rows):
            day = utc_day(rows[start][0])
            stop = start
            while stop < len(rows) and utc_day(rows[stop][0]) == day:
                stop += 1
            self._write(pair, day, _table(rows[start:stop]))
            start = stop

    def _write(self, pair: str, day: str, table: pa.Table) -> None:
        current = self._open.get(pair)
        if current is None or current[0] != day:
            if current is not None:
                current[1].close()
            current = self._open[pair] = (day, self._writer(pair, day))
        try:
            current[1].write_table(table)
        except OSError as exc:
            raise OutputError(f"{self.root}: cannot write trades: {exc}") from exc

    def _writer(self, pair: str, day: str) -> pq.ParquetWriter:
        path = new_part(self.root, pair, day)
        try:
            writer = pq.ParquetWriter(path, TRADES_SCHEMA, compression="zstd")
        except OSError as exc:
            raise OutputError(f"{path}: cannot create: {exc}") from exc
        self.files.append(path)
        return writer

    def close(self) -> None:
        for _day, writer in self._open.values():
            writer.close()
        self._open.clear()


def _table(rows: list[tuple[int, int, Trade]]) -> pa.Table:
    trades = [trade for _, _, trade in rows]
    return pa.table(
        {
            "ts": pa.array([recv for recv, _, _ in rows], TIMESTAMP),
            "exch_ts": pa.array([t.exch_ns for t in trades], TIMESTAMP),
            "price": pa.array([float(t.price) for t in trades], pa.float64()),
            "size": pa.array([float(t.qty) for t in trades], pa.float64()),
            "side": pa.array([t.side for t in trades], pa.string()),
            "order_type": pa.array([t.order_type for t in trades], pa.string()),
            "trade_id": pa.array([t.trade_id for t in trades], pa.int64()),
            "is_snapshot": pa.array([t.snapshot for t in trades], pa.bool_()),
            "seq": pa.array([seq for _, seq, _ in rows], pa.int64()),
        },
        schema=TRADES_SCHEMA,
    )


def _no_trades(summary: TradesSummary, start: TimeLike, end: TimeLike) -> str:
    """Why nothing was written: no trade frames at all, or none in the window asked for."""
    segments = f"{len(summary.segments)} segment(s)"
    if start is not None or end is not None:
        window = f"between {utc_text(to_ns(start, 'start'))} and {utc_text(to_ns(end, 'end'))}"
        return f"no trades {window} in {segments}"
    return f"no trades in {segments}: record them with kbook record PAIR... --channels book,trade"
