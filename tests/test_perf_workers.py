"""Several workers, one pair: a source cut into tasks joins into exactly the output of one run.

``replay.plan`` cuts a source into tasks at segments that start with checkpoints of every followed
book and ``replay.tasks`` joins them; these tests compare, batch for batch and Parquet byte for
byte, tasks on a process pool against the source replayed in one piece in this process, on
recordings full of trouble (``perf_support``), with the options that move the boundaries around:
a dense grid, ``--start``/``--end``, fewer levels, in Kraken's v1 and v2. ``task_bytes=0`` cuts
small recordings as finely as their segments allow (and sends them to a pool).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from perf_support import SECOND, START_NS, write_recording

import replay
from kbook.api import Api
from kbook.segment import SegmentWriter, find_segments, frame_line, meta_line
from kbook.sim import Market
from replay.api import run_replay
from replay.engine import StreamReplay
from replay.options import make_options
from replay.plan import plan_streams, plan_tasks
from replay.survey import survey_segment
from replay.tasks import join

OPTIONS = {
    "1s": {"every": "1s"},
    "100ms-5": {"every": "100ms", "levels": 5},
    "7ms": {"every": "7ms"},
    "range": {"every": "250ms", "start": START_NS + 17 * SECOND, "end": START_NS + 61 * SECOND},
    "start": {"every": "1s", "start": START_NS + 31_500_000_000},
}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("recordings")
    return {
        "one pair": write_recording(root / "one", ("XBT/USD",), 4_000, seed=1),
        "one pair, other seed": write_recording(root / "two", ("XBT/USD",), 4_000, seed=2),
        "three pairs, one stream": write_recording(
            root / "shared", ("XBT/USD", "ETH/USD", "XDG/USD"), 6_000, seed=3, shared=True
        ),
        "clean": write_recording(root / "clean", ("ETH/USD",), 3_000, seed=4, faults=False),
        "v2 one pair": write_recording(root / "v2", ("BTC/USD",), 4_000, seed=5, api=Api.V2),
        "v2 two pairs, one stream": write_recording(
            root / "v2shared", ("BTC/USD", "ETH/USD"), 5_000, seed=6, shared=True, api=Api.V2
        ),
    }


WHOLE = 1 << 62
"""``task_bytes`` that cuts no source of one day: the reference, one piece in this process."""


def options_for(name: str, workers: int, cut: bool | None = None) -> replay.ReplayOptions:
    """Each source in one piece, or cut as finely as it can be (by default: with workers)."""
    task_bytes = 0 if (workers > 1 if cut is None else cut) else WHOLE
    return dataclasses.replace(
        make_options(**OPTIONS[name]), workers=workers, task_bytes=task_bytes
    )


def parquet_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


CASES = [
    ("one pair", "1s", True),
    ("one pair", "100ms-5", False),
    ("one pair", "7ms", False),
    ("one pair", "range", True),
    ("one pair", "start", False),
    ("one pair, other seed", "7ms", True),
    ("three pairs, one stream", "1s", False),
    ("three pairs, one stream", "7ms", True),
    ("three pairs, one stream", "start", False),
    ("clean", "100ms-5", True),
    ("v2 one pair", "1s", True),
    ("v2 one pair", "7ms", False),
    ("v2 one pair", "range", True),
    ("v2 one pair", "start", False),
    ("v2 two pairs, one stream", "100ms-5", True),
    ("v2 two pairs, one stream", "7ms", False),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "option", "tables_too"), CASES)
def test_two_workers_write_what_one_writes(
    recordings: dict[str, Path], name: str, option: str, tables_too: bool, tmp_path: Path
) -> None:
    paths = [recordings[name]]
    streams = plan_streams(
        [survey_segment(p) for p in find_segments(paths)], options_for(option, 2)
    )
    tasks = plan_tasks(streams, options_for(option, 2))
    assert len(tasks) > len(streams)
    assert len(plan_tasks(streams, options_for(option, 1))) == len(streams)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _, outcomes_one = run_replay(paths, options_for(option, 1), one, None)
    _, outcomes_two = run_replay(paths, options_for(option, 2), two, None)
    assert [o[0] for o in outcomes_two] == [o[0] for o in outcomes_one]
    assert parquet_files(two) == parquet_files(one)
    assert not (two / ".tasks").exists()
    if tables_too:
        _, batches_one = run_replay(paths, options_for(option, 1), None, None)
        _, batches_two = run_replay(paths, options_for(option, 2), None, None)
        for (_, rows_one), (_, rows_two) in zip(batches_one, batches_two, strict=True):
            assert rows_two.batches.keys() == rows_one.batches.keys()
            for pair in rows_one.batches:
                assert rows_two.batches[pair] == rows_one.batches[pair]


@pytest.mark.slow
def test_public_api_cuts_one_pair_across_workers(tmp_path: Path) -> None:
    """Through ``replay_to_dataset`` as ``kbook replay`` calls it, with the default task size:
    the same tasks in this process and on a pool of two."""
    raw = write_recording(
        tmp_path / "raw", ("XBT/USD",), 500_000, depth=100, gap_ns=1_000_000, seed=6
    )
    size = sum(p.stat().st_size for p in raw.rglob("*.zst"))
    assert size > make_options().task_bytes  # large enough for a pool
    infos = [survey_segment(path) for path in find_segments([raw])]
    tasks = plan_tasks(plan_streams(infos, make_options()), make_options())
    assert [task.day for task in tasks][:2] == ["2025-12-31", "2026-01-01"]
    one = replay.replay_to_dataset(raw, tmp_path / "one", every="100ms", workers=1)
    two = replay.replay_to_dataset(raw, tmp_path / "two", every="100ms", workers=2)
    assert two.to_json() == one.to_json()
    assert parquet_files(tmp_path / "two") == parquet_files(tmp_path / "one")


@pytest.mark.slow
@pytest.mark.parametrize("option", ["1s", "7ms", "start"])
def test_two_workers_write_what_one_writes_for_a_pair_of_two_sources(
    recordings: dict[str, Path], option: str, tmp_path: Path
) -> None:
    """Two recordings of one pair at once: the timeline of their tasks' rows is the same too
    (the tasks in this process: the pool is the slow tests' to try)."""
    paths = [recordings["one pair"], recordings["one pair, other seed"]]
    cut = options_for(option, 1, cut=True)
    streams = plan_streams([survey_segment(p) for p in find_segments(paths)], cut)
    assert len(streams) == 2
    assert all(stream.shared == {"BTC/USD"} for stream in streams)
    assert len(plan_tasks(streams, cut)) > 2
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _, outcomes_one = run_replay(paths, options_for(option, 1), one, None)
    _, outcomes_two = run_replay(paths, cut, two, None)
    assert [o[0] for o in outcomes_two] == [o[0] for o in outcomes_one]
    assert parquet_files(two) == parquet_files(one)
    assert len(parquet_files(one)) >= 1
    assert not (two / ".sources").exists()


# -- boundaries the join must refuse ----------------------------------------------------------------


def crafted(folder: Path, trouble: str) -> Path:
    """Three segments of one pair, rotated with checkpoints, with ``trouble`` at the second cut."""
    clock = [START_NS / SECOND]
    market = Market("XBT/USD", 25, 9, clock=lambda: clock[0])
    status = '{"connectionID":5,"event":"systemStatus","status":"online"}'
    now = START_NS
    seq = 0
    for number in range(3):
        lines = []
        if number == 0:
            lines += [
                frame_line(now, seq, status, True),
                frame_line(now, seq + 1, market.snapshot_frame(1), True),
            ]
        else:
            start = now
            if trouble == "clock steps back" and number == 2:
                start = now - 3 * SECOND
            elif trouble == "silence" and number == 2:
                start = now + 30 * SECOND
            asks, bids = market.window()
            if trouble == "bad checkpoint" and number == 2:
                asks = [["not a price", "1.0"]]
            checkpoint = {"type": "checkpoint", "pair": "XBT/USD", "channel": "book-25"}
            lines.append(meta_line(start, {**checkpoint, "asks": asks, "bids": bids}))
            now = start
        for _ in range(400):
            now += 10_000_000
            seq += 1
            clock[0] = now / SECOND
            lines.append(frame_line(now, seq, market.update_frame(1), True))
        path = folder / f"XBT-USD.{number}.jsonl.zst"
        with SegmentWriter(path) as writer:
            for index, line in enumerate(lines):
                writer.write(line)
                if index % 100 == 99:
                    writer.flush(fsync=False)  # zstd frames, as the recorder's flushes
        if trouble == "torn tail" and number == 1:
            os.truncate(path, path.stat().st_size - 20)
    return folder


def test_a_segment_starting_before_the_last_one_ended_is_another_source(tmp_path: Path) -> None:
    """The recorder's stamps never go back within a run: an overlap is a second recorder."""
    raw = crafted(tmp_path / "raw", "clock steps back")
    options = dataclasses.replace(make_options(every="100ms"), task_bytes=0)
    streams = plan_streams([survey_segment(p) for p in find_segments([raw])], options)
    assert [len(stream.segments) for stream in streams] == [2, 1]
    whole = dataclasses.replace(options, task_bytes=WHOLE)
    _, one = run_replay([raw], whole, None, None)
    _, two = run_replay([raw], options, None, None)
    assert two == one


@pytest.mark.parametrize("trouble", ["silence", "torn tail", "bad checkpoint"])
def test_a_boundary_that_cannot_be_proven_falls_back_to_one_piece(
    trouble: str, tmp_path: Path
) -> None:
    raw = crafted(tmp_path / "raw", trouble)
    options = dataclasses.replace(make_options(every="100ms"), task_bytes=0)
    (stream,) = plan_streams([survey_segment(p) for p in find_segments([raw])], options)
    tasks = plan_tasks([stream], options)
    assert len(tasks) == 3
    results = [
        StreamReplay(stream, options, lambda _pair: lambda _t: None).run_task(t) for t in tasks
    ]
    assert join(tasks[:2], results[:2], options.every_ns, options.max_silence_ns) is not None
    assert join(tasks, results, options.every_ns, options.max_silence_ns) is None
    whole = dataclasses.replace(options, task_bytes=WHOLE)
    _, one = run_replay([raw], whole, None, None)
    _, two = run_replay([raw], options, None, None)
    assert two[0][0] == one[0][0]
    assert two[0][1] == one[0][1]
