"""``kbook verify --metrics-file`` and ``kbook replay --metrics-file``: the textfile says what the
command's own report says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from metrics_support import parse, value

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def kbook(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbook", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_verify_writes_its_counts(tmp_path: Path) -> None:
    textfile = tmp_path / "verify.prom"
    done = kbook("verify", SAMPLE, "--json", "--metrics-file", textfile)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    samples = parse(textfile.read_text())
    for pair, counts in report["pairs"].items():
        assert value(samples, "kbook_verify_frames", pair=pair) == counts["frames"]
        ok = value(samples, "kbook_verify_checksums", pair=pair, result="ok")
        assert ok == counts["checksums_ok"] > 0
        assert value(samples, "kbook_verify_checksums", pair=pair, result="failed") == 0
        invalid = value(samples, "kbook_verify_invalid_seconds", pair=pair)
        assert invalid == counts["invalid_ns"] / 1e9
    assert (value(samples, "kbook_verify_duration_seconds") or 0) > 0
    assert value(samples, "kbook_verify_last_run_timestamp_seconds") is not None


@pytest.mark.slow
def test_replay_writes_its_rows(tmp_path: Path) -> None:
    textfile = tmp_path / "replay.prom"
    out = tmp_path / "snapshots"
    done = kbook("replay", SAMPLE, "--out", out, "--every", "1s", "--metrics-file", textfile)
    assert done.returncode == 0, done.stderr
    samples = parse(textfile.read_text())
    rows = pq.read_table(out).num_rows
    assert rows > 0
    pairs = [labels for (name, labels) in samples if name == "kbook_replay_rows"]
    assert len(pairs) == 1
    (pair,) = (dict(labels)["pair"] for labels in pairs)
    assert value(samples, "kbook_replay_rows", pair=pair) == rows
    assert (value(samples, "kbook_replay_frames", pair=pair) or 0) > 0
    assert value(samples, "kbook_replay_checksum_failures", pair=pair) == 0
    assert value(samples, "kbook_replay_invalid_seconds", pair=pair) is not None
    assert value(samples, "kbook_replay_duration_seconds") is not None


def test_an_unwritable_metrics_file_is_one_line(tmp_path: Path) -> None:
    done = kbook("verify", SAMPLE, "--metrics-file", tmp_path / "no" / "such" / "x.prom")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("kbook: error: --metrics-file ")
