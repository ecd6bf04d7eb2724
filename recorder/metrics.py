"""Prometheus metrics of a recording: served on ``/metrics`` and written as a node_exporter textfile.

The recorder's counters live in its own thread and change with every frame, so metrics are never
read from them directly: once a tick (``Monitor``) the recorder's thread takes a ``RecorderState``,
an immutable copy, and hands it over by one reference assignment. The HTTP server's thread and the
textfile writer only ever read the latest copy, so a scrape never sees a dictionary being resized
and never slows the read loop. Upload figures come from ``UploadStatus`` (the uploader thread's
plain integers) the same way.

Names and meaning (README, Monitoring):

    kbook_frames_total{pair}                         book frames received (snapshots and updates)
    kbook_checksums_total{pair,result="ok|failed"}   checksums verified
    kbook_reconnects_total                           connections lost and made again
    kbook_connected                                  1 while a WebSocket connection is open
    kbook_subscribed{pair}                           1 while the pair's book is subscribed
    kbook_book_valid{pair}                           1 while the pair's book is known exactly
    kbook_last_frame_timestamp_seconds{pair}         receive time of the pair's newest book frame
    kbook_bytes_written_total                        compressed bytes written to segments
    kbook_segment_flush_timestamp_seconds            time of the last flush (zstd frames written)
    kbook_receive_lag_seconds                        how long the latest frame waited to be taken
    kbook_upload_backlog_files                       closed segments not yet uploaded
    kbook_upload_last_success_timestamp_seconds      time of the last verified upload
    kbook_disk_free_bytes                            free space where segments are written
    kbook_disk_below_floor                           1 when free space is under --min-free and
                                                     no uploaded segment is left to delete
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kbook.errors import OutputError, UsageError
from kbook.live.subscriptions import State
from kbook.units import SECOND

if TYPE_CHECKING:
    from recorder.record import Recorder


@dataclass(frozen=True)
class PairState:
    """One recorded pair at one moment."""

    frames: int = 0
    checksums_ok: int = 0
    checksums_failed: int = 0
    subscribed: bool = False
    book_valid: bool = False
    last_frame_ns: int | None = None


@dataclass(frozen=True)
class RecorderState:
    """The recorder at one moment, copied in its own thread (``recorder_state``)."""

    pairs: dict[str, PairState] = field(default_factory=dict)
    connected: bool = False
    reconnects: int = 0
    bytes_written: int = 0
    last_flush_ns: int | None = None
    receive_lag_ns: int | None = None


def recorder_state(recorder: Recorder) -> RecorderState:
    """Copy what the metrics show out of ``recorder`` (call in the recorder's thread).

    Counts are the live book's (``BookFeed.stats``, keyed by the name on the wire), summed per
    pair the user asked for, so ``XBT/USD`` echoed for ``BTC/USD`` counts as ``BTC/USD``.
    """
    counts: dict[str, list[int]] = {pair: [0, 0, 0] for pair in recorder.config.pairs}
    newest: dict[str, int] = {}
    for name, stats in recorder.feed.stats.items():
        pair = recorder.subs.pair_for(name)
        if pair is None or pair not in counts:
            continue
        total = counts[pair]
        total[0] += stats.frames
        total[1] += stats.checksums_ok
        total[2] += stats.checksums_failed
        if stats.last_ns is not None:
            newest[pair] = max(newest.get(pair, 0), stats.last_ns)
    valid: dict[str, bool] = {}
    for (name, _channel), book in recorder.feed.books.items():
        pair = recorder.subs.pair_for(name)
        if pair is not None:
            valid[pair] = valid.get(pair, True) and book.valid
    pairs = {
        pair: PairState(
            frames=frames,
            checksums_ok=ok,
            checksums_failed=failed,
            subscribed=recorder.subs.subs[pair].state is State.SUBSCRIBED,
            book_valid=valid.get(pair, False),
            last_frame_ns=newest.get(pair),
        )
        for pair, (frames, ok, failed) in counts.items()
    }
    return RecorderState(
        pairs=pairs,
        connected=recorder.connected,
        reconnects=recorder.reconnects,
        bytes_written=recorder.streams.bytes_written,
        last_flush_ns=recorder.last_flush_ns,
        receive_lag_ns=recorder.session.lag_ns,
    )


class UploadStatus(Protocol):
    """What the uploader shows (``recorder.upload.Uploader``); read from another thread."""

    @property
    def backlog_files(self) -> int: ...

    @property
    def last_success_ns(self) -> int | None: ...

    @property
    def below_floor(self) -> bool: ...


class Metrics(Collector):
    """kbook's metrics in their own registry; ``update`` from the recorder, read anywhere."""

    def __init__(self, disk_path: Path, registry: CollectorRegistry | None = None) -> None:
        """``disk_path``: the folder whose free space is reported (the output folder)."""
        self.disk_path = disk_path
        self.registry = registry if registry is not None else CollectorRegistry()
        self.state = RecorderState()
        self.upload: UploadStatus | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry.register(self)

    def update(self, state: RecorderState) -> None:
        """Publish a new copy of the recorder's state (one atomic reference assignment)."""
        self.state = state

    # -- exposition -----------------------------------------------------------------------------

    def serve(self, addr: str, port: int) -> int:
        """Serve ``/metrics`` on ``addr:port`` in a daemon thread; returns the port (0: any free)."""
        try:
            self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            raise UsageError(
                f"--metrics-port {port}: cannot listen on {addr}:{port} ({exc.strerror or exc}); "
                "choose another port or address"
            ) from exc
        return int(self._server.server_port)

    def write_textfile(self, path: Path) -> None:
        """Write every metric to ``path`` atomically (a temporary file renamed over it)."""
        try:
            write_to_textfile(str(path), self.registry)
        except OSError as exc:
            raise OutputError(f"--metrics-file {path}: cannot write it ({exc})") from exc

    def close(self) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- the collector --------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        state = self.state
        frames = CounterMetricFamily(
            "kbook_frames", "Book frames received (snapshots and updates).", labels=["pair"]
        )
        checksums = CounterMetricFamily(
            "kbook_checksums", "Book checksums verified, by result.", labels=["pair", "result"]
        )
        subscribed = GaugeMetricFamily(
            "kbook_subscribed", "1 while the pair's book is subscribed.", labels=["pair"]
        )
        valid = GaugeMetricFamily(
            "kbook_book_valid", "1 while the pair's book is known exactly.", labels=["pair"]
        )
        last_frame = GaugeMetricFamily(
            "kbook_last_frame_timestamp_seconds",
            "Receive time of the pair's newest book frame (Unix seconds).",
            labels=["pair"],
        )
        for pair, p in state.pairs.items():
            frames.add_metric([pair], p.frames)
            checksums.add_metric([pair, "ok"], p.checksums_ok)
            checksums.add_metric([pair, "failed"], p.checksums_failed)
            subscribed.add_metric([pair], int(p.subscribed))
            valid.add_metric([pair], int(p.book_valid))
            if p.last_frame_ns is not None:
                last_frame.add_metric([pair], p.last_frame_ns / SECOND)
        yield from (frames, checksums, subscribed, valid, last_frame)
        yield CounterMetricFamily(
            "kbook_reconnects", "Connections lost and made again.", value=state.reconnects
        )
        yield GaugeMetricFamily(
            "kbook_connected", "1 while a WebSocket connection is open.", value=int(state.connected)
        )
        yield CounterMetricFamily(
            "kbook_bytes_written",
            "Compressed bytes written to segments.",
            value=state.bytes_written,
        )
        yield from _optional_gauge(
            "kbook_segment_flush_timestamp_seconds",
            "Time of the last flush of the segments (Unix seconds).",
            state.last_flush_ns,
        )
        yield from _optional_gauge(
            "kbook_receive_lag_seconds",
            "Seconds since the newest book frame of any pair was received.",
            state.receive_lag_ns,
        )
        upload = self.upload
        if upload is not None:
            yield GaugeMetricFamily(
                "kbook_upload_backlog_files",
                "Closed segments not yet uploaded.",
                value=upload.backlog_files,
            )
            yield from _optional_gauge(
                "kbook_upload_last_success_timestamp_seconds",
                "Time of the last verified upload (Unix seconds).",
                upload.last_success_ns,
            )
            yield GaugeMetricFamily(
                "kbook_disk_below_floor",
                "1 when free space is under --min-free and no uploaded segment is left to delete.",
                value=int(upload.below_floor),
            )
        free = disk_free_bytes(self.disk_path)
        if free is not None:
            yield GaugeMetricFamily(
                "kbook_disk_free_bytes", "Free space where segments are written.", value=free
            )


def _optional_gauge(name: str, documentation: str, ns: int | None) -> Iterator[Metric]:
    """A gauge in seconds from integer ns, left out while there is no value yet."""
    if ns is not None:
        yield GaugeMetricFamily(name, documentation, value=ns / SECOND)


def disk_free_bytes(path: Path) -> int | None:
    """Bytes free to an unprivileged writer on the filesystem of ``path`` (its nearest parent that
    exists); None when it cannot be asked."""
    for folder in (path, *path.absolute().parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None
