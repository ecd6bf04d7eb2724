"""The live session with Kraken, written once for ``kbook record`` and ``kbook watch``.

    connect (backoff between attempts) -> subscribe every pair in one request -> serve:
        take what the reader thread received -> stamp it (``Consumer.now``, one stamp for
        a chunk of frames taken together) -> the consumer's ``bulk`` fast path takes the runs of plain
        book updates, ``Consumer.frame`` every other frame ``(recv_ns, text, decoded)`` -> act
        on the outcome (resync a pair whose checksum failed, alias retry, rate limits) -> every
        tick: due requests, keep-alive ping, ``Consumer.tick`` (flush, rotation, status), the
        stop and duration checks

The socket is read by ``kbook.live.connection.Connection``'s own thread, so this loop runs on its
own clock whatever the socket does: a stuck handshake, a trickled message, a ping flood or a
paused peer delay nothing here. ``recv_ns`` is the wall time at which this loop took the frame
from the reader; how long the frames waited before (in the inbox, or in the socket while the
reader waited for room in the inbox) is the ``lag``: a meta line says when it passes
``LAG_NOTE_NS`` and when it is back under, and the status line shows it. What differs between
Kraken's v1 and v2 is asked of the run's ``kbook.dialect.Dialect``.

Ending: ``stop`` (any thread, a signal handler) or the duration ends the run after recording what
the reader already received (up to ``drain_ns``). ``RecordError`` ends it when the retry budget is
spent (a connection that opens but never gets a pair subscribed counts as a failed attempt), when
no pair was subscribed within ``subscribe_deadline_ns`` of the start (a v2 client pointed at a v1
server, pairs the server does not know: otherwise a silent empty run), or when the consumer says
so (every pair refused).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Protocol

from kbook.dialect import SUBSCRIBED, Dialect, dialect_for
from kbook.errors import RecordError
from kbook.feed import Outcome
from kbook.live.backoff import Backoff
from kbook.live.config import LiveConfig
from kbook.live.connection import Closed, Connection, Dropped, Opened, Received
from kbook.live.subscriptions import Action, Subscriptions
from kbook.units import SECOND

BULK_FRAMES = 2048
"""Frames handed to the consumer's ``bulk`` at a time: what it builds for them stays small."""
LAG_NOTE_NS = SECOND
"""Frames waiting longer than this between the reader and the consumer are worth a meta line."""


class Event(Enum):
    """What happens to the connection, for the consumer to show or log."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RESYNC = "resync"
    """A pair's resubscribe started (its unsubscribe was sent)."""
    NOTE = "note"
    WARNING = "warning"
    """Something the user must fix (a refused pair)."""


Bulk = Callable[[int], tuple[int, Sequence[Any]]]
"""``bulk(start)``: take ``texts[start:]`` while each is a frame the fast path handles whole
(written, applied, checked), in order; returns the index of the first frame it left for
``Consumer.frame`` (``len(texts)``: none) and the wire pair names whose checksum failed on the
way (the session resyncs them)."""


class Consumer(Protocol):
    """What a session hands frames to (``recorder.record.Recorder``, ``kbook.watch``)."""

    def now(self) -> int:
        """The wall clock stamp for a frame or meta line (``recv_ns``)."""
        ...

    def frame(self, recv_ns: int, text: str, msg: Any, is_json: bool) -> Outcome | None:
        """Take one frame; for a book frame, what applying it did (``CHECKSUM_FAILED`` and
        ``MALFORMED`` make the session resync the pair)."""
        ...

    def bulk(self, recv_ns: int, texts: list[str]) -> Bulk | None:
        """A fast path over frames taken together, or None (every frame goes to ``frame``)."""
        ...

    def meta(self, meta: dict[str, Any], targets: tuple[str, ...] | None) -> None:
        """A meta line for the streams of ``targets`` (None: every stream)."""
        ...

    def event(self, kind: Event, detail: str) -> None: ...

    def answered(self) -> None:
        """A subscription answer changed ``Session.subs`` (may raise to end the run)."""
        ...

    def tick(self, now_mono: int) -> None:
        """Called at least every ``tick_ns`` whatever the socket does."""
        ...


class Session:
    """One run's connections; ``run`` once, ``stop`` from anywhere."""

    def __init__(self, config: LiveConfig, consumer: Consumer, give_up_first: bool = False):
        """``give_up_first``: a first connection that cannot be made after the immediate retries
        ends the run at once (``kbook watch``: a wrong ``--url`` is reported, not retried)."""
        self.config = config
        self.url = str(config.url)
        self.consumer = consumer
        self.give_up_first = give_up_first
        self.dialect: Dialect = dialect_for(config.api)
        self.subs = Subscriptions.for_config(config, self.dialect)
        self.backoff = Backoff.for_config(config)
        self.connections = 0
        """Connections opened so far."""
        self.reconnects = 0
        self.lag_ns = 0
        """How long the latest frames waited between the reader and the consumer."""
        self.stop_reason = "stopped"
        self._failures = 0
        self._maintenance = False
        self._lagging = False
        self._stop = threading.Event()
        self._start_mono = time.monotonic_ns()
        self._deadline_mono: int | None = None
        self._next_tick_mono = 0
        self._ping_reqid = 0
        self._subscribed_here = False
        """A pair was subscribed on the current connection."""

    # -- public ---------------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to end cleanly (thread- and signal-safe)."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Connect and serve until stopped, out of time or out of retries (see the docstring)."""
        self._start_mono = time.monotonic_ns()
        if self.config.duration_ns is not None:
            self._deadline_mono = self._start_mono + self.config.duration_ns
        while not self.stopping:
            if (self.connections or self._failures) and not self._wait(
                self.backoff.next_delay_ns(self._maintenance)
            ):
                return
            label = "reconnecting" if self.connections else "connecting"
            self.consumer.event(Event.CONNECTING, f"{label} to {self.url}")
            closed = self._serve(self._connect())
            if closed is None:
                return
            self._ended(closed)

    # -- one connection -------------------------------------------------------------------------

    def _connect(self) -> Connection:
        config = self.config
        return Connection(
            self.url,
            connect_timeout_ns=config.connect_timeout_ns,
            stall_timeout_ns=config.stall_timeout_ns,
            max_frame_bytes=config.max_frame_bytes,
            inbox_bytes=config.inbox_bytes,
        )

    def _serve(self, conn: Connection) -> Closed | None:
        """Serve ``conn`` until it ends (its ``Closed``) or the run stops (None)."""
        opened = False
        self._subscribed_here = False
        try:
            while self._running():
                received: list[Received] = []
                for item in conn.inbox.take(self._until_tick()):
                    if type(item) is Received:
                        received.append(item)
                        continue
                    if received:
                        self._frames(conn, received)
                        received = []
                    if type(item) is Opened:
                        opened = True
                        self._opened(conn)
                    elif type(item) is Closed:
                        return self._judge(item)
                if received:
                    self._frames(conn, received)
                self._tick(conn if opened else None)
            self._drain(conn)
        except Dropped as exc:
            return self._judge(Closed(str(exc), opened))
        finally:
            conn.close()
        if opened:
            self.consumer.meta({"type": "disconnect", "reason": self.stop_reason}, None)
        return None

    def _opened(self, conn: Connection) -> None:
        self.connections += 1
        self.consumer.event(Event.CONNECTED, self.url)
        meta = {"type": "connect", "url": self.url, "connection": self.connections}
        self.consumer.meta(meta, None)
        self._act(conn, self.subs.on_connect(time.monotonic_ns()))

    def _judge(self, closed: Closed) -> Closed:
        """A connection that never opened, or opened but got no pair subscribed, is a failed
        attempt for the retry budget; one that got a pair subscribed starts the count again."""
        if closed.opened and self._subscribed_here:
            self._failures = 0
        else:
            self._failures += 1
            self._give_up_if_spent(closed)
        return closed

    def _ended(self, closed: Closed) -> None:
        if not closed.opened:
            self.consumer.event(
                Event.NOTE, f"cannot connect to {self.url}: {closed.reason}; retrying"
            )
            return
        self.reconnects += 1
        self.subs.on_disconnect()
        self.consumer.meta({"type": "disconnect", "reason": closed.reason}, None)
        self.consumer.event(Event.DISCONNECTED, closed.reason)

    def _give_up_if_spent(self, closed: Closed) -> None:
        reason = closed.reason
        if closed.opened and self.connections and not self.subs.subscribed_once:
            reason = f"no pair subscribed ({reason})"
        if self.give_up_first and not self.connections:
            if self._failures > self.config.immediate_retries:
                raise RecordError(f"cannot connect to {self.url}: {reason}")
            return
        budget = self.config.connect_retries
        if budget is None or self._failures < budget:
            return
        attempts = f"{self._failures} attempt{'s' if self._failures > 1 else ''}"
        if self.subs.subscribed_once:
            raise RecordError(
                f"lost the connection to {self.url} and could not reconnect: "
                f"{reason} ({attempts}; raise --retries to wait longer)"
            )
        raise RecordError(f"cannot connect to {self.url}: {reason} ({attempts})")

    # -- frames ---------------------------------------------------------------------------------

    def _frames(self, conn: Connection | None, items: list[Received]) -> None:
        """Frames taken from the reader together (``conn`` None: stopping, nothing is sent), in
        chunks of up to ``BULK_FRAMES`` that share one ``recv_ns``. The consumer's ``bulk``
        takes the runs of plain book updates it can apply and write in one go; every other
        frame goes through ``frame`` one by one, in order."""
        texts = [text for item in items for text in item.texts]
        arrivals = [item.arrival_mono for item in items for _ in item.texts]
        for first in range(0, len(texts), BULK_FRAMES):
            chunk = slice(first, first + BULK_FRAMES)
            self._chunk(conn, texts[chunk], arrivals[chunk])

    def _chunk(self, conn: Connection | None, texts: list[str], arrivals: list[int]) -> None:
        """Up to ``BULK_FRAMES`` frames, stamped once; the clock's work (``_tick``) is done
        between frames when it is due, and the lag is that of the frame at hand."""
        self._note_lag(time.monotonic_ns() - arrivals[0])
        recv_ns = self.consumer.now()
        bulk = self.consumer.bulk(recv_ns, texts)
        index, count = 0, len(texts)
        while index < count:
            if bulk is not None:
                index, failed = bulk(index)
                if failed and conn is not None:
                    now_mono = time.monotonic_ns()
                    for name in failed:
                        self.subs.on_checksum_failed(name, now_mono)
                if index >= count:
                    return
                if time.monotonic_ns() >= self._next_tick_mono:
                    self._note_lag(time.monotonic_ns() - arrivals[index])
                    self._tick(conn)
            self._received(conn, recv_ns, texts[index])
            index += 1
            if index < count and time.monotonic_ns() >= self._next_tick_mono:
                # A long chunk (deep snapshots) still flushes, shows its status and stops on time.
                self._note_lag(time.monotonic_ns() - arrivals[index])
                self._tick(conn)

    def _received(self, conn: Connection | None, recv_ns: int, text: str) -> None:
        msg, is_json = self.dialect.decode(text)
        outcome = self.consumer.frame(recv_ns, text, msg, is_json)
        if conn is None:
            return
        if outcome is Outcome.SNAPSHOT:
            self.backoff.healthy()
        elif outcome is Outcome.CHECKSUM_FAILED or outcome is Outcome.MALFORMED:
            self.subs.on_checksum_failed(self.dialect.route(msg), time.monotonic_ns())
        elif type(msg) is dict and not self.dialect.is_book(msg):
            self._control(conn, msg)

    def _control(self, conn: Connection, msg: dict[str, Any]) -> None:
        status = self.dialect.system_status(msg)
        if status is not None:
            self._maintenance = status != "online"
            if self._maintenance:
                self.consumer.event(Event.NOTE, f"Kraken reports system status {status!r}")
        self._act(conn, self.subs.on_control(msg, time.monotonic_ns()))
        answer = self.dialect.answer(msg)
        if answer is not None:
            if answer.kind == SUBSCRIBED:
                self._subscribed_here = True
            self.consumer.answered()

    def _note_lag(self, lag_ns: int) -> None:
        self.lag_ns = lag_ns
        lagging = lag_ns > LAG_NOTE_NS
        if lagging != self._lagging:
            self._lagging = lagging
            meta: dict[str, Any] = {"type": "lag", "lag_ns": lag_ns, "behind": lagging}
            self.consumer.meta(meta, None)
            if lagging:
                seconds = lag_ns / SECOND
                self.consumer.event(Event.NOTE, f"falling behind the feed: lag {seconds:.1f} s")

    def _act(self, conn: Connection, actions: Sequence[Action]) -> None:
        for action in actions:
            if action.meta is not None:
                self.consumer.meta(action.meta, action.targets)
            if action.send is not None:
                conn.send(action.send)
                if action.resync:
                    self.consumer.event(Event.RESYNC, "")
            if action.warning is not None and not self.subs.all_failed:
                # When every pair failed, the error that ends the run names them all.
                self.consumer.event(Event.WARNING, action.warning)
            if action.note is not None:
                self.consumer.event(Event.NOTE, action.note)

    # -- the clock ------------------------------------------------------------------------------

    def _running(self) -> bool:
        """False once stopped or out of time; raises when no pair got subscribed in time."""
        now = time.monotonic_ns()
        if self._deadline_mono is not None and now >= self._deadline_mono:
            self.stop("duration")
        if (
            not self.stopping
            and not self.subs.subscribed_once
            and now - self._start_mono >= self.config.subscribe_deadline_ns
        ):
            seconds = self.config.subscribe_deadline_ns / SECOND
            raise RecordError(
                f"no pair was subscribed within {seconds:g} s of the start at {self.url}: "
                f"check that the server speaks --api {self.config.api} and knows "
                f"{', '.join(self.config.pairs)}"
            )
        return not self.stopping

    def _until_tick(self) -> int:
        return max(self._next_tick_mono - time.monotonic_ns(), 0)

    def _tick(self, conn: Connection | None) -> None:
        """Once per tick: due requests, the keep-alive ping, the consumer's housekeeping."""
        now = time.monotonic_ns()
        if now < self._next_tick_mono:
            return
        self._next_tick_mono = now + self.config.tick_ns
        if conn is not None:
            self._act(conn, self.subs.tick(now))
            if now - conn.last_send_mono >= self.config.ping_interval_ns:
                self._ping_reqid += 1
                conn.send(self.dialect.ping(self._ping_reqid))
        self.consumer.tick(now)

    def _wait(self, delay_ns: int) -> bool:
        """Sleep ``delay_ns`` in ticks unless stopped or out of time; True when the run goes on."""
        until = time.monotonic_ns() + delay_ns
        while self._running():
            left = until - time.monotonic_ns()
            if left <= 0:
                return True
            self._stop.wait(min(left, self.config.tick_ns) / SECOND)
            self._tick(None)
        return False

    def _drain(self, conn: Connection) -> None:
        """Record what the reader already received, so a clean stop loses nothing received."""
        deadline = time.monotonic_ns() + self.config.drain_ns
        while (left := deadline - time.monotonic_ns()) > 0:
            items = conn.inbox.take(min(left, self.config.tick_ns // 2))
            received = [item for item in items if type(item) is Received]
            if not received:
                return
            self._frames(None, received)  # recorded, but nothing is sent any more
