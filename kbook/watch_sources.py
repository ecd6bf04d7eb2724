"""Where ``kbook watch`` gets its frames: Kraken (``LiveSource``) or a recording (``ReplaySource``).

Both drive a ``Sink`` (``kbook.watch.Watcher``) with decoded frames, events and clock ticks; neither
draws or writes anything.

``LiveSource`` runs the recorder's own pieces (``recorder.connection.Connection``,
``recorder.subscriptions.Subscriptions``, ``recorder.backoff.Backoff``) in a loop of the same shape
as ``recorder.record.Recorder`` without the segment files, so reconnects, the paced
unsubscribe/subscribe after a checksum mismatch and the BTC/XBT alias retry behave exactly as when
recording. ``Recorder`` itself is not reused: its loop writes every frame and meta line to segment
streams and holds the output lock; the logic shared with it lives in those three objects.

``ReplaySource`` plays segments (``find_segments`` order) at recorded pace times ``speed``, each
decoded as its API needs (``kbook.v2.RecordReader``). Both speak v1 or v2 through the recorder's
``kbook.dialect``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from kbook.api import Api
from kbook.dialect import NOT_JSON, dialect_for, spellings
from kbook.errors import InputError, KbookError
from kbook.feed import Outcome
from kbook.pairs import common_name
from kbook.segment import Problem
from kbook.v2 import RecordReader, V2BookFeed
from recorder.backoff import Backoff
from recorder.config import RecordConfig
from recorder.connection import ConnectFailed, Connection, Dropped
from recorder.subscriptions import Action, Subscriptions

SECOND = 1_000_000_000
MS = 1_000_000
MAX_REPLAY_GAP_NS = 5 * SECOND
"""A replay waits at most this long (recorded time) between two lines: a longer gap is an outage
of the recorder (Kraken sends a heartbeat every second), not something worth watching."""


class Event(Enum):
    """Things a source tells the sink besides frames."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RESYNC = "resync"
    """A resubscribe for the pair started (live: the unsubscribe was sent)."""
    NOTE = "note"
    POSITION = "position"
    """Replay progress, e.g. ``replay 1/3 files at 1x``."""
    FINISHED = "finished"


class Sink(Protocol):
    """What a source drives (``kbook.watch.Watcher``)."""

    def frame(self, msg: Any, recv_ns: int) -> Outcome: ...

    def meta(self, meta: dict[str, Any], recv_ns: int) -> None: ...

    def event(self, kind: Event, detail: str = "") -> None: ...

    def tick(self, now_ns: int, force: bool = False) -> None: ...


# -- live -----------------------------------------------------------------------------------------


class LiveSource:
    """The recorder's connection handling, feeding a ``Watcher`` instead of segment files.

    ``config`` is a ``RecordConfig``: its pair, depth, url and timing knobs are used as
    the recorder uses them; its output settings are not (nothing is written).
    """

    def __init__(self, config: RecordConfig) -> None:
        self.config = config
        self.pair: str = config.pairs[0]
        self.dialect = dialect_for(config.api)
        self.subs = Subscriptions.for_config(config, self.dialect)
        self.backoff = Backoff.for_config(config)
        self.connections = 0
        self._failures = 0
        self._maintenance = False
        self._stop = threading.Event()

    def stop(self) -> None:
        """End ``run`` from another thread (the command line uses Ctrl+C instead)."""
        self._stop.set()

    def run(self, sink: Sink) -> None:
        """Connect, subscribe, feed ``sink``; reconnect with backoff after every drop.

        Raises ``KbookError`` when the first connection cannot be made after the immediate
        retries (a wrong ``--url`` is reported at once, not retried for minutes) or when Kraken
        refuses the pair under every spelling. After a first connection it never gives up.
        """
        while not self._stop.is_set():
            conn = self._connect(sink)
            if conn is None:
                return
            try:
                reason = self._read(conn, sink)
            except Dropped as exc:
                reason = str(exc)
            finally:
                conn.close()
            if reason is None:
                return
            self.subs.on_disconnect()
            sink.event(Event.DISCONNECTED, reason)

    def _connect(self, sink: Sink) -> Connection | None:
        config = self.config
        while True:
            retrying = self.connections or self._failures
            if retrying and not self._sleep(self.backoff.next_delay_ns(self._maintenance), sink):
                return None
            label = "reconnecting" if self.connections else "connecting"
            sink.event(Event.CONNECTING, f"{label} to {config.url}")
            sink.tick(time.time_ns())
            try:
                conn = Connection(
                    str(config.url),
                    connect_timeout_ns=config.connect_timeout_ns,
                    stall_timeout_ns=config.stall_timeout_ns,
                    ping_interval_ns=config.ping_interval_ns,
                    ping=self.dialect.ping,
                )
            except ConnectFailed as exc:
                self._failures += 1
                if not self.connections and self._failures > config.immediate_retries:
                    raise KbookError(f"cannot connect to {config.url}: {exc}") from exc
                sink.event(Event.NOTE, f"cannot connect to {config.url}: {exc}; retrying")
                continue
            self._failures = 0
            self.connections += 1
            sink.event(Event.CONNECTED)
            return conn

    def _sleep(self, delay_ns: int, sink: Sink) -> bool:
        """Wait ``delay_ns``, keeping the view fresh; False when stopped meanwhile."""
        deadline = time.monotonic_ns() + delay_ns
        while (left := deadline - time.monotonic_ns()) > 0:
            if self._stop.wait(min(left, self.config.tick_ns) / SECOND):
                return False
            sink.tick(time.time_ns())
        return not self._stop.is_set()

    def _read(self, conn: Connection, sink: Sink) -> str | None:
        """Read one connection until it drops (``Dropped`` propagates) or ``stop`` (None)."""
        self._act(conn, self.subs.on_connect(time.monotonic_ns()), sink)
        while not self._stop.is_set():
            text = conn.recv(self.config.tick_ns)
            if text is not None:
                self._on_frame(conn, text, time.time_ns(), sink)
            self._act(conn, self.subs.tick(time.monotonic_ns()), sink)
            sink.tick(time.time_ns())
        return None

    def _on_frame(self, conn: Connection, text: str, recv_ns: int, sink: Sink) -> None:
        msg, _is_json = self.dialect.decode(text)
        if msg is NOT_JSON:
            sink.event(Event.NOTE, f"a frame that is not JSON: {text[:40]!r}")
            return
        outcome = sink.frame(msg, recv_ns)
        if outcome is Outcome.SNAPSHOT:
            self.backoff.healthy()
        elif self.dialect.is_book(msg):
            if outcome in (Outcome.CHECKSUM_FAILED, Outcome.MALFORMED):
                # A malformed update leaves the book void too; only a new snapshot repairs it.
                self.subs.on_checksum_failed(self.dialect.route(msg), time.monotonic_ns())
        elif type(msg) is dict:
            self._on_control(conn, msg, sink)

    def _on_control(self, conn: Connection, msg: dict[str, Any], sink: Sink) -> None:
        status = self.dialect.system_status(msg)
        if status is not None:
            self._maintenance = status != "online"
            if self._maintenance:
                sink.event(Event.NOTE, f"Kraken reports system status {status!r}")
        self._act(conn, self.subs.on_control(msg, time.monotonic_ns()), sink)
        if self.subs.all_failed:
            reason = self.subs.failed.get(self.pair, "refused")
            raise KbookError(f"cannot watch {self.pair}: Kraken refused it ({reason})")

    def _act(self, conn: Connection, actions: list[Action], sink: Sink) -> None:
        for action in actions:
            if action.send is not None:
                conn.send(action.send)
                if action.resync:
                    sink.event(Event.RESYNC)
            for text in (action.warning, action.note):
                if text is not None:
                    sink.event(Event.NOTE, text)


# -- replay ---------------------------------------------------------------------------------------


@dataclass
class Pacer:
    """Maps recorded time to wall time at ``speed`` (``math.inf``: no waiting).

    Gaps longer than ``max_gap_ns`` in the recording are shortened to it.
    """

    speed: float
    max_gap_ns: int = MAX_REPLAY_GAP_NS
    _origin_rec: int | None = None
    _origin_mono: int = 0
    _skipped: int = 0
    _last_rec: int = 0

    def delay_ns(self, recv_ns: int, now_mono: int) -> int:
        """How long to wait before showing a line received at ``recv_ns``."""
        if self._origin_rec is None:
            self._origin_rec, self._origin_mono, self._last_rec = recv_ns, now_mono, recv_ns
        gap = recv_ns - self._last_rec
        if gap > self.max_gap_ns:
            self._skipped += gap - self.max_gap_ns
        self._last_rec = max(self._last_rec, recv_ns)
        if math.isinf(self.speed):
            return 0
        due = self._origin_mono + (self._last_rec - self._origin_rec - self._skipped) / self.speed
        return int(due) - now_mono

    def recorded_now(self, now_mono: int) -> int:
        """The recorded time that the wall clock has reached, never past the last line read."""
        if self._origin_rec is None:
            return 0
        if math.isinf(self.speed):
            return self._last_rec
        reached = self._origin_rec + self._skipped + (now_mono - self._origin_mono) * self.speed
        return min(int(reached), self._last_rec)


@dataclass
class ReplaySource:
    """Segments played through a ``Watcher`` at recorded pace times ``speed``."""

    files: list[Path]
    speed: float
    tick_ns: int = 100 * MS
    problems: list[Problem] = field(default_factory=list)

    def run(self, sink: Sink) -> None:
        pacer = Pacer(self.speed)
        for index, path in enumerate(self.files, start=1):
            sink.event(Event.POSITION, self._position(index))
            reader = RecordReader(path)
            for record in reader:
                recv_ns = record.get("recv_ns")
                if type(recv_ns) is not int:
                    continue
                self._wait(pacer, recv_ns, sink)
                if "msg" in record:
                    sink.frame(record["msg"], recv_ns)
                elif type(record.get("meta")) is dict:
                    sink.meta(record["meta"], recv_ns)
                sink.tick(recv_ns)
            self.problems.extend(reader.problems)
        sink.event(Event.FINISHED, f"replay finished ({len(self.files)} file(s))")

    def _position(self, index: int) -> str:
        speed = "full speed" if math.isinf(self.speed) else f"{self.speed:g}x"
        return f"replay {index}/{len(self.files)} file(s) at {speed}"

    def _wait(self, pacer: Pacer, recv_ns: int, sink: Sink) -> None:
        """Sleep until the line is due, in slices so that the view stays fresh."""
        while (delay := pacer.delay_ns(recv_ns, time.monotonic_ns())) > 0:
            time.sleep(min(delay, self.tick_ns) / SECOND)
            sink.tick(pacer.recorded_now(time.monotonic_ns()))


def find_book(
    files: list[Path], pair: str, channel: str | None, api: str | None = None
) -> tuple[str, str]:
    """``(channel, api)`` of the first book data of the pair in ``files`` (of ``api`` if given);
    ``InputError`` if none.

    Reads only until the pair's first frame or checkpoint, so a normal recording costs one line
    (a v2 one a few: its book frames do not say their depth, the subscribe answer before them
    does); a recording without the pair is read through to list what it does hold.
    """
    names = frozenset(spellings(pair))
    seen: set[str] = set()
    for path in files:
        reader = RecordReader(path)
        file_api = str(reader.api)
        tag = " (v2)" if file_api == Api.V2 else ""
        for wire, name in _books(reader):
            if not name.startswith("book-"):
                continue
            wanted = channel is None or name == channel
            if wire in names and wanted and (api is None or file_api == api):
                return name, file_api
            seen.add(f"{common_name(wire)} {name}{tag}")
    pair = common_name(pair)
    wanted_book = f"{pair} {channel}" if channel else f"{pair} book"
    if api is not None:
        wanted_book += f" ({api})"
    found = ", ".join(sorted(seen)) or "no book data at all"
    raise InputError(f"the recording holds no {wanted_book} (it holds: {found})")


def _books(reader: RecordReader) -> Iterator[tuple[str, str]]:
    """``(pair on the wire, channel)`` of each book data frame and checkpoint in a segment."""
    feed = V2BookFeed() if reader.api == Api.V2 else None
    for record in reader:
        msg, meta = record.get("msg"), record.get("meta")
        if type(meta) is dict and meta.get("type") == "checkpoint":
            if feed is not None:
                feed.on_meta(meta, 0)  # it tells the depth of the snapshots that follow
            yield str(meta.get("pair")), str(meta.get("channel"))
        elif feed is not None:
            # v2: the feed knows the book a frame belongs to once it has applied it.
            feed.last_key = None
            feed.on_message(msg, 0)
            if type(msg) is dict and msg.get("channel") == "book" and feed.last_key is not None:
                yield feed.last_key
        elif type(msg) is list and len(msg) >= 4 and all(type(x) is str for x in msg[-2:]):
            yield msg[-1], msg[-2]
