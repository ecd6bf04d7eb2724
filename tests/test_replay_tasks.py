"""The pair-day is the unit of work: the plan cuts each source at the first segment of every UTC
day (and finer on request), the task list is the same whatever runs it, and the dataset is the
bytes of the source replayed in one piece, in this process, on a process pool or on Dask."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from perf_support import SECOND, START_NS, write_recording

from kbook.errors import OutputError
from kbook.pairs import file_name
from kbook.segment import find_segments
from replay.api import run_replay
from replay.engine import StreamResult
from replay.executor import open_executor
from replay.options import ReplayOptions, make_options
from replay.plan import Task, plan_streams, plan_tasks
from replay.survey import survey_segment
from replay.tasks import join_windows, run_task, run_tasks

WHOLE = 1 << 62
"""``task_bytes`` that cuts no source of one day."""
MIDNIGHT = START_NS + 90 * SECOND


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pairs, each its own recorder stream, 2 minutes across a UTC midnight, rotated every
    10 s with checkpoints (a segment opens at the midnight)."""
    root = tmp_path_factory.mktemp("raw")
    return write_recording(
        root, ("XBT/USD", "ETH/USD"), 2_400, seed=11, gap_ns=50_000_000, faults=False
    )


def parquet_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def test_a_task_per_source_and_utc_day_whatever_the_workers(raw: Path) -> None:
    options = make_options(every="1s")
    infos = [survey_segment(path) for path in find_segments([raw])]
    streams = plan_streams(infos, options)
    tasks = plan_tasks(streams, options)
    assert [(task.source, task.day) for task in tasks] == [
        (0, "2025-12-31"),
        (0, "2026-01-01"),
        (1, "2025-12-31"),
        (1, "2026-01-01"),
    ]
    for before, task in zip(tasks[::2], tasks[1::2], strict=True):
        # The day's task starts at the segment before the midnight (it opens with checkpoints)
        # and owns those from the midnight on; the day before reads up to the midnight.
        first_ns = task.stream.segments[task.owned].first_ns or 0
        assert MIDNIGHT <= first_ns < MIDNIGHT + SECOND
        assert task.first == task.owned - 1 == before.probe
        assert (task.start_ns, before.end_ns) == (MIDNIGHT, MIDNIGHT)
        assert before.stop == task.owned
    assert [(task.window, task.last) for task in tasks] == [(0, True), (1, True)] * 2
    assert plan_tasks(streams, dataclasses.replace(options, workers=8)) == tasks
    finer = plan_tasks(streams, dataclasses.replace(options, task_bytes=0))
    assert len(finer) == sum(len(stream.segments) for stream in streams)


def test_pair_days_join_into_the_bytes_of_one_piece(raw: Path, tmp_path: Path) -> None:
    days, whole = tmp_path / "days", tmp_path / "whole"
    days.mkdir()
    whole.mkdir()
    options = make_options(every="100ms", levels=5)
    _, by_day = run_replay([raw], options, days, None)
    _, in_one = run_replay([raw], dataclasses.replace(options, task_bytes=WHOLE), whole, None)
    assert [outcome[0] for outcome in by_day] == [outcome[0] for outcome in in_one]
    files = parquet_files(days)
    assert files == parquet_files(whole)
    assert {name.split("/")[1] for name in files} == {"date=2025-12-31", "date=2026-01-01"}
    assert not (days / ".tasks").exists()


def test_the_same_tasks_on_dask_write_the_same_bytes(raw: Path, tmp_path: Path) -> None:
    """On an in-process Dask cluster (threads: quick to start), a task per pair-day."""
    distributed = pytest.importorskip("distributed")
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    options = make_options(every="1s", workers=2)
    _, alone = run_replay([raw], dataclasses.replace(options, workers=1), here, None)
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # not 8787
    ) as cluster:
        _, on_dask = run_replay(
            [raw], options, there, None, None, "dask", cluster.scheduler_address
        )
    assert [outcome[0] for outcome in on_dask] == [outcome[0] for outcome in alone]
    assert parquet_files(there) == parquet_files(here)
    assert len(parquet_files(here)) == 4


def in_one_piece(raw: Path, options: ReplayOptions, folder: Path) -> list[StreamResult]:
    """Each source replayed in one task from its first segment to its last, into ``folder``."""
    infos = [survey_segment(path) for path in find_segments([raw])]
    return [
        run_task(Task(index, stream, 0, len(stream.segments)), options, folder)[0].result
        for index, stream in enumerate(plan_streams(infos, options))
    ]


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_each_pair_day_writes_its_own_partition_the_bytes_of_one_piece(
    raw: Path, tmp_path: Path, workers: int
) -> None:
    """Across a midnight: the second day's task reads from the checkpointed segment before
    the midnight, writes nothing before it, and writes its day's partition itself, as the
    first day's does; in this process or on a pool of two, the bytes and the counts of each
    source replayed in one piece."""
    options = make_options(every="100ms", levels=5)
    whole = tmp_path / "whole"
    whole.mkdir()
    expected = in_one_piece(raw, options, whole)
    infos = [survey_segment(path) for path in find_segments([raw])]
    streams = plan_streams(infos, options)
    tasks = plan_tasks(streams, options)
    assert len(tasks) == 4
    written: dict[str, bytes] = {}
    for number, task in enumerate(tasks):
        alone = tmp_path / f"task-{number}"
        alone.mkdir()
        _done, rows = run_task(task, options, alone)
        assert [path.parent.name for path in rows.files] == [f"date={task.day}"]
        written |= parquet_files(alone)
    assert written == parquet_files(whole)
    out = tmp_path / "out"
    out.mkdir()
    with open_executor("local", workers) as executor:
        outcomes = run_tasks(tasks, len(streams), options, out, executor, lambda _size: None)
    assert [result for result, _rows in outcomes] == expected
    assert parquet_files(out) == parquet_files(whole)
    assert sorted(path.parent.parent.name for result in outcomes for path in result[1].files) == [
        "pair=BTC-USD",
        "pair=BTC-USD",
        "pair=ETH-USD",
        "pair=ETH-USD",
    ]
    assert not (out / ".tasks").exists()


def test_progress_counts_each_segment_once_though_a_day_reads_the_one_before(
    raw: Path, tmp_path: Path
) -> None:
    total = sum(path.stat().st_size for path in find_segments([raw]))
    seen: list[tuple[int, int]] = []
    out = tmp_path / "out"
    out.mkdir()
    run_replay([raw], make_options(every="1s"), out, lambda done, whole: seen.append((done, whole)))
    assert {whole for _done, whole in seen} == {total}
    done = [done for done, _whole in seen]
    assert done == sorted(done)
    assert (done[0], done[-1]) == (0, total)


def test_a_window_that_started_from_another_state_is_replayed_in_one_piece(
    raw: Path, tmp_path: Path
) -> None:
    """When the day before saw, where the next day's task starts reading, a clock past that
    segment's first receive time (as a wall clock stepped back would leave it), the days'
    partitions are removed and the source is replayed again in one piece: same bytes."""
    options = make_options(every="100ms", levels=5)
    whole = tmp_path / "whole"
    whole.mkdir()
    expected = in_one_piece(raw, options, whole)
    infos = [survey_segment(path) for path in find_segments([raw])]
    tasks = plan_tasks(plan_streams(infos, options), options)[:2]
    out = tmp_path / "out"
    out.mkdir()
    outcomes = [run_task(task, options, out) for task in tasks]
    assert outcomes[0][0].probe is not None
    ahead = (tasks[1].stream.segments[tasks[1].first].first_ns or 0) + 1
    windows = [[tasks[0]], [tasks[1]]]
    assert join_windows(windows, [[outcomes[0]], [outcomes[1]]], options, out)[0] == expected[0]
    changed = dataclasses.replace(outcomes[0][0], probe=(ahead, outcomes[0][0].probe[1]))
    again = tmp_path / "again"
    again.mkdir()
    outcomes = [run_task(task, options, again) for task in tasks]
    outcomes[0][1].files[0].unlink()  # only a replay in one piece brings it back
    result, rows = join_windows(
        windows, [[(changed, outcomes[0][1])], [outcomes[1]]], options, again
    )
    assert result == expected[0]
    pair = f"pair={file_name(*tasks[0].stream.channels)}"
    assert parquet_files(again) == {
        name: data for name, data in parquet_files(whole).items() if name.startswith(pair)
    }
    assert len(rows.files) == 2


@pytest.mark.parametrize("task_bytes", [WHOLE, 0], ids=["whole", "pieces"])
def test_a_task_outliving_its_replay_cannot_bring_the_dataset_folder_back(
    raw: Path, tmp_path: Path, task_bytes: int
) -> None:
    """A task still running on a cluster after its replay failed (and removed its unfinished
    dataset) fails to write, rather than creating the folder again: the partitions straight,
    or a piece's spool."""
    options = dataclasses.replace(make_options(every="1s"), task_bytes=task_bytes)
    infos = [survey_segment(path) for path in find_segments([raw])]
    [task, *_] = plan_tasks(plan_streams(infos, options), options)
    gone = tmp_path / ".snaps.tmp-1-abandoned"
    with pytest.raises(OutputError, match="cannot"):
        run_task(task, options, gone)
    assert list(tmp_path.iterdir()) == []
