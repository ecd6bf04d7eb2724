"""The simulator's WebSocket server: Kraken's ``book`` protocol over a real ``websockets`` server.

``SimServer`` is the asyncio part, one per simulator, living in one event loop; every method runs in
that loop. ``kbook.sim.simulator.Simulator`` runs it in a background thread.

Per connection, in the order Kraken does it (``shared/kraken/README.md`` section 1):

1. ``systemStatus`` ``online`` with a fresh unsigned 64-bit ``connectionID`` (drawn from the seed);
2. per subscribe request, one ``subscriptionStatus`` per pair (``reqid`` echoed), then the snapshot
   of each accepted pair; errors are worded as Kraken words them and leave the connection open;
3. updates at about ``rate`` messages per second across the connection's subscriptions (rate 0:
   as fast as the client reads), each from the subscription's own ``Market``;
4. ``{"event":"heartbeat"}`` every ``heartbeat_interval`` while subscribed to something;
5. ``ping`` answered with ``pong`` (``reqid`` echoed); a connection from which nothing arrived for
   ``idle_timeout`` seconds is closed with code 1001.

Every subscription gets its own market, seeded by ``(seed, pair, depth, k)`` where ``k`` counts the
earlier subscriptions to that pair and depth in this simulator: the same seed and the same client
actions give byte-identical frames apart from timestamps. A subscription's channel id is fixed per
(pair, depth) for the life of the simulator, like Kraken's within one session.

The ``trade`` channel (subscribed beside the book, or alone): each step of the pump picks one of
the connection's live subscriptions; a trade subscription's step is a trade on the pair's book
(``Market.trade``), sent as a trade frame and followed by the book update it causes when the book
of the pair is subscribed too (alone, the trades come from a market of its own). Trade ids count
per pair for the life of the simulator; v2 sends the last 50 trades of the pair as a snapshot after
the acknowledgement, so a client reconnecting sees trades it already has again. Trade frames count
as book frames for the faults (a drop may follow a trade). Playback serves no trades.

In playback mode (``capture`` set) the recorded book frames of the subscribed (pair, depth) are
served instead, at the recorded pace divided by ``speed``, from the start of the capture when the
connection first subscribes; only the channel id is rewritten. Pairs and depths not in the capture
are answered as unsupported. When the capture is exhausted the connection stays open, heartbeating.

The steps above (in v1's words) are the same in v2, the default, and in v1
(``SimulatorConfig(api="v1")``); only the texts differ, and they come from a
``kbook.sim.dialect.Dialect``. In v2: the ``status`` channel instead of ``systemStatus``, one
acknowledgement per symbol with ``req_id`` and times, v2 book frames from ``V2Market``,
``{"channel":"heartbeat"}``. The server ignores the URL path: it prints ``ws://host:port/v2`` for
v2 and ``ws://host:port`` for v1 (``Simulator.url``), so that a client left to follow the address
picks the right API, and accepts either.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from kbook.api import DEPTHS
from kbook.feed import BookFeed
from kbook.sim import protocol
from kbook.sim.config import BOOK_KINDS, SentFrame, SimulatorConfig
from kbook.sim.dialect import PING, SUBSCRIBE, UNSUBSCRIBE, dialect_for
from kbook.sim.faults import BAD_CHECKSUM, DROP, MAINTENANCE, MALFORMED, NON_JSON, STALL, Fault
from kbook.sim.market import Market, SimTrade, canonical_pair
from kbook.sim.playback import Capture, PlaybackFrame
from kbook.sim.protocol import TRADE_DEPTH

logger = logging.getLogger("kbook.sim")
_MAX_BURST = 1000
"""At most this many updates are sent back to back before the pump yields to other tasks."""
_BAD_CHECKSUM_MASK = 0x5A5A5A5A


class _Gone(Exception):
    """The connection was dropped, closed or is shutting down: stop sending on it."""


@dataclass(eq=False)
class _Subscription:
    """One (pair, depth) subscribed on one connection; ``market`` is None in playback."""

    key: tuple[str, int]
    wire: str
    depth: int
    channel_id: int
    market: Market | None
    live: bool = False
    """True once the snapshot is out: the pump may send updates."""

    @property
    def is_trade(self) -> bool:
        """A ``trade`` subscription (its market serves only when the book is not subscribed)."""
        return self.key[1] == TRADE_DEPTH


@dataclass(eq=False)
class _Tape:
    """The trades of one pair, for the life of the simulator: ids, and the last ones (v2's
    snapshot of recent trades)."""

    next_id: int = 1
    recent: deque[tuple[int, SimTrade]] = field(default_factory=lambda: deque(maxlen=50))

    def add(self, trade: SimTrade) -> int:
        trade_id = self.next_id
        self.next_id += 1
        self.recent.append((trade_id, trade))
        return trade_id


@dataclass(eq=False)
class _Connection:
    """Per-connection state: subscriptions, the counters faults are keyed on, stall state."""

    number: int
    ws: ServerConnection
    connection_id: int
    rng: random.Random
    last_recv: float
    subs: dict[tuple[str, int], _Subscription] = field(default_factory=dict)
    live: list[_Subscription] = field(default_factory=list)
    open: bool = True
    book_frames: int = 0
    updates: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    """Fault kind -> the ``book_frames`` count (``updates`` for bad_checksum) that triggers it."""
    stall_seconds: float | None = None
    stalled: bool = False
    unstalled: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SimServer:
    """The asyncio side of the simulator. All methods run in its event loop."""

    def __init__(
        self,
        config: SimulatorConfig,
        capture: Capture | None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.capture = capture
        self.dialect = dialect_for(config.api)
        self.sent: list[SentFrame] = []
        self.frames_sent = 0
        self.connections = 0
        self.refused = 0
        self.playbacks_done = 0
        """Connections that were served the whole capture (playback mode)."""
        self.port = 0
        self._on_change = on_change
        self._server: Server | None = None
        self._conns: list[_Connection] = []
        self._ids = random.Random(f"kbook-sim:{config.seed}:connections")
        self._channel_ids: dict[tuple[str, int], int] = {}
        self._streams: dict[tuple[str, int], int] = {}
        self._last_book: dict[str, tuple[_Connection, _Subscription]] = {}
        self._tapes: dict[str, _Tape] = {}
        self._pending: list[Fault] = []
        self._standing: list[Fault] = []
        self._rate_limited = 0
        self._refuse_count = 0
        self._refuse_until = 0.0
        self._paused = False
        self._handlers: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the port."""
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            close_timeout=1.0,
            max_size=2**20,
            logger=logging.getLogger("kbook.sim.websockets"),
        )
        sockets = list(self._server.sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Close every connection (code 1001) and stop listening, within about two seconds."""
        server = self._server
        if server is None:
            return
        for conn in self._conns:
            conn.unstalled.set()
        server.close()
        try:
            await asyncio.wait_for(asyncio.shield(server.wait_closed()), 1.5)
        except TimeoutError:
            for task in list(self._handlers):
                task.cancel()
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except TimeoutError:
                logger.warning("simulator: some connections did not close in time")

    # -- faults (called through kbook.sim.faults.Faults) ----------------------------------------

    def arm(self, fault: Fault) -> None:
        """Attach ``fault`` to the newest open connection, or keep it for the next one."""
        if fault.repeat:
            self._standing.append(replace(fault, repeat=False))
        current = next((c for c in reversed(self._conns) if c.open), None)
        if current is None:
            if not fault.repeat:
                self._pending.append(fault)
            return
        self._attach(current, fault)

    def rate_limit_subscribes(self, count: int) -> None:
        self._rate_limited += count

    def refuse_connections(self, count: int | None, seconds: float | None) -> None:
        if count is not None:
            self._refuse_count += count
        if seconds is not None:  # monotonic time: this may run before the loop starts
            self._refuse_until = max(self._refuse_until, time.monotonic() + seconds)

    def pause(self, paused: bool) -> None:
        """Stop (or restart) generating updates on every connection; control traffic goes on."""
        self._paused = paused
        if not paused:
            for conn in self._conns:
                conn.wake.set()

    # -- reading state (tests) ------------------------------------------------------------------

    def window(self, pair: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The book of ``pair`` as the last book frame sent for it left it."""
        last = self._last_book.get(canonical_pair(pair))
        if last is None:
            raise KeyError(f"no book frame has been sent for {pair}")
        conn, sub = last
        if sub.market is not None:
            return sub.market.window()
        if not self.config.record:
            raise KeyError("the book of a played-back pair needs SimulatorConfig(record=True)")
        feed = BookFeed()
        for frame in self.sent:
            mine = frame.connection == conn.number and frame.pair == sub.wire
            if mine and frame.kind in BOOK_KINDS:
                feed.on_message(orjson.loads(frame.text), 0)
        book = feed.books[(sub.wire, f"book-{sub.depth}")]
        return book.top_asks(sub.depth), book.top_bids(sub.depth)

    # -- connections ----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the handshake with HTTP 503 while a ``refuse_connections`` fault is active."""
        if self._refuse_count > 0 or time.monotonic() < self._refuse_until:
            if self._refuse_count > 0:
                self._refuse_count -= 1
            self.refused += 1
            self._on_change()
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        """One client connection, from systemStatus to close."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = self._open(ws)
        helpers: list[asyncio.Task[None]] = []
        try:
            await self._send(conn, self.dialect.status(conn.connection_id), "status")
            await self._check_faults(conn)
            pump = self._play(conn) if self.capture is not None else self._pump(conn)
            for job in (pump, self._heartbeats(conn), self._watch_idle(conn)):
                helpers.append(asyncio.create_task(self._guard(conn, job)))
            async for message in ws:
                conn.last_recv = asyncio.get_running_loop().time()
                await self._on_message(conn, message)
        except (ConnectionClosed, _Gone):
            pass
        finally:
            conn.open = False
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._handlers.discard(task)
            self._conns.remove(conn)
            self._on_change()

    def _open(self, ws: ServerConnection) -> _Connection:
        self.connections += 1
        loop = asyncio.get_running_loop()
        seed = self.config.seed
        conn = _Connection(
            number=self.connections,
            ws=ws,
            connection_id=self._ids.getrandbits(63) | (1 << 63),
            rng=random.Random(f"kbook-sim:{seed}:connection:{self.connections}"),
            last_recv=loop.time(),
        )
        conn.unstalled.set()
        self._conns.append(conn)
        for fault in self._pending + self._standing:
            self._attach(conn, fault)
        self._pending.clear()
        self._on_change()
        return conn

    async def _guard(self, conn: _Connection, job: Coroutine[Any, Any, None]) -> None:
        """Run a helper task; a connection that goes away ends it quietly, a bug is logged."""
        try:
            await job
        except (ConnectionClosed, _Gone, asyncio.CancelledError):
            pass
        except Exception:
            logger.exception("simulator: connection %d failed", conn.number)
            conn.open = False
            conn.ws.transport.abort()

    # -- sending --------------------------------------------------------------------------------

    async def _send(self, conn: _Connection, text: str, kind: str, pair: str | None = None) -> None:
        """Send one frame (waiting out a stall), recording it first so the order is exact."""
        if conn.stalled:
            await conn.unstalled.wait()
        if not conn.open:
            raise _Gone
        if self.config.record:
            self.sent.append(SentFrame(conn.number, text, pair, kind))
        self.frames_sent += 1
        await conn.ws.send(text)

    async def _send_book(self, conn: _Connection, sub: _Subscription, text: str, kind: str) -> None:
        """Send a data frame (book or trades), count it, and fire any fault due after it."""
        await self._send(conn, text, kind, sub.wire)
        conn.book_frames += 1
        if kind == "update":
            conn.updates += 1
        if not sub.is_trade:
            self._last_book[sub.key[0]] = (conn, sub)
        if conn.faults:
            await self._check_faults(conn)

    def _attach(self, conn: _Connection, fault: Fault) -> None:
        if fault.kind == BAD_CHECKSUM:
            conn.faults[BAD_CHECKSUM] = conn.updates + fault.n
            return
        conn.faults[fault.kind] = conn.book_frames + fault.n
        if fault.kind == STALL:
            conn.stall_seconds = fault.seconds
        if fault.n == 0 and conn.open:
            asyncio.get_running_loop().create_task(self._guard(conn, self._check_faults(conn)))

    def _bad_checksum_due(self, conn: _Connection) -> bool:
        """True when the update about to be sent must carry a wrong checksum (and disarms it)."""
        if conn.faults.get(BAD_CHECKSUM) == conn.updates + 1:
            del conn.faults[BAD_CHECKSUM]
            return True
        return False

    async def _check_faults(self, conn: _Connection) -> None:
        """Fire the faults due at the current book frame count."""
        faults = conn.faults
        count = conn.book_frames
        if _due(faults, NON_JSON, count):
            await self._send(conn, protocol.NON_JSON_FRAME, "raw")
        books = [sub for sub in conn.live if not sub.is_trade]
        if _due(faults, MALFORMED, count) and books:
            sub = books[0]
            text = self.dialect.malformed_update(sub.wire, sub.depth, sub.channel_id)
            await self._send(conn, text, "raw")
        if _due(faults, MAINTENANCE, count):
            await self._send(conn, self.dialect.status(conn.connection_id, "maintenance"), "status")
            conn.open = False
            self._on_change()
            await conn.ws.close(1001, "maintenance")
            raise _Gone
        if _due(faults, DROP, count):
            await self._drop(conn)
            raise _Gone
        if _due(faults, STALL, count):
            self._stall(conn, conn.stall_seconds)

    async def _drop(self, conn: _Connection) -> None:
        """Cut the TCP connection without a close frame, once the frames sent so far are out."""
        conn.open = False
        transport = conn.ws.transport
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while transport.get_write_buffer_size() and loop.time() < deadline:
            await asyncio.sleep(0.001)
        transport.abort()
        self._on_change()

    def _stall(self, conn: _Connection, seconds: float | None) -> None:
        conn.stalled = True
        conn.unstalled.clear()
        self._on_change()
        if seconds is not None:
            asyncio.get_running_loop().call_later(seconds, self._unstall, conn)

    def _unstall(self, conn: _Connection) -> None:
        conn.stalled = False
        conn.unstalled.set()
        self._on_change()

    # -- the client's requests ------------------------------------------------------------------

    async def _on_message(self, conn: _Connection, message: str | bytes) -> None:
        received = time.time()
        dialect = self.dialect
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            msg = None
        if type(msg) is not dict:
            await self._send(conn, dialect.malformed(received), "error")
            return
        command = dialect.command(msg)
        if command == PING:
            await self._send(conn, dialect.pong(msg, received), "pong")
        elif command == SUBSCRIBE:
            await self._subscribe(conn, msg, received)
        elif command == UNSUBSCRIBE:
            await self._unsubscribe(conn, msg, received)
        else:
            await self._send(conn, dialect.unsupported(msg, received), "error")
        self._on_change()

    def _depths_for(self, canonical: str) -> tuple[int, ...]:
        if self.capture is not None:
            return self.capture.depths_for(canonical)
        if not self.config.pairs or canonical in self.config.pairs:
            return DEPTHS
        return ()

    async def _subscribe(self, conn: _Connection, msg: dict[str, Any], received: float) -> None:
        dialect = self.dialect
        if self._rate_limited > 0:
            self._rate_limited -= 1
            await self._send(conn, dialect.rate_limited(msg, received), "error")
            return
        request = dialect.plan(msg, True, self._depths_for, self.config.btc, conn.subs.__contains__)
        if request.error is not None:
            await self._send(conn, dialect.request_error(request, msg, received), "subscription")
            return
        accepted: list[_Subscription] = []
        for decision in request.decisions:
            if decision.error is None and decision.key in conn.subs:
                decision = replace(decision, error=protocol.ALREADY_SUBSCRIBED)
            if decision.error is not None:
                frame = dialect.decision_error(decision, request, msg, received)
                await self._send(conn, frame, "subscription", decision.requested)
                continue
            sub = self._new_subscription(decision.key, decision.wire)
            conn.subs[sub.key] = sub
            frame = dialect.acknowledged(
                True, sub.wire, sub.depth, sub.channel_id, request, received
            )
            await self._send(conn, frame, "subscription", sub.wire)
            accepted.append(sub)
        for sub in accepted:
            if sub.is_trade:
                recent = list(self._tape(sub.key[0]).recent)
                if self.dialect.trade_snapshot and request.snapshot and recent:
                    text = self.dialect.trade_frame(sub.wire, sub.channel_id, recent, True)
                    await self._send_book(conn, sub, text, "trade")
            # v2 may ask for no snapshot: updates then start on a book the client cannot check.
            elif request.snapshot and sub.market is not None and conn.subs.get(sub.key) is sub:
                await self._send_book(
                    conn, sub, sub.market.snapshot_frame(sub.channel_id), "snapshot"
                )
            sub.live = True
            conn.live.append(sub)
        if accepted:
            conn.wake.set()

    async def _unsubscribe(self, conn: _Connection, msg: dict[str, Any], received: float) -> None:
        dialect = self.dialect
        request = dialect.plan(
            msg, False, self._depths_for, self.config.btc, conn.subs.__contains__
        )
        if request.error is not None:
            await self._send(conn, dialect.request_error(request, msg, received), "subscription")
            return
        for decision in request.decisions:
            sub = conn.subs.pop(decision.key, None) if decision.error is None else None
            if sub is None:
                error = decision.error or protocol.NOT_FOUND
                frame = dialect.decision_error(
                    replace(decision, error=error), request, msg, received
                )
                await self._send(conn, frame, "subscription", decision.requested)
                continue
            sub.live = False
            if sub in conn.live:
                conn.live.remove(sub)
            frame = dialect.acknowledged(
                False, sub.wire, sub.depth, sub.channel_id, request, received
            )
            await self._send(conn, frame, "subscription", sub.wire)

    def _new_subscription(self, key: tuple[str, int], wire: str) -> _Subscription:
        canonical, depth = key
        channel_id = self._channel_ids.get(key)
        if channel_id is None:
            channel_id = self._channel_ids[key] = 336 + 16 * len(self._channel_ids)
        if self.capture is not None:
            return _Subscription(key, self.capture.pairs[canonical], depth, channel_id, None)
        stream = self._streams.get(key, 0)
        self._streams[key] = stream + 1
        # A trade subscription's own market (used while the pair's book is not subscribed).
        book_depth = depth if depth != TRADE_DEPTH else DEPTHS[0]
        market = self.dialect.market(wire, book_depth, self.config.seed, stream=stream)
        return _Subscription(key, wire, depth, channel_id, market)

    def _tape(self, canonical: str) -> _Tape:
        tape = self._tapes.get(canonical)
        if tape is None:
            tape = self._tapes[canonical] = _Tape()
        return tape

    # -- the steady traffic ---------------------------------------------------------------------

    async def _wait_for_work(self, conn: _Connection) -> bool:
        """Wait until the connection has live subscriptions and updates are not paused.

        Returns True when it had to wait (the caller then restarts its pacing clock).
        """
        waited = False
        while not conn.live or self._paused:
            conn.wake.clear()
            await conn.wake.wait()
            waited = True
        return waited

    async def _pump(self, conn: _Connection) -> None:
        """Updates at ``rate`` per second, in bursts so that high rates cost no timer per frame."""
        loop = asyncio.get_running_loop()
        rate = self.config.rate
        interval = 1.0 / rate if rate > 0 else 0.0
        next_time = loop.time()
        while True:
            if await self._wait_for_work(conn):
                next_time = loop.time()
            if interval:
                now = loop.time()
                if next_time > now:
                    await asyncio.sleep(next_time - now)
                    continue
                if now - next_time > 1.0:  # fell behind (slow client, stall): don't catch up
                    next_time = now
                due = min(int((now - next_time) / interval) + 1, _MAX_BURST)
                next_time += due * interval
            else:
                due = _MAX_BURST
            for _ in range(due):
                if not conn.live or self._paused:
                    break
                sub = (
                    conn.live[conn.rng.randrange(len(conn.live))]
                    if len(conn.live) > 1
                    else conn.live[0]
                )
                assert sub.market is not None
                if sub.is_trade:
                    await self._trade(conn, sub)
                    continue
                bad = conn.faults and self._bad_checksum_due(conn)
                text = sub.market.update_frame(sub.channel_id, bad_checksum=bool(bad))
                await self._send_book(conn, sub, text, "update")
            self._on_change()
            if not interval:
                await asyncio.sleep(0)

    async def _trade(self, conn: _Connection, sub: _Subscription) -> None:
        """One trade on the pair of ``sub``: the trade frame, then the update of the pair's book
        that it reduced, when that book is subscribed on this connection."""
        book = next(
            (b for b in conn.live if not b.is_trade and b.key[0] == sub.key[0] and b.market),
            None,
        )
        market = book.market if book is not None else sub.market
        assert market is not None
        bad = book is not None and bool(conn.faults) and self._bad_checksum_due(conn)
        trade, update = market.trade(book.channel_id if book else 0, bad_checksum=bad)
        trade_id = self._tape(sub.key[0]).add(trade)
        text = self.dialect.trade_frame(sub.wire, sub.channel_id, [(trade_id, trade)], False)
        await self._send_book(conn, sub, text, "trade")
        if book is not None:
            await self._send_book(conn, book, update, "update")

    async def _play(self, conn: _Connection) -> None:
        """Serve the capture's frames of the subscribed (pair, depth) at the recorded pace."""
        assert self.capture is not None
        frames = self.capture.frames
        loop = asyncio.get_running_loop()
        speed = self.config.speed
        await self._wait_for_work(conn)
        start = loop.time()
        first_ns = frames[0].recv_ns
        for index, frame in enumerate(frames):
            if math.isfinite(speed):
                due = start + (frame.recv_ns - first_ns) / 1e9 / speed
                delay = due - loop.time()
                if delay > 0:
                    self._on_change()
                    await asyncio.sleep(delay)
            if self._paused:
                paused_at = loop.time()
                await self._wait_for_work(conn)
                start += loop.time() - paused_at
            sub = conn.subs.get(frame.key)
            if sub is None or not sub.live:
                continue
            await self._send_book(conn, sub, self._playback_text(conn, sub, frame), _kind(frame))
            if index % 256 == 255:
                self._on_change()
                await asyncio.sleep(0)
        self.playbacks_done += 1
        self._on_change()

    def _playback_text(self, conn: _Connection, sub: _Subscription, frame: PlaybackFrame) -> str:
        text = frame.text(sub.channel_id)
        if not frame.snapshot and conn.faults and self._bad_checksum_due(conn):
            text = _corrupt_checksum(text)
        return text

    async def _heartbeats(self, conn: _Connection) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            if conn.subs:
                await self._send(conn, self.dialect.heartbeat, "heartbeat")
                self._on_change()

    async def _watch_idle(self, conn: _Connection) -> None:
        """Close the connection when the client has sent nothing for ``idle_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        timeout = self.config.idle_timeout
        while True:
            remaining = conn.last_recv + timeout - loop.time()
            if remaining <= 0 and not conn.stalled:
                conn.open = False
                self._on_change()
                await conn.ws.close(1001, "idle timeout")
                return
            await asyncio.sleep(max(remaining, 0.05))


def _due(faults: dict[str, int], kind: str, count: int) -> bool:
    """True, and disarmed, when ``kind`` is armed for ``count`` book frames or fewer.

    "Or fewer": a fault armed for no more frames (``drop_after(0)``) is checked by a task of its
    own, and the pump may send a book frame before that task runs; an exact match would then
    never come and the fault would be lost.
    """
    due = faults.get(kind)
    if due is None or due > count:
        return False
    del faults[kind]
    return True


def _kind(frame: PlaybackFrame) -> str:
    return "snapshot" if frame.snapshot else "update"


def _corrupt_checksum(text: str) -> str:
    """The frame with its ``"c"`` replaced by a different valid-looking checksum."""
    start = text.rfind('"c":"')
    if start < 0:
        return text
    start += 5
    end = text.index('"', start)
    wrong = int(text[start:end]) ^ _BAD_CHECKSUM_MASK
    return f"{text[:start]}{wrong}{text[end:]}"
