"""One timeline per pair: every source of a pair replayed, the best valid one chosen per grid time.

The bullets of the issue that asked for it, each a recording pattern that piles up over months:
a depth change, two bare recordings years apart, two recorders running at once (one with an
outage), v1 then v2 (``tests/test_replay_v2.py``), and a random property test of the stitching rule
against a deliberately naive reference (``naive_timeline``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replay_support import (
    RefBook,
    SynthMarket,
    assert_rows_match,
    read_records,
    reference_rows,
    write_records,
)

import replay

SECOND = 1_000_000_000
DAY = 86_400 * SECOND
T0 = 1_763_683_200 * SECOND  # 2025-11-21T00:00Z
STEP = SECOND // 4


def session(run_id: str, depth: int, pair: str = "XBT/USD") -> dict[str, Any]:
    return {
        "type": "session_start",
        "api": "v1",
        "run_id": run_id,
        "pair": pair,
        "config": {"depth": depth},
    }


def run_segment(
    path: Path,
    market: SynthMarket,
    start: int,
    count: int,
    run_id: str | None = None,
    step: int = STEP,
) -> Path:
    """``count`` frames of ``market`` from ``start`` (a snapshot first), optionally opened with a
    recorder's ``session_start``."""
    records: list[tuple[int, str | dict[str, Any]]] = []
    if run_id is not None:
        records.append((start, session(run_id, market.depth, market.pair)))
    records += list(market.frames(count, start, step))
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_records(path, records)


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    return table.to_pylist()


def test_a_depth_change_keeps_both_periods(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shallow = SynthMarket(depth=10, seed=1)
    deep = SynthMarket(depth=100, seed=2)
    run_segment(raw / "a.jsonl.zst", shallow, T0, 200, run_id="a" * 32)
    run_segment(raw / "b.jsonl.zst", deep, T0 + 2 * DAY, 200, run_id="b" * 32)
    table = replay.replay_table(raw, every="1s", levels=10)
    days = {row["ts"].date().isoformat(): row for row in rows_of(table)}
    assert sorted(days) == ["2025-11-21", "2025-11-23"]
    depths = {
        (row["ts"].date().isoformat(), row["depth"]) for row in rows_of(table) if row["valid"]
    }
    assert depths == {("2025-11-21", 10), ("2025-11-23", 100)}
    sources = set(table.column("source").drop_null().to_pylist())
    assert sources == {"v1 book-10 run aaaaaaaa", "v1 book-100 run bbbbbbbb"}
    # Deeper levels than the shallow source are null there, not refused.
    deeper = replay.replay_table(raw, every="1s", levels=20)
    first_day = [row for row in rows_of(deeper) if row["ts"].day == 21 and row["valid"]]
    assert first_day
    assert all(row["bid_px_19"] is None for row in first_day)
    assert all(row["bid_px_0"] is not None for row in first_day)


def test_two_bare_segments_years_apart(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    old = 1_546_300_800 * SECOND + 12 * 3600 * SECOND  # 2019-01-01T12:00Z
    new = 1_672_531_200 * SECOND + 12 * 3600 * SECOND  # 2023-01-01T12:00Z
    run_segment(raw / "XBT-USD.2019.jsonl.zst", SynthMarket(seed=3), old, 100)
    run_segment(raw / "XBT-USD.2023.jsonl.zst", SynthMarket(seed=4), new, 100)
    out = tmp_path / "snapshots"
    summary = replay.replay_to_dataset(raw, out, every="1s")
    partitions = sorted(p.parent.name for p in out.rglob("*.parquet"))
    assert partitions == ["date=2019-01-01", "date=2023-01-01"]
    table = replay.read_snapshots(out)
    last_frame = old + 99 * STEP
    stale = [
        row
        for row in rows_of(table)
        if row["ts"].year == 2019 and row["ts"].timestamp() * SECOND > last_frame + 10 * SECOND
    ]
    assert stale
    assert not any(row["valid"] for row in stale)
    # Invalid up to the end of the 2019 day only, then nothing until 2023.
    assert max(row["ts"] for row in stale).isoformat() == "2019-01-01T23:59:59+00:00"
    assert summary.rows < 2 * 86_400


def test_overlapping_runs_one_with_an_outage_give_the_complete_book(tmp_path: Path) -> None:
    """Two recorders of one pair at once into one folder; one loses 30 s, the other rotates
    every 20 s. The timeline is valid throughout and shows the book the complete run shows, at
    every grid time. (Fed as one stream, the lossy run's outage showed as invalid rows.)"""
    raw = tmp_path / "raw"
    frames = list(SynthMarket(seed=5).frames(400, T0, STEP))  # 100 s
    outage = (T0 + 30 * SECOND, T0 + 60 * SECOND)
    recorder_segments(raw / "a", frames, "d" * 32, outage=outage, rotate=None)
    recorder_segments(raw / "b", frames, "c" * 32)
    table = replay.replay_table(raw, every="500ms")
    assert table.num_rows > 150
    assert all(table.column("valid").to_pylist())
    alone = write_records(tmp_path / "alone.jsonl.zst", [(ns, text) for ns, text in frames])
    expected = reference_rows(read_records(alone), "XBT/USD", "book-10", 500_000_000, 10)
    assert_rows_match(table, expected, 10)


def recorder_segments(
    folder: Path,
    frames: list[tuple[int, str]],
    run_id: str,
    outage: tuple[int, int] | None = None,
    rotate: int | None = 20 * SECOND,
    outages: tuple[tuple[int, int], ...] = (),
    begin: int = 0,
) -> None:
    """Segments as the recorder writes them: ``session_start`` first, a rotation every ``rotate``
    opening with a checkpoint, and each outage as a disconnect, then a reconnect and snapshot.
    The run starts at ``frames[begin]`` (with a snapshot of the book there)."""
    outages = (*outages, *([outage] if outage is not None else []))
    start = frames[begin][0]
    segments: list[list[tuple[int, str | dict[str, Any]]]] = [[(start, session(run_id, 10))]]
    if begin:
        segments[0].append((start, snapshot(book_at(frames, begin))))
    boundary = start + rotate if rotate is not None else 1 << 126
    down = False
    for index, (ns, text) in enumerate(frames):
        if index < begin:
            continue
        if any(a <= ns < b for a, b in outages):
            if not down:
                segments[-1].append((ns, {"type": "disconnect", "reason": "test outage"}))
                down = True
            continue
        if rotate is not None and ns >= boundary:
            boundary += rotate
            segments.append([(ns, checkpoint(book_at(frames, index)))])
        if down:
            segments[-1].append((ns, {"type": "connect"}))
            segments[-1].append((ns, snapshot(book_at(frames, index))))
            down = False
        segments[-1].append((ns, text))
    folder.mkdir(parents=True)
    for number, records in enumerate(segments):
        write_records(folder / f"XBT-USD.{number}.jsonl.zst", records)


def book_at(frames: list[tuple[int, str]], stop: int) -> RefBook:
    """The book after ``frames[:stop]``."""
    book = RefBook(10)
    for _ns, text in frames[:stop]:
        payloads = orjson.loads(text)[1:-2]
        if "as" in payloads[0]:
            book = RefBook(10)
            payloads = [{"a": payloads[0]["as"], "b": payloads[0]["bs"]}]
        for payload in payloads:
            for level in payload.get("a", []):
                book.set(book.asks, level)
            for level in payload.get("b", []):
                book.set(book.bids, level)
        book.truncate()
    return book


def snapshot(book: RefBook) -> str:
    asks = [[p, v, "1700000000.000000"] for p, v in book.sorted_asks()]
    bids = [[p, v, "1700000000.000000"] for p, v in book.sorted_bids()]
    return orjson.dumps([43, {"as": asks, "bs": bids}, "book-10", "XBT/USD"]).decode()


def checkpoint(book: RefBook) -> dict[str, Any]:
    return {
        "type": "checkpoint",
        "pair": "XBT/USD",
        "channel": "book-10",
        "asks": [list(level) for level in book.sorted_asks()],
        "bids": [list(level) for level in book.sorted_bids()],
        "checksum": book.checksum(),
    }


# -- the stitching rule against a naive reference -------------------------------------------------


@st.composite
def source_plans(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One to four recordings of one pair: depth, start, length, pace, and maybe a silence."""
    plans = []
    for number in range(draw(st.integers(1, 4))):
        plans.append(
            {
                "run": f"{number:x}" * 32,
                "depth": draw(st.sampled_from([10, 25, 100])),
                "start": draw(st.integers(0, 240)) * STEP,
                "count": draw(st.integers(8, 120)),
                "step": draw(st.sampled_from([STEP, SECOND, 3 * SECOND])),
                "silence": draw(st.one_of(st.none(), st.integers(1, 100))),
                "seed": draw(st.integers(0, 1000)),
            }
        )
    return plans


def write_source(folder: Path, plan: dict[str, Any]) -> Path:
    market = SynthMarket(depth=plan["depth"], seed=plan["seed"])
    frames = list(market.frames(plan["count"], T0 + plan["start"], plan["step"]))
    if plan["silence"] is not None and plan["silence"] < len(frames):
        cut = plan["silence"]  # the connection goes quiet for 12 s, then the same frames go on
        frames = frames[:cut] + [(ns + 12 * SECOND, text) for ns, text in frames[cut:]]
    records: list[tuple[int, str | dict[str, Any]]] = [
        (frames[0][0], session(plan["run"], plan["depth"]))
    ]
    return write_records(folder / f"XBT-USD.{plan['run'][:4]}.jsonl.zst", records + frames)


def naive_timeline(alone: list[tuple[int, str, list[dict[str, Any]]]], every: int) -> list[Any]:
    """The rule, spelled out row by row over each source replayed alone: ``alone`` holds
    ``(first receive time, path, rows)`` per source."""
    order = sorted(range(len(alone)), key=lambda i: (alone[i][0], alone[i][1]))
    by_time = [{row["ts"].value: row for row in alone[i][2]} for i in order]
    times = sorted({t for rows in by_time for t in rows})
    wanted: list[int] = []
    for t in times:  # dense within a UTC day
        if wanted and wanted[-1] // DAY == t // DAY:
            wanted += range(wanted[-1] + every, t, every)
        wanted.append(t)
    out = []
    seen = None
    for t in wanted:
        present = [rows[t] for rows in by_time if t in rows]
        valid = [row for row in present if row["valid"]]
        if valid:
            best = valid[0]
            for row in valid[1:]:
                key = (row["depth"], row["last_update"])
                if key > (best["depth"], best["last_update"]):
                    best = row
            row = dict(best)
        elif present:
            row = dict(present[0])
        else:
            row = {"valid": False, "updates": 0, "checksum_failures": 0, "last_update": seen}
        if not row["valid"] and not present:
            row["last_update"] = seen
        seen = row["last_update"] if seen is None else max(seen, row["last_update"])
        row["ts"] = t
        out.append(row)
    return out


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=source_plans())
def test_the_timeline_follows_the_rule_row_by_row(
    plans: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("sources")
    paths = [write_source(folder, plan) for plan in plans]
    every = SECOND
    table = replay.replay_table(folder, every=every, levels=10)
    alone = []
    for path, plan in zip(paths, plans, strict=True):
        rows = replay.replay_table(path, every=every, levels=10).to_pylist()
        alone.append((T0 + plan["start"], str(path), rows))
    expected = naive_timeline(alone, every)
    got = table.to_pylist()
    assert [row["ts"].value for row in got] == [row["ts"] for row in expected]
    for row, want in zip(got, expected, strict=True):
        assert row["valid"] is want["valid"]
        assert row["last_update"] == want["last_update"]
        for name in ("depth", "source", "updates", "checksum_failures", "bid_px_0", "ask_sz_9"):
            assert row[name] == want.get(name), (row["ts"], name)


def test_two_recorders_give_a_timeline_without_gaps(tmp_path: Path) -> None:
    """The README's redundancy recipe: two recorders on the same pair (two hosts, or two cron
    runs offset in time) into two folders, replayed together. Each has outages and one ends
    before the other; the timeline is valid wherever either was up, exactly the complete book,
    and invalid only where both were down at once."""
    frames = list(SynthMarket(seed=8).frames(640, T0, STEP))  # 160 s
    s = SECOND
    recorder_segments(
        tmp_path / "host-a" / "raw", frames[:400], "a" * 32, outages=((T0 + 20 * s, T0 + 40 * s),)
    )
    recorder_segments(
        tmp_path / "host-b" / "raw",
        frames,
        "b" * 32,
        outages=((T0 + 60 * s, T0 + 80 * s), (T0 + 120 * s, T0 + 125 * s)),
        begin=40,  # starts 10 s later
    )
    table = replay.replay_table([tmp_path / "host-a", tmp_path / "host-b"], every="1s")
    alone = write_records(tmp_path / "complete.jsonl.zst", list(frames))
    expected = {
        t: (valid, bids, asks)
        for t, valid, bids, asks in reference_rows(
            read_records(alone), "XBT/USD", "book-10", SECOND, 10
        )
    }
    both_down = range(T0 + 120 * s, T0 + 125 * s, s)  # up again with the snapshot at 125 s
    rows = table.to_pylist()
    assert [row["ts"].value for row in rows] == sorted(expected)
    for row in rows:
        t = row["ts"].value
        assert row["valid"] is (t not in both_down), t
        if row["valid"]:
            _, bids, asks = expected[t]
            assert row["bid_px_0"] == float(bids[0][0])
            assert [row[f"ask_sz_{i}"] for i in range(len(asks))] == [float(v) for _, v in asks]
    sources = {row["source"] for row in rows if row["valid"]}
    assert sources == {"v1 book-10 run aaaaaaaa", "v1 book-10 run bbbbbbbb"}
