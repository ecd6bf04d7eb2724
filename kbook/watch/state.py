"""``kbook watch``: a live view of one pair's book, kept by the shared builder (``BookFeed``).

Kraken's own example keeps a local book and prints the best levels once a second; this does the
same job with the guarantees of the recorder. Three parts, one module each:

- ``Watcher`` (here): the state on screen. It feeds the pair's frames to a ``BookFeed``, counts
  frames and checksums, tracks the checksum state (``ok`` / ``failed`` / ``resyncing`` /
  ``waiting``) and hands ``(book, WatchStatus)`` to a ``Display`` at most every ``interval_ns``.
- ``kbook.watch.sources``: what drives a ``Watcher``. ``LiveSource`` is the recorder's live
  session (``kbook.live.session``) without the files, so reconnects, resyncs, the BTC/XBT alias
  and every limit behave as when recording; ``ReplaySource`` plays segments.
- Kraken's WebSocket v1 or v2: the ``Watcher`` and the live source read and write frames through
  the recorder's ``kbook.dialect``; a replay shows segments of one API (never both in one book).
- ``kbook.watch.view``: pure functions from ``(book, status)`` to a rich renderable or plain text.
- Displays (here): ``RichDisplay`` redraws a ``rich.live.Live`` in place (4 times a second);
  ``PlainDisplay`` prints a plain text block once a second when stdout is not a terminal.

Watch writes nothing to disk. Ctrl+C ends it cleanly (``run_watch`` returns); a replay ends at the
end of the recording after drawing its last state.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from kbook.api import DEFAULT, Api, Channel, choose_api, parse_api, parse_depth
from kbook.book import Book
from kbook.dialect import Trade, dialect_for, spellings
from kbook.errors import FrameError, UsageError
from kbook.feed import BookFeed, Outcome
from kbook.live.config import LiveConfig
from kbook.live.signals import stop_on_signals
from kbook.pairs import common_name, file_name, parse_pair
from kbook.segment import Problem, find_segments
from kbook.trades import TradeLedger, in_order
from kbook.units import MS, SECOND
from kbook.v2 import segment_api
from kbook.verify import stream_name
from kbook.watch.sources import Event, LiveSource, ReplaySource, find_book
from kbook.watch.view import WatchStatus, render_rich, render_text

if TYPE_CHECKING:
    from rich.live import Live

RATE_WINDOW_NS = SECOND
"""Frames per second are counted over the last second of the view's clock."""
TRADES_SHOWN = 5
"""The last trades shown under the book."""


class Display(Protocol):
    """Where the view goes; ``show`` is called at most every ``interval_ns``, and once at the end."""

    interval_ns: int

    def show(self, book: Book | None, status: WatchStatus) -> None: ...


# -- the state on screen --------------------------------------------------------------------------


class Watcher:
    """One pair's book and its status, fed by a source, drawn on a ``Display`` when due."""

    def __init__(
        self,
        pair: str,
        display: Display,
        source: str,
        channel: str | None = None,
        api: str = Api.V1,
    ) -> None:
        """``channel``: show only ``book-N`` (default: the first book channel of the pair seen).
        ``api``: the frames are Kraken WebSocket ``v1`` or ``v2``. Frames under any spelling of
        ``pair`` count (``BTC/USD`` and ``XBT/USD``; v2 only ever says ``BTC/USD``)."""
        self.pair = pair
        self.dialect = dialect_for(api)
        self.names = frozenset(spellings(pair))
        self.display = display
        self.source = source
        self.channel = channel
        self.feed: BookFeed = self.dialect.feed()
        self.frames = 0
        self.connections = 0
        self.connection = "starting"
        self.note: str | None = None
        self._note_ns: int | None = None
        self._key: tuple[str, str] | None = None
        self._recent: deque[int] = deque()
        self._ever_valid = False
        self._failed_pending = False
        self._loss_pending = False
        self._last_update_ns: int | None = None
        self._last_failed_ns: int | None = None
        self._clock_ns = 0
        self._next_show_mono = time.monotonic_ns() + display.interval_ns
        self._trades: deque[Trade] = deque(maxlen=TRADES_SHOWN)
        self._ledger = TradeLedger()

    # -- input ------------------------------------------------------------------------------------

    def frame(self, msg: Any, recv_ns: int) -> Outcome:
        """Apply a decoded frame; book frames of other pairs or channels are ignored."""
        self._clock_ns = max(self._clock_ns, recv_ns)
        if self._loss_pending:
            self._lost()
        if self.dialect.is_trade(msg):
            self._on_trades(msg)
            return Outcome.OTHER_CHANNEL
        book = self.dialect.book_frame(msg, self.feed)
        if book is None:
            if type(msg) is not dict:
                return Outcome.OTHER_CHANNEL
            answer = self.dialect.answer(msg)
            if answer is not None and answer.name in self.names:
                self._failed_pending = False  # a (re)subscribe is under way or done
            return self.feed.on_message(msg, recv_ns)
        if not self._wanted(*book):
            return Outcome.OTHER_CHANNEL
        self.frames += 1
        self._recent.append(recv_ns)
        self._last_update_ns = recv_ns
        outcome = self.feed.on_message(msg, recv_ns)
        if outcome is Outcome.SNAPSHOT:
            self._key = self.feed.last_key
            self._ever_valid = True
            self._failed_pending = False
        elif outcome is Outcome.CHECKSUM_FAILED:
            self._failed_pending = True
            self._last_failed_ns = recv_ns
        return outcome

    def _on_trades(self, msg: Any) -> None:
        """Keep the pair's newest trades, each once (v2 repeats some after a reconnect)."""
        with contextlib.suppress(FrameError):
            for trade in in_order(self.dialect.trades(msg)):
                if trade.pair in self.names and self._ledger.keep(self.pair, trade):
                    self._trades.appendleft(trade)

    def meta(self, meta: dict[str, Any], recv_ns: int) -> None:
        """Apply a recorder event read from a segment (replay)."""
        self._clock_ns = max(self._clock_ns, recv_ns)
        kind = meta.get("type")
        if kind == "checkpoint" and meta.get("pair") in self.names:
            if self.channel is None or meta.get("channel") == self.channel:
                self.feed.on_meta(meta, recv_ns)
                self._key = (meta["pair"], meta["channel"])
                self._ever_valid = True
        elif kind == "connect":
            # The recording's connections, counted but not shown as ours: the label stays the
            # replay's position.
            self._lost()
            self.connections += 1
        elif kind == "disconnect":
            # Voided by the next frame or connect, not now: a recording that ends here ends
            # with the valid book the recorder last had, not with a void one.
            self._loss_pending = True
            self._say(f"recorder disconnected: {meta.get('reason', '?')}")
        elif kind == "resubscribe" and meta.get("pair") in self.names:
            self.event(Event.RESYNC)

    def event(self, kind: Event, detail: str = "") -> None:
        """Note a change of connection state or something worth showing."""
        if kind is Event.CONNECTED:
            self.connections += 1
            self.connection = "connected"
        elif kind is Event.DISCONNECTED:
            self.connection = "disconnected"
            self._lost(f"disconnected: {detail}" if detail else "disconnected")
        elif kind is Event.RESYNC:
            self._failed_pending = False
        elif kind is Event.NOTE:
            self._say(detail)
        else:  # CONNECTING, POSITION, FINISHED: a new label
            self.connection = detail or kind.value

    def _lost(self, note: str | None = None) -> None:
        """Books are void until the new connection's snapshot (README section 2.1)."""
        self.feed.connection_lost(self._clock_ns)
        self._loss_pending = False
        self._failed_pending = False  # no resync to wait for: the next snapshot repairs it
        if note is not None:
            self._say(note)

    def _say(self, note: str) -> None:
        self.note = note
        self._note_ns = self._clock_ns or None  # no age before the first frame

    def tick(self, now_ns: int, force: bool = False) -> None:
        """Draw the view if it is due (or ``force``); ``now_ns`` is the view's clock."""
        now_mono = time.monotonic_ns()
        if not force and now_mono < self._next_show_mono:
            return
        self._next_show_mono = now_mono + self.display.interval_ns
        self.display.show(self.book, self.status(now_ns))

    # -- output -----------------------------------------------------------------------------------

    @property
    def book(self) -> Book | None:
        return self.feed.books.get(self._key) if self._key is not None else None

    @property
    def checksum_state(self) -> str:
        book = self.book
        if book is not None and book.valid:
            return "ok"
        if self._failed_pending:
            return "failed"
        return "resyncing" if self._ever_valid else "waiting"

    def status(self, now_ns: int) -> WatchStatus:
        """The status as of ``now_ns`` (frames per second counted over the last second)."""
        now_ns = max(now_ns, self._clock_ns)
        while self._recent and self._recent[0] <= now_ns - RATE_WINDOW_NS:
            self._recent.popleft()
        stats = [s for name, s in self.feed.stats.items() if name in self.names]
        return WatchStatus(
            pair=common_name(self.pair),
            channel=self._key[1] if self._key else self.channel,
            source=self.source,
            connection=self.connection,
            checksum=self.checksum_state,
            now_ns=now_ns,
            frames=self.frames,
            frames_per_s=len(self._recent) * SECOND / RATE_WINDOW_NS,
            checksums_ok=sum(s.checksums_ok for s in stats),
            checksums_failed=sum(s.checksums_failed for s in stats),
            reconnects=max(self.connections - 1, 0),
            last_update_ns=self._last_update_ns,
            last_failed_ns=self._last_failed_ns,
            note=self.note,
            note_ns=self._note_ns,
            trades=tuple(self._trades),
        )

    def _wanted(self, pair: str, channel: str | None) -> bool:
        """A book data frame of this pair (and of the chosen channel, once there is one; a v2
        frame whose depth no answer or checkpoint has told yet counts)."""
        if pair not in self.names:
            return False
        return self.channel is None or channel is None or channel == self.channel


# -- displays -------------------------------------------------------------------------------------


@dataclass
class PlainDisplay:
    """Plain text blocks on a stream (a pipe, a log file), one per ``interval_ns``."""

    stream: TextIO
    levels: int
    interval_ns: int = SECOND

    def show(self, book: Book | None, status: WatchStatus) -> None:
        self.stream.write(render_text(book, status, self.levels))
        self.stream.flush()


@dataclass
class RichDisplay:
    """The view redrawn in place on a terminal through ``rich.live.Live``.

    Live's own refresh thread is off: it would read the book while the loop changes it. The loop
    redraws from its own thread instead, every ``interval_ns``.
    """

    live: Live
    levels: int
    interval_ns: int = 250 * MS

    def show(self, book: Book | None, status: WatchStatus) -> None:
        self.live.update(render_rich(book, status, self.levels), refresh=True)


@contextmanager
def open_display(stdout: TextIO, levels: int) -> Iterator[Display]:
    """A ``RichDisplay`` when ``stdout`` is a terminal, else a ``PlainDisplay``."""
    if not stdout.isatty():
        yield PlainDisplay(stdout, levels)
        return
    from rich.console import Console
    from rich.live import Live

    with Live(console=Console(file=stdout), auto_refresh=False, transient=False) as live:
        yield RichDisplay(live, levels)


# -- the command ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchOptions:
    """What ``kbook watch`` was asked; invalid values raise ``UsageError`` here."""

    pair: str
    depth: int | None = None
    """Subscribed depth live (default 10); in a replay, the recorded channel to show."""
    levels: int | None = None
    """Rows per side (default: the depth, at most 10)."""
    url: str | None = None
    """Kraken's address; None: the one of the API (``wss://ws.kraken.com[/v2]``)."""
    api: str | None = None
    """``v1`` or ``v2``; None: live, the one ``url`` says, else v2 (``kbook.api.choose_api``); in
    a replay, the API of the pair's first recorded book."""
    paths: tuple[Path, ...] = ()
    """``--from``: segments or folders to replay instead of connecting."""
    speed: float = 1.0
    """Replay pace factor; 0 plays as fast as possible."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair", parse_pair(self.pair))
        if self.depth is not None:
            parse_depth(self.depth)
        most = self.depth or (10 if not self.paths else 1000)
        if self.levels is not None and not 1 <= self.levels <= most:
            raise UsageError(
                f"--levels {self.levels} must be between 1 and the depth ({most}); "
                "raise --depth to see more"
            )
        if self.api is not None:
            object.__setattr__(self, "api", parse_api(self.api))
        api, url = choose_api(self.api, self.url)
        object.__setattr__(self, "url", url)
        if not self.paths:  # live, the API is settled here; a replay's is the recording's
            object.__setattr__(self, "api", api)
        if not str(self.url).startswith(("ws://", "wss://")):
            raise UsageError(f"--url {self.url!r} is not a ws:// or wss:// address")
        if not self.speed >= 0 or math.isinf(self.speed):
            raise UsageError(f"--speed {self.speed} must be a number >= 0 (0: as fast as possible)")

    @property
    def shown_levels(self) -> int:
        return self.levels or min(self.depth or 10, 10)


@dataclass(frozen=True)
class WatchSummary:
    """What a watch saw, for the closing line."""

    pair: str
    frames: int
    checksums_ok: int
    checksums_failed: int
    reconnects: int
    ended: str
    """``stopped`` (Ctrl+C) or ``finished`` (end of a replay)."""
    problems: tuple[Problem, ...] = ()

    def line(self) -> str:
        return (
            f"kbook watch: {self.ended}: {self.frames} book frames of {self.pair}, checksums ok "
            f"{self.checksums_ok} failed {self.checksums_failed}, reconnects {self.reconnects}"
        )


def live_config(options: WatchOptions, **timings: Any) -> LiveConfig:
    """The live session of a watch (``timings`` for tests)."""
    config = LiveConfig(
        pairs=(options.pair,),
        depth=options.depth or 10,
        url=options.url,
        api=options.api,
        channels=(Channel.BOOK, Channel.TRADE),  # the last trades are shown under the book
    )
    return replace(config, **timings)


def run_watch(options: WatchOptions, stdout: TextIO) -> WatchSummary:
    """Show the book until Ctrl+C (live) or the end of the recording (``--from``)."""
    replay: ReplaySource | None = None
    channel = f"book-{options.depth}" if options.depth else None
    api = options.api or DEFAULT
    skipped: list[Problem] = []
    if options.paths:
        files = find_segments(options.paths)
        channel, api = find_book(files, options.pair, channel, options.api)
        apis = {path: segment_api(path) for path in files}
        # The other API's segments of the pair are a different feed: a book never mixes them.
        skipped = [
            Problem(path, 0, f"skipped: Kraken WebSocket {other}, not {api} (--api {other})")
            for path, other in apis.items()
            if other != api and stream_name(path) == file_name(options.pair)
        ]
        files = [path for path in files if apis[path] == api]
        # In the recorder's layout each pair has its own stream of files, each with its own copy
        # of the connection's events: the other pairs' streams would count them again.
        own = [path for path in files if stream_name(path) == file_name(options.pair)]
        files = own or files
        replay = ReplaySource(files, math.inf if options.speed == 0 else options.speed)
    ended = "stopped"
    with open_display(stdout, options.shown_levels) as display:
        source = "replay" if replay else str(options.url)
        watcher = Watcher(options.pair, display, source, channel, api)
        try:
            if replay is not None:
                replay.run(watcher)
                ended = "finished"
            else:
                live = LiveSource(live_config(options))
                with stop_on_signals(live.session, (signal.SIGINT, signal.SIGTERM)):
                    live.run(watcher)
            watcher.tick(time.time_ns() if replay is None else 0, force=True)
        except KeyboardInterrupt:
            # The way to stop watching, not an error: the last view stays on screen.
            watcher.tick(time.time_ns() if replay is None else 0, force=True)
        except BrokenPipeError:
            # The reader of the pipe went away (``kbook watch ... | head``): stop quietly.
            _discard_output(stdout)
            ended = "output closed"
    status = watcher.status(0)
    return WatchSummary(
        pair=common_name(options.pair),
        frames=watcher.frames,
        checksums_ok=status.checksums_ok,
        checksums_failed=status.checksums_failed,
        reconnects=status.reconnects,
        ended=ended,
        problems=tuple(skipped) + (tuple(replay.problems) if replay else ()),
    )


def _discard_output(stdout: TextIO) -> None:
    """Send what is still buffered for a closed pipe to /dev/null, so exit does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, stdout.fileno())
    os.close(devnull)
