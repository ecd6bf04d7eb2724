"""Replay on Dask: the work runs on a LocalCluster of real worker processes and the dataset is
the very bytes a replay in this process writes, S3 to S3 included; a worker that dies mid-run
changes nothing; a task that kills its worker every time fails the replay, named, unpublished;
kbook's own cluster starts while this process surveys, and its workers are ready for a task
when it is up. A cluster of processes takes seconds to start: those tests are slow ones."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pytest
from perf_support import write_recording
from record_support import wait_until
from replay_support import SynthMarket, write_frames
from s3_support import BUCKET, S3Server, aws_env, s3_server

import replay
from kbook.dialect import segment_dialect
from kbook.errors import TaskError, UsageError
from kbook.segment import SegmentReader, SegmentWriter, find_segments, read_trailer, segment_path
from kbook.storage import ObjectSegment, open_location
from kbook.survey_scan import facts_json
from kbook.units import SECOND
from replay.api import Run, _replay_to_remote
from replay.executor import open_executor
from replay.options import make_options
from replay.plan import plan_streams, plan_tasks
from replay.survey import survey_segment, survey_segments

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

MIDNIGHT = 1_763_683_200_000_000_000  # 2025-11-21T00:00:00Z
MANIFEST = "_kbook_replay.json"


class Sabotage(distributed.WorkerPlugin):  # type: ignore[misc]
    """Ends its worker process (as a crash or an OOM kill would) when a replay task starts and a
    file says so: ``once`` (the file is removed first) or ``always``; or, with ``after``, once
    when a task has run (its files written) before its result leaves the worker."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not str(key).startswith("run_task-"):
            return
        after = os.path.join(self.folder, "after")
        if (start, finish) == ("executing", "memory") and os.path.exists(after):
            os.remove(after)
            os._exit(1)
        if finish != "executing":
            return
        once = os.path.join(self.folder, "once")
        if os.path.exists(once):
            os.remove(once)
            os._exit(1)
        if os.path.exists(os.path.join(self.folder, "always")):
            os._exit(1)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pairs, 40 s across a UTC midnight, two segments each: two streams to spread."""
    root = tmp_path_factory.mktemp("rec")
    for pair, seed in (("XBT/USD", 1), ("ETH/USD", 2)):
        market = SynthMarket(pair, depth=10, seed=seed)
        frames = list(market.frames(400, MIDNIGHT - 20 * SECOND, SECOND // 10))
        for piece in (frames[:200], frames[200:]):
            write_frames(segment_path(root, pair, piece[0][0]), piece)
    return root / "raw"


@pytest.fixture(scope="module")
def expected(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The partitions a replay in this process writes."""
    out = tmp_path_factory.mktemp("local") / "snaps"
    replay.replay_to_dataset(raw, out, every="1s", levels=5)
    return files_under(out)


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != MANIFEST
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A LocalCluster of two workers that a unit's worker dies on when told (``Sabotage``)."""
    with sabotaged_cluster(tmp_path_factory.mktemp("sabotage")) as started:
        yield started


@contextmanager
def sabotaged_cluster(folder: Path) -> Iterator[tuple[str, Path]]:
    """A LocalCluster of two workers (with this process's environment as it is now) that a
    task's worker dies on when a file in ``folder`` says so (``Sabotage``); a task may be on two
    workers that died before it fails. Its scheduler's address, and ``folder``."""
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as local,
        distributed.Client(local) as client,
    ):
        client.register_plugin(Sabotage(str(folder)))
        yield local.scheduler_address, folder
        client.wait_for_workers(2, timeout=60)  # closing while a nanny restarts one is an error


@pytest.mark.slow
def test_s3_to_s3_on_a_local_cluster_of_two_writes_the_local_bytes(
    raw: Path, expected: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    with s3_server(tmp_path_factory.mktemp("s3")) as s3, aws_env(s3):
        upload(s3, raw)
        summary = replay.replay_to_dataset(
            f"s3://{BUCKET}/raw", f"s3://{BUCKET}/snaps", every="1s", levels=5, workers=2,
            engine="dask",
        )  # fmt: skip
        objects = s3.objects("snaps")
    # The tasks carried references to the objects, which the workers read from S3 themselves.
    assert summary.segments
    assert all(isinstance(p, ObjectSegment) for p in summary.segments)
    assert MANIFEST in objects
    objects.pop(MANIFEST)
    assert objects == expected


@pytest.mark.slow
def test_s3_to_s3_on_a_cluster_writes_the_local_bytes_with_nothing_on_the_submitting_machine(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The workers write the dataset, and the spools their joins read, straight to object
    storage and the submitting process only moves objects there: with its temporary folder
    gone (any file it made there would fail the replay) the dataset is the bytes of a replay
    in one process, for days cut into pieces and a pair from two recorders, though the
    worker of the first task died under it; and ``--update`` after a second recorder of a pair
    arrived gives the bytes of a full replay too. (``_replay_to_remote`` with tasks of one
    segment: ``task_bytes`` is no public option.)"""
    root = tmp_path_factory.mktemp("pieces")
    write_recording(root / "a", ("XBT/USD", "ETH/USD"), 2_400, seed=11, gap_ns=50_000_000)
    write_recording(root / "b", ("XBT/USD",), 1_200, seed=12, gap_ns=50_000_000)
    options = dataclasses.replace(make_options(every="100ms", levels=5), task_bytes=0)
    streams = plan_streams([survey_segment(p) for p in find_segments([root])], options)
    tasks = plan_tasks(streams, options)
    assert any(stream.shared for stream in streams), "a pair with two sources"
    assert any(task.number > 0 for task in tasks), "days cut into pieces"
    assert len({task.window for task in tasks}) > 1, "and into UTC days"
    local = tmp_path_factory.mktemp("whole") / "snaps"
    replay.replay_to_dataset(root, local, every="100ms", levels=5)
    expected = files_under(local)

    with (
        s3_server(tmp_path_factory.mktemp("s3")) as s3,
        aws_env(s3),
        sabotaged_cluster(tmp_path_factory.mktemp("sabotage")) as (address, sabotage),
    ):
        upload(s3, root)
        gone = tmp_path_factory.mktemp("submitter") / "gone"
        monkeypatch.setattr(tempfile, "tempdir", str(gone))
        monkeypatch.setenv("TMPDIR", str(gone))
        (sabotage / "once").touch()
        location = open_location(f"s3://{BUCKET}/snaps", "--out")
        _replay_to_remote(
            f"s3://{BUCKET}/raw", location, options, False, Run(None, "dask", address)
        )
        objects = s3.objects("snaps")

        write_recording(root / "c", ("ETH/USD",), 1_200, seed=13, gap_ns=50_000_000)
        upload(s3, root)
        updated = replay.replay_to_dataset(
            f"s3://{BUCKET}/raw", location.text, every="100ms", levels=5, update=True,
            engine="dask", scheduler=address,
        )  # fmt: skip
        after = s3.objects("snaps")
    assert not (sabotage / "once").exists(), "a worker died"
    assert not gone.exists()
    assert MANIFEST in objects
    objects.pop(MANIFEST)
    assert objects == expected, "no staging keys left either"

    assert updated.updated, "ETH/USD's days, now from two recorders"
    monkeypatch.undo()
    replay.replay_to_dataset(root, local, every="100ms", levels=5, force=True)
    after.pop(MANIFEST)
    assert after == files_under(local)


def upload(s3: S3Server, folder: Path) -> None:
    fs = s3.filesystem()
    for path in folder.rglob("*.jsonl.zst"):
        with fs.open_output_stream(
            f"{BUCKET}/raw/{path.relative_to(folder).as_posix()}", compression=None
        ) as out:
            out.write(path.read_bytes())


@pytest.mark.slow
def test_a_worker_that_dies_mid_run_changes_nothing(
    raw: Path, expected: dict[str, bytes], cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, sabotage = cluster
    (sabotage / "once").touch()
    out = tmp_path / "snaps"
    replay.replay_to_dataset(raw, out, every="1s", levels=5, engine="dask", scheduler=address)
    assert not (sabotage / "once").exists(), "a worker died"
    assert files_under(out) == expected


@pytest.mark.slow
def test_a_worker_that_dies_after_its_task_wrote_its_partition_changes_nothing(
    raw: Path, expected: dict[str, bytes], cluster: tuple[str, Path], tmp_path: Path
) -> None:
    """The task runs again elsewhere and writes its partition over the one it wrote before,
    rather than a second part of it beside."""
    address, sabotage = cluster
    (sabotage / "after").touch()
    out = tmp_path / "snaps"
    replay.replay_to_dataset(raw, out, every="1s", levels=5, engine="dask", scheduler=address)
    assert not (sabotage / "after").exists(), "a worker died"
    assert files_under(out) == expected


@pytest.mark.slow
def test_a_task_that_fails_twice_is_named_and_nothing_is_published(
    raw: Path, cluster: tuple[str, Path], tmp_path: Path
) -> None:
    address, sabotage = cluster
    (sabotage / "always").touch()
    try:
        with pytest.raises(TaskError, match=r"the replay of (BTC|ETH)/USD from .* failed"):
            replay.replay_to_dataset(
                raw, tmp_path / "snaps", levels=5, engine="dask", scheduler=address
            )
    finally:
        (sabotage / "always").unlink()
        with distributed.Client(address) as client:
            # Its nannies restart the workers now, not during a later test: a nanny with Dask's
            # settings puts MALLOC_TRIM_THRESHOLD_ into this process's environment as it does.
            client.wait_for_workers(2, timeout=60)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_kbooks_cluster_workers_leave_the_replay_the_gil_and_the_allocator_as_one_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The settings that made a task 1.2-1.6x slower on a worker (``WORKER_CONFIG``) are off in
    the worker processes themselves: no ``MALLOC_TRIM_THRESHOLD_``, no profiler, an event loop
    that wakes about once a second, not every 20 ms. (A cluster with Dask's settings started
    earlier in this process, as the module's is, left the variable in its environment.)"""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)

    def settings() -> tuple[str | None, bool, float, float, float]:
        from dask.utils import parse_timedelta

        def seconds(key: str) -> float:
            return float(parse_timedelta(dask.config.get(key)))

        return (
            os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            bool(dask.config.get("distributed.worker.profile.enabled")),
            seconds("distributed.admin.tick.interval"),
            seconds("distributed.worker.memory.monitor-interval"),
            seconds("distributed.admin.system-monitor.interval"),
        )

    with open_executor("dask", 1) as executor:
        (found,) = executor.client.run(settings).values()
    trim, profiler, tick, memory, system = found
    assert (trim, profiler) == (None, False)
    assert min(tick, memory, system) >= 1.0


@pytest.mark.slow
def test_kbooks_cluster_workers_import_the_replay_as_they_start() -> None:
    """Before any task, each worker holds what a task needs (the engine, the native core,
    pyarrow's Parquet writer), as this process does: its first task does not wait for them."""

    def loaded() -> list[str]:
        names = ("replay.tasks", "replay.engine", "kbook._native", "pyarrow.parquet")
        return [name for name in names if name in sys.modules]

    assert "replay.tasks" in loaded()
    with open_executor("dask", 1) as executor:
        (found,) = executor.client.run(loaded).values()
    assert found == loaded()


SEEN_KEYS = """
from distributed.diagnostics.plugin import SchedulerPlugin


class SeenKeys(SchedulerPlugin):
    def update_graph(self, scheduler, *, keys, **kwargs):
        with open({path!r}, "a") as out:
            out.writelines(f"{{key}}\\n" for key in keys)


def dask_setup(scheduler):
    scheduler.add_plugin(SeenKeys())
"""
"""A scheduler preload that notes the key of every task submitted to it."""


@pytest.mark.slow
def test_this_process_surveys_and_replays_while_its_cluster_starts(
    raw: Path, tmp_path: Path
) -> None:
    """No survey task reaches kbook's own LocalCluster when every segment ends with the
    recorder's trailer: this process reads them while the cluster starts; and it replays the
    plan's first task itself meanwhile (the others too, until the cluster is up). Same bytes."""
    copy = with_trailers(raw, tmp_path / "raw")
    options = make_options("1s", 5)
    tasks = plan_tasks(plan_streams(survey_segments(find_segments([copy])), options), options)
    assert len(tasks) > 1
    seen = tmp_path / "keys.txt"
    seen.touch()
    preload = tmp_path / "seen_keys.py"
    preload.write_text(SEEN_KEYS.format(path=str(seen)))
    with dask.config.set({"distributed.scheduler.preload": [str(preload)]}):
        replay.replay_to_dataset(copy, tmp_path / "dask", levels=5, engine="dask", workers=1)
    keys = seen.read_text().split()
    assert not [key for key in keys if key.startswith("survey_segments-")]
    assert len([key for key in keys if key.startswith("run_task-")]) < len(tasks)
    replay.replay_to_dataset(copy, tmp_path / "here", levels=5)
    assert files_under(tmp_path / "dask") == files_under(tmp_path / "here")


def with_trailers(raw: Path, into: Path) -> Path:
    """A copy of ``raw`` whose segments end with their survey facts, as the recorder's do."""
    for path in raw.rglob("*.jsonl.zst"):
        copy = into / path.relative_to(raw)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy_with_trailer(path, copy)
        assert read_trailer(copy) is not None
    return into


def copy_with_trailer(path: Path, copy: Path) -> None:
    scan = segment_dialect(path).survey_scan()
    writer = SegmentWriter(copy)
    writer.on_text = scan.body
    for _, line in SegmentReader(path).raw_lines():
        writer.write(line + b"\n")
    writer.close(lambda: orjson.dumps(facts_json(scan.info(copy, 0))))


def test_an_unknown_engine_or_a_scheduler_without_dask_is_refused(
    raw: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="--engine 'spark': give one of local, dask"):
        replay.replay_to_dataset(raw, tmp_path / "a", engine="spark")
    with pytest.raises(UsageError, match="--scheduler is for --engine dask"):
        replay.replay_to_dataset(raw, tmp_path / "b", workers=2, scheduler="tcp://127.0.0.1:1")


@pytest.mark.slow
def test_without_dask_the_engine_says_what_to_install(raw: Path, tmp_path: Path) -> None:
    """As on a machine without the extra: ``distributed`` cannot be imported."""
    code = (
        "import sys; sys.modules['distributed'] = None; from kbook.cli import main; "
        f"sys.argv = ['kbook', 'replay', {str(raw)!r}, '--out', {str(tmp_path / 'o')!r}, "
        "'--engine', 'dask']; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "kbook: error: --engine dask needs Dask distributed: pip install 'kbook[dask]'"
    ]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_dask_replay_stopped_mid_run_publishes_nothing(tmp_path: Path) -> None:
    """SIGTERM while the cluster's workers write partitions: one line, exit 143, no dataset and
    no hidden folder left behind."""
    market = SynthMarket("XBT/USD", depth=10, seed=3)
    raw = tmp_path / "raw"
    for hour in range(2):  # two hours at 1 ms: 7.2 M rows, seconds of work
        frames = market.frames(20, MIDNIGHT + hour * 3_600_000_000_000, 180_000_000_000)
        write_frames(raw / f"{hour}.jsonl.zst", frames)
    out = tmp_path / "snaps"
    kbook = Path(sys.executable).with_name("kbook")
    command = [str(kbook), "replay", str(raw), "--every", "1ms", "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--engine", "dask", "--workers", "2"], stderr=subprocess.PIPE, text=True
    )
    try:
        mine = f".snaps.tmp-{process.pid}-"
        wait_until(
            lambda: any(
                p.name.startswith(mine) and next(p.rglob("*.parquet"), None) is not None
                for p in tmp_path.iterdir()
            ),
            120,
            "a partition being written",
        )
        assert process.poll() is None, "the replay ended before the signal: make it longer"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.splitlines() == [f"kbook: replay stopped by SIGTERM: {out} left as it was"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.slow
def test_a_dask_replay_to_s3_stopped_mid_run_publishes_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """SIGTERM while the cluster's workers write partitions under the staging prefix: one
    line, exit 143, and not an object left under ``--out`` (the cluster is closed before the
    staging prefix is removed, so no task writes there afterwards)."""
    market = SynthMarket("XBT/USD", depth=10, seed=3)
    raw = tmp_path_factory.mktemp("long") / "raw"
    for hour in range(2):  # two hours at 1 ms: 7.2 M rows, seconds of work
        frames = market.frames(20, MIDNIGHT + hour * 3_600_000_000_000, 180_000_000_000)
        write_frames(raw / f"{hour}.jsonl.zst", frames)
    out = f"s3://{BUCKET}/snaps"
    kbook = Path(sys.executable).with_name("kbook")
    command = [str(kbook), "replay", f"s3://{BUCKET}/raw", "--every", "1ms", "--out", out]
    with s3_server(tmp_path_factory.mktemp("s3")) as s3:
        upload(s3, raw)
        fs = s3.filesystem()
        selector = pafs.FileSelector(f"{BUCKET}/snaps", recursive=True, allow_not_found=True)
        process = subprocess.Popen(
            [*command, "--engine", "dask", "--workers", "2"],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **s3.env},
        )
        try:
            wait_until(
                lambda: any(info.path.endswith(".parquet") for info in fs.get_file_info(selector)),
                120,
                "a partition being written",
            )
            assert process.poll() is None, "the replay ended before the signal: make it longer"
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        left = s3.objects("snaps")
    assert process.returncode == 128 + signal.SIGTERM
    assert stderr.splitlines() == [f"kbook: replay stopped by SIGTERM: {out} left as it was"]
    assert left == {}
