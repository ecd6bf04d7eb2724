"""Replay, verify and plot on object storage: a real S3 server (SeaweedFS on 127.0.0.1) holds the
segments and receives the dataset, which must be the very bytes a local replay writes."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from replay_support import SynthMarket, write_frames
from s3_support import BUCKET, S3Server, aws_env, s3_server

import replay
from kbook.errors import InputError, OutputError
from kbook.segment import SegmentReader, SegmentWriter, frame_line, segment_path
from kbook.storage import ObjectSegment, StagedPublish, open_location, segment_inputs
from kbook.units import SECOND
from kbook.verify import verify_paths

MIDNIGHT = 1_763_683_200_000_000_000  # 2025-11-21T00:00:00Z
MANIFEST = "_kbook_replay.json"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One server for the module: starting SeaweedFS costs seconds of a shared CPU."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server, aws_env(server):
        yield server


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Path:
    """Two pairs, 40 s across a UTC midnight, two segments each, in the recorder's layout;
    the same files uploaded to s3://kbook/raw."""
    root = tmp_path_factory.mktemp("rec")
    for pair, seed in (("XBT/USD", 1), ("ETH/USD", 2)):
        frames = list(
            SynthMarket(pair, depth=10, seed=seed).frames(400, MIDNIGHT - 20 * SECOND, SECOND // 10)
        )
        for piece in (frames[:200], frames[200:]):
            write_frames(segment_path(root, pair, piece[0][0]), piece)
    folder = root / "raw"
    fs = s3.filesystem()
    for path in folder.rglob("*.jsonl.zst"):
        with fs.open_output_stream(
            f"{BUCKET}/raw/{path.relative_to(folder).as_posix()}", compression=None
        ) as out:
            out.write(path.read_bytes())
    return folder


def local_files(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file() and path.name != MANIFEST
    }


def test_replay_s3_to_s3_writes_the_bytes_a_local_replay_writes(
    raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    local = replay.replay_to_dataset(raw, tmp_path / "snaps", every="1s", levels=5)
    expected = local_files(tmp_path / "snaps")
    assert len(expected) == 4  # two pairs, two days

    remote = replay.replay_to_dataset(
        f"s3://{BUCKET}/raw", f"s3://{BUCKET}/snaps", every="1s", levels=5
    )
    objects = s3.objects("snaps")
    manifest = orjson.loads(objects.pop(MANIFEST))
    assert objects == expected
    assert manifest["files"] == {key: len(data) for key, data in expected.items()}
    assert manifest["pairs"] == orjson.loads(orjson.dumps(local.to_json()))["pairs"]
    assert sorted(remote.files) == sorted(f"s3://{BUCKET}/snaps/{key}" for key in expected)

    # S3 in, local out; and the dataset read back equals the local one.
    replay.replay_to_dataset(f"s3://{BUCKET}/raw", tmp_path / "back", every="1s", levels=5)
    assert local_files(tmp_path / "back") == expected
    assert replay.read_snapshots(f"s3://{BUCKET}/snaps").equals(
        replay.read_snapshots(tmp_path / "snaps")
    )


def test_an_existing_s3_dataset_needs_force_and_is_replaced_whole(
    raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    out = f"s3://{BUCKET}/forced"
    replay.replay_to_dataset(f"s3://{BUCKET}/raw", out, every="1s", levels=5)
    with pytest.raises(OutputError, match="pass --force"):
        replay.replay_to_dataset(f"s3://{BUCKET}/raw", out, every="1s", levels=5)
    first_day = [path for path in raw.rglob("*.jsonl.zst") if "2025-11-20" in str(path)]
    replay.replay_to_dataset(first_day, out, every="1s", levels=5, force=True)
    replay.replay_to_dataset(first_day, tmp_path / "one-day", every="1s", levels=5)
    objects = s3.objects("forced")
    objects.pop(MANIFEST)
    assert objects == local_files(tmp_path / "one-day"), "the second day's files are gone"

    s3.filesystem().create_dir(f"{BUCKET}/other")
    with s3.filesystem().open_output_stream(f"{BUCKET}/other/notes.txt", compression=None) as note:
        note.write(b"not a dataset")
    with pytest.raises(OutputError, match="not a kbook snapshot dataset"):
        replay.replay_to_dataset(first_day, f"s3://{BUCKET}/other", levels=5, force=True)
    assert s3.objects("other") == {"notes.txt": b"not a dataset"}


def test_pandas_polars_and_duckdb_read_the_s3_dataset(raw: Path, s3: S3Server) -> None:
    summary = replay.replay_to_dataset(
        f"s3://{BUCKET}/raw", f"s3://{BUCKET}/readers", every="1s", levels=5
    )
    expected = {pair.replace("/", "-"): s.rows for pair, s in summary.pairs.items()}
    location = open_location(f"s3://{BUCKET}/readers", "test")

    frame = pd.read_parquet(location.path, filesystem=location.fs)
    assert frame.groupby("pair", observed=True).size().to_dict() == expected

    options = {
        "aws_endpoint_url": s3.env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": s3.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": s3.env["AWS_SECRET_ACCESS_KEY"],
        "aws_region": "us-east-1",
        "aws_allow_http": "true",
    }
    lazy = pl.scan_parquet(
        f"s3://{BUCKET}/readers/**/*.parquet", hive_partitioning=True, storage_options=options
    )
    counts = lazy.group_by("pair").len().collect()
    assert dict(zip(counts["pair"], counts["len"], strict=True)) == expected

    dataset = ds.dataset(location.path, filesystem=location.fs, partitioning="hive")  # noqa: F841
    rows = duckdb.sql("SELECT pair, count(*) FROM dataset GROUP BY pair").fetchall()
    assert dict(rows) == expected


def test_an_unfinished_s3_dataset_is_refused(s3: S3Server) -> None:
    fs = s3.filesystem()
    with fs.open_output_stream(
        f"{BUCKET}/torn/pair=BTC-USD/date=2025-11-21/part-0.parquet", compression=None
    ) as f:
        f.write(b"PAR1")
    with pytest.raises(InputError, match="did not finish"):
        replay.read_snapshots(f"s3://{BUCKET}/torn")


def test_verify_of_s3_equals_verify_of_the_local_copy(raw: Path, s3: S3Server) -> None:
    local = verify_paths([raw]).to_json()
    remote = verify_paths([f"s3://{BUCKET}/raw"]).to_json()
    names = [Path(name).relative_to(raw).as_posix() for name in local.pop("files")]
    remote_names = [name.split(f"/{BUCKET}/raw/", 1)[1] for name in remote.pop("files")]
    assert remote_names == names
    assert remote == local
    assert local["checksums_ok"] > 0


@pytest.mark.slow
def test_the_cli_verifies_replays_and_plots_on_s3(raw: Path, s3: S3Server, tmp_path: Path) -> None:
    def kbook(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kbook", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **s3.env},
            check=False,
        )

    checked = kbook("verify", f"s3://{BUCKET}/raw", "--json")
    assert checked.returncode == 0, checked.stderr
    assert orjson.loads(checked.stdout)["checksums_failed"] == 0
    done = kbook("replay", f"s3://{BUCKET}/raw", "--out", f"s3://{BUCKET}/cli", "--levels", "5")
    assert done.returncode == 0, done.stderr
    assert f"s3://{BUCKET}/cli" in done.stdout
    drawn = kbook(
        "plot", f"s3://{BUCKET}/cli", "--pair", "BTC/USD", "--out", str(tmp_path / "b.png")
    )
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    missing = kbook("verify", f"s3://{BUCKET}/nothing-here")
    assert missing.returncode == 2
    assert missing.stderr.startswith("kbook: error: s3://kbook/nothing-here: no segments")


def two_pairs_of_40_days(folder: Path, seeds: tuple[int, int] = (3, 4)) -> None:
    """2 x 40 days: 80 partitions to publish."""
    for pair, seed in zip(("XBT/USD", "ETH/USD"), seeds, strict=True):
        frames = SynthMarket(pair, depth=10, seed=seed).frames(160, MIDNIGHT, 6 * 3600 * SECOND)
        path = folder / f"{pair.replace('/', '-')}.jsonl.zst"
        path.unlink(missing_ok=True)
        write_frames(path, frames)


def await_key(fs: pafs.FileSystem, run: subprocess.Popen[bytes], prefix: str, found: Any) -> None:
    """Poll the objects under ``prefix`` until ``found(keys)`` (the run must still be going)."""
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True)
    while True:
        keys = [
            info.path.removeprefix(f"{BUCKET}/{prefix}/")
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ]
        if found(keys):
            return
        assert run.poll() is None, "the replay ended before it was stopped"


@pytest.mark.slow
def test_a_replay_killed_while_uploading_leaves_the_old_dataset_whole(
    s3: S3Server, tmp_path: Path
) -> None:
    """Killed (SIGKILL) while the new files go up under the temporary prefix: the old dataset
    is as it was, manifest included, and readable; the next replay publishes whole."""
    folder = tmp_path / "raw"
    two_pairs_of_40_days(folder)
    out = f"s3://{BUCKET}/killed-early"
    replay.replay_to_dataset(folder, out, every="1h", levels=5)
    old = s3.objects("killed-early")
    command = [sys.executable, "-m", "kbook", "replay", str(folder), "--out", out]
    args = [*command, "--every", "30m", "--levels", "5", "--force", "--workers", "1"]
    with subprocess.Popen(args, env={**os.environ, **s3.env}, stderr=subprocess.PIPE) as run:
        await_key(s3.filesystem(), run, "killed-early", lambda keys: any(
            key.startswith("_kbook_tmp-") for key in keys
        ))  # fmt: skip
        run.kill()
    assert run.returncode == -9
    objects = s3.objects("killed-early")
    assert {key: data for key, data in objects.items() if key in old} == old
    replay.replay_to_dataset(folder, tmp_path / "old", every="1h", levels=5)
    assert replay.read_snapshots(out).equals(replay.read_snapshots(tmp_path / "old"))

    replay.replay_to_dataset(folder, out, every="30m", levels=5, force=True)
    replay.replay_to_dataset(folder, tmp_path / "whole", every="30m", levels=5)
    objects = s3.objects("killed-early")
    objects.pop(MANIFEST)
    assert objects == local_files(tmp_path / "whole"), "and the killed run's debris is gone"


@pytest.mark.slow
def test_a_replay_killed_while_publishing_leaves_no_dataset_to_read(
    s3: S3Server, tmp_path: Path
) -> None:
    """Killed (SIGKILL) past the commit point, the old manifest deleted and the new files half
    copied in place: readers find no manifest and refuse, rather than a mix; the next replay
    with --force publishes whole."""
    folder = tmp_path / "raw"
    two_pairs_of_40_days(folder)
    out = f"s3://{BUCKET}/killed"
    replay.replay_to_dataset(folder, out, every="1h", levels=5)
    command = [sys.executable, "-m", "kbook", "replay", str(folder), "--out", out]
    args = [*command, "--every", "30m", "--levels", "5", "--force", "--workers", "1"]
    with subprocess.Popen(args, env={**os.environ, **s3.env}, stderr=subprocess.PIPE) as run:
        await_key(s3.filesystem(), run, "killed", lambda keys: MANIFEST not in keys)
        run.kill()
    assert run.returncode == -9
    objects = s3.objects("killed")
    assert MANIFEST not in objects
    assert any(key.startswith("_kbook_tmp-") for key in objects)
    with pytest.raises(InputError, match="did not finish"):
        replay.read_snapshots(out)

    replay.replay_to_dataset(folder, out, every="30m", levels=5, force=True)
    replay.replay_to_dataset(folder, tmp_path / "whole", every="30m", levels=5)
    objects = s3.objects("killed")
    objects.pop(MANIFEST)
    assert objects == local_files(tmp_path / "whole"), "and the killed run's debris is gone"
    assert replay.read_snapshots(out).equals(replay.read_snapshots(tmp_path / "whole"))


@pytest.mark.slow
def test_a_replay_stopped_past_the_commit_point_says_the_dataset_is_unfinished(
    s3: S3Server, tmp_path: Path
) -> None:
    """SIGTERM once the old manifest is gone: the one line says so (not "left as it was")."""
    folder = tmp_path / "raw"
    two_pairs_of_40_days(folder)
    out = f"s3://{BUCKET}/stopped"
    replay.replay_to_dataset(folder, out, every="1h", levels=5)
    command = [sys.executable, "-m", "kbook", "replay", str(folder), "--out", out]
    args = [*command, "--every", "30m", "--levels", "5", "--force", "--workers", "1"]
    with subprocess.Popen(args, env={**os.environ, **s3.env}, stderr=subprocess.PIPE) as run:
        await_key(s3.filesystem(), run, "stopped", lambda keys: MANIFEST not in keys)
        run.terminate()
        _, stderr = run.communicate(timeout=60)
    assert run.returncode == 128 + signal.SIGTERM
    assert stderr.decode().splitlines()[-1] == (
        f"kbook: replay stopped by SIGTERM: {out} left unfinished (no {MANIFEST}: readers "
        "refuse it); replay again with --force"
    )
    assert MANIFEST not in s3.objects("stopped")


@pytest.mark.slow
def test_trades_s3_to_s3_are_the_bytes_of_a_local_trades_replay(
    s3: S3Server, tmp_path: Path
) -> None:
    """``kbook replay --trades`` reads and writes s3:// as the snapshots do."""
    folder = tmp_path / "raw"
    frames = [
        (
            MIDNIGHT + n * SECOND,
            orjson.dumps(
                [0, [[f"{90000 + n}.1", "0.5", f"{MIDNIGHT // 10**9 + n}.0", "b", "l", ""]]]
                + ["trade", "XBT/USD"]
            ).decode(),
        )
        for n in range(30)
    ]
    write_frames(folder / "XBT-USD.jsonl.zst", frames)
    fs = s3.filesystem()
    with fs.open_output_stream(f"{BUCKET}/trades-raw/XBT-USD.jsonl.zst", compression=None) as out:
        out.write((folder / "XBT-USD.jsonl.zst").read_bytes())
    replay.replay_trades_to_dataset(folder, tmp_path / "trades")
    expected = local_files(tmp_path / "trades")
    done = subprocess.run(
        [sys.executable, "-m", "kbook", "replay", f"s3://{BUCKET}/trades-raw", "--trades"]
        + ["--out", f"s3://{BUCKET}/trades"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **s3.env},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"30 trades into s3://{BUCKET}/trades" in done.stderr
    objects = s3.objects("trades")
    manifest = orjson.loads(objects.pop(MANIFEST))
    assert manifest["dataset"] == "trades"
    assert objects == expected
    assert list(expected) == ["pair=BTC-USD/date=2025-11-21/part-0.parquet"]


def test_update_from_s3_replays_only_what_changed(raw: Path, s3: S3Server, tmp_path: Path) -> None:
    """``--update`` with s3:// segments: objects are named by their URI and their listed time,
    so a second run finds nothing changed; new objects give the full bytes."""
    fs = s3.filesystem()
    segments = sorted(raw.rglob("*.jsonl.zst"))
    assert len(segments) == 4

    def put(path: Path) -> None:
        with fs.open_output_stream(
            f"{BUCKET}/upd/{path.relative_to(raw).as_posix()}", compression=None
        ) as out:
            out.write(path.read_bytes())

    for path in segments:
        if path.parent.name == "2025-11-20":
            put(path)
    out = tmp_path / "snaps"
    first = replay.replay_to_dataset(f"s3://{BUCKET}/upd", out, levels=5, update=True)
    assert first.updated is None  # no dataset yet: a full replay
    same = replay.replay_to_dataset(f"s3://{BUCKET}/upd", out, levels=5, update=True)
    assert (same.updated, same.unchanged) == (0, 2)
    for path in segments:
        if path.parent.name == "2025-11-21":
            put(path)
    more = replay.replay_to_dataset(f"s3://{BUCKET}/upd", out, levels=5, update=True)
    assert (more.updated, more.unchanged) == (2, 2)  # the new day; the old day the same bytes
    replay.replay_to_dataset(raw, tmp_path / "full", levels=5)
    assert local_files(out) == local_files(tmp_path / "full")


def test_s3_segments_are_read_in_place_not_copied(
    raw: Path, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay and verify hand the readers references to the objects (no local copy is made),
    and read the very bytes of the local files."""
    verified = verify_paths([f"s3://{BUCKET}/raw"])
    assert len(verified.files) == 4
    assert all(isinstance(path, ObjectSegment) for path in verified.files)
    assert {str(path) for path in verified.files} == {
        f"s3://{BUCKET}/raw/{path.relative_to(raw).as_posix()}" for path in raw.rglob("*.zst")
    }
    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where a copy would have gone
    held: list[list[str]] = []

    def progress(done: int, total: int) -> None:
        held.append([path.name for path in spool.rglob("*") if path.is_file()])

    summary = replay.replay_to_dataset(
        f"s3://{BUCKET}/raw", tmp_path / "snaps", levels=5, progress=progress
    )
    assert held, "the replay reported progress"
    assert not any(held), "no local file while the replay ran"
    assert all(isinstance(path, ObjectSegment) for path in summary.segments)
    assert [path.stat().st_size for path in summary.segments] == [
        (raw / str(path).split("/raw/", 1)[1]).stat().st_size for path in summary.segments
    ]
    replay.replay_to_dataset(raw, tmp_path / "local", levels=5)
    assert local_files(tmp_path / "snaps") == local_files(tmp_path / "local")


def test_a_missing_s3_object_is_a_one_line_error(s3: S3Server) -> None:
    with pytest.raises(InputError, match=f"^s3://{BUCKET}/raw/nothing.jsonl.zst: ") as caught:
        verify_paths([f"s3://{BUCKET}/raw/nothing.jsonl.zst"])
    assert "\n" not in str(caught.value)


def objects_by_hash(s3: S3Server, prefix: str) -> dict[str, str]:
    return {key: hashlib.sha256(data).hexdigest() for key, data in s3.objects(prefix).items()}


@pytest.mark.slow
def test_update_to_s3_rewrites_only_the_partitions_that_changed(
    raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    """``--update --out s3://``: after one more day of segments, only that day's objects are
    written (every other object keeps its bytes) and the dataset equals a full replay."""
    fs = s3.filesystem()

    def put(path: Path) -> None:
        key = f"{BUCKET}/upd-in/{path.relative_to(raw).as_posix()}"
        with fs.open_output_stream(key, compression=None) as out:
            out.write(path.read_bytes())

    segments = sorted(raw.rglob("*.jsonl.zst"))
    for path in segments:
        if path.parent.name == "2025-11-20":
            put(path)
    source, out = f"s3://{BUCKET}/upd-in", f"s3://{BUCKET}/upd-out"
    first = replay.replay_to_dataset(source, out, levels=5, update=True)
    assert first.updated is None  # no dataset yet: a full replay
    before = objects_by_hash(s3, "upd-out")
    assert sorted(before) == [
        MANIFEST,
        "pair=BTC-USD/date=2025-11-20/part-0.parquet",
        "pair=ETH-USD/date=2025-11-20/part-0.parquet",
    ]
    same = replay.replay_to_dataset(source, out, levels=5, update=True)
    assert (same.updated, same.unchanged) == (0, 2)
    again = objects_by_hash(s3, "upd-out")
    assert {key: again[key] for key in before if key != MANIFEST} == {
        key: before[key] for key in before if key != MANIFEST
    }
    for path in segments:
        if path.parent.name == "2025-11-21":
            put(path)
    more = replay.replay_to_dataset(source, out, levels=5, update=True)
    assert (more.updated, more.unchanged) == (2, 2)  # the new day; the old day the same bytes
    after = objects_by_hash(s3, "upd-out")
    new_day = {key for key in after if "date=2025-11-21" in key}
    assert len(new_day) == 2
    assert {key: after[key] for key in before if key != MANIFEST} == {
        key: before[key] for key in before if key != MANIFEST
    }
    assert set(after) == set(before) | new_day
    replay.replay_to_dataset(raw, tmp_path / "full", levels=5)
    objects = s3.objects("upd-out")
    manifest = orjson.loads(objects.pop(MANIFEST))
    assert objects == local_files(tmp_path / "full")
    assert manifest["files"] == {key: len(data) for key, data in objects.items()}
    assert replay.read_snapshots(out).equals(replay.read_snapshots(tmp_path / "full"))


def test_denied_s3_requests_are_one_line_errors(
    raw: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(InputError, match=f"^s3://{BUCKET}/raw: cannot read: ") as caught:
        verify_paths([f"s3://{BUCKET}/raw"])
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_an_s3_server_that_does_not_answer_is_a_one_line_error(
    raw: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
        with pytest.raises(InputError, match=f"^s3://{BUCKET}/raw: cannot read: ") as caught:
            verify_paths([f"s3://{BUCKET}/raw"])
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_an_update_killed_while_publishing_is_finished_by_the_next_update(
    s3: S3Server, tmp_path: Path
) -> None:
    """``--update --out s3://`` killed (SIGKILL) with new partitions half moved in: readers
    find no manifest and refuse; the next ``--update`` starts from the manifest left aside,
    publishes the bytes of a full replay and removes the debris."""
    folder = tmp_path / "raw"
    two_pairs_of_40_days(folder)
    out = f"s3://{BUCKET}/killed-update"
    replay.replay_to_dataset(folder, out, every="1h", levels=5)
    two_pairs_of_40_days(folder, (5, 6))  # other markets, same names: every partition changes
    fs = s3.filesystem()
    command = [sys.executable, "-m", "kbook", "replay", str(folder), "--out", out, "--update"]
    args = [*command, "--every", "1h", "--levels", "5", "--workers", "1"]
    with subprocess.Popen(args, env={**os.environ, **s3.env}, stderr=subprocess.PIPE) as run:
        await_key(fs, run, "killed-update", lambda keys: MANIFEST not in keys)
        run.kill()
    assert run.returncode == -9
    objects = s3.objects("killed-update")
    assert MANIFEST not in objects
    assert any(key.endswith(f"-aside/{MANIFEST}") for key in objects)
    with pytest.raises(InputError, match="did not finish"):
        replay.read_snapshots(out)

    again = replay.replay_to_dataset(folder, out, every="1h", levels=5, update=True)
    assert again.updated is not None
    assert again.updated > 0  # the partitions the killed run had moved in whole stay as they are
    assert again.updated + again.unchanged == 80
    replay.replay_to_dataset(folder, tmp_path / "whole", every="1h", levels=5)
    objects = s3.objects("killed-update")
    objects.pop(MANIFEST)
    assert objects == local_files(tmp_path / "whole"), "and the killed run's debris is gone"
    assert replay.read_snapshots(out).equals(replay.read_snapshots(tmp_path / "whole"))


def test_a_damaged_s3_segment_is_read_past_its_damage_as_a_local_one(
    s3: S3Server, tmp_path: Path
) -> None:
    """A flipped byte in one zstd frame: the reader seeks to the next frame in the object, as
    in a local file, and reports the same problems (named by the URI)."""
    path = tmp_path / "XBT-USD.jsonl.zst"
    with SegmentWriter(path) as writer:
        for n in range(200):
            writer.write(
                frame_line(MIDNIGHT + n, n, f'[{n},{{"a":[["{n}.5","1.0","1.0"]]}}]', True)
            )
            if n % 20 == 19:
                writer.flush(fsync=False)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with s3.filesystem().open_output_stream(
        f"{BUCKET}/damaged/{path.name}", compression=None
    ) as out:
        out.write(bytes(data))
    (remote,) = segment_inputs([f"s3://{BUCKET}/damaged"])
    local_reader, remote_reader = SegmentReader(path), SegmentReader(remote)
    local_records, remote_records = list(local_reader), list(remote_reader)
    assert 150 <= len(local_records) < 200
    assert remote_records == local_records
    assert [str(p).replace(str(path), "X") for p in local_reader.problems] == [
        str(p).replace(f"s3://{BUCKET}/damaged/{path.name}", "X") for p in remote_reader.problems
    ]
    assert any("skipped" in str(p) for p in remote_reader.problems)


def test_a_segment_stored_twice_on_s3_is_read_once_as_locally(
    raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    """Listing, ordering and leaving out copies go as in a local folder holding the same."""
    first = sorted(raw.rglob("*.jsonl.zst"))[0]
    fs = s3.filesystem()
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / first.name).write_bytes(first.read_bytes())
        with fs.open_output_stream(
            f"{BUCKET}/twice/{folder}/{first.name}", compression=None
        ) as out:
            out.write(first.read_bytes())
    local = verify_paths([tmp_path])
    remote = verify_paths([f"s3://{BUCKET}/twice"])
    assert [str(path) for path in remote.files] == [f"s3://{BUCKET}/twice/a/{first.name}"]
    assert [str(p).replace(str(tmp_path), "X") for p in local.problems] == [
        str(p).replace(f"s3://{BUCKET}/twice", "X") for p in remote.problems
    ]
    assert "a stale copy of the same as" in str(remote.problems[0])


# -- every output kind on object storage ----------------------------------------------------------


def replay_kind(kind: str, paths: Any, out: str | Path, force: bool = False) -> Any:
    """``kbook replay`` of ``kind``: on-change snapshots, deltas, Tardis or hftbacktest files."""
    if kind == "change":
        return replay.replay_to_dataset(paths, out, every="change", levels=5, force=force)
    if kind == "deltas":
        return replay.replay_deltas_to_dataset(paths, out, force=force)
    return replay.replay_to_backtest_files(paths, out, kind, force=force)


KINDS = ("change", "deltas", "tardis", "hftbacktest")


def no_folder_objects(s3: S3Server, prefix: str) -> None:
    """No zero-byte "folder" object inside the dataset (its own ``prefix/`` aside)."""
    inside = {key: size for key, size in s3.keys(prefix).items() if key != f"{prefix}/"}
    assert inside
    assert [key for key, size in inside.items() if key.endswith("/") or size == 0] == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_replays_s3_to_s3_as_the_bytes_of_a_local_replay(
    kind: str, raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    """On-change snapshots, deltas, Tardis and hftbacktest files: from s3:// (read in place) or
    local segments to s3://, the objects are the files of a local replay, listed by the
    manifest; local out from s3:// in gives them too; no folder objects."""
    local = replay_kind(kind, raw, tmp_path / "local")
    expected = local_files(tmp_path / "local")
    assert expected
    for source, prefix in ((f"s3://{BUCKET}/raw", f"{kind}-s3"), (raw, f"{kind}-local")):
        summary = replay_kind(kind, source, f"s3://{BUCKET}/{prefix}")
        objects = s3.objects(prefix)
        manifest = orjson.loads(objects.pop(MANIFEST))
        assert objects == expected
        assert manifest["files"] == {key: len(data) for key, data in expected.items()}
        assert manifest["pairs"] == orjson.loads(orjson.dumps(local.to_json()))["pairs"]
        assert sorted(summary.files) == sorted(f"s3://{BUCKET}/{prefix}/{key}" for key in expected)
        no_folder_objects(s3, prefix)
    replay_kind(kind, f"s3://{BUCKET}/raw", tmp_path / "back")
    assert local_files(tmp_path / "back") == expected


@pytest.mark.slow
def test_pandas_and_pyarrow_read_every_kind_on_s3(raw: Path, s3: S3Server, tmp_path: Path) -> None:
    """Each kind's dataset is read straight from S3 as from the local folder."""
    location = {kind: open_location(f"s3://{BUCKET}/read-{kind}", "test") for kind in KINDS}
    for kind in KINDS:
        replay_kind(kind, f"s3://{BUCKET}/raw", location[kind].text)
        replay_kind(kind, raw, tmp_path / kind)
    fs = location["change"].fs
    for kind in ("change", "deltas"):
        frame = pd.read_parquet(location[kind].path, filesystem=fs)
        assert frame.equals(pd.read_parquet(tmp_path / kind))
        assert len(frame) > 0
    assert replay.read_snapshots(location["change"].text).equals(
        replay.read_snapshots(tmp_path / "change")
    )
    assert replay.read_deltas(location["deltas"].text).equals(
        replay.read_deltas(tmp_path / "deltas")
    )
    for name in local_files(tmp_path / "tardis"):
        with fs.open_input_file(location["tardis"].join(name)) as stream:
            frame = pd.read_csv(stream, compression="gzip")
        assert frame.equals(pd.read_csv(tmp_path / "tardis" / name))
    for name in local_files(tmp_path / "hftbacktest"):
        with fs.open_input_file(location["hftbacktest"].join(name)) as stream:
            data = np.load(io.BytesIO(stream.read()))["data"]
        held = np.load(tmp_path / "hftbacktest" / name)["data"]
        assert len(data) > 0
        assert data.tobytes() == held.tobytes()  # NaN prices (the clears) compare unequal


@pytest.mark.parametrize("kind", ["tardis", "hftbacktest"])
def test_force_replaces_the_files_of_an_s3_backtest_dataset_whole(
    kind: str, raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    """``--force`` over files of the same format (the second day's are gone after), and over
    files a run killed before its manifest left; other objects are never replaced."""
    out = f"s3://{BUCKET}/forced-{kind}"
    replay_kind(kind, f"s3://{BUCKET}/raw", out)
    with pytest.raises(OutputError, match="pass --force"):
        replay_kind(kind, f"s3://{BUCKET}/raw", out)
    first_day = [path for path in raw.rglob("*.jsonl.zst") if "2025-11-20" in str(path)]
    replay_kind(kind, first_day, tmp_path / "one-day")
    s3.filesystem().delete_file(f"{BUCKET}/forced-{kind}/{MANIFEST}")  # as a killed run leaves it
    replay_kind(kind, first_day, out, force=True)
    objects = s3.objects(f"forced-{kind}")
    objects.pop(MANIFEST)
    assert objects == local_files(tmp_path / "one-day"), "the second day's files are gone"
    with s3.filesystem().open_output_stream(f"{BUCKET}/forced-{kind}/notes.txt") as note:
        note.write(b"mine")
    replay_kind(kind, first_day, out, force=True)  # the manifest names what is kbook's
    assert s3.objects(f"forced-{kind}")["notes.txt"] == b"mine"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deltas", "tardis"])
def test_a_replay_of_any_kind_killed_while_publishing_leaves_nothing_to_read(
    kind: str, s3: S3Server, tmp_path: Path
) -> None:
    """Killed (SIGKILL) past the commit point over an old dataset of its kind: no manifest, so
    kbook's readers refuse it; the next replay with --force publishes the whole dataset."""
    folder = tmp_path / "raw"
    two_pairs_of_40_days(folder)
    out = f"s3://{BUCKET}/killed-{kind}"
    replay_kind(kind, folder, out)
    command = [sys.executable, "-m", "kbook", "replay", str(folder), "--out", out]
    args = [*command, "--format", kind, "--force"]
    with subprocess.Popen(args, env={**os.environ, **s3.env}, stderr=subprocess.PIPE) as run:
        await_key(s3.filesystem(), run, f"killed-{kind}", lambda keys: MANIFEST not in keys)
        run.kill()
    assert run.returncode == -9
    assert MANIFEST not in s3.objects(f"killed-{kind}")
    if kind == "deltas":
        with pytest.raises(InputError, match="did not finish"):
            replay.read_deltas(out)
    else:
        drawn = subprocess.run(
            [sys.executable, "-m", "kbook", "plot", out, "--out", str(tmp_path / "p.png")],
            capture_output=True, text=True, timeout=120, env={**os.environ, **s3.env}, check=False,
        )  # fmt: skip
        assert drawn.returncode != 0
        assert "did not finish" in drawn.stderr
    replay_kind(kind, folder, out, force=True)
    replay_kind(kind, folder, tmp_path / "whole")
    objects = s3.objects(f"killed-{kind}")
    objects.pop(MANIFEST)
    assert objects == local_files(tmp_path / "whole"), "and the killed run's debris is gone"
    no_folder_objects(s3, f"killed-{kind}")


@pytest.mark.slow
def test_plot_on_s3_draws_on_change_snapshots_and_names_the_other_kinds(
    raw: Path, s3: S3Server, tmp_path: Path
) -> None:
    """``kbook plot`` of each kind on s3:// says what a local dataset of it says."""

    def plot(dataset: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kbook", "plot", str(dataset), "--pair", "BTC/USD"]
            + ["--out", str(tmp_path / "b.png")],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **s3.env},
            check=False,
        )

    for kind in KINDS:
        replay_kind(kind, f"s3://{BUCKET}/raw", f"s3://{BUCKET}/plot-{kind}")
        replay_kind(kind, raw, tmp_path / kind)
        remote, local = plot(f"s3://{BUCKET}/plot-{kind}"), plot(tmp_path / kind)
        assert remote.returncode == local.returncode, (kind, remote.stderr, local.stderr)
        if kind == "change":
            assert remote.returncode == 0, remote.stderr
            assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
        else:
            assert remote.stderr.startswith(f"kbook: error: s3://{BUCKET}/plot-{kind}: is a {kind}")
            assert remote.stderr.count("\n") == 1
            assert remote.stderr.split(": is a ")[1] == local.stderr.split(": is a ")[1]


def test_a_publish_that_fails_past_its_commit_point_says_the_dataset_is_unfinished(
    raw: Path, s3: S3Server
) -> None:
    """A staged object missing when it is put in place (the server answers an error): one line
    that says the old manifest is gone, the staged objects are removed, and readers refuse."""
    out = f"s3://{BUCKET}/failed"
    replay.replay_to_dataset(f"s3://{BUCKET}/raw", out, levels=5)
    location = open_location(out, "--out")

    def publish() -> None:
        with StagedPublish(location, MANIFEST) as staged:
            with s3.filesystem().open_output_stream(
                staged.staged("pair=XBT-USD/a.parquet")
            ) as stream:
                stream.write(b"PAR1")
            staged.commit(
                ["pair=XBT-USD/a.parquet", "pair=XBT-USD/never-staged.parquet"], [], {"files": {}}
            )

    with pytest.raises(OutputError) as caught:
        publish()
    assert str(caught.value).startswith(f"{out}: cannot publish: ")
    assert str(caught.value).endswith(
        f"; left unfinished (no {MANIFEST}: readers refuse it); replay again with --force"
    )
    assert not any(key.startswith("_kbook_tmp-") for key in s3.objects("failed"))
    with pytest.raises(InputError, match="did not finish"):
        replay.read_snapshots(out)
    replay.replay_to_dataset(f"s3://{BUCKET}/raw", out, levels=5, force=True)
    assert len(replay.read_snapshots(out)) > 0
    assert not any(key.startswith("pair=XBT-USD/") for key in s3.objects("failed"))
