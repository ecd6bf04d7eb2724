"""``--metrics-file`` for ``kbook replay`` and ``kbook verify``: what one run did, as Prometheus
metrics in node_exporter's textfile format, written atomically at the end of the run.

A cron job's metrics cannot be scraped (the process is gone), so the node_exporter textfile
collector picks the file up instead; ``kbook_<job>_last_run_timestamp_seconds`` lets an alert see
a job that stopped running. The figures come from the summary objects the commands already
print, so the file says exactly what the table on the terminal says.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from kbook.errors import OutputError
from kbook.units import SECOND

if TYPE_CHECKING:
    from kbook.verify import VerifyReport
    from replay.api import ReplaySummary


def _gauge(registry: CollectorRegistry, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, doc, labelnames=labels, registry=registry)


def _finish(registry: CollectorRegistry, job: str, seconds: float) -> None:
    _gauge(registry, f"kbook_{job}_duration_seconds", f"How long the {job} took.").set(seconds)
    _gauge(
        registry, f"kbook_{job}_last_run_timestamp_seconds", f"When the {job} ended (Unix seconds)."
    ).set(time.time())


def write(path: Path, registry: CollectorRegistry) -> None:
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise OutputError(f"--metrics-file {path}: cannot write it ({exc})") from exc


def replay_metrics(summary: ReplaySummary) -> CollectorRegistry:
    """Rows, frames, checksum failures and invalid time per pair, and the run's duration."""
    registry = CollectorRegistry()
    rows = _gauge(registry, "kbook_replay_rows", "Snapshot rows written.", ("pair",))
    frames = _gauge(registry, "kbook_replay_frames", "Book frames replayed.", ("pair",))
    failures = _gauge(
        registry, "kbook_replay_checksum_failures", "Checksums that failed.", ("pair",)
    )
    invalid = _gauge(
        registry, "kbook_replay_invalid_seconds", "Grid time with an invalid book.", ("pair",)
    )
    every_s = summary.options.every_ns / SECOND
    for pair, s in summary.pairs.items():
        rows.labels(pair).set(s.rows)
        frames.labels(pair).set(s.frames)
        failures.labels(pair).set(s.checksum_failures)
        invalid.labels(pair).set((s.rows - s.valid_rows) * every_s)
    _finish(registry, "replay", summary.seconds)
    return registry


def verify_metrics(report: VerifyReport, seconds: float) -> CollectorRegistry:
    """Frames, checksums ok/failed and invalid time per pair, and the run's duration."""
    registry = CollectorRegistry()
    frames = _gauge(registry, "kbook_verify_frames", "Book frames read.", ("pair",))
    checksums = _gauge(
        registry, "kbook_verify_checksums", "Checksums verified, by result.", ("pair", "result")
    )
    invalid = _gauge(
        registry, "kbook_verify_invalid_seconds", "Time with an invalid book.", ("pair",)
    )
    for pair, s in report.pairs.items():
        frames.labels(pair).set(s.frames)
        checksums.labels(pair, "ok").set(s.checksums_ok)
        checksums.labels(pair, "failed").set(s.checksums_failed)
        invalid.labels(pair).set(s.invalid_ns / SECOND)
    _finish(registry, "verify", seconds)
    return registry
