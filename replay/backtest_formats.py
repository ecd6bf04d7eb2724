"""Backtest formats converted from kbook's book deltas: Tardis CSV and hftbacktest event arrays.

The deltas (``replay.deltas``: one row per level change, ``ts, exch_ts, side, price, size,
is_snapshot, seq, depth``) are the one place that knows how kbook's book evolves; this module
only re-spells them, one pair at a time, one UTC day per output file. ``kbook replay --format
tardis|hftbacktest`` (``replay_to_backtest_files``) writes the deltas to a private folder and
converts them (``convert_deltas``, also usable on an existing delta dataset) into:

- ``kraken_incremental_book_L2_<date>_<SYMBOL>.csv.gz`` and
  ``kraken_book_snapshot_25_<date>_<SYMBOL>.csv.gz``: Tardis's downloadable CSV (columns, units
  and the reset rule exactly as Tardis documents them); ``SYMBOL`` is Kraken's v1 name with
  ``-`` for ``/`` (``XBT-USD``), the ``symbol`` column holds it as Kraken spells it
  (``XBT/USD``), as Tardis's Kraken data does.
- ``<PAIR>_<date>.npz``: hftbacktest's event array (``np.savez_compressed``'s layout, ``data``,
  ``hftbacktest.types.event_dtype``), loadable by ``BacktestAsset().data(path)``.

Semantics, shared by both (``BookWalker``):

- **Times.** ``local_timestamp`` / ``local_ts`` is kbook's receive time of the message (one
  that goes back, where a timeline changes source, is read as the latest so far). The
  exchange time of a message is the latest ``exch_ts`` among its rows (what Tardis does for
  Kraken: a v1 message carries a time per level, v2 one per update); where Kraken sent none,
  the receive time stands in (Tardis's documented fallback). Tardis's CSV is in µs (kbook's ns
  floored), hftbacktest's arrays keep ns. Receive times are never shifted: a negative feed
  latency (the exchange's clock ahead of the recorder's) stays visible.
- **Snapshots.** A run of ``is_snapshot`` rows after other rows (or at the start of a file)
  replaces the book, Tardis's rule; in hftbacktest it is a ``DEPTH_CLEAR`` of each side (price
  NaN: the whole side) followed by ``DEPTH_SNAPSHOT`` events.
- **Book unknown.** Tardis's formats have no row meaning "book unknown from here", so kbook's
  (``side`` null) becomes an explicit delete (``amount`` 0) of every level the book holds, at the
  time kbook declared the book unknown: a consumer's book is empty until the snapshot rows that
  resume it, never stale. ``book_snapshot_25`` gets a row with no levels there.
- **Each file stands alone.** A day whose deltas begin without a snapshot (the book carried
  over midnight) begins with snapshot rows of the carried book, stamped with the day's first
  message, as Tardis's start-of-day snapshots are.
- ``book_snapshot_25`` has a row after every message that changed the top 25 levels of either
  side (a level's price or amount), levels missing from a thin book left empty.
"""

from __future__ import annotations

import bisect
import gzip
import io
import itertools
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import numpy as np
import pyarrow as pa

from kbook.errors import InputError, OutputError, UsageError
from kbook.pairs import common_name, file_name, v1_alias
from kbook.storage import check_remote_output, is_remote, open_location, publish_dataset
from replay.options import MAX_SILENCE_NS, DurationLike, TimeLike
from replay.parquet import (
    MANIFEST,
    check_output,
    discard,
    publish,
    temporary_folder,
    write_manifest,
)

if TYPE_CHECKING:
    from replay.api import ReplaySummary

TARDIS_EXCHANGE = "kraken"
TARDIS_LEVELS = 25
INCREMENTAL_COLUMNS = [
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "is_snapshot",
    "side",
    "price",
    "amount",
]
"""Tardis's ``incremental_book_L2`` columns, in its order."""

CHANGE, SNAPSHOT, RESET = 0, 1, 2
"""Kinds of ``Message.events``: a level set (size 0 deletes it), a level of a snapshot, and the
start of a snapshot (the book is replaced by the snapshot levels that follow)."""
BID, ASK = "bid", "ask"

# hftbacktest's event layout and codes, as its ``hftbacktest.types`` defines them (2.x); the
# tests check them against the installed package, so writing needs no hftbacktest (nor numba).
EVENT_DTYPE = np.dtype(
    [
        ("ev", "u8"),
        ("exch_ts", "i8"),
        ("local_ts", "i8"),
        ("px", "f8"),
        ("qty", "f8"),
        ("order_id", "u8"),
        ("ival", "i8"),
        ("fval", "f8"),
    ],
    align=True,
)
DEPTH_EVENT = 1
DEPTH_CLEAR_EVENT = 3
DEPTH_SNAPSHOT_EVENT = 4
EXCH_EVENT = 1 << 31
LOCAL_EVENT = 1 << 30
BUY_EVENT = 1 << 29
SELL_EVENT = 1 << 28

FORMATS = ("tardis", "hftbacktest")
FILE_PATTERNS = {
    "tardis": (f"{TARDIS_EXCHANGE}_*.csv.gz",),
    "hftbacktest": ("*.npz",),
}
"""The files each format writes (``fnmatch``): what ``--force`` replaces on object storage."""
DELTA_COLUMNS = ["ts", "exch_ts", "side", "price", "size", "is_snapshot", "seq"]
"""The delta columns the conversion reads."""


def replay_to_backtest_files(
    paths: Iterable[str | Path] | str | Path,
    out: str | Path,
    output_format: str,
    pairs: Iterable[str] | str | None = None,
    start: TimeLike = None,
    end: TimeLike = None,
    force: bool = False,
    api: str | None = None,
    max_silence: DurationLike = MAX_SILENCE_NS,
    progress: Callable[[int, int], None] | None = None,
) -> ReplaySummary:
    """Replay segments (local, or ``s3://`` read in place) into Tardis CSV or hftbacktest files
    in the folder ``out``, or at an ``s3://`` URI, atomically (a failed or interrupted run
    leaves ``out`` as it was; on object storage, published as the snapshots are:
    ``kbook.storage.publish_dataset``): the delta dataset is written to a private folder first
    (``replay.deltas``), then converted (``convert_deltas``). Returns the deltas'
    ``replay.api.ReplaySummary`` with ``out`` and ``files`` of the new files."""
    _check_format(output_format)
    given = [paths] if isinstance(paths, str | Path) else list(paths)
    owned = FILE_PATTERNS[output_format]
    if is_remote(out):
        location = open_location(out, "--out")
        check_remote_output(location, MANIFEST, force, owned)
        folder = Path(tempfile.mkdtemp(prefix="kbook-replay-"))
        try:
            summary, _ = _write_files(
                given, folder, output_format, pairs, start, end, api, max_silence, progress
            )
            keys = publish_dataset(folder / output_format, location, MANIFEST, force, owned)
            summary.out = location.text
            summary.files = [location.uri(key) for key in keys]
            return summary
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    out = Path(out)
    check_output(out, force)
    folder = temporary_folder(out)
    try:
        summary, files = _write_files(
            given, folder, output_format, pairs, start, end, api, max_silence, progress
        )
        publish(folder / output_format, out, force)
        summary.out = out
        summary.files = [out / path.name for path in files]
        return summary
    finally:
        discard(folder)


def _write_files(
    paths: list[str | Path],
    folder: Path,
    output_format: str,
    pairs: Iterable[str] | str | None,
    start: TimeLike,
    end: TimeLike,
    api: str | None,
    max_silence: DurationLike,
    progress: Callable[[int, int], None] | None,
) -> tuple[ReplaySummary, list[Path]]:
    """The deltas into ``folder/deltas``, then the files and their manifest into the
    unpublished ``folder/<output_format>``; the summary and the files."""
    from replay.deltas import replay_deltas_to_dataset

    summary = replay_deltas_to_dataset(
        paths, folder / "deltas", pairs, start, end, False, api, max_silence, False, progress
    )
    files_folder = folder / output_format
    files_folder.mkdir()
    files = convert_deltas(folder / "deltas", files_folder, output_format)
    manifest = summary.to_json() | {"format": output_format}
    manifest.pop("every_ns", None)
    manifest.pop("levels", None)
    write_manifest(files_folder, manifest)
    return summary, files


def convert_deltas(deltas: str | Path, target: str | Path, output_format: str) -> list[Path]:
    """Convert a delta dataset (``replay.deltas``) into ``output_format`` files in the existing
    folder ``target``: per pair, its days in order, one pair-day in memory at a time."""
    _check_format(output_format)
    deltas, target = Path(deltas), Path(target)
    pair_folders = sorted(deltas.glob("pair=*"))
    if not pair_folders:
        raise InputError(f"{deltas}: holds no pair=... folders; not a delta dataset")
    files: list[Path] = []
    for pair_folder in pair_folders:
        pair = pair_folder.name.removeprefix("pair=").replace("-", "/", 1)
        walker = BookWalker()
        for day_folder in sorted(pair_folder.glob("date=*")):
            day = day_folder.name.removeprefix("date=")
            batches = _day_batches(day_folder)
            if output_format == "tardis":
                files += write_tardis_day(walker, batches, pair, day, target)
            else:
                files.append(write_hftbacktest_day(walker, batches, pair, day, target))
    return files


def _check_format(output_format: str) -> None:
    if output_format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {output_format!r}")


def _day_batches(folder: Path) -> Iterator[pa.RecordBatch]:
    """A pair-day's delta rows in the order written: one part streamed as written, several
    read whole and ordered by ``seq``."""
    import pyarrow.parquet as pq

    paths = sorted(folder.glob("*.parquet"))
    if not paths:
        raise InputError(f"{folder}: holds no Parquet files; not a delta dataset")
    try:
        if len(paths) == 1:
            yield from pq.ParquetFile(paths[0]).iter_batches(65_536, columns=DELTA_COLUMNS)
            return
        table = pa.concat_tables(pq.read_table(path, columns=DELTA_COLUMNS) for path in paths)
        side = table.column("side").cast(pa.string())  # the parts' dictionaries differ
        table = table.set_column(table.schema.get_field_index("side"), "side", side)
        yield from table.sort_by("seq").to_batches(65_536)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{folder}: cannot read the deltas: {exc}") from None


def snapshot_columns(levels: int = TARDIS_LEVELS) -> list[str]:
    """Tardis's ``book_snapshot_N`` columns: per level ``asks[i]`` then ``bids[i]``."""
    columns = ["exchange", "symbol", "timestamp", "local_timestamp"]
    for i in range(levels):
        columns += [
            f"asks[{i}].price",
            f"asks[{i}].amount",
            f"bids[{i}].price",
            f"bids[{i}].amount",
        ]
    return columns


def tardis_symbol(pair: str) -> str:
    """Kraken's name as Tardis records it: the v1 ``wsname`` (``BTC/USD`` -> ``XBT/USD``)."""
    common = common_name(pair)
    return v1_alias(common) or common


@dataclass(slots=True)
class Message:
    """One message's effect: its times and the events a consumer applies, in order."""

    local_ns: int
    exch_ns: int
    events: list[tuple[int, str, float, float]]
    """``(kind, side, price, size)``; ``RESET`` events carry no side, price or size."""


@dataclass
class LevelBook:
    """Both sides of a book as a consumer of the deltas holds it: prices sorted ascending.

    ``top_changed`` is set by any change within the best ``TARDIS_LEVELS`` of a side (a change
    deeper down cannot alter them), so ``book_snapshot_25`` reads the top only when it may have
    changed; ``top_text`` keeps each level's CSV text until the level changes."""

    sizes: dict[str, dict[float, float]] = field(default_factory=lambda: {BID: {}, ASK: {}})
    prices: dict[str, list[float]] = field(default_factory=lambda: {BID: [], ASK: []})
    texts: dict[str, dict[float, str]] = field(default_factory=lambda: {BID: {}, ASK: {}})
    top_changed: bool = True

    def set(self, side: str, price: float, size: float) -> None:
        sizes, prices = self.sizes[side], self.prices[side]
        index = bisect.bisect_left(prices, price)
        held = price in sizes
        if size == 0 and not held:
            return
        # Bids are best last: their rank counts from the end (of the list before an insertion).
        rank = index if side == ASK else len(prices) - index - (1 if held else 0)
        if rank < TARDIS_LEVELS:
            self.top_changed = True
        self.texts[side].pop(price, None)
        if size == 0:
            del sizes[price]
            del prices[index]
        else:
            if not held:
                prices.insert(index, price)
            sizes[price] = size

    def clear(self) -> None:
        for side in (BID, ASK):
            self.sizes[side].clear()
            self.prices[side].clear()
            self.texts[side].clear()
        self.top_changed = True

    def levels(self, side: str) -> list[tuple[float, float]]:
        """Best first."""
        prices = self.prices[side]
        ordered = reversed(prices) if side == BID else prices
        return [(price, self.sizes[side][price]) for price in ordered]

    def top_text(self) -> str:
        """The best ``TARDIS_LEVELS`` of each side as ``book_snapshot_25``'s level fields."""
        ask_texts, bid_texts = self.texts[ASK], self.texts[BID]  # most levels' text is kept
        asks = [
            ask_texts.get(price) or self._text(ASK, price)
            for price in self.prices[ASK][:TARDIS_LEVELS]
        ]
        bids = [
            bid_texts.get(price) or self._text(BID, price)
            for price in self.prices[BID][-TARDIS_LEVELS:][::-1]
        ]
        asks += [","] * (TARDIS_LEVELS - len(asks))
        bids += [","] * (TARDIS_LEVELS - len(bids))
        return ",".join(itertools.chain.from_iterable(zip(asks, bids, strict=True)))

    def _text(self, side: str, price: float) -> str:
        texts = self.texts[side]
        text = texts.get(price)
        if text is None:
            text = texts[price] = f"{_number(price)},{_number(self.sizes[side][price])}"
        return text

    def __bool__(self) -> bool:
        return bool(self.sizes[BID] or self.sizes[ASK])


class BookWalker:
    """Turns one pair's delta rows, day after day, into ``Message``s a Tardis or hftbacktest
    consumer applies to reach kbook's book (the module docstring states the rules)."""

    def __init__(self) -> None:
        self.book = LevelBook()
        self._in_snapshot = False
        self._clock = 0
        """The latest receive time so far: one that goes back (where a timeline changes source)
        is read as this, as kbook's grid reads it, so the rows' order is the book's."""

    def day(self, batches: Iterable[pa.RecordBatch | pa.Table]) -> Iterator[Message]:
        """The messages of one UTC day's delta rows (in file order)."""
        self._in_snapshot = False  # a snapshot at the start of a file always replaces the book
        first = True
        for rows in _messages(batches):
            if first:
                first = False
                if not rows[0][5] and self.book:
                    yield self._start_of_day(rows)
            yield self._apply(rows)

    def _start_of_day(self, rows: list[tuple[Any, ...]]) -> Message:
        """The carried book as a snapshot, stamped with the day's first message ``rows``."""
        events: list[tuple[int, str, float, float]] = [(RESET, "", math.nan, 0.0)]
        for side in (BID, ASK):
            events += [(SNAPSHOT, side, price, size) for price, size in self.book.levels(side)]
        self._in_snapshot = True
        return Message(self._tick(rows), _exchange_time(rows), events)

    def _apply(self, rows: list[tuple[Any, ...]]) -> Message:
        events: list[tuple[int, str, float, float]] = []
        book = self.book
        for _, _, side, price, size, is_snapshot in rows:
            if side is None:  # book unknown from here: delete every level
                for known in (BID, ASK):
                    for level_price, _ in book.levels(known):
                        events.append((CHANGE, known, level_price, 0.0))
                book.clear()
                self._in_snapshot = False
                continue
            if is_snapshot and not self._in_snapshot:
                events.append((RESET, "", math.nan, 0.0))
                book.clear()
            self._in_snapshot = bool(is_snapshot)
            events.append((SNAPSHOT if is_snapshot else CHANGE, side, price, size))
            book.set(side, price, size)
        return Message(self._tick(rows), _exchange_time(rows), events)

    def _tick(self, rows: list[tuple[Any, ...]]) -> int:
        self._clock = max(self._clock, int(rows[0][0]))
        return self._clock


def _exchange_time(rows: list[tuple[Any, ...]]) -> int:
    """A message's exchange time: the latest of its rows', else its receive time."""
    stamps = [row[1] for row in rows if row[1] is not None]
    return max(stamps) if stamps else int(rows[0][0])


def _messages(batches: Iterable[pa.RecordBatch | pa.Table]) -> Iterator[list[tuple[Any, ...]]]:
    """Delta rows as ``(ts_ns, exch_ns, side, price, size, is_snapshot)`` tuples, grouped by
    message (consecutive rows of one ``seq``)."""
    current: list[tuple[Any, ...]] = []
    current_seq: object = None
    for batch in batches:
        columns = [
            batch.column("ts").cast(pa.int64()).to_pylist(),
            batch.column("exch_ts").cast(pa.int64()).to_pylist(),
            batch.column("side").cast(pa.string()).to_pylist(),
            batch.column("price").to_pylist(),
            batch.column("size").to_pylist(),
            batch.column("is_snapshot").to_pylist(),
        ]
        for seq, row in zip(
            batch.column("seq").to_pylist(), zip(*columns, strict=True), strict=True
        ):
            if current and seq != current_seq:
                yield current
                current = []
            current_seq = seq
            current.append(row)
    if current:
        yield current


# -- Tardis CSV -----------------------------------------------------------------------------------


def tardis_names(pair: str, day: str) -> tuple[str, str]:
    """The two file names of ``pair``'s ``day``, as Tardis names its downloads."""
    symbol = tardis_symbol(pair).replace("/", "-")
    return (
        f"{TARDIS_EXCHANGE}_incremental_book_L2_{day}_{symbol}.csv.gz",
        f"{TARDIS_EXCHANGE}_book_snapshot_{TARDIS_LEVELS}_{day}_{symbol}.csv.gz",
    )


def write_tardis_day(
    walker: BookWalker,
    batches: Iterable[pa.RecordBatch | pa.Table],
    pair: str,
    day: str,
    folder: Path,
) -> list[Path]:
    """Write ``pair``'s ``day`` of deltas as Tardis's two CSV files in ``folder``."""
    symbol = tardis_symbol(pair)
    incremental_path, snapshot_path = (folder / name for name in tardis_names(pair, day))
    with _AtomicText(incremental_path) as incremental, _AtomicText(snapshot_path) as snapshots:
        incremental.write(",".join(INCREMENTAL_COLUMNS) + "\n")
        snapshots.write(",".join(snapshot_columns()) + "\n")
        prefix = f"{TARDIS_EXCHANGE},{symbol},"
        last_top: str | None = None
        for message in walker.day(batches):
            times = f"{message.exch_ns // 1000},{message.local_ns // 1000},"
            lines = [
                f"{prefix}{times}{'true' if kind == SNAPSHOT else 'false'},{side},"
                f"{_number(price)},{_number(size)}\n"
                for kind, side, price, size in message.events
                if kind != RESET
            ]
            incremental.write("".join(lines))
            book = walker.book
            if book.top_changed or last_top is None:
                book.top_changed = False
                top = book.top_text()
                if top != last_top:
                    last_top = top
                    snapshots.write(prefix + times + top + "\n")
    return [incremental_path, snapshot_path]


def _number(value: float) -> str:
    """A float in the shortest digits that read back exactly, never in exponent notation."""
    text = repr(value)
    if "e" in text:
        text = np.format_float_positional(value, trim="-")
    return text


class _AtomicText:
    """A gzip text file written under a temporary name and renamed once complete. Its gzip
    header holds the file's own name and no time, so the same rows give the same bytes
    (a replay to object storage is checked against a local one byte for byte)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.raw: BinaryIO | None = None
        self.file: TextIO | None = None

    def __enter__(self) -> TextIO:
        try:
            self.raw = open(self.partial, "wb")  # noqa: SIM115 (closed in __exit__)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write: {exc}") from None
        packed = gzip.GzipFile(self.path.name, "wb", 6, self.raw, mtime=0)
        self.file = io.TextIOWrapper(packed, encoding="ascii", newline="")
        return self.file

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        assert self.file is not None
        assert self.raw is not None
        try:
            self.file.close()
            self.raw.close()
            if kind is None:
                os.replace(self.partial, self.path)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write: {exc}") from None
        finally:
            if kind is not None or not self.path.exists():
                self.partial.unlink(missing_ok=True)


# -- hftbacktest ----------------------------------------------------------------------------------


def hftbacktest_name(pair: str, day: str) -> str:
    return f"{file_name(pair)}_{day}.npz"


def hftbacktest_events(messages: Iterable[Message]) -> np.ndarray:
    """hftbacktest's event array of ``messages``, flagged for its exchange and local processors
    (``_flag_for_processors``)."""
    chunks: list[np.ndarray] = []
    evs: list[int] = []
    exch: list[int] = []
    local: list[int] = []
    px: list[float] = []
    qty: list[float] = []

    def flush() -> None:  # numpy holds an event in 64 bytes, Python's lists in several times that
        chunk = np.zeros(len(evs), EVENT_DTYPE)
        chunk["ev"], chunk["exch_ts"], chunk["local_ts"] = evs, exch, local
        chunk["px"], chunk["qty"] = px, qty
        chunks.append(chunk)
        for values in (evs, exch, local, px, qty):
            values.clear()

    for message in messages:
        for kind, side, price, size in message.events:
            if kind == RESET:
                codes = [
                    (DEPTH_CLEAR_EVENT | BUY_EVENT, math.nan),
                    (DEPTH_CLEAR_EVENT | SELL_EVENT, math.nan),
                ]
            else:
                flag = BUY_EVENT if side == BID else SELL_EVENT
                codes = [
                    ((DEPTH_SNAPSHOT_EVENT if kind == SNAPSHOT else DEPTH_EVENT) | flag, price)
                ]
            for code, event_price in codes:
                evs.append(code)
                exch.append(message.exch_ns)
                local.append(message.local_ns)
                px.append(event_price)
                qty.append(size)
        if len(evs) >= 65_536:
            flush()
    flush()
    events = np.concatenate(chunks)
    return _flag_for_processors(events)


def _flag_for_processors(events: np.ndarray) -> np.ndarray:
    """Flag ``events`` (in receive order) ``EXCH_EVENT``/``LOCAL_EVENT`` so that each of
    hftbacktest's processors reads its events in its own time order: the exchange's by
    ``exch_ts``, the local one's by ``local_ts`` (what ``validate_event_order`` checks).

    An event whose exchange time is in place (no earlier event's is later, no later event's is
    earlier) serves both, once. Between two such events, the others are written twice: once for
    the local processor in receive order, once for the exchange processor in exchange-time order
    (stable), as hftbacktest's own ``correct_event_order`` does, without its JIT compilation.
    """
    count = len(events)
    if count == 0:
        return events
    events["local_ts"] = np.maximum.accumulate(events["local_ts"])  # never reorder the book
    exch = events["exch_ts"]
    not_after_later = exch <= np.minimum.accumulate(exch[::-1])[::-1]
    not_before_earlier = exch >= np.maximum.accumulate(exch)
    both = not_after_later & not_before_earlier
    if both.all():
        events["ev"] |= EXCH_EVENT | LOCAL_EVENT
        return events
    span = np.cumsum(both)  # a barrier opens its span; the others follow it within the span
    single = np.flatnonzero(both)
    split = np.flatnonzero(~both)
    by_exch = split[np.argsort(exch[split], kind="stable")]
    rows = np.concatenate([single, split, by_exch])
    flags = np.concatenate(
        [
            np.full(len(single), EXCH_EVENT | LOCAL_EVENT, np.uint64),
            np.full(len(split), LOCAL_EVENT, np.uint64),
            np.full(len(by_exch), EXCH_EVENT, np.uint64),
        ]
    )
    role = np.concatenate([np.zeros(len(single)), np.ones(len(split)), np.full(len(by_exch), 2)])
    rank = np.concatenate([np.zeros(len(single)), np.arange(len(split)), np.arange(len(by_exch))])
    order = np.lexsort((rank, role, span[rows]))
    flagged = events[rows[order]]
    flagged["ev"] |= flags[order]
    return flagged


def write_hftbacktest_day(
    walker: BookWalker,
    batches: Iterable[pa.RecordBatch | pa.Table],
    pair: str,
    day: str,
    folder: Path,
) -> Path:
    """Write ``pair``'s ``day`` of deltas as one hftbacktest ``.npz`` in ``folder``."""
    data = hftbacktest_events(walker.day(batches))
    path = folder / hftbacktest_name(pair, day)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
            # np.savez_compressed's layout, with a fixed time: the same events, the same bytes
            member = zipfile.ZipInfo("data.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as file:
                np.lib.format.write_array(file, data, allow_pickle=False)
        os.replace(partial, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return path
