"""The recorder: one connection, every frame into per-pair segments, books kept live to resync.

``Recorder(config).run()`` records until ``stop()`` (any thread, or a signal handler), the
configured duration, or a failure it cannot ride out. Everything happens in the calling thread:

    connect (with backoff) -> subscribe all pairs in one request -> read loop:
        receive a frame -> stamp it (``_now``) -> number it -> write it verbatim to its pair's
        stream (control frames without a pair: every stream) -> feed the live book -> act on it
        (resync on a checksum mismatch, alias retry, ...) -> every tick: flush, rotate, status

Kraken's WebSocket v1 or v2 (``RecordConfig.api``): the loop is the same, and what differs (frame
shapes, requests, number decoding) is asked of the run's ``kbook.dialect.Dialect``. A run
records one API; its segments say which in ``session_start`` and in every ``checkpoint``.

Errors: ``UsageError`` from the config; ``RecordError`` when nothing can be recorded (lock held,
every pair refused, retry budget spent); ``OutputError`` when the disk fails. In every case the
segments written so far are closed as well as the disk allows and stay readable.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from kbook import __version__
from kbook.dialect import Dialect, dialect_for
from kbook.errors import OutputError, RecordError
from kbook.feed import Outcome
from kbook.segment import checkpoint_meta, frame_line, meta_line
from recorder.backoff import Backoff
from recorder.config import RecordConfig, RecordSummary
from recorder.connection import ConnectFailed, Connection, Dropped
from recorder.lock import OutputLock
from recorder.segments import SegmentStreams
from recorder.status import Reporter
from recorder.subscriptions import Action, State, Subscriptions

if TYPE_CHECKING:
    from recorder.monitor import Monitor

_V1 = Dialect()


def decode_frame(text: str) -> tuple[Any, bool]:
    """A v1 frame: ``(decoded frame or NOT_JSON, is_json)``, parsing once (``Dialect.decode``).

    ``is_json`` is exactly ``kbook.segment.is_json_text(text)``: JSON without a newline.
    """
    return _V1.decode(text)


class Recorder:
    """Records one configured run; ``run`` once, ``stop`` from anywhere."""

    def __init__(
        self,
        config: RecordConfig,
        stderr: TextIO | None = None,
        clock: Callable[[], int] = time.time_ns,
        monitor: Monitor | None = None,
    ) -> None:
        """``stderr`` takes the status lines and warnings (default: ``sys.stderr`` as it is now);
        ``clock`` is the wall clock that stamps ``recv_ns`` (a seam for tests of clock steps);
        ``monitor`` is called every pass of the loop (metrics, upload: ``recorder.monitor``)."""
        self.config = config
        self.clock = clock
        self.run_id = uuid.uuid4().hex
        self.dialect = dialect_for(config.api)
        self.feed = self.dialect.feed()
        self.subs = Subscriptions.for_config(config, self.dialect)
        self.streams = SegmentStreams(
            config.out, config.pairs, config.rotate_ns, config.max_segment_bytes, self._checkpoints
        )
        stream = stderr if stderr is not None else sys.stderr
        self.reporter = Reporter(stream, config.quiet, config.status_interval_ns)
        self.backoff = Backoff.for_config(config)
        self.frames = 0
        """Frames received so far; the next frame's ``seq``."""
        self.connections = 0
        self.reconnects = 0
        self._connect_failures = 0
        self._maintenance = False
        self._stop = threading.Event()
        self._stop_reason = "stopped"
        self._ran = False
        self._deadline_mono: int | None = None
        self._last_flush_mono = 0
        self._latest_ns = 0
        self._clock_behind = False
        self.monitor = monitor
        self.connected = False
        """True while a connection is open (for the metrics)."""
        self.last_flush_ns: int | None = None
        """Wall time of the last timed flush (for the metrics)."""

    # -- public ---------------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to end cleanly (thread- and signal-safe): segments are closed, not cut."""
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> RecordSummary:
        """Record until stopped or the duration is over; see the module docstring for errors."""
        if self._ran:
            raise RuntimeError("a Recorder runs once; make a new one")
        self._ran = True
        started_ns = self._now()
        start_mono = time.monotonic_ns()
        if self.config.duration_ns is not None:
            self._deadline_mono = start_mono + self.config.duration_ns
        lock = OutputLock(self.config.out, self.config.pairs, self.config.api).acquire()
        try:
            self._session_start(started_ns)
            self._record()
        except BaseException:
            self._close_after_error()
            raise
        else:
            self.streams.close(self._now(), self._stop_reason)
        finally:
            lock.release()
            self._tick_monitor()
        return self._summary(started_ns)

    # -- the run --------------------------------------------------------------------------------

    def _record(self) -> None:
        while not self.stopping:
            conn = self._connect()
            if conn is None:
                return
            reason = self._session(conn)
            if reason is None:
                return
            self._disconnected(reason)

    def _connect(self) -> Connection | None:
        """A new connection, after the backoff delay; None when stopped while waiting."""
        while True:
            if self.connections or self._connect_failures:
                delay = self.backoff.next_delay_ns(self._maintenance)
                if not self._wait(delay):
                    return None
            try:
                conn = Connection(
                    str(self.config.url),
                    connect_timeout_ns=self.config.connect_timeout_ns,
                    stall_timeout_ns=self.config.stall_timeout_ns,
                    ping_interval_ns=self.config.ping_interval_ns,
                    ping=self.dialect.ping,
                )
            except ConnectFailed as exc:
                self._connect_failures += 1
                self._tick_monitor()
                self._give_up_if_spent(str(exc))
                self.reporter.note(f"cannot connect to {self.config.url}: {exc}; retrying")
                continue
            self._connect_failures = 0
            self.connections += 1
            return conn

    def _give_up_if_spent(self, reason: str) -> None:
        budget = self.config.connect_retries
        if budget is None or self._connect_failures < budget:
            return
        attempts = f"{self._connect_failures} attempt{'s' if self._connect_failures > 1 else ''}"
        if self.connections:
            raise RecordError(
                f"lost the connection to {self.config.url} and could not reconnect: "
                f"{reason} ({attempts}; raise --retries to wait longer)"
            )
        raise RecordError(f"cannot connect to {self.config.url}: {reason} ({attempts})")

    def _wait(self, delay_ns: int) -> bool:
        """Sleep ``delay_ns`` unless stopped or out of time; True when the run goes on."""
        self.streams.flush()
        if self._deadline_mono is not None:
            left = self._deadline_mono - time.monotonic_ns()
            if left <= delay_ns:
                self._stop.wait(max(left, 0) / 1e9)
                self.stop("duration")
                return False
        return not self._stop.wait(delay_ns / 1e9)

    def _session(self, conn: Connection) -> str | None:
        """Read one connection until it drops (returns the reason) or the run stops (None)."""
        self.connected = True
        try:
            return self._read(conn)
        finally:
            self.connected = False
            conn.close()

    def _read(self, conn: Connection) -> str | None:
        if self.connections > 1:
            self.reporter.note(f"reconnected to {self.config.url}")
        try:
            self._meta({"type": "connect", "url": self.config.url, "connection": self.connections})
            self._act(conn, self.subs.on_connect(time.monotonic_ns()))
            while not self.stopping:
                self._check_deadline()
                text = conn.recv(self.config.tick_ns)
                if text is not None:
                    self._on_frame(conn, text, self._now())
                self._housekeeping(conn)
        except Dropped as exc:
            return str(exc)
        with contextlib.suppress(Dropped):  # stopping anyway
            self._drain(conn)
        self._meta({"type": "disconnect", "reason": self._stop_reason})
        return None

    def _check_deadline(self) -> None:
        if self._deadline_mono is not None and time.monotonic_ns() >= self._deadline_mono:
            self.stop("duration")

    def _drain(self, conn: Connection) -> None:
        """Record what already arrived before closing, so a clean stop loses nothing received."""
        deadline = time.monotonic_ns() + self.config.drain_ns
        while time.monotonic_ns() < deadline and conn.readable(0):
            text = conn.recv(self.config.tick_ns)
            if text is not None:
                self._on_frame(conn, text, self._now())

    def _disconnected(self, reason: str) -> None:
        """Books are void until new snapshots; the reason goes into every stream."""
        self.reconnects += 1
        self.feed.connection_lost(self._now())
        self.subs.on_disconnect()
        self._meta({"type": "disconnect", "reason": reason})
        self.reporter.note(f"disconnected: {reason}; reconnecting")
        self._tick_monitor()

    def _tick_monitor(self) -> None:
        """Show a change of connection in the metrics now, not at the next frame."""
        if self.monitor is not None:
            self.monitor.tick(self, time.monotonic_ns(), force=True)

    def _now(self) -> int:
        """The wall clock for a stamp, never behind a stamp already given in this run.

        Readers take segments in the order of their first receive time, and rotation follows the
        stamps, so a wall clock stepped back (NTP, an operator) would otherwise put the segments
        opened after the step before the ones written just earlier. While the clock is behind,
        stamps hold at the latest time given (replay reads times that way anyway); the step is
        logged once as a ``clock_step`` meta line with how far back the clock went.
        """
        now = self.clock()
        if now >= self._latest_ns:
            self._latest_ns = now
            self._clock_behind = False
            return now
        if not self._clock_behind:
            self._clock_behind = True
            step = {"type": "clock_step", "wall_ns": now, "behind_ns": self._latest_ns - now}
            self.streams.write(self._latest_ns, meta_line(self._latest_ns, step))
            self.reporter.note(
                f"the wall clock stepped back {(self._latest_ns - now) / 1e9:.3f} s; "
                "receive times hold until it catches up"
            )
        return self._latest_ns

    # -- frames ---------------------------------------------------------------------------------

    def _on_frame(self, conn: Connection, text: str, recv_ns: int) -> None:
        seq = self.frames
        self.frames += 1
        msg, is_json = self.dialect.decode(text)
        self.streams.write(recv_ns, frame_line(recv_ns, seq, text, is_json), self._targets(msg))
        if self.dialect.is_book(msg):
            self._on_data(msg, seq, recv_ns)
        elif type(msg) is dict:
            self._on_control(conn, msg, recv_ns)

    def _targets(self, msg: Any) -> tuple[str, ...] | None:
        """The streams a frame goes to: its pair's, or every stream when it has none we know
        (a refusal is kept in every stream: the refused pair has none)."""
        pair = self.subs.pair_for(self.dialect.route(msg))
        return (pair,) if pair is not None else None

    def _on_data(self, msg: Any, seq: int, recv_ns: int) -> None:
        outcome = self.feed.on_message(msg, recv_ns)
        if outcome is Outcome.SNAPSHOT:
            self.backoff.healthy()
        elif outcome is Outcome.CHECKSUM_FAILED:
            pair_name, channel, expected = self.dialect.mismatch(msg, self.feed)
            book = self.feed.books.get((pair_name, channel)) if channel is not None else None
            meta: dict[str, Any] = {
                "type": "checksum_mismatch",
                "pair": pair_name,
                "channel": channel,
            }
            meta["frame_seq"] = seq
            meta["expected"] = expected
            meta["computed"] = book.checksum() if book is not None else None
            pair = self.subs.pair_for(pair_name)
            self._meta(meta, (pair,) if pair else None)
            self.subs.on_checksum_failed(pair_name, time.monotonic_ns())
        elif outcome is Outcome.MALFORMED:
            self._on_malformed(msg, seq)

    def _on_malformed(self, msg: Any, seq: int) -> None:
        """A book frame that could not be applied leaves its pair's book void: resync it like a
        checksum mismatch, or the pair would stay void until the next reconnect."""
        pair_name = self.dialect.route(msg)
        if not isinstance(pair_name, str):
            return
        if not any(key[0] == pair_name and not book.valid for key, book in self.feed.books.items()):
            return
        pair = self.subs.pair_for(pair_name)
        self._meta(
            {"type": "malformed_frame", "pair": pair_name, "frame_seq": seq},
            (pair,) if pair else None,
        )
        self.subs.on_checksum_failed(pair_name, time.monotonic_ns())

    def _on_control(self, conn: Connection, msg: dict[str, Any], recv_ns: int) -> None:
        self.feed.on_message(msg, recv_ns)
        status = self.dialect.system_status(msg)
        if status is not None:
            self._maintenance = status != "online"
            if self._maintenance:
                self.reporter.note(f"Kraken reports system status {status!r}")
        self._act(conn, self.subs.on_control(msg, time.monotonic_ns()))
        if self.dialect.answer(msg) is not None:
            self._settle_streams()

    def _settle_streams(self) -> None:
        """Subscribed pairs start writing to disk; refused ones are closed and leave no file."""
        for pair, sub in self.subs.subs.items():
            stream = self.streams.streams[pair]
            if sub.state is State.SUBSCRIBED:
                stream.commit()
            elif sub.state is State.FAILED:
                stream.close(self._now(), "subscribe failed")
        if self.subs.all_failed:
            reasons = "; ".join(f"{pair}: {why}" for pair, why in self.subs.failed.items())
            raise RecordError(f"no pair could be subscribed ({reasons})")

    # -- housekeeping ---------------------------------------------------------------------------

    def _housekeeping(self, conn: Connection) -> None:
        """Between frames: due requests, rotation when idle, the flush timer, the status line."""
        now_mono = time.monotonic_ns()
        self._act(conn, self.subs.tick(now_mono))
        self.streams.rotate_if_due(self._now())
        if now_mono - self._last_flush_mono >= self.config.flush_interval_ns:
            self.streams.flush()
            self._last_flush_mono = now_mono
            self.last_flush_ns = time.time_ns()
        if self.reporter.status_due(now_mono):
            stats = self.feed.stats.values()
            self.reporter.status(
                now_mono,
                frames=self.frames,
                checksums_ok=sum(s.checksums_ok for s in stats),
                checksums_failed=sum(s.checksums_failed for s in stats),
                reconnects=self.reconnects,
                bytes_written=self.streams.bytes_written,
                current=self.streams.current(),
            )
        if self.monitor is not None:
            self.monitor.tick(self, now_mono)

    def _act(self, conn: Connection, actions: list[Action]) -> None:
        for action in actions:
            if action.meta is not None:
                self._meta(action.meta, action.targets)
            if action.send is not None:
                conn.send(action.send)
            if action.warning is not None and not self.subs.all_failed:
                # When every pair failed, the error that ends the run names them all.
                self.reporter.warning(action.warning)
            if action.note is not None:
                self.reporter.note(action.note)

    def _meta(self, meta: dict[str, Any], targets: tuple[str, ...] | None = None) -> None:
        now_ns = self._now()
        self.streams.write(now_ns, meta_line(now_ns, meta), targets)

    def _checkpoints(self, pair: str) -> list[dict[str, Any]]:
        """``checkpoint`` records of the valid books of ``pair``, for the head of a new segment."""
        records = []
        for (name, channel), book in self.feed.books.items():
            if book.valid and self.subs.pair_for(name) == pair:
                asks, bids = book.top_asks(book.depth), book.top_bids(book.depth)
                records.append(
                    checkpoint_meta(name, channel, asks, bids, book.checksum(), self.config.api)
                )
        return records

    # -- start and end --------------------------------------------------------------------------

    def _session_start(self, started_ns: int) -> None:
        for pair in self.config.pairs:
            meta = {
                "type": "session_start",
                "kbook": __version__,
                "api": self.config.api,
                "run_id": self.run_id,
                "pair": pair,
                "arguments": list(self.config.arguments),
                "config": self.config.describe(),
                "host": socket.gethostname(),
            }
            self.streams.write(started_ns, meta_line(started_ns, meta), (pair,))

    def _close_after_error(self) -> None:
        """Close what can be closed; the error being raised matters more than a second one."""
        with contextlib.suppress(OutputError):
            self.streams.close(self._now(), "error")

    def _summary(self, started_ns: int) -> RecordSummary:
        stats = self.feed.stats.values()
        return RecordSummary(
            run_id=self.run_id,
            started_ns=started_ns,
            ended_ns=self._now(),
            stop_reason=self._stop_reason,
            frames=self.frames,
            reconnects=self.reconnects,
            checksums_ok=sum(s.checksums_ok for s in stats),
            checksums_failed=sum(s.checksums_failed for s in stats),
            bytes_written=self.streams.bytes_written,
            subscribed=self.subs.subscribed_once,
            failed=self.subs.failed,
            segments=tuple(self.streams.finished),
        )
