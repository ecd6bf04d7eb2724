"""Where ``kbook watch`` gets its frames: Kraken (``LiveSource``) or a recording (``ReplaySource``).

Both drive a ``Sink`` (``kbook.watch.Watcher``) with decoded frames, events and clock ticks; neither
draws or writes anything.

``LiveSource`` is a consumer of the recorder's live session (``kbook.live.session.Session``):
the same connection (its own reader thread, stall and handshake deadlines, frame cap), backoff,
paced unsubscribe/subscribe after a checksum mismatch and BTC/XBT alias retry, without the
segment files.

``ReplaySource`` plays segments (``find_segments`` order) at recorded pace times ``speed``, each
decoded as its API needs (``kbook.v2.RecordReader``). Both speak v1 or v2 through the recorder's
``kbook.dialect``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from kbook.dialect import NOT_JSON, dialect_for, spellings
from kbook.errors import InputError, KbookError
from kbook.feed import Outcome, misnamed
from kbook.live.config import LiveConfig
from kbook.live.session import Bulk, Session
from kbook.live.session import Event as LiveEvent
from kbook.pairs import common_name
from kbook.segment import Problem
from kbook.units import MS, SECOND
from kbook.v2 import RecordReader

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
    """The live session the recorder uses (``kbook.live.session.Session``), feeding a ``Watcher``
    instead of segment files.

    ``config`` holds the pair, depth, url, API and the session's timing knobs, used as the
    recorder uses them; its output settings are not (nothing is written).
    """

    def __init__(self, config: LiveConfig) -> None:
        self.config = config
        self.pair: str = config.pairs[0]
        self.session = Session(config, self, give_up_first=True)
        self.dialect = self.session.dialect
        self._sink: Sink | None = None

    def stop(self) -> None:
        """End ``run`` from another thread (the command line uses Ctrl+C instead)."""
        self.session.stop()

    def run(self, sink: Sink) -> None:
        """Connect, subscribe, feed ``sink``; reconnect with backoff after every drop.

        Raises ``KbookError`` when the first connection cannot be made after the immediate
        retries (a wrong ``--url`` is reported at once, not retried for minutes) or when Kraken
        refuses the pair under every spelling. After a first connection it never gives up.
        """
        self._sink = sink
        self.session.run()

    # -- the session's consumer -----------------------------------------------------------------

    def now(self) -> int:
        return time.time_ns()

    def frame(self, recv_ns: int, text: str, msg: Any, is_json: bool) -> Outcome | None:
        assert self._sink is not None
        if msg is NOT_JSON:
            self._sink.event(Event.NOTE, f"a frame that is not JSON: {text[:40]!r}")
            return None
        outcome = self._sink.frame(msg, recv_ns)
        if self.dialect.is_book(msg) or outcome is Outcome.SNAPSHOT:
            return outcome
        return None

    def bulk(self, recv_ns: int, texts: list[str]) -> Bulk | None:
        """No fast path: a watch follows one pair, every frame goes to ``frame``."""
        return None

    def meta(self, meta: dict[str, Any], targets: tuple[str, ...] | None) -> None:
        """Nothing is written: the connection's events reach the view through ``event``."""

    def event(self, kind: LiveEvent, detail: str) -> None:
        assert self._sink is not None
        if kind is LiveEvent.CONNECTING:
            self._sink.event(Event.CONNECTING, detail)
            self._sink.tick(time.time_ns())
        elif kind is LiveEvent.CONNECTED:
            self._sink.event(Event.CONNECTED)
        elif kind is LiveEvent.DISCONNECTED:
            self._sink.event(Event.DISCONNECTED, detail)
        elif kind is LiveEvent.RESYNC:
            self._sink.event(Event.RESYNC)
        else:
            self._sink.event(Event.NOTE, detail)

    def answered(self) -> None:
        if self.session.subs.all_failed:
            reason = self.session.subs.failed.get(self.pair, "refused")
            raise KbookError(f"cannot watch {self.pair}: Kraken refused it ({reason})")

    def tick(self, now_mono: int) -> None:
        assert self._sink is not None
        self._sink.tick(time.time_ns())


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
        tag = dialect_for(file_api).tag
        for wire, name in _books(reader):
            if misnamed(wire, name) or not name.startswith("book-"):
                continue  # not a book, or one of no Kraken depth (a malformed frame)
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
    """``(pair on the wire, channel)`` of each book data frame and checkpoint in a segment.

    The dialect names a frame's book (``Dialect.book_frame``); when it cannot yet (a v2 frame
    never says its depth, and no answer or checkpoint before it did), the segment's feed applies
    the frame and knows the book then. Every other frame goes to the feed too: a subscribe
    answer tells the depth of the snapshots that follow."""
    dialect = dialect_for(reader.api)
    feed = dialect.feed()
    for record in reader:
        msg, meta = record.get("msg"), record.get("meta")
        if type(meta) is dict and meta.get("type") == "checkpoint":
            feed.on_meta(meta, 0)
            yield str(meta.get("pair")), str(meta.get("channel"))
        elif msg is None:
            continue
        elif not dialect.is_book(msg):
            feed.on_message(msg, 0)
        elif (found := dialect.book_frame(msg, feed)) is not None and found[1] is not None:
            yield found[0], found[1]
        elif found is not None:
            feed.last_key = None
            feed.on_message(msg, 0)
            if feed.last_key is not None:
                yield feed.last_key
