"""How fast replay runs, against the parse floor and a naive book; memory, recorder cost, cores.

    .venv/bin/python benchmarks/replay_speed.py [--frames 1000000] [--repeat 3]
        [--long-frames 8000000] [--api-frames 300000] [--cache DIR]
        [--only e2e,survey,book,floor,naive,memory,recorder,workers,apis,events,stages]

``KBOOK_NATIVE=0`` in the environment measures the pure-Python path instead of the native core.

Generates (once; cached under ``--cache``) recordings with the simulator's seeded ``Market``,
written the way the recorder writes them: per-pair streams of segments rotated every
``--rotate`` seconds of receive time, each rotated segment opening with ``checkpoint`` lines,
heartbeats and a flush every second, about 1,000 frames a second (exponential gaps):

- ``single``: XBT/USD at depth 100, ``--frames`` updates;
- ``multi``: four pairs at depth 100 sharing one connection, ``--frames`` updates in all;
- ``long``: as ``single`` with ``--long-frames`` updates (only for the workers' figure: a worker
  takes a fixed ~0.3 s to start, which a one-second replay cannot hide);
- for the ``apis`` table: ``single`` with ``--api-frames`` updates at depths 10, 100 and 1000,
  each once as Kraken v1 frames and once as v2 frames of the same market (BTC/USD).

Then prints, as the median of ``--repeat`` runs, frames per CPU second of: the end-to-end
replay (segments -> books with every checksum verified -> 1 s snapshots -> Parquet) side by
side with the parse floor (zstd + line split + ``orjson.loads``, no book): ``--repeat`` rounds,
each of the floor and three replays, each in a child process measured alike (CPU seconds of
that process after its imports), with the median of each round's ratio to its floor. The
replays: a first run over a copy of ``single`` whose segments end with the recorder's survey
trailers, as ``kbook record`` writes them (the headline figure), a run after it (facts from the
survey cache) and a first run over the benchmark's own segments, which have no trailer (the
survey decompresses and scans each). Then the book alone (decode + ``BookFeed``) and a
deliberately naive book (dicts, ``sorted()`` per checksum, ``Decimal``, stdlib ``json``); the
peak RSS of a replay; the recorder's writing cost; the speed-up of ``workers=2`` over
``workers=1``; and the ``apis`` table: end to end, ``kbook verify`` (``verify_paths``) and peak
RSS for v1 and v2 side by side at each depth, with the ratios v2/v1 and verify/end to end;
``events``: the grid replay beside the deltas and the on-change snapshots (``--format deltas``,
``--every change``, which run on the Python path); ``stages``: where a first end-to-end
replay's CPU goes (the survey, replay's reading, the core, the grid rows and Parquet, the rest),
timed inside one replay in this process, over the segments with trailers and over those
without; and ``survey``: the survey's CPU time with an empty survey cache, with a filled one,
and over the copy with trailers. Not a test: figures drift 15-30% between runs on a shared
machine, so compare the ratios printed within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
from parse_floor import chunks

from kbook.api import URLS, Api
from kbook.feed import BookFeed
from kbook.pairs import file_name
from kbook.segment import (
    SegmentReader,
    SegmentWriter,
    checkpoint_meta,
    frame_line,
    is_json_text,
    meta_line,
)
from kbook.sim import Market, V2Market
from kbook.units import SECOND
from kbook.v2 import subscribe_request
from kbook.verify import verify_paths

START_NS = 1_767_607_200 * SECOND
"""2026-01-05T10:00:00Z: the recordings' first receive time."""
DEPTH = 100
SINGLE = ("XBT/USD",)
MULTI = ("XBT/USD", "ETH/USD", "XDG/USD", "SOL/USD")
CONNECTION_ID = 17_843_232_920_108_168_701
FORMAT = 3
"""Bump when the generated data changes, so stale caches are not reused."""


# -- generating recordings ------------------------------------------------------------------------


@dataclass
class _Stream:
    """One pair's segments as the recorder writes them: rotate, checkpoint, flush each second."""

    root: Path
    pair: str
    market: Market
    writer: SegmentWriter | None = None
    boundary: int = 0

    def open(self, now: int, start: int, head: list[bytes]) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start // SECOND))
        day = stamp[:4] + "-" + stamp[4:6] + "-" + stamp[6:8]
        name = file_name(self.pair)
        path = self.root / "raw" / name / day / f"{name}.{stamp}.jsonl.zst"
        self.writer = SegmentWriter(path)
        for line in head:
            self.writer.write(line)

    def checkpoint(self, now: int) -> bytes:
        asks, bids = self.market.window()
        record = checkpoint_meta(
            self.pair, self.market.channel_name, asks, bids, self.market.checksum()
        )
        return meta_line(now, record)

    def close(self, now: int, reason: str) -> None:
        assert self.writer is not None
        self.writer.write(meta_line(now, {"type": "segment_end", "reason": reason}))
        self.writer.close()
        self.writer = None


def generate(
    root: Path,
    pairs: tuple[str, ...],
    frames: int,
    rotate_s: int,
    seed: int,
    api: Api = Api.V1,
    depth: int = DEPTH,
) -> None:
    """Write a recording of ``frames`` updates over ``pairs`` into ``root/raw``, in Kraken's
    ``api`` (v2: the same market printed as v2 frames, ``pairs`` v2 symbols)."""
    rng = random.Random(seed)
    now = START_NS
    clock = [now / SECOND]
    v2 = api == Api.V2
    kind = V2Market if v2 else Market
    streams = [
        _Stream(root, pair, kind(pair, depth, seed, clock=lambda: clock[0])) for pair in pairs
    ]
    rotate = rotate_s * SECOND
    seq = 0

    def line(ns: int, text: str) -> bytes:
        nonlocal seq
        seq += 1
        return frame_line(ns, seq - 1, text, is_json_text(text))

    status = orjson.dumps(
        {"channel": "status", "type": "update", "data": [{"connection_id": CONNECTION_ID}]}
        if v2
        else {"connectionID": CONNECTION_ID, "event": "systemStatus", "status": "online"}
    ).decode()
    for stream in streams:
        sub: dict[str, Any] = {
            "event": "subscribe",
            "pair": [stream.pair],
            "subscription": {"name": "book"},
        }
        ack: dict[str, Any] = {
            "channelID": 336,
            "channelName": stream.market.channel_name,
            "event": "subscriptionStatus",
            "pair": stream.pair,
            "status": "subscribed",
            "subscription": {"depth": depth, "name": "book"},
        }
        if v2:
            sub = subscribe_request([stream.pair], depth, 1)
            result = {"channel": "book", "depth": depth, "symbol": stream.pair}
            ack = {"method": "subscribe", "result": result, "success": True, "req_id": 1}
        start = {"type": "session_start", "kbook": "bench", "pair": stream.pair, "api": api}
        head = [
            meta_line(now, start),
            meta_line(now, {"type": "connect", "url": URLS[api]}),
            line(now, status),
            meta_line(now, {"type": "subscribe", "request": sub}),
            line(now, orjson.dumps(ack).decode()),
            line(now, stream.market.snapshot_frame(336)),
        ]
        stream.open(now, now, head)
        stream.boundary = (now // rotate + 1) * rotate
    next_second = (now // SECOND + 1) * SECOND
    heartbeat = '{"channel":"heartbeat"}' if v2 else '{"event":"heartbeat"}'
    for _ in range(frames):
        now += 1 + int(rng.expovariate(1.0) * 1_000_000)  # about 1,000 frames a second
        while now >= next_second:
            for stream in streams:
                assert stream.writer is not None
                stream.writer.write(line(next_second, heartbeat))
                stream.writer.flush(fsync=False)
            next_second += SECOND
        stream = streams[rng.randrange(len(streams))]
        if now >= stream.boundary:
            head = [stream.checkpoint(now)]
            stream.close(now, "rotate")
            stream.open(now, now - now % rotate, head)
            stream.boundary = (now // rotate + 1) * rotate
        clock[0] = now / SECOND
        assert stream.writer is not None
        stream.writer.write(line(now, stream.market.update_frame(336)))
    for stream in streams:
        stream.close(now, "stopped")


def recording(
    cache: Path,
    kind: str,
    frames: int,
    rotate_s: int,
    seed: int,
    api: Api = Api.V1,
    depth: int = DEPTH,
) -> Path:
    """The cached recording ``kind`` (``single``/``long``: one pair, ``multi``: four), generated
    when missing; ``api`` v2 records the same market as v2 frames (BTC/USD for XBT/USD)."""
    pairs = MULTI if kind == "multi" else SINGLE
    if api == Api.V2:
        pairs = tuple(pair.replace("XBT", "BTC").replace("XDG", "DOGE") for pair in pairs)
    folder = cache / f"{kind}-{api}-d{depth}-{frames}-r{rotate_s}-s{seed}-v{FORMAT}"
    if (folder / "done").exists():
        return folder / "raw"
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    generate(folder, pairs, frames, rotate_s, seed, api, depth)
    (folder / "done").write_text("ok\n")
    print(
        f"  generated {kind} ({api}, depth {depth}): {frames:,} frames in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return folder / "raw"


def core_name() -> str:
    """Which implementation of ``LineFeed.run`` a replay here uses (``KBOOK_NATIVE=0``: Python)."""
    try:
        from kbook.lines import native_core
    except ImportError:
        return "pure Python (a version of kbook without a native core)"
    return (
        "native core (kbook._native)"
        if native_core()
        else "pure Python (KBOOK_NATIVE=0 or not built)"
    )


def segments_of(raw: Path) -> list[Path]:
    return sorted(raw.rglob("*.jsonl.zst"))


# -- what is measured -----------------------------------------------------------------------------


def book_only(raw: Path) -> int:
    """Decode + ``BookFeed.on_message`` (as ``kbook verify`` does); returns the book frames."""
    feed = BookFeed()
    for path in segments_of(raw):
        for record in SegmentReader(path):
            recv_ns = record["recv_ns"]
            if "msg" in record:
                feed.on_message(record["msg"], recv_ns)
            elif "meta" in record:
                feed.on_meta(record["meta"], recv_ns)
    return sum(stats.frames for stats in feed.stats.values())


def hot_path(raw: Path) -> int:
    """Raw lines -> ``LineFeed`` (replay's hot path), the rest -> ``BookFeed``; no sampling."""
    from kbook.lines import LineFeed  # here: versions before the fast path have none

    feed = BookFeed()
    fast = LineFeed(feed)
    routes = [fast.follow(pair, f"book-{DEPTH}") for pair in MULTI]
    loads = orjson.loads
    for path in segments_of(raw):
        for _, lines in SegmentReader(path).batches():
            index = fast.run(lines, 0)
            while index < len(lines):
                if lines[index]:
                    record = loads(lines[index])
                    fast.clock = max(fast.clock, record["recv_ns"])
                    if "msg" in record:
                        feed.on_message(record["msg"], fast.clock)
                    elif "meta" in record:
                        feed.on_meta(record["meta"], fast.clock)
                    for route in routes:
                        route.book = feed.books.get(route.key)
                index = fast.run(lines, index + 1)
    return sum(stats.frames for stats in feed.stats.values())


def verify_rate(raw: Path) -> int:
    """``kbook verify``'s library call over the recording; returns the book frames."""
    report = verify_paths([raw])
    assert report.checksums_failed == 0
    return sum(stats.frames for stats in report.pairs.values())


def stage_times(raw: Path, out: Path, repeat: int) -> dict[str, float]:
    """Median CPU seconds of a first end-to-end replay in this process (an empty survey cache)
    and of its stages, each timed where the replay spends it by a wrapper put on it for the run:
    the survey (``cached_surveys`` as replay calls it: the cache, the trailers or the scan),
    replay's reading (inside ``SegmentReader.batches``: zstd + line split), the core's
    ``LineFeed.run`` calls, the grid rows (``PairSampler.catch_up``, with the Parquet writes it
    makes) and the Parquet writes alone. No profiler: one adds a cost per Python call."""
    import replay
    import replay.api
    from kbook.lines import LineFeed
    from kbook.segment import SegmentReader
    from replay.parquet import DatasetWriter
    from replay.sampler import PairSampler

    spent = dict.fromkeys(("survey", "read", "core", "rows", "parquet"), 0.0)
    wrapped: tuple[tuple[Any, str, str], ...] = (
        (replay.api, "cached_surveys", "survey"),
        (LineFeed, "run", "core"),
        (PairSampler, "catch_up", "rows"),
        (DatasetWriter, "write", "parquet"),
    )
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]
    originals.append((SegmentReader, "batches", SegmentReader.batches))

    def timed(method: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent[stage] += time.process_time() - started

        return run

    def timed_batches(method: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def batches(*args: Any, **kwargs: Any) -> Iterator[Any]:
            items = method(*args, **kwargs)
            while True:
                started = time.process_time()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    spent["read"] += time.process_time() - started
                yield item

        return batches

    runs: dict[str, list[float]] = {}
    cache = out.parent / "stages.sqlite"
    os.environ["KBOOK_SURVEY_CACHE"] = str(cache)
    try:
        for owner, name, stage in wrapped:
            setattr(owner, name, timed(getattr(owner, name), stage))
        SegmentReader.batches = timed_batches(SegmentReader.batches)  # type: ignore[method-assign]
        for _ in range(repeat):
            spent.update(dict.fromkeys(spent, 0.0))
            shutil.rmtree(out, ignore_errors=True)
            cache.unlink(missing_ok=True)
            started = time.process_time()
            replay.replay_to_dataset(raw, out, every="1s", workers=1)
            runs.setdefault("total", []).append(time.process_time() - started)
            for stage, seconds in spent.items():
                runs.setdefault(stage, []).append(seconds)
    finally:
        del os.environ["KBOOK_SURVEY_CACHE"]
        for owner, name, method in originals:
            setattr(owner, name, method)
    return {stage: statistics.median(seconds) for stage, seconds in runs.items()}


def print_stages(raw: Path, out: Path, repeat: int, frames: int, what: str) -> None:
    m = stage_times(raw, out, repeat)
    total = m["total"]
    rest = total - m["survey"] - m["read"] - m["core"] - m["rows"]
    print(
        f"where end to end goes (a first run in one process over {what}, {frames:,} updates, "
        f"{total:.2f} CPU s, median of {repeat}):"
    )
    for seconds, stage in (
        (m["core"], "native core (LineFeed.run: parse, apply, checksum)"),
        (m["read"], "replay's reading: zstd + line split (as the floor's)"),
        (m["survey"], "the survey (cache, trailers or a scan of each segment)"),
        (m["rows"], f"grid rows, Parquet included ({m['parquet']:.3f} s of Parquet writes)"),
        (rest, "the rest: lines handed back to the general path, plan, manifest"),
    ):
        print(f"  {seconds:6.3f} s {seconds / total:6.1%}  {stage}")


def apis_table(args: argparse.Namespace, work: Path) -> None:
    """v1 and v2 of the same market side by side, at depths 10, 100 and 1000: end to end,
    ``kbook verify`` and peak RSS, with the ratios the targets are stated in."""
    print(
        f"v1 and v2 of one market, {args.api_frames:,} updates each (frames per CPU second, "
        "median; peak RSS of the replay):"
    )
    print(f"{'depth':>6} {'api':>4} {'end to end':>11} {'verify':>9} {'verify/e2e':>11} {'RSS':>7}")
    for depth in (10, 100, 1000):
        e2e = {}
        for api in Api:
            raw = recording(
                args.cache, "single", args.api_frames, args.rotate, args.seed, api, depth
            )
            runs = [replay_in_child(raw, work / "apis", 1) for _ in range(args.repeat)]
            e2e[api] = statistics.median(r["frames"] / r["cpu"] for r in runs)
            rss = max(r["rss_kib"] for r in runs) / 1024
            verify, _ = median_rate(lambda raw=raw: verify_rate(raw), args.repeat)
            print(
                f"{depth:>6} {api:>4} {e2e[api]:>11,.0f} {verify:>9,.0f} "
                f"{verify / e2e[api]:>11.2f} {rss:>5,.0f} MB"
            )
        print(f"{'':>6} v2/v1 end to end: {e2e[Api.V2] / e2e[Api.V1]:.2f}")


class NaiveBook:
    """The straightforward book: a dict per side, sorted on every read, Decimal zero test."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.asks: dict[Decimal, tuple[str, str]] = {}
        self.bids: dict[Decimal, tuple[str, str]] = {}

    def set(self, side: dict[Decimal, tuple[str, str]], level: list[str]) -> None:
        if Decimal(level[1]) == 0:
            side.pop(Decimal(level[0]), None)
        else:
            side[Decimal(level[0])] = (level[0], level[1])

    def truncate(self) -> None:
        for side, reverse in ((self.asks, False), (self.bids, True)):
            for key in sorted(side, reverse=reverse)[self.depth :]:
                del side[key]

    def checksum(self) -> int:
        def f(text: str) -> str:
            return text.replace(".", "").lstrip("0")

        asks = [self.asks[k] for k in sorted(self.asks)[:10]]
        bids = [self.bids[k] for k in sorted(self.bids, reverse=True)[:10]]
        return zlib.crc32("".join(f(p) + f(v) for p, v in asks + bids).encode())


def naive(raw: Path, limit: int) -> int:
    """The naive book over the first ``limit`` frames with stdlib json; returns frames applied."""
    books: dict[tuple[str, str], NaiveBook] = {}
    count = 0
    for path in segments_of(raw):
        for lines in chunks(path):
            for line in lines:
                record = json.loads(line)
                msg = record.get("meta") or record.get("msg")
                if isinstance(msg, dict) and msg.get("type") == "checkpoint":
                    book = books[(msg["pair"], msg["channel"])] = NaiveBook(DEPTH)
                    for level in msg["asks"]:
                        book.set(book.asks, level)
                    for level in msg["bids"]:
                        book.set(book.bids, level)
                if not isinstance(msg, list):
                    continue
                count += 1
                key = (msg[-1], msg[-2])
                if "as" in msg[1]:
                    book = books[key] = NaiveBook(DEPTH)
                    for level in msg[1]["as"]:
                        book.set(book.asks, level)
                    for level in msg[1]["bs"]:
                        book.set(book.bids, level)
                    continue
                book = books[key]
                for payload in msg[1:-2]:
                    for level in payload.get("a", ()):
                        book.set(book.asks, level)
                    for level in payload.get("b", ()):
                        book.set(book.bids, level)
                book.truncate()
                if book.checksum() != int(msg[-3]["c"]):
                    raise AssertionError("naive book: checksum mismatch")
                if count >= limit:
                    return count
    return count


CHILD = """
import json, resource, sys, time
from kbook.cli import single_threaded_blas
single_threaded_blas()  # as `kbook replay` runs
import replay
def cpu(who=resource.RUSAGE_SELF):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
started, cpu_started = time.perf_counter(), cpu()
mode = sys.argv[4] if len(sys.argv) > 4 else "grid"
if mode == "deltas":
    summary = replay.replay_deltas_to_dataset(sys.argv[1], sys.argv[2])
else:
    every = "change" if mode == "change" else "1s"
    summary = replay.replay_to_dataset(sys.argv[1], sys.argv[2], every=every, workers=int(sys.argv[3]))
seconds, cpu_seconds = time.perf_counter() - started, cpu() - cpu_started
pool_cpu = cpu(resource.RUSAGE_CHILDREN)
frames = sum(p.frames for p in summary.pairs.values())
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pool = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "cpu": cpu_seconds, "pool_cpu": pool_cpu, "frames": frames,
                  "rss_kib": own, "pool_rss_kib": pool}))
"""


def replay_in_child(
    raw: Path, out: Path, workers: int, mode: str = "grid", warm: bool = False
) -> dict[str, Any]:
    """An end-to-end replay in a fresh interpreter: its time, frames and peak RSS. ``mode``:
    ``grid`` (1 s snapshots), ``deltas`` or ``change`` (on-change snapshots). The survey cache
    (``replay.survey_cache``) is a file beside ``out``: emptied first (a first run, every
    segment surveyed) unless ``warm`` (the run before surveyed them)."""
    shutil.rmtree(out, ignore_errors=True)
    cache = out.parent / "surveys.sqlite"
    if not warm:
        cache.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(raw), str(out), str(workers), mode],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"KBOOK_SURVEY_CACHE": str(cache)},
    )
    return json.loads(done.stdout)


def floor_in_child(raw: Path) -> dict[str, Any]:
    """The parse floor over ``raw`` in a fresh interpreter (``parse_floor.py``): its lines and
    CPU seconds, imports left out, as ``replay_in_child`` measures a replay."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("parse_floor.py")), str(raw)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


SIDE_BY_SIDE = {
    "trailers": "end to end, first run over segments as `kbook record` writes them (trailers)",
    "cache": "end to end, a run after it (facts from the survey cache)",
    "bare": "end to end, first run over segments without trailers (each surveyed by a scan)",
}
"""The end-to-end replays measured beside the parse floor, by name."""


def side_by_side(single: Path, trailed: Path, work: Path, repeat: int) -> dict[str, Any]:
    """``repeat`` rounds, each of the parse floor and the replays of ``SIDE_BY_SIDE`` in turn,
    each in a child process (CPU seconds of that process alone, after its imports). Returns
    per name the median rate (lines or frames per CPU second), the median over rounds of each
    round's rate against that round's floor (so that the load of the shared machine, which
    drifts over minutes, weighs on both sides of each ratio alike), and the runs."""
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], **{name: [] for name in SIDE_BY_SIDE}}
    for _ in range(repeat):
        runs["floor"].append(floor_in_child(single))
        runs["trailers"].append(replay_in_child(trailed, work / "trailers", 1))
        runs["cache"].append(replay_in_child(trailed, work / "trailers", 1, warm=True))
        runs["bare"].append(replay_in_child(single, work / "bare", 1))
    floors = [r["lines"] / r["cpu"] for r in runs["floor"]]
    result: dict[str, Any] = {"floor": statistics.median(floors), "runs": runs}
    for name in SIDE_BY_SIDE:
        rates = [r["frames"] / r["cpu"] for r in runs[name]]
        result[name] = statistics.median(rates)
        result[name + "/floor"] = statistics.median(
            rate / floor for rate, floor in zip(rates, floors, strict=True)
        )
    return result


def with_trailers(raw: Path) -> Path:
    """A copy of the recording ``raw`` whose segments end with their survey facts, as the
    recorder closes them (``kbook.segment.read_trailer``): the same lines, a zstd frame per
    reader batch, the recorder's scan of each frame's text. Made once, beside ``raw``."""
    from kbook.dialect import segment_dialect
    from kbook.survey_scan import facts_json

    folder = raw.parent.with_name(raw.parent.name + "-trailers")
    if (folder / "done").exists():
        return folder / "raw"
    shutil.rmtree(folder, ignore_errors=True)
    for path in segments_of(raw):
        copy = folder / "raw" / path.relative_to(raw)
        scan = segment_dialect(path).survey_scan()
        writer = SegmentWriter(copy)
        writer.on_text = scan.body
        for _, lines in SegmentReader(path).batches():
            writer.write_lines([line + b"\n" for line in lines if line])
            writer.flush(fsync=False)
        writer.close(lambda copy=copy, scan=scan: orjson.dumps(facts_json(scan.info(copy, 0))))
    (folder / "done").write_text("ok\n")
    return folder / "raw"


def survey_cost(raw: Path, trailed: Path, cache: Path, repeat: int) -> dict[str, float]:
    """CPU seconds of the survey of ``raw``'s segments (medians): with an empty survey cache
    (every segment decompressed and scanned, its facts kept), with the cache that run left
    (each segment stamped, its facts read back), and of ``trailed``'s with an empty cache (the
    facts read off each segment's trailer)."""
    from replay.survey import survey_segments
    from replay.survey_cache import cached_surveys

    times: dict[str, list[float]] = {"cold": [], "warm": [], "trailers": []}
    os.environ["KBOOK_SURVEY_CACHE"] = str(cache)
    try:
        for _ in range(repeat):
            for name, folder in (("cold", raw), ("warm", raw), ("trailers", trailed)):
                if name != "warm":
                    cache.unlink(missing_ok=True)
                segments = segments_of(folder)
                began = time.process_time()
                cached_surveys(segments, survey_segments)
                times[name].append(time.process_time() - began)
    finally:
        del os.environ["KBOOK_SURVEY_CACHE"]
    return {name: statistics.median(values) for name, values in times.items()}


def recorder_cost(folder: Path, frames: int = 100_000) -> dict[str, float]:
    """CPU seconds per 100k frames of the recorder's writing path (``frame_line`` of the text as
    received, ``is_json_text``, ``SegmentWriter``, a flush each second of receive time), with
    and without fsync; of its live book (decode once, ``BookFeed.on_message``); and the
    compression ratio."""
    clock = [START_NS / SECOND]
    market = Market("XBT/USD", DEPTH, 11, clock=lambda: clock[0])
    rng = random.Random(11)
    now = START_NS
    texts = [(now, market.snapshot_frame(336))]
    for _ in range(frames):
        now += 1 + int(rng.expovariate(1.0) * 1_000_000)
        clock[0] = now / SECOND
        texts.append((now, market.update_frame(336)))
    figures = {}
    for fsync in (True, False):
        path = folder / f"recorder-{fsync}.jsonl.zst"
        path.unlink(missing_ok=True)
        began = time.process_time()
        writer = SegmentWriter(path)
        next_flush = (texts[0][0] // SECOND + 1) * SECOND
        for seq, (recv_ns, text) in enumerate(texts):
            if recv_ns >= next_flush:
                writer.flush(fsync=fsync)
                next_flush += SECOND
            writer.write(frame_line(recv_ns, seq, text, is_json_text(text)))
        writer.close()
        figures["fsync" if fsync else "no fsync"] = (time.process_time() - began) * 1e5 / frames
        figures["ratio"] = writer.bytes_in / path.stat().st_size
    feed = BookFeed()
    began = time.process_time()
    for recv_ns, text in texts:
        feed.on_message(orjson.loads(text), recv_ns)
    figures["live book"] = (time.process_time() - began) * 1e5 / frames
    assert feed.stats["XBT/USD"].checksums_ok == frames
    return figures


def median_rate(run: Callable[[], int], repeat: int) -> tuple[float, int]:
    """(median items per CPU second, items) over ``repeat`` runs.

    CPU time, not wall time: the machine is shared, and a single-threaded loop's CPU time does
    not count the time other processes held the core.
    """
    rates = []
    items = 0
    for _ in range(repeat):
        started = time.process_time()
        items = run()
        rates.append(items / (time.process_time() - started))
    return statistics.median(rates), items


def same_dataset(a: Path, b: Path) -> bool:
    """True when two snapshot datasets hold byte-identical Parquet files under the same names."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.parquet"))
    files_b = sorted(p.relative_to(b) for p in b.rglob("*.parquet"))
    if files_a != files_b:
        return False
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def rows_of(out: Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet"))


# -- the report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rotate", type=int, default=60, help="segment length, seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--naive-frames", type=int, default=200_000)
    parser.add_argument(
        "--long-frames",
        type=int,
        default=8_000_000,
        help="updates of the long one-pair recording that workers are also measured on",
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "kbook-bench")
    parser.add_argument(
        "--api-frames",
        type=int,
        default=300_000,
        help="updates of each recording of the v1/v2 table (one per API and depth)",
    )
    parser.add_argument(
        "--only", default="e2e,survey,book,floor,naive,memory,recorder,workers,apis,events,stages"
    )
    args = parser.parse_args()
    wanted = set(args.only.split(","))
    args.cache.mkdir(parents=True, exist_ok=True)
    single = recording(args.cache, "single", args.frames, args.rotate, args.seed)
    multi = recording(args.cache, "multi", args.frames, args.rotate, args.seed)
    size = sum(p.stat().st_size for p in segments_of(single))
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"replay's hot path: {core_name()}")
    print(
        f"data: {args.frames:,} updates, depth {DEPTH}; single pair in "
        f"{len(segments_of(single))} segments ({size / 1e6:.1f} MB), "
        f"{len(MULTI)} pairs in {len(segments_of(multi))} segments"
    )
    work = Path(tempfile.mkdtemp(prefix="kbook-bench-out-"))
    e2e = floor = None
    trailed = with_trailers(single)
    try:
        if "e2e" in wanted or "memory" in wanted:
            both = side_by_side(single, trailed, work / "e2e", args.repeat)
            e2e, floor = both["trailers"], both["floor"]
            print(
                f"side by side, {args.repeat} rounds of a parse floor then three replays (1 worker, "
                "1 s grid, Parquet), each in a child process; medians of rates per CPU second of "
                "that process after its imports, and of each round's ratio to its floor:"
            )
            print(f"  parse floor (zstd + split + orjson.loads): {floor:,.0f} lines/s")
            for name, what in SIDE_BY_SIDE.items():
                print(
                    f"  {what}: {both[name]:,.0f} frames/s, {both[name + '/floor']:.2f}x the floor"
                )
            rss = max(r["rss_kib"] for name in SIDE_BY_SIDE for r in both["runs"][name]) / 1024
            print(f"peak RSS of those replays: {rss:,.0f} MB")
        if "survey" in wanted:
            cost = survey_cost(single, trailed, work / "survey.sqlite", args.repeat)
            print(
                f"survey of {len(segments_of(single))} segments (CPU s, medians): "
                f"{cost['cold']:.3f} with an empty survey cache, {cost['warm']:.3f} from the "
                f"cache, {cost['trailers']:.3f} from the recorder's trailers"
            )
        if "events" in wanted:
            rates = {}
            for mode in ("grid", "deltas", "change"):
                runs = [replay_in_child(single, work / mode, 1, mode) for _ in range(args.repeat)]
                rates[mode] = statistics.median(r["frames"] / r["cpu"] for r in runs)
            print(
                "event outputs (1 worker, Parquet), frames per CPU second: "
                f"1 s grid {rates['grid']:,.0f}, deltas {rates['deltas']:,.0f} "
                f"({rates['deltas'] / rates['grid']:.2f}x), on-change snapshots "
                f"{rates['change']:,.0f} ({rates['change'] / rates['grid']:.2f}x)"
            )
        if "apis" in wanted:
            apis_table(args, work)
        if "stages" in wanted:
            for raw, what in ((trailed, "segments with trailers"), (single, "bare segments")):
                print_stages(raw, work / "stages", args.repeat, args.frames, what)
        if "book" in wanted:
            rate, _ = median_rate(lambda: book_only(single), args.repeat)
            print(f"book alone (decode + BookFeed.on_message): {rate:,.0f} frames/s")
            try:
                rate, _ = median_rate(lambda: hot_path(single), args.repeat)
                print(f"replay's hot path alone (raw lines -> LineFeed): {rate:,.0f} frames/s")
            except (ImportError, AttributeError):
                print("replay's hot path alone: not in this version of kbook")
        if "floor" in wanted and floor is None:
            runs = [floor_in_child(single) for _ in range(args.repeat)]
            floor = statistics.median(r["lines"] / r["cpu"] for r in runs)
            print(f"parse floor (zstd + split + orjson.loads): {floor:,.0f} lines/s")
        if "naive" in wanted:
            rate, n = median_rate(lambda: naive(single, args.naive_frames), 1)
            print(f"naive book (json, dict + sorted, Decimal), {n:,} frames: {rate:,.0f} frames/s")
            if e2e is not None:
                print(f"  end to end / naive: {e2e / rate:.1f}x")
        if "recorder" in wanted:
            cost = recorder_cost(work)
            print(
                f"recorder writing path: {cost['fsync']:.2f} CPU s per 100k frames with fsync "
                f"({cost['fsync'] / 100:.2%} of a core at 1,000 frames/s), "
                f"{cost['no fsync']:.2f} without; compression {cost['ratio']:.1f}x; its live "
                f"book {cost['live book']:.2f} CPU s per 100k frames"
            )
        if "workers" in wanted:
            long = recording(args.cache, "long", args.long_frames, args.rotate, args.seed)
            for name, raw in (
                ("single pair", single),
                (f"{len(MULTI)} pairs", multi),
                (f"single pair, {args.long_frames:,} updates", long),
            ):
                runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
                for _ in range(args.repeat):  # alternate, so that load drifts hit both alike
                    for workers in (1, 2):
                        runs[workers].append(replay_in_child(raw, work / f"w{workers}", workers))
                t1 = statistics.median(r["seconds"] for r in runs[1])
                t2 = statistics.median(r["seconds"] for r in runs[2])
                best = min(r["seconds"] for r in runs[1]) / min(r["seconds"] for r in runs[2])
                cpu1 = statistics.median(r["cpu"] for r in runs[1])
                cpu2 = statistics.median(r["cpu"] + r["pool_cpu"] for r in runs[2])
                identical = same_dataset(work / "w1", work / "w2")
                print(
                    f"{name}: workers=1 {t1:.2f} s, workers=2 {t2:.2f} s (medians), speed-up "
                    f"{t1 / t2:.2f}x (best runs {best:.2f}x); CPU {cpu1:.2f} s for one worker, "
                    f"{cpu2:.2f} s in all processes for two ({cpu2 / cpu1 - 1:+.0%}); "
                    f"identical Parquet: {identical}, rows {rows_of(work / 'w2')}; peak RSS "
                    f"{max(r['rss_kib'] for r in runs[2]) / 1024:.0f} MB here and "
                    f"{max(r['pool_rss_kib'] for r in runs[2]) / 1024:.0f} MB in the worker"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
