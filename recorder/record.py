"""The recorder: every frame of one live session into per-pair segments, books kept live to resync.

``Recorder(config).run()`` records until ``stop()`` (any thread, or a signal handler), the
configured duration, or a failure it cannot ride out. The connection, subscriptions, backoff and
the clock are the live session's (``kbook.live.session.Session``, shared with ``kbook watch``);
the recorder is its consumer:

    frame -> number it -> write it verbatim to its pair's stream (control frames without a pair:
    every stream) -> feed the live book -> tell the session what happened (a checksum mismatch
    resyncs the pair) -> every tick: rotation, one flush of every stream that changed, status

Kraken's WebSocket v1 or v2 (``RecordConfig.api``): what differs (frame shapes, requests, number
decoding) is asked of the run's ``kbook.dialect.Dialect``. A run records one API; its segments say
which in ``session_start`` and in every ``checkpoint``.

Errors: ``UsageError`` from the config; ``RecordError`` when nothing can be recorded (lock held,
every pair refused, retry budget spent, no pair subscribed in time); ``OutputError`` when the disk
fails. In every case the segments written so far are closed as well as the disk allows and stay
readable, with every frame received.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from kbook import __version__
from kbook.dialect import Dialect
from kbook.errors import OutputError, RecordError
from kbook.feed import Outcome
from kbook.lines import LineFeed, native_core
from kbook.live.session import Bulk, Event, Session
from kbook.live.subscriptions import State
from kbook.segment import checkpoint_meta, frame_line, meta_line
from recorder.config import RecordConfig, RecordSummary
from recorder.lock import OutputLock
from recorder.segments import SegmentStreams
from recorder.status import Reporter

if TYPE_CHECKING:
    from recorder.monitor import Monitor

_V1 = Dialect()
_MSG_LINE = b'{"recv_ns":%d,"seq":%d,"msg":%b}\n'
"""``kbook.segment.frame_line`` of a frame that is JSON without a newline."""


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
        ``monitor`` is called every tick (metrics, upload: ``recorder.monitor``)."""
        self.config = config
        self.clock = clock
        self.run_id = uuid.uuid4().hex
        self.session = Session(config, self)
        self.dialect = self.session.dialect
        self.subs = self.session.subs
        self.feed = self.dialect.feed()
        self.lines = LineFeed(self.feed) if native_core() is not None else None
        """The fast path's book builder (``bulk``), on the same books as ``feed``."""
        self.streams = SegmentStreams(
            config.out,
            config.pairs,
            config.rotate_ns,
            config.max_segment_bytes,
            self._checkpoints,
            config.max_held_frames,
            config.api,
        )
        stream = stderr if stderr is not None else sys.stderr
        self.reporter = Reporter(stream, config.quiet, config.status_interval_ns)
        self.frames = 0
        """Frames received so far; the next frame's ``seq``."""
        self._ran = False
        self.monitor = monitor
        self.connected = False
        """True while a connection is open (for the metrics)."""
        self.last_flush_ns: int | None = None
        """Wall time of the last timed flush (for the metrics)."""
        self._last_flush_mono = 0
        self._latest_ns = 0
        self._clock_behind = False
        self._index: dict[str, list[tuple[str, str]]] = {}
        self._indexed = 0
        self._unasked_noted = False

    # -- public ---------------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to end cleanly (thread- and signal-safe): segments are closed, not cut."""
        self.session.stop(reason)

    @property
    def stopping(self) -> bool:
        return self.session.stopping

    @property
    def connections(self) -> int:
        return self.session.connections

    @property
    def reconnects(self) -> int:
        return self.session.reconnects

    def run(self) -> RecordSummary:
        """Record until stopped or the duration is over; see the module docstring for errors."""
        if self._ran:
            raise RuntimeError("a Recorder runs once; make a new one")
        self._ran = True
        started_ns = self.now()
        lock = OutputLock(self.config.out, self.config.pairs, self.config.api).acquire()
        try:
            self._session_start(started_ns)
            self.session.run()
        except BaseException:
            self._close_after_error()
            raise
        else:
            self.streams.close(self.now(), self.session.stop_reason, keep_held=self.frames > 0)
        finally:
            lock.release()
            self.connected = False
            self._tick_monitor()
        return self._summary(started_ns)

    def now(self) -> int:
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

    # -- the session's consumer -----------------------------------------------------------------

    def frame(self, recv_ns: int, text: str, msg: Any, is_json: bool) -> Outcome | None:
        """Write the frame verbatim to its stream, then feed it to the live books."""
        seq = self.frames
        self.frames += 1
        targets = self._targets(msg)
        self.streams.write(recv_ns, frame_line(recv_ns, seq, text, is_json), targets)
        if self.dialect.is_book(msg):
            if targets is None:
                self._unasked(msg, seq)
                return None
            return self._on_data(msg, seq, recv_ns)
        if type(msg) is dict:
            self.feed.on_message(msg, recv_ns)
        return None

    def bulk(self, recv_ns: int, texts: list[str]) -> Bulk | None:
        """The fast path over frames taken together: runs of plain updates of followed books
        are applied and checked by ``kbook.lines.LineFeed`` (the native core) straight from
        their segment lines, which are then written with one call per pair. The lines are built
        once for the whole batch; a frame the core does not apply (anything but a plain update
        of a valid book, text that is not JSON or holds a newline) is left to ``frame``.

        Exactness: a frame is written as ``msg`` only when it is JSON without a newline (as
        ``frame`` decides), and the core applies a line only with the effect
        ``BookFeed.on_message`` would have (``kbook.lines``). Without the native core there is
        no fast path: every frame goes to ``frame``."""
        feed_lines = self.lines
        if feed_lines is None:
            return None
        base = self.frames
        loads, decode_error, route = orjson.loads, orjson.JSONDecodeError, self.dialect.route
        lines: list[bytes] = []
        names: list[Any] = []
        """The wire pair name of each frame (only the decoded frame's name is kept)."""
        for offset, text in enumerate(texts):
            name: Any = None
            line = b""  # never applied: left to ``frame``
            if "\n" not in text:
                try:
                    name = route(loads(text))
                except decode_error:
                    pass
                else:
                    line = _MSG_LINE % (recv_ns, base + offset, text.encode())
            lines.append(line)
            names.append(name)

        def run(start: int) -> tuple[int, list[Any]]:
            if recv_ns > feed_lines.clock:
                feed_lines.clock = recv_ns
            stop = feed_lines.run(lines, start)
            if stop == start:
                return stop, []
            self.frames = base + stop
            return stop, self._write_applied(recv_ns, base, texts, lines, names, start, stop)

        return run

    def _write_applied(
        self,
        recv_ns: int,
        base: int,
        texts: list[str],
        lines: list[bytes],
        names: list[Any],
        start: int,
        stop: int,
    ) -> list[Any]:
        """Write the lines ``LineFeed`` applied, one call per pair; a line whose checksum failed
        is followed by its ``checksum_mismatch`` meta line. The wire names that failed."""
        pair_for = self.subs.pair_for
        groups: dict[str, list[bytes]] = {}
        last: dict[Any, tuple[int, str, int]] = {}
        """Wire name -> (index, pair, position in the pair's group) of its last line."""
        for index in range(start, stop):
            name = names[index]
            pair = pair_for(name)
            assert pair is not None  # the core applies lines of followed books only
            group = groups.get(pair)
            if group is None:
                group = groups[pair] = []
            group.append(lines[index])
            last[name] = (index, pair, len(group))
        # A failed checksum voids the book, so the core hands back the pair's next line: the
        # line that failed is the last one applied of a name whose book is no longer valid.
        routes = self.lines.routes if self.lines is not None else {}
        failed = []
        for name, (index, pair, position) in last.items():
            book = routes[name].book
            if book is not None and not book.valid:
                failed.append(name)
                msg = self.dialect.decode(texts[index])[0]
                meta = self._mismatch(msg, base + index, routes[name].key)
                groups[pair].insert(position, meta_line(self.now(), meta))
        for pair, group in groups.items():
            self.streams.write_lines(recv_ns, group, pair)
        return failed

    def meta(self, meta: dict[str, Any], targets: tuple[str, ...] | None = None) -> None:
        now_ns = self.now()
        self.streams.write(now_ns, meta_line(now_ns, meta), targets)

    def event(self, kind: Event, detail: str) -> None:
        if kind is Event.WARNING:
            self.reporter.warning(detail)
        elif kind is Event.NOTE:
            self.reporter.note(detail)
            self._tick_monitor()  # a failed connection attempt, a maintenance notice
        elif kind is Event.CONNECTED:
            self.connected = True
            if self.session.connections > 1:
                self.reporter.note(f"reconnected to {detail}")
            self._tick_monitor()
        elif kind is Event.DISCONNECTED:
            self.connected = False
            self.feed.connection_lost(self.now())
            self.reporter.note(f"disconnected: {detail}; reconnecting")
            self._tick_monitor()

    def answered(self) -> None:
        """Subscribed pairs start writing to disk; refused ones are closed and leave no file."""
        for pair, sub in self.subs.subs.items():
            stream = self.streams.streams[pair]
            if sub.state is State.SUBSCRIBED and not stream.committed:
                stream.commit()
                self._last_flush_mono = 0  # the first data reaches the disk at the next tick
            elif sub.state is State.FAILED:
                stream.close(self.now(), "subscribe failed")
        if self.subs.all_failed:
            reasons = "; ".join(f"{pair}: {why}" for pair, why in self.subs.failed.items())
            raise RecordError(f"no pair could be subscribed ({reasons})")

    def tick(self, now_mono: int) -> None:
        """Every tick: rotation when due, one flush of every changed stream, the status line."""
        self.streams.rotate_if_due(self.now())
        if now_mono - self._last_flush_mono >= self.config.flush_interval_ns:
            replaced = self.streams.flush(self.now())
            for pair in replaced:
                self.reporter.warning(
                    f"{pair}: the open segment was deleted or replaced; started a new one"
                )
            self._last_flush_mono = now_mono
            self.last_flush_ns = time.time_ns()
        if self.reporter.status_due(now_mono):
            stats = self.feed.stats.values()
            self.reporter.status(
                now_mono,
                frames=self.frames,
                checksums_ok=sum(s.checksums_ok for s in stats),
                checksums_failed=sum(s.checksums_failed for s in stats),
                reconnects=self.session.reconnects,
                bytes_written=self.streams.bytes_written,
                current=self.streams.current(),
                lag_ns=self.session.lag_ns,
            )
        if self.monitor is not None:
            self.monitor.tick(self, now_mono)

    def _tick_monitor(self) -> None:
        """Show a change of connection in the metrics now, not at the next tick."""
        if self.monitor is not None:
            self.monitor.tick(self, time.monotonic_ns(), force=True)

    # -- frames ---------------------------------------------------------------------------------

    def _targets(self, msg: Any) -> tuple[str, ...] | None:
        """The streams a frame goes to: its pair's, or every stream when it has none we know
        (a refusal is kept in every stream: the refused pair has none)."""
        pair = self.subs.pair_for(self.dialect.route(msg))
        return (pair,) if pair is not None else None

    def _unasked(self, msg: Any, seq: int) -> None:
        """Book data of a pair nobody asked for is kept verbatim but never built into a book:
        the books stay those of the configured pairs, however many names a server invents."""
        if not self._unasked_noted:
            self._unasked_noted = True
            meta: dict[str, Any] = {"type": "unasked_pair"}
            meta["pair"] = str(self.dialect.route(msg))[:100]
            meta["frame_seq"] = seq
            meta["note"] = "book data of pairs not subscribed is kept but not followed"
            self.meta(meta)

    def _on_data(self, msg: Any, seq: int, recv_ns: int) -> Outcome | None:
        outcome = self.feed.on_message(msg, recv_ns)
        self._follow()
        if outcome is Outcome.CHECKSUM_FAILED:
            meta = self._mismatch(msg, seq)
            pair = self.subs.pair_for(meta["pair"])
            self.meta(meta, (pair,) if pair else None)
        elif outcome is Outcome.MALFORMED:
            return self._on_malformed(msg, seq)
        return outcome

    def _mismatch(self, msg: Any, seq: int, key: tuple[str, str] | None = None) -> dict[str, Any]:
        """The ``checksum_mismatch`` meta record of frame ``seq`` (``key``: its book's, when
        known)."""
        pair_name, channel, expected = self.dialect.mismatch(msg, self.feed)
        if key is not None:
            pair_name, channel = key
        book = self.feed.books.get((pair_name, channel)) if channel is not None else None
        meta: dict[str, Any] = {"type": "checksum_mismatch", "pair": pair_name}
        meta["channel"] = channel
        meta["frame_seq"] = seq
        meta["expected"] = expected
        meta["computed"] = book.checksum() if book is not None else None
        return meta

    def _follow(self) -> None:
        """Let the fast path (``bulk``) apply the updates of the book the last frame touched."""
        key = self.feed.last_key
        if key is None or self.lines is None:
            return
        route = self.lines.routes.get(key[0])
        if route is None or route.key != key:
            self.lines.follow(*key)
        elif route.book is None:
            route.book = self.feed.books.get(key)

    def _on_malformed(self, msg: Any, seq: int) -> Outcome | None:
        """A book frame that could not be applied leaves its pair's book void: resync it like a
        checksum mismatch, or the pair would stay void until the next reconnect."""
        pair_name = self.dialect.route(msg)
        if not isinstance(pair_name, str):
            return None
        if all(book.valid for _, book in self._books_of(pair_name)):
            return None
        pair = self.subs.pair_for(pair_name)
        self.meta(
            {"type": "malformed_frame", "pair": pair_name, "frame_seq": seq},
            (pair,) if pair else None,
        )
        return Outcome.MALFORMED

    def _checkpoints(self, pair: str) -> list[dict[str, Any]]:
        """``checkpoint`` records of the valid books of ``pair``, for the head of a new segment."""
        records = []
        for name in self.subs.subs[pair].names:
            for (_, channel), book in self._books_of(name):
                if book.valid:
                    asks, bids = book.top_asks(book.depth), book.top_bids(book.depth)
                    records.append(
                        checkpoint_meta(name, channel, asks, bids, book.checksum(), self.config.api)
                    )
        return records

    def _books_of(self, name: str) -> list[tuple[tuple[str, str], Any]]:
        """The books of one pair name, found without going through every pair's books."""
        books = self.feed.books
        if len(books) != self._indexed:
            self._index = {}
            for key in books:
                self._index.setdefault(key[0], []).append(key)
            self._indexed = len(books)
        return [(key, books[key]) for key in self._index.get(name, ())]

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
            self.streams.close(self.now(), "error", keep_held=self.frames > 0)

    def _summary(self, started_ns: int) -> RecordSummary:
        stats = self.feed.stats.values()
        return RecordSummary(
            run_id=self.run_id,
            started_ns=started_ns,
            ended_ns=self.now(),
            stop_reason=self.session.stop_reason,
            frames=self.frames,
            reconnects=self.session.reconnects,
            checksums_ok=sum(s.checksums_ok for s in stats),
            checksums_failed=sum(s.checksums_failed for s in stats),
            bytes_written=self.streams.bytes_written,
            subscribed=self.subs.subscribed_once,
            failed=self.subs.failed,
            segments=tuple(self.streams.finished),
        )
