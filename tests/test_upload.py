"""Uploading segments to a real S3 server (SeaweedFS on 127.0.0.1) beside a recording, and the
retention rules: byte-identical objects, nothing lost through an outage, restarts, a full disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from metrics_support import parse, value
from prometheus_client import generate_latest
from record_support import SECOND, Background, fast_config, match_connections, read_output
from record_support import wait_until as wait_for
from s3_support import S3Server, aws_env, s3_server

from kbook.live.backoff import Backoff
from kbook.sim import Simulator, SimulatorConfig
from recorder.metrics import Metrics
from recorder.monitor import Monitor
from recorder.upload import LEDGER_NAME, Ledger, Retention, Uploader, closed_segments

PAIRS = ("BTC/USD", "ETH/USD")
MS = 1_000_000
OUTAGE_S = 30.0


@pytest.fixture
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server, aws_env(server):
        yield server


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(SimulatorConfig(pairs=("XBT/USD", "ETH/USD"), rate=300.0, seed=5)) as s:
        yield s


def prometheus_text(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def local_segments(raw: Path) -> dict[str, bytes]:
    return {path.relative_to(raw).as_posix(): path.read_bytes() for path in closed_segments(raw)}


def uploader_for(raw: Path, destination: str, retention: Retention | None = None) -> Uploader:
    return Uploader(
        raw,
        destination,
        retention,
        backoff=Backoff(immediate=0, base_ns=200 * MS, cap_ns=2 * SECOND),
        interval_ns=200 * MS,
    )


def record(sim: Simulator, out: Path, seconds: float) -> None:
    """Record ``seconds`` of the simulator with one-second segments, no upload."""
    config = fast_config(sim, out, PAIRS, rotate_ns=SECOND, duration_ns=int(seconds * SECOND))
    with Background(config) as run:
        run.join(timeout=seconds + 15)


def kbook(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbook", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.slow
def test_kbook_upload_is_idempotent_and_byte_identical(
    s3: S3Server, sim: Simulator, tmp_path: Path
) -> None:
    record(sim, tmp_path, 3.5)
    raw = tmp_path / "raw"
    local = local_segments(raw)
    assert len(local) >= 4
    first = kbook("upload", str(raw), "s3://kbook/day", env=s3.env)
    assert first.returncode == 0, first.stderr
    assert f"{len(local)} uploaded, 0 already there, 0 failed" in first.stderr
    assert s3.objects("day") == local
    again = kbook("upload", str(raw), "s3://kbook/day", env=s3.env)
    assert f"0 uploaded, {len(local)} already there" in again.stderr
    # Without the ledger the objects are found at the destination, checked, and not sent again.
    (raw / LEDGER_NAME).unlink()
    third = kbook("upload", str(raw), "s3://kbook/day", env=s3.env)
    assert f"0 uploaded, {len(local)} already there" in third.stderr
    assert set(Ledger(raw, "s3://kbook/day").entries) == set(local)


@pytest.mark.slow
def test_an_unreachable_destination_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "raw" / "X").mkdir(parents=True)
    (tmp_path / "raw" / "X" / "X.20260101T000000Z.jsonl.zst").write_bytes(b"data")
    closed = kbook(
        "upload",
        str(tmp_path / "raw"),
        "s3://kbook/x",
        env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a"}
        | {"AWS_SECRET_ACCESS_KEY": "b", "AWS_EC2_METADATA_DISABLED": "true"},
    )
    assert closed.returncode == 1
    assert closed.stderr.splitlines()[-1].startswith("kbook: error: 1 segment(s) could not")
    assert not (tmp_path / "raw" / LEDGER_NAME).exists()


@pytest.mark.slow
def test_an_outage_of_the_server_loses_nothing_and_the_backlog_drains(
    s3: S3Server, sim: Simulator, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    uploader = uploader_for(raw, "s3://kbook/live")
    metrics = Metrics(tmp_path)
    metrics.upload = uploader
    config = fast_config(sim, tmp_path, PAIRS, rotate_ns=SECOND)
    with Background(config, Monitor(metrics, uploader=uploader)) as run:
        uploader.start()
        try:
            wait_for(lambda: uploader.uploaded >= 4, what="first uploads")
            s3.stop()
            outage_started = uploader.uploaded
            wait_for(lambda: uploader.backlog_files >= 4, what="a backlog while the server is down")
            time.sleep(OUTAGE_S)  # the outage lasts this long on purpose
            assert uploader.uploaded == outage_started
            assert not run.recorder.stopping  # recording went on all along
            s3.start()
            wait_for(lambda: uploader.backlog_files <= 2, timeout=30, what="the backlog draining")
            summary = run.finish()
            wait_for(lambda: uploader.backlog_files == 0, timeout=30, what="the last uploads")
        finally:
            uploader.stop()
    output = read_output(tmp_path)
    match_connections(output.texts, sim.sent)  # every frame sent is recorded, in order
    assert s3.objects("live") == local_segments(raw)
    assert len(summary.segments) == len(local_segments(raw))
    assert uploader.last_success_ns is not None


@pytest.mark.slow
def test_a_restart_uploads_what_the_previous_run_left(
    s3: S3Server, sim: Simulator, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    record(sim, tmp_path, 2.5)  # a run that never uploaded (or was killed before it could)
    left = local_segments(raw)
    uploader = uploader_for(raw, "s3://kbook/later").start()
    try:
        wait_for(lambda: uploader.uploaded == len(left), what="the earlier segments uploaded")
    finally:
        uploader.stop()
    assert uploader.backlog_files == 0
    assert s3.objects("later") == left


@pytest.mark.slow
def test_keep_local_deletes_only_uploaded_segments(tmp_path: Path, sim: Simulator) -> None:
    raw = tmp_path / "raw"
    record(sim, tmp_path, 2.5)
    segments = closed_segments(raw)
    destination = tmp_path / "elsewhere"
    uploader = uploader_for(raw, str(destination), Retention(keep_local_ns=0))
    not_uploaded = segments[-1]
    held_back = not_uploaded.with_name(not_uploaded.name + ".hold")
    not_uploaded.rename(held_back)  # out of the uploader's sight while it runs
    uploader.start()
    try:
        wait_for(lambda: uploader.deleted == len(segments) - 1, what="uploaded copies deleted")
    finally:
        uploader.stop()
    held_back.rename(not_uploaded)
    assert closed_segments(raw) == [not_uploaded]
    # The next start forgets the segments deleted here: the ledger shrinks with the folder.
    assert len((raw / LEDGER_NAME).read_bytes().splitlines()) == len(segments) - 1
    assert Ledger(raw, str(destination), compact=True).entries == {}
    assert (raw / LEDGER_NAME).read_bytes() == b""
    stored = sorted(p.relative_to(destination).as_posix() for p in destination.rglob("*.zst"))
    assert stored == sorted(p.relative_to(raw).as_posix() for p in segments[:-1])


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_min_free_on_a_small_disk_keeps_the_recording_going(s3: S3Server, tmp_path: Path) -> None:
    from test_drill_disk import small_tmpfs

    warnings: list[str] = []
    with (
        small_tmpfs(tmp_path / "disk", "1m") as disk,
        Simulator(SimulatorConfig(pairs=("XBT/USD",), rate=3000.0, seed=3)) as sim,
    ):
        raw = disk / "raw"
        uploader = uploader_for(raw, "s3://kbook/small", Retention(min_free_bytes=500_000))
        uploader.warn = warnings.append
        config = fast_config(
            sim, disk, ("BTC/USD",), depth=100, rotate_ns=SECOND, max_segment_bytes=40_000
        )
        with Background(config, Monitor(uploader=uploader)) as run:
            uploader.start()
            try:
                # Several times the disk's size goes through it.
                wait_for(
                    lambda: run.recorder.streams.bytes_written > 3_000_000 or run.error is not None,
                    timeout=60,
                    what="3 MB recorded on a 1 MB disk",
                )
                assert run.error is None
                summary = run.finish()
                wait_for(lambda: uploader.backlog_files == 0, timeout=30, what="uploads done")
            finally:
                uploader.stop()
        uploaded = s3.objects("small")
        ledger = Ledger(raw, "s3://kbook/small")
        # Every segment closed is at the destination, byte for byte where it is still local;
        # and every one deleted locally had been uploaded first.
        names = {p.relative_to(raw).as_posix() for p in summary.segments}
        assert names <= set(uploaded)
        assert uploader.deleted > 0
        for relative, data in local_segments(raw).items():
            assert uploaded[relative] == data
        assert set(names) - set(local_segments(raw)) <= set(ledger.entries)
    assert not any("no uploaded segment is left" in w for w in warnings)


def test_below_the_floor_with_nothing_uploaded_nothing_is_deleted(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "X" / "2026-01-01").mkdir(parents=True)
    segment = raw / "X" / "2026-01-01" / "X.20260101T000000Z.jsonl.zst"
    segment.write_bytes(b"not uploaded")
    warnings: list[str] = []
    floor = Retention(keep_local_ns=0, min_free_bytes=1 << 62)  # more than any disk has
    uploader = uploader_for(raw, "s3://kbook/unreachable", floor)
    uploader.warn = warnings.append
    uploader.retain()
    assert segment.exists()
    assert uploader.below_floor
    assert any("no uploaded segment is left to delete" in w for w in warnings)
    metrics = Metrics(tmp_path)
    metrics.upload = uploader
    text = prometheus_text(metrics)
    assert "kbook_disk_below_floor 1.0" in text
    assert "kbook_upload_backlog_files 0.0" in text


@pytest.mark.slow
def test_kbook_record_uploads_and_serves_metrics_until_sigterm(
    s3: S3Server, sim: Simulator, tmp_path: Path
) -> None:
    textfile = tmp_path / "kbook.prom"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "kbook", "record", "BTC/USD", "--url", sim.url,
            "--out", str(tmp_path), "--rotate", "1s", "--quiet", "--metrics-file", str(textfile),
            "--upload", "s3://kbook/cli", "--keep-local", "0s",
        ],
        env={**os.environ, **s3.env},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: len(s3.objects("cli")) >= 3 or process.poll() is not None,
            timeout=60,
            what="three segments uploaded",
        )
        samples = parse(textfile.read_text())
        assert value(samples, "kbook_upload_last_success_timestamp_seconds") is not None
        assert value(samples, "kbook_connected") == 1
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    raw = tmp_path / "raw"
    ledger = Ledger(raw, "s3://kbook/cli")
    objects = s3.objects("cli")
    # The segments closed at the stop were uploaded before the exit, and with --keep-local 0s
    # no local copy is left; the objects are the verified bytes.
    assert local_segments(raw) == {}
    assert set(objects) == set(ledger.entries)
    assert len(objects) >= 3
    for entry in ledger.entries.values():
        assert hashlib.sha256(objects[entry.path]).hexdigest() == entry.sha256


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--keep-local", "1d"],
            "--keep-local and --min-free delete uploaded segments: add --upload",
        ),
        (
            ["--upload", "s3://kbook/x", "--min-free", "lots"],
            "size 'lots' is not a number with a unit",
        ),
        (["--upload", "ftp://host/x"], "give s3://bucket/prefix or a local folder"),
        (["--upload", "s3://"], "name a bucket"),
    ],
)
def test_upload_options_are_checked(args: list[str], message: str, tmp_path: Path) -> None:
    done = kbook("record", "BTC/USD", "--out", str(tmp_path), *args, env={})
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("kbook: error: ")
    assert message in line
